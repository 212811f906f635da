"""vLLM (CPU engine, float32) against the HF reference, with real eviction (K < length).

TOVA runs three (K, C) cases on two prompts; each baseline policy one short case (its own
engine), enough to exercise its history (positions, accumulated attention) through prompt
chunks, decode steps and slot reuse.

Greedy token ids must be identical for the whole generation. If they differ, the test
accepts it only where the reference shows an fp32 near-tie at or before that step (top-2
logits, or an eviction cut, within rounding) and reports the margin; anything else fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm import SamplingParams

from vllm_tova.config import additional_config
from vllm_tova.reference import TovaReference

# (policy, K, C, prompts as (offset, length) in Emma's tokens, tokens generated)
LONG = [(2_000, 310), (20_000, 1_500)]
SHORT = [(2_000, 310)]
CASES = [
    ("tova", 128, 256, LONG, 200),
    ("tova", 64, 128, LONG, 200),
    ("tova", 64, 512, LONG, 200),
    ("window", 64, 128, SHORT, 60),
    ("sink", 64, 128, SHORT, 60),
    ("h2o", 64, 128, SHORT, 60),
]
LOGIT_TIE = 1e-3  # top-2 logits closer than this are a tie in fp32 across implementations
EVICTION_TIE = 1e-5  # TOVA scores (head-averaged softmax weights) closer than this: a tie
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def reference(model_path: Path) -> TovaReference:
    return TovaReference(model_path)


@pytest.fixture(scope="module", params=CASES, ids=[f"{p}-K{k}-C{c}" for p, k, c, _, _ in CASES])
def vllm_run(request, engines, austen_ids: list[int]):
    policy, budget, chunk, spans, generated = request.param
    prompts = [austen_ids[start : start + length] for start, length in spans]
    params = SamplingParams(max_tokens=generated, temperature=0, logprobs=1, ignore_eos=True)
    llm = engines.get(additional_config=additional_config(policy, budget, chunk))
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return policy, budget, chunk, generated, prompts, [o.outputs[0] for o in outputs]


def test_greedy_tokens_match_reference(vllm_run, reference: TovaReference) -> None:
    policy, budget, chunk, generated, prompts, outputs = vllm_run
    for prompt, out in zip(prompts, outputs):
        expected = reference.generate(prompt, generated, budget, chunk, policy)
        got = list(out.token_ids)
        assert len(got) == generated
        first_diff = next((i for i, (a, b) in enumerate(zip(got, expected.tokens)) if a != b), None)
        agreed = generated if first_diff is None else first_diff
        logprobs = [step[token].logprob for step, token in zip(out.logprobs, got)]
        worst = max(abs(a - b) for a, b in zip(logprobs[:agreed], expected.logprobs[:agreed]))
        assert worst <= LOGPROB_TOLERANCE, f"logprob drift {worst:.2e} (prompt {len(prompt)})"
        if first_diff is None:
            continue
        logit_margin = expected.logit_margins[first_diff]
        eviction_margin = min(expected.eviction_margins[: first_diff + 1])
        report = (
            f"{policy} K={budget} C={chunk} prompt={len(prompt)}: first difference at generated "
            f"token {first_diff}; reference top-2 logit margin {logit_margin:.2e}, smallest eviction "
            f"margin so far {eviction_margin:.2e}"
        )
        print(report)
        assert logit_margin < LOGIT_TIE or eviction_margin < EVICTION_TIE, report
