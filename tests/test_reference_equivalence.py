"""vLLM (CPU engine, float32) against the HF reference, with real eviction (K < length).

Greedy token ids must be identical for the whole generation. If they differ, the test
accepts it only where the reference shows an fp32 near-tie at or before that step (top-2
logits, or an eviction cut, within rounding) and reports the margin; anything else fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm import SamplingParams

from tests.conftest import tova
from vllm_tova.reference import TovaReference

CASES = [(128, 256), (64, 128), (64, 512)]  # (K, C): both budgets, three chunk sizes
PROMPTS = [(2_000, 310), (20_000, 1_500)]  # (offset, length) in Emma's tokens
NUM_GENERATED = 200
LOGIT_TIE = 1e-3  # top-2 logits closer than this are a tie in fp32 across implementations
EVICTION_TIE = 1e-5  # TOVA scores (head-averaged softmax weights) closer than this: a tie
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def reference(model_path: Path) -> TovaReference:
    return TovaReference(model_path)


@pytest.fixture(scope="module", params=CASES, ids=[f"K{k}-C{c}" for k, c in CASES])
def vllm_run(request, engines, austen_ids: list[int]):
    budget, chunk = request.param
    prompts = [austen_ids[start : start + length] for start, length in PROMPTS]
    params = SamplingParams(max_tokens=NUM_GENERATED, temperature=0, logprobs=1, ignore_eos=True)
    llm = engines.get(additional_config=tova(budget, chunk))
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return budget, chunk, prompts, [o.outputs[0] for o in outputs]


def test_greedy_tokens_match_reference(vllm_run, reference: TovaReference) -> None:
    budget, chunk, prompts, outputs = vllm_run
    for prompt, out in zip(prompts, outputs):
        expected = reference.generate(prompt, NUM_GENERATED, budget, chunk)
        got = list(out.token_ids)
        assert len(got) == NUM_GENERATED
        first_diff = next((i for i, (a, b) in enumerate(zip(got, expected.tokens)) if a != b), None)
        agreed = NUM_GENERATED if first_diff is None else first_diff
        logprobs = [step[token].logprob for step, token in zip(out.logprobs, got)]
        worst = max(abs(a - b) for a, b in zip(logprobs[:agreed], expected.logprobs[:agreed]))
        assert worst <= LOGPROB_TOLERANCE, f"logprob drift {worst:.2e} (prompt {len(prompt)})"
        if first_diff is None:
            continue
        logit_margin = expected.logit_margins[first_diff]
        eviction_margin = min(expected.eviction_margins[: first_diff + 1])
        report = (
            f"K={budget} C={chunk} prompt={len(prompt)}: first difference at generated token "
            f"{first_diff}; reference top-2 logit margin {logit_margin:.2e}, smallest eviction "
            f"margin so far {eviction_margin:.2e}"
        )
        print(report)
        assert logit_margin < LOGIT_TIE or eviction_margin < EVICTION_TIE, report
