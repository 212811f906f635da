"""Prometheus metrics on the API server's ``/metrics`` (a ``vllm.stat_logger_plugins`` entry).

vLLM's API server builds one stat logger per engine from this entry point and hands it every
``SchedulerStats`` its EngineCore sends; with a policy configured those carry the TOVA numbers
counted by the scheduler (``vllm_tova.metrics.stats``). Metrics live in the default registry,
which ``/metrics`` serves. Names start with ``vllm_tova:`` (vLLM unregisters ``vllm:``
collectors when its own logger starts). Without a policy this logger registers nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, SchedulerStats

from vllm_tova.config import TovaConfig

logger = init_logger("vllm.tova")

LABELS = ["model_name", "engine", "policy", "budget"]


@dataclass(frozen=True)
class _Metrics:
    evicted: Counter
    blocks_per_sequence: Gauge
    block_cap: Gauge
    running: Gauge
    blocks_by_budget: Gauge


@functools.cache
def _metrics() -> _Metrics:
    """Created once per process: prometheus_client refuses to register a name twice."""
    return _Metrics(
        evicted=Counter(
            "vllm_tova:evicted_tokens",
            "K/V entries evicted by the KV policy, summed over layers (a token dropped by "
            "all L layers counts L times).",
            LABELS,
        ),
        blocks_per_sequence=Gauge(
            "vllm_tova:kv_blocks_per_sequence",
            "KV blocks held per running sequence (mean over running sequences, last step).",
            LABELS,
        ),
        block_cap=Gauge(
            "vllm_tova:kv_block_cap",
            "Most KV blocks one sequence may hold: ceil(kv_budget / block_size).",
            LABELS,
        ),
        running=Gauge("vllm_tova:running_sequences", "Sequences running at the last step.", LABELS),
        blocks_by_budget=Gauge(
            "vllm_tova:kv_blocks_held",
            "KV blocks held by running sequences at the last step, per budget class (the "
            "requests' kv_budget, or 'none' for exact attention).",
            [*LABELS, "budget_class"],
        ),
    )


class TovaStatLogger(StatLoggerBase):
    """Per-engine logger: turns the cumulative TOVA stats into Prometheus series."""

    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
        self.settings = TovaConfig.from_additional_config(vllm_config.additional_config)
        self.engine_index = engine_index
        self.evicted_seen = 0
        self.last_logged: tuple[int, int, int] | None = None
        self.latest = None
        if not self.settings.enabled:
            return
        values = [
            vllm_config.model_config.served_model_name,
            str(engine_index),
            self.settings.policy,
            str(self.settings.budget),
        ]
        m = _metrics()
        self.evicted = m.evicted.labels(*values)
        self.blocks_per_sequence = m.blocks_per_sequence.labels(*values)
        self.block_cap = m.block_cap.labels(*values)
        self.running = m.running.labels(*values)
        self.labels = values
        self.classes_seen: set[str] = set()

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None:
        tova = getattr(scheduler_stats, "tova", None)
        if not self.settings.enabled or tova is None:
            return
        # Totals are cumulative in EngineCore; add what is new since the last report.
        if tova.evicted_tokens_total > self.evicted_seen:
            self.evicted.inc(tova.evicted_tokens_total - self.evicted_seen)
            self.evicted_seen = tova.evicted_tokens_total
        self.blocks_per_sequence.set(tova.kv_blocks_per_sequence)
        self.block_cap.set(tova.kv_block_cap)
        self.running.set(tova.running_sequences)
        # A class whose last sequence finished reads 0 rather than its last value.
        self.classes_seen |= set(tova.kv_blocks_by_budget)
        for name in self.classes_seen:
            _metrics().blocks_by_budget.labels(*self.labels, name).set(tova.kv_blocks_by_budget.get(name, 0))
        self.latest = tova

    def log(self) -> None:
        """One line per logging interval (like vLLM's throughput line), only when it changed."""
        tova = self.latest
        if tova is None:
            return
        key = (tova.evicted_tokens_total, tova.running_sequences, tova.kv_blocks_held)
        if key == self.last_logged:
            return
        self.last_logged = key
        logger.info(
            "vllm-tova engine %d: %d running sequences, %.1f KV blocks per sequence (cap %d), "
            "%d K/V entries evicted so far.",
            self.engine_index,
            tova.running_sequences,
            tova.kv_blocks_per_sequence,
            tova.kv_block_cap,
            tova.evicted_tokens_total,
        )

    def log_engine_initialized(self) -> None:
        pass
