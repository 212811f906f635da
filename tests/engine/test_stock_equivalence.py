"""K >= sequence length: nothing is evicted, so TOVA must reproduce stock vLLM exactly."""

from __future__ import annotations

from vllm import SamplingParams

from tests.conftest import tova

PROMPTS = [(1_000, 300), (30_000, 1_200)]
NUM_GENERATED = 64


def test_budget_above_length_equals_stock_vllm(engines, austen_ids: list[int]) -> None:
    prompts = [{"prompt_token_ids": austen_ids[start : start + n]} for start, n in PROMPTS]
    params = SamplingParams(max_tokens=NUM_GENERATED, temperature=0, ignore_eos=True)
    longest = max(n for _, n in PROMPTS) + NUM_GENERATED
    results = []
    budget = (longest // 32 + 2) * 32  # above every sequence, on the 32-token block grid
    for extra in ({}, tova(budget, 256)):
        outputs = engines.get(additional_config=extra).generate(prompts, params)
        results.append([list(o.outputs[0].token_ids) for o in outputs])
    stock, with_tova = results
    assert with_tova == stock
