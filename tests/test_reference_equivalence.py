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

from tests.equivalence import check_against_reference
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
        print(check_against_reference(f"{policy} K={budget} C={chunk} prompt={len(prompt)}", out, expected))
