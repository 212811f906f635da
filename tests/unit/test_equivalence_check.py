"""The comparison itself (tests/equivalence.py) on hand-made runs: it reads an eviction log
as the backend lays out its slots, and it fails on any difference that is not a tie at its
own step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.equivalence import EVICTION_TIE, LOGIT_TIE, check_against_reference, evictions, replay_log
from vllm_tova.reference import ReferenceResult

# K = 3, C = 3, a 6-token prompt, 2 tokens generated, one layer. Chunk 1 (tokens 0-2) keeps
# all three. Chunk 2 sees [0, 1, 2, 3, 4, 5] and keeps indices 1, 3, 5: token 1 stays in slot
# 1; tokens 3 and 5 fill the freed slots 0 and 2, lowest first: slots [3, 1, 5]. The decode
# step at position 6 evicts index 0 (token 3), so 6 takes slot 0.
LOG = [0, 1, 2, 1, 3, 5, 0]
PASSES = [[[0, 1, 2]], [[1, 3, 5]], [[1, 5, 6]]]
REPLAY = dict(prompt_len=6, chunk=3, budget=3, generated=2, layers=1)


def test_replay_follows_the_slot_layout() -> None:
    assert replay_log(LOG, **REPLAY) == PASSES
    assert evictions(PASSES, prompt_len=6, chunk=3) == 4  # 3 in chunk 2, 1 in the decode step
    with pytest.raises(AssertionError, match="past the run"):
        replay_log(LOG + [0], **REPLAY)


def _runs(margin: float = 0.5, logit_margins=(0.1, 0.1)):
    expected = ReferenceResult(
        tokens=[7, 8], logprobs=[-1.0, -2.0], top_logits=[10.0, 10.0], logit_margins=[10 * m for m in logit_margins],
        kept=[[torch.tensor(k) for k in p] for p in PASSES],
        cut_margins=[[0.5], [margin], [0.5]], prompt_passes=2,
    )  # fmt: skip

    def out(tokens):
        return SimpleNamespace(token_ids=tokens, logprobs=[{t: SimpleNamespace(logprob=-1.0 - i)} for i, t in enumerate(tokens)])

    return expected, out


def test_identical_runs_pass() -> None:
    expected, out = _runs()
    report = check_against_reference("x", out([7, 8]), expected, PASSES)
    assert "2/2 tokens identical, 3/3 layer decisions identical" in report


def test_a_different_eviction_fails_unless_its_own_cut_is_a_tie() -> None:
    wrong = [PASSES[0], [[0, 3, 5]], PASSES[2]]
    expected, out = _runs(margin=10 * EVICTION_TIE)
    with pytest.raises(AssertionError, match="pass 1 layer 0: vLLM keeps \\[0\\] where the reference keeps \\[1\\]"):
        check_against_reference("x", out([7, 8]), expected, wrong)
    expected, out = _runs(margin=EVICTION_TIE / 10)
    report = check_against_reference("x", out([7, 8]), expected, wrong)
    assert "eviction tie at pass 1 layer 0" in report
    # After the tie, tokens are still held to the reference.
    with pytest.raises(AssertionError, match="token 1 is 9"):
        check_against_reference("x", out([7, 9]), expected, wrong)


def test_a_different_token_fails_unless_its_own_logits_tie() -> None:
    expected, out = _runs(logit_margins=(0.1, 10 * LOGIT_TIE))
    with pytest.raises(AssertionError, match="token 1 is 9"):
        check_against_reference("x", out([7, 9]), expected, PASSES)
    # A near-tie in an earlier cut that changed nothing excuses nothing later.
    expected, out = _runs(margin=EVICTION_TIE / 10, logit_margins=(0.1, 10 * LOGIT_TIE))
    with pytest.raises(AssertionError, match="token 1 is 9"):
        check_against_reference("x", out([7, 9]), expected, PASSES)
    expected, out = _runs(logit_margins=(0.1, LOGIT_TIE / 10))
    assert "logit tie at token 1" in check_against_reference("x", out([7, 9]), expected, PASSES)
