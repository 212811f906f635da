"""What the engine did with the KV cache, counted in EngineCore and carried to the front end.

The scheduler (EngineCore) is the only place that sees every step: how many tokens each
sequence had absorbed, how many it absorbs now, and the blocks it holds. TOVA's eviction
count follows from those numbers exactly: a sequence that has absorbed ``c`` tokens holds
``min(c, K)`` entries per layer; absorbing ``n`` more and trimming back to K evicts
``min(c, K) + n - min(c + n, K)`` entries in every layer (prompt chunks and decode steps
alike; a preempted sequence that is recomputed evicts again, as the backend really does).

The numbers travel in vLLM's own per-step ``SchedulerStats`` (a subclass with one more
field) to the API server, where ``vllm_tova.metrics.loggers`` exports them on ``/metrics``.
Counts are cumulative, so a stats object that is built but never sent loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from vllm.v1.engine import EngineCoreOutputs
from vllm.v1.metrics.stats import SchedulerStats


@dataclass
class TovaStats:
    """One EngineCore's TOVA numbers after a step.

    evicted_tokens_total: K/V entries evicted since start, summed over all TOVA layers.
    running_sequences: sequences in the running set.
    kv_blocks_held: KV blocks held by those sequences (all KV-cache groups).
    kv_block_cap: most blocks a sequence at the server's default K may hold (ceil(K / block_size)).
    kv_blocks_by_budget: blocks held per budget class, keyed by the requests' K as text
        ("none" for exact attention); a class with no running sequence is absent.
    """

    evicted_tokens_total: int = 0
    running_sequences: int = 0
    kv_blocks_held: int = 0
    kv_block_cap: int = 0
    kv_blocks_by_budget: dict[str, int] = field(default_factory=dict)

    @property
    def kv_blocks_per_sequence(self) -> float:
        return self.kv_blocks_held / self.running_sequences if self.running_sequences else 0.0


@dataclass
class TovaSchedulerStats(SchedulerStats):
    """vLLM's SchedulerStats plus the TOVA numbers."""

    tova: TovaStats | None = None

    @classmethod
    def extend(cls, stats: SchedulerStats, tova: TovaStats) -> "TovaSchedulerStats":
        return cls(**{f.name: getattr(stats, f.name) for f in fields(stats)}, tova=tova)


class TovaEngineCoreOutputs(EngineCoreOutputs, array_like=True, omit_defaults=True, gc=False):
    """EngineCoreOutputs that decodes ``scheduler_stats`` with the TOVA field kept.

    msgspec decodes into the declared type and drops unknown fields, so the front end's
    decoder must be built from this subclass (patch 5); the wire format is unchanged.
    """

    scheduler_stats: TovaSchedulerStats | None = None


def evicted_per_layer(absorbed: int, new_tokens: int, budget: int) -> int:
    """Entries one layer evicts when a sequence that absorbed ``absorbed`` tokens takes ``new_tokens``."""
    return min(absorbed, budget) + new_tokens - min(absorbed + new_tokens, budget)


class EvictionCounter:
    """Counts evicted entries from the scheduler's per-step plan (EngineCore)."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.total = 0

    def observe(
        self, num_scheduled: Mapping[str, int], absorbed: Mapping[str, int], budgets: Mapping[str, int]
    ) -> None:
        """``num_scheduled``: tokens per request this step; ``absorbed``: tokens before it;
        ``budgets``: each request's K."""
        per_layer = sum(evicted_per_layer(absorbed[r], n, budgets[r]) for r, n in num_scheduled.items())
        self.total += per_layer * self.num_layers


def budget_class(budget: int, max_model_len: int) -> str:
    """How metrics name a request's K: the number, or "none" where it never evicts."""
    return "none" if budget >= max_model_len else str(budget)


def blocks_by_class(
    blocks: Mapping[str, int], budgets: Mapping[str, int], max_model_len: int
) -> dict[str, int]:
    """Blocks held per budget class, from per-request blocks and budgets."""
    held: dict[str, int] = {}
    for request_id, count in blocks.items():
        name = budget_class(budgets[request_id], max_model_len)
        held[name] = held.get(name, 0) + count
    return held


def count_blocks(block_ids: Iterable[tuple[list[int], ...]]) -> int:
    """Blocks held, given each sequence's per-group block-id lists."""
    return sum(len(group) for per_seq in block_ids for group in per_seq)
