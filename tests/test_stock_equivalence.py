"""K >= sequence length: nothing is evicted, so TOVA must reproduce stock vLLM exactly."""

from __future__ import annotations

from pathlib import Path

from vllm import SamplingParams

from tests.conftest import engine, tova

PROMPTS = [(1_000, 300), (9_000, 800), (30_000, 1_200)]
NUM_GENERATED = 120


def _generate(model_path: Path, prompts: list[list[int]], **overrides) -> list[list[int]]:
    params = SamplingParams(max_tokens=NUM_GENERATED, temperature=0, ignore_eos=True)
    with engine(model_path, **overrides) as llm:
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_budget_above_length_equals_stock_vllm(model_path: Path, austen_ids: list[int]) -> None:
    prompts = [austen_ids[start : start + length] for start, length in PROMPTS]
    longest = max(map(len, prompts)) + NUM_GENERATED
    stock = _generate(model_path, prompts)
    with_tova = _generate(model_path, prompts, additional_config=tova(longest + 32, 256))
    assert with_tova == stock
