"""A request's output never depends on its neighbours, nor on being preempted and resumed."""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from tests.conftest import tova
from vllm_tova.stats import run_batch

BUDGET, CHUNK = 128, 256  # the K=128 reference case reuses this engine
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
    """Tokens per request: alone, in one batch, and in one batch on a tiny KV pool.

    The tiny pool runs first so the roomy engine stays up for the next module.
    """
    prompts = _prompts(austen_ids)
    params = [_params(i) for i in range(len(prompts))]
    # 11 blocks: two sequences at their cap (4 blocks each) plus a little; short prompts are
    # admitted, grow past what is free, and must be preempted.
    tiny = engines.get(additional_config=tova(BUDGET, CHUNK), kv_cache_memory_bytes=11 * block_bytes)
    preempted = run_batch(tiny, prompts, params)
    llm = engines.get(additional_config=tova(BUDGET, CHUNK))
    alone = [_tokens(llm.generate([{"prompt_token_ids": p}], params[i])[0]) for i, p in enumerate(prompts)]
    batched = [_tokens(o) for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)]
    return alone, batched, preempted


def _tokens(output) -> list[int]:
    return list(output.outputs[0].token_ids)


def test_batched_equals_alone(runs) -> None:
    alone, batched, _ = runs
    for i, (a, b) in enumerate(zip(alone, batched)):
        assert a == b, f"request {i} (prompt {LENGTHS[i]} tokens) changed inside the batch"


def test_preempted_equals_alone(runs) -> None:
    alone, _, preempted = runs
    assert preempted.preemptions > 0, "the KV pool was meant to force preemption"
    for i, out in enumerate(preempted.outputs):
        assert _tokens(out) == alone[i], f"request {i} changed after preemption"
