"""A request's output never depends on its neighbours, nor on being preempted and resumed."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm import SamplingParams

from tests.conftest import engine, tova
from vllm_tova.stats import run_batch

BUDGET, CHUNK = 128, 128
LENGTHS = [40, 1500, 75, 300, 130, 900, 60, 1100, 200, 45, 700, 129, 1300, 90, 500, 256]
NUM_GENERATED = [48, 40, 56, 32] * 4
PAGE_BYTES = 32 * 3 * 64 * 2 * 4 * 30  # block_size * kv_heads * head_dim * (K, V) * fp32 * layers


def _prompts(austen_ids: list[int]) -> list[list[int]]:
    return [austen_ids[7 * i * 1000 : 7 * i * 1000 + n] for i, n in enumerate(LENGTHS)]


def _params(i: int) -> SamplingParams:
    return SamplingParams(max_tokens=NUM_GENERATED[i], temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def alone_and_batched(model_path: Path, austen_ids: list[int]):
    prompts = _prompts(austen_ids)
    with engine(model_path, additional_config=tova(BUDGET, CHUNK)) as llm:
        alone = [
            list(llm.generate([{"prompt_token_ids": p}], _params(i))[0].outputs[0].token_ids)
            for i, p in enumerate(prompts)
        ]
        batch = llm.generate([{"prompt_token_ids": p} for p in prompts], [_params(i) for i in range(16)])
    return alone, [list(o.outputs[0].token_ids) for o in batch]


def test_batched_equals_alone(alone_and_batched) -> None:
    alone, batched = alone_and_batched
    for i, (a, b) in enumerate(zip(alone, batched)):
        assert a == b, f"request {i} (prompt {LENGTHS[i]} tokens) changed inside the batch"


def test_preempted_equals_alone(alone_and_batched, model_path: Path, austen_ids: list[int]) -> None:
    alone, _ = alone_and_batched
    # 10 blocks: two sequences at their cap (4 blocks each) plus a little; short prompts are
    # admitted, grow, and must be preempted.
    with engine(
        model_path, additional_config=tova(BUDGET, CHUNK), kv_cache_memory_bytes=11 * PAGE_BYTES
    ) as llm:
        stats = run_batch(llm, _prompts(austen_ids), [_params(i) for i in range(16)])
    assert stats.preemptions > 0, "the KV pool was meant to force preemption"
    for i, out in enumerate(stats.outputs):
        assert list(out.outputs[0].token_ids) == alone[i], f"request {i} changed after preemption"
