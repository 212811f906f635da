"""A request's output never depends on its neighbours, on a small KV pool, nor on being
preempted and resumed."""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from tests.conftest import tova
from tests.preemption import run_preempting_once
from vllm_tova.dev.runs import run_batch

BUDGET, CHUNK = 128, 256  # the K=128 reference case's settings (test_reference_equivalence.py)
LENGTHS = [40, 1500, 75, 300, 130, 700, 60, 900, 200, 45, 500, 129, 1000, 90, 400, 256]
NUM_GENERATED = [24, 16, 32, 20] * 4


def _prompts(austen_ids: list[int]) -> list[list[int]]:
    prompts = [austen_ids[3_500 * i : 3_500 * i + n] for i, n in enumerate(LENGTHS)]
    assert [len(p) for p in prompts] == LENGTHS
    return prompts


def _params(i: int) -> SamplingParams:
    return SamplingParams(max_tokens=NUM_GENERATED[i], temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def runs(engines, austen_ids: list[int], block_bytes: int):
    """Tokens per request: alone, in one batch, in one batch on a tiny KV pool, and in one
    batch whose running requests are all preempted mid-run."""
    prompts = _prompts(austen_ids)
    params = [_params(i) for i in range(len(prompts))]
    # 11 blocks: two sequences at their cap (4 blocks each) plus a little. Short prompts
    # would grow past what is free if admission did not reserve the cap.
    tiny = engines.get(additional_config=tova(BUDGET, CHUNK), kv_cache_memory_bytes=11 * block_bytes)
    overloaded = run_batch(tiny, prompts, params)
    llm = engines.get(additional_config=tova(BUDGET, CHUNK))
    alone = [_tokens(llm.generate([{"prompt_token_ids": p}], params[i])[0]) for i, p in enumerate(prompts)]
    batched = [_tokens(o) for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)]
    preempted, running = run_preempting_once(llm, prompts, params)
    assert running >= 2, f"meant to preempt several running requests mid-run ({running})"
    return alone, batched, overloaded, preempted


def _tokens(output) -> list[int]:
    return list(output.outputs[0].token_ids)


def test_batched_equals_alone(runs) -> None:
    alone, batched, _, _ = runs
    for i, (a, b) in enumerate(zip(alone, batched)):
        assert a == b, f"request {i} (prompt {LENGTHS[i]} tokens) changed inside the batch"


def test_overloaded_pool_admits_without_preempting(runs) -> None:
    """Admission reserves each request's block cap, so running requests never outgrow the pool."""
    alone, _, overloaded, _ = runs
    assert overloaded.preemptions == 0
    assert overloaded.peak_running >= 2
    for i, out in enumerate(overloaded.outputs):
        assert _tokens(out) == alone[i], f"request {i} changed on the tiny pool"


def test_preempted_equals_alone(runs) -> None:
    """Preemptions that remain possible replay the generated tokens exactly."""
    alone, _, _, preempted = runs
    for i, tokens in enumerate(preempted):
        assert tokens == alone[i], f"request {i} changed after preemption"
