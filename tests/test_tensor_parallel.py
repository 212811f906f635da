"""Tensor parallelism on the CPU engine: SmolLM2 (9 query heads, 3 KV heads) over 3 ranks.

Each rank holds 3 of the 9 query heads; exact TOVA needs the head average over all 9, so the
ranks all-reduce their scores. Checked here: every rank makes the same eviction decision at
every layer and step (the ranks' eviction logs are equal), and the generation follows the
single-process HF reference as closely as TP=1 does (see tests/equivalence.py).
The Ray executor is GPU-only in vLLM; benchmarks/tensor_parallel.py runs it on GPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm import SamplingParams

from benchmarks.tensor_parallel import cpu_binding, environment
from tests.equivalence import check_against_reference
from vllm_tova.attention import eviction_log
from vllm_tova.config import additional_config
from vllm_tova.reference import TovaReference

RANKS = 3
BUDGET, CHUNK = 64, 128
SPANS = [(2_000, 310), (20_000, 700)]  # (offset, length) in Emma's tokens
GENERATED = 80


@pytest.fixture(scope="module")
def tp_run(engines, austen_ids: list[int]):
    with environment(VLLM_TOVA_RECORD_EVICTIONS="1", **cpu_binding(RANKS)):
        llm = engines.get(
            additional_config=additional_config("tova", BUDGET, CHUNK),
            tensor_parallel_size=RANKS,
            distributed_executor_backend="mp",
            worker_extension_cls=eviction_log.WORKER_EXTENSION,
            kv_cache_memory_bytes=64 << 20,
        )
    prompts = [austen_ids[start : start + length] for start, length in SPANS]
    params = SamplingParams(max_tokens=GENERATED, temperature=0, logprobs=1, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    logs = llm.collective_rpc("tova_evictions")
    engines.close()  # three worker processes: give the machine back to the next module
    return prompts, [o.outputs[0] for o in outputs], logs


def test_every_rank_evicts_the_same_entries_at_every_step(tp_run) -> None:
    _, _, logs = tp_run
    assert len(logs) == RANKS
    # Per layer and step: prompt chunks log the kept indices, decode steps the evicted slot.
    assert len(logs[0]) > 28 * GENERATED * len(SPANS)  # SmolLM2 has 30 layers
    assert sum(1 for d in logs[0] if d >= 0) > 0
    for rank, log in enumerate(logs[1:], start=1):
        assert log == logs[0], f"rank {rank} disagrees with rank 0"


def test_tensor_parallel_generation_follows_reference(tp_run, model_path: Path) -> None:
    prompts, outputs, _ = tp_run
    reference = TovaReference(model_path)
    for prompt, out in zip(prompts, outputs):
        expected = reference.generate(prompt, GENERATED, BUDGET, CHUNK)
        print(check_against_reference(f"TP={RANKS} K={BUDGET} prompt={len(prompt)}", out, expected))
