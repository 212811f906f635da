"""Per-request budgets in one engine: each request gets exactly what it gets on its own.

One engine (server default K=64, ``kv_budget_max`` = max_model_len, so exact attention is
allowed) runs a batch mixing K=32, 64 (the default, asked for by nothing), 128 and
``kv_policy: none``. Each request must follow the HF reference configured with its own
settings, token for token (the strict checker of tests/equivalence.py); alone, every layer's
retained positions after every pass must equal the reference's too; and after all running
requests are preempted mid-run, each must replay to the same tokens.
(The issue's 64/128/512 mix, scaled down for CPU: prompts of 60-400 tokens, so 32-128
evicts and none keeps everything.)
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from tests.equivalence import ReferenceRuns, check_against_reference, generate_logged, replay_log
from tests.preemption import run_preempting_once
from vllm_tova.config import additional_config

DEFAULT, CHUNK, MAX_MODEL_LEN = 64, 128, 2048
#: (prompt length, the request's extra_args, K the reference runs with: None = no eviction)
CASES = [
    (300, {"kv_budget": 32}, 32),
    (250, {}, DEFAULT),
    (400, {"kv_budget": 128}, 128),
    (200, {"kv_policy": "none"}, None),
    (150, {"kv_budget": 128}, 128),
    (90, {"kv_budget": 32}, 32),
    (350, {"kv_policy": "none"}, None),
    (120, {"kv_budget": 64, "kv_policy": "tova"}, DEFAULT),
]
GENERATED = 16


def _params(extra: dict) -> SamplingParams:
    return SamplingParams(
        max_tokens=GENERATED, temperature=0, logprobs=1, ignore_eos=True, extra_args=dict(extra) or None
    )


@pytest.fixture(scope="module")
def prompts(austen_ids: list[int]) -> list[list[int]]:
    return [austen_ids[4_000 * i : 4_000 * i + n] for i, (n, _, _) in enumerate(CASES)]


@pytest.fixture(scope="module")
def params() -> list[SamplingParams]:
    return [_params(extra) for _, extra, _ in CASES]


@pytest.fixture(scope="module")
def llm(engines):
    return engines.get(
        additional_config=additional_config("tova", DEFAULT, CHUNK, budget_max=MAX_MODEL_LEN),
        max_model_len=MAX_MODEL_LEN,
    )


@pytest.fixture(scope="module")
def batched(llm, prompts, params) -> list:
    return [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)]


def test_mixed_batch_follows_each_requests_reference(batched, prompts, reference: ReferenceRuns) -> None:
    for (length, extra, budget), prompt, out in zip(CASES, prompts, batched):
        expected = reference.generate(prompt, GENERATED, budget, CHUNK)
        print(check_against_reference(f"batched {extra or 'default'} prompt={length}", out, expected))


def test_alone_evicts_at_its_own_budget(llm, prompts, params, reference: ReferenceRuns) -> None:
    """One request per class (32, 128, none) alone: every layer's retained positions after
    every pass equal its reference's (the default K is covered by the whole suite)."""
    layers = reference.model.config.num_hidden_layers
    for i in (0, 2, 3):
        ((out, (log,)),) = generate_logged(llm, [prompts[i]], params[i])
        length, extra, budget = CASES[i]
        expected = reference.generate(prompts[i], GENERATED, budget, CHUNK)
        kept = replay_log(log, length, CHUNK, budget or MAX_MODEL_LEN, GENERATED, layers)
        print(check_against_reference(f"alone {extra or 'default'} prompt={length}", out, expected, kept))


def test_preempted_mixed_batch_replays_exactly(llm, batched, prompts, params) -> None:
    preempted, running = run_preempting_once(llm, prompts, params)
    assert running >= 2, f"meant to preempt several running requests mid-run ({running})"
    for i, (out, tokens) in enumerate(zip(batched, preempted)):
        assert tokens == list(out.token_ids), f"request {i} ({CASES[i][1]}) changed after preemption"
