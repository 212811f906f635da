"""vLLM (CPU engine, float32) against the HF reference, with real eviction (K < length).

TOVA runs three (K, C) cases on two prompts; each baseline policy one short case (its own
engine), enough to exercise its history (positions, accumulated attention) through prompt
chunks, decode steps and slot reuse.

Token ids must be identical for the whole generation, and every layer's retained positions
after every forward pass identical to the reference's; a difference is accepted only at the
step where the reference's own margin there is a near-tie (see tests/equivalence.py).
A case's prompts run in one batch; each sequence's decisions are read from the eviction log
by sequence, and held to the reference's run of that prompt alone.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from tests.equivalence import ReferenceRuns, check_against_reference, generate_logged, replay_log
from vllm_tova.config import additional_config

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


@pytest.fixture(scope="module", params=CASES, ids=[f"{p}-K{k}-C{c}" for p, k, c, _, _ in CASES])
def vllm_run(request, engines, austen_ids: list[int]):
    policy, budget, chunk, spans, generated = request.param
    prompts = [austen_ids[start : start + length] for start, length in spans]
    params = SamplingParams(max_tokens=generated, temperature=0, logprobs=1, ignore_eos=True)
    llm = engines.get(additional_config=additional_config(policy, budget, chunk))
    runs = generate_logged(llm, prompts, params)
    return policy, budget, chunk, generated, prompts, runs


def test_tokens_and_evictions_match_reference(vllm_run, reference: ReferenceRuns) -> None:
    policy, budget, chunk, generated, prompts, runs = vllm_run
    layers = reference.model.config.num_hidden_layers
    for prompt, (out, (log,)) in zip(prompts, runs):
        expected = reference.generate(prompt, generated, budget, chunk, policy)
        kept = replay_log(log, len(prompt), chunk, budget, generated, layers)
        label = f"{policy} K={budget} C={chunk} prompt={len(prompt)}"
        print(check_against_reference(label, out, expected, kept))
