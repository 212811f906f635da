"""How a vLLM generation is compared with the HF reference or with another vLLM run.

Greedy token ids must be identical. A difference is accepted only where the reference shows a
near-tie at or before that step (top-2 logits, or an eviction cut, within rounding); the
returned report says where and by how much.
"""

from __future__ import annotations

from vllm_tova.reference import ReferenceResult

LOGIT_TIE = 1e-3  # top-2 logits closer than this are a tie in fp32 across implementations
EVICTION_TIE = 1e-5  # TOVA scores (head-averaged softmax weights) closer than this: a tie
LOGPROB_TOLERANCE = 1e-3


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def prefix_agreement(out, expected: ReferenceResult) -> tuple[int | None, int, float]:
    """(first differing token or None, tokens identical before it, largest |logprob
    difference| over those tokens) of a vLLM CompletionOutput against the reference."""
    got = list(out.token_ids)
    diff = first_difference(got, expected.tokens)
    agreed = len(got) if diff is None else diff
    logprobs = [step[token].logprob for step, token in zip(out.logprobs, got)]
    worst = max((abs(a - b) for a, b in zip(logprobs[:agreed], expected.logprobs[:agreed])), default=0.0)
    return diff, agreed, worst


def check_against_reference(
    label: str,
    out,
    expected: ReferenceResult,
    logprob_tolerance: float = LOGPROB_TOLERANCE,
) -> str:
    """Assert ``out`` (a vLLM CompletionOutput with logprobs) follows the reference.

    Returns a one-line report: tokens agreed and the largest logprob difference.
    """
    got = list(out.token_ids)
    assert len(got) == len(expected.tokens), f"{label}: {len(got)} tokens generated"
    diff, agreed, worst = prefix_agreement(out, expected)
    report = f"{label}: {agreed}/{len(got)} tokens identical, max |logprob diff| {worst:.2e}"
    assert worst <= logprob_tolerance, report
    if diff is not None:
        logit_margin = expected.logit_margins[diff]
        eviction_margin = min(expected.eviction_margins[: diff + 1])
        report += (
            f"; first difference at token {diff}: reference top-2 logit margin "
            f"{logit_margin:.2e}, smallest eviction margin so far {eviction_margin:.2e}"
        )
        assert logit_margin < LOGIT_TIE or eviction_margin < EVICTION_TIE, report
    return report
