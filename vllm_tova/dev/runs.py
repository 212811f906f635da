"""Run a batch through a vLLM engine step by step and read vLLM's own scheduler stats.

Used by the demo, the tests and the benchmarks: "how many sequences ran at once" comes from
vLLM's Prometheus gauges (``vllm:num_requests_running``), read after every engine step.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vllm import LLM, RequestOutput, SamplingParams
from vllm import envs as vllm_envs


@dataclass
class RunStats:
    outputs: list[RequestOutput] = field(default_factory=list)
    peak_running: int = 0
    preemptions: int = 0
    peak_kv_usage: float = 0.0
    seconds: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return sum(len(o.outputs[0].token_ids) for o in self.outputs)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(o.prompt_token_ids or ()) for o in self.outputs)

    def peak_blocks_in_use(self, pool_blocks: int) -> float:
        """KV blocks in use at the usage peak, for a pool of ``pool_blocks`` blocks."""
        return blocks_in_use(self.peak_kv_usage, pool_blocks)


def blocks_in_use(kv_usage: float, pool_blocks: int) -> float:
    """Convert vLLM's KV usage fraction to blocks: it is reported over the pool minus the
    null block vLLM reserves (block 0, never handed to a request)."""
    return kv_usage * (pool_blocks - 1)


@contextmanager
def open_llm(model: str, **kwargs) -> Iterator[LLM]:
    """An ``LLM`` that is shut down on exit, so the next engine gets the machine to itself.

    An engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) freezes vLLM's
    environment variables when it starts; they are thawed on exit, so the next engine reads
    the environment it is started in.
    """
    llm = LLM(model, **kwargs)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        vllm_envs.disable_envs_cache()


def kv_block_bytes(model: str, dtype: str, block_size: int) -> int:
    """Bytes one KV block takes over all layers (K and V), to size a pool in blocks."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = 4 if dtype == "float32" else 1 if dtype.startswith("fp8") else 2
    return block_size * cfg.num_key_value_heads * head_dim * 2 * itemsize * cfg.num_hidden_layers


def _metric(llm: LLM, name: str) -> float:
    return read_metrics(llm, (name,))[name]


def read_metrics(llm: LLM, names: tuple[str, ...]) -> dict[str, float]:
    """Several gauges/counters from one snapshot (summed over engines); needs log stats on."""
    values = dict.fromkeys(names, 0.0)
    for m in llm.get_metrics():
        if m.name in values and hasattr(m, "value"):
            values[m.name] += m.value
    return values


def run_batch(
    llm: LLM,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams],
    stop_at_first_finish: bool = False,
) -> RunStats:
    """Generate for token-id prompts; outputs in prompt order. Needs ``disable_log_stats=False``.

    With ``stop_at_first_finish`` the run ends (remaining requests aborted) as soon as one
    request finishes: enough to read peak concurrency for equal-length requests, cheaply.
    """
    engine = llm.llm_engine
    per_request = params if isinstance(params, list) else [params] * len(prompts)
    stats = RunStats()
    preempted_before = _metric(llm, "vllm:num_preemptions")
    start = time.perf_counter()
    for i, (prompt, p) in enumerate(zip(prompts, per_request, strict=True)):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, p)
    finished: dict[int, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[int(out.request_id)] = out
        stats.peak_running = max(stats.peak_running, int(_metric(llm, "vllm:num_requests_running")))
        stats.peak_kv_usage = max(stats.peak_kv_usage, _metric(llm, "vllm:kv_cache_usage_perc"))
        if stop_at_first_finish and finished:
            engine.abort_request([str(i) for i in range(len(prompts)) if i not in finished])
            break
    stats.seconds = time.perf_counter() - start
    stats.preemptions = int(_metric(llm, "vllm:num_preemptions") - preempted_before)
    stats.outputs = [finished[i] for i in sorted(finished)]
    return stats
