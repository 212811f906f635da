"""How a vLLM generation is compared with the HF reference: token for token and eviction for
eviction, with no slack that grows along the run.

Walking the forward passes in order (the prompt's chunks, then one per generated token):
- each layer's retained positions after the pass (read from the backend's eviction log,
  ``replay_log``) must equal the reference's; a layer may differ only where the reference's
  own cut at that pass and layer is a near-tie (relative margin below ``EVICTION_TIE``);
  after such a tie the caches legitimately differ by the tied entries, so decisions are no
  longer compared, but token ids still are;
- each token id must equal the reference's; a token may differ only where the reference's
  own top-2 logits at that step are a near-tie (relative margin below ``LOGIT_TIE``), and
  nothing after it is compared (the inputs differ from there on);
- logprobs must agree within ``LOGPROB_TOLERANCE`` up to the first accepted tie.
The returned report states each accepted tie with its margin and threshold.

Thresholds, fixed before the strict runs: vLLM and the reference agree to ~6e-6 in
logprobs where nothing ties (the records under benchmarks/results), i.e. logits to ~1e-5 of
their ~10-20 magnitude (~1e-6 relative), and attention logits deep in the model to ~1e-4
absolute, which moves a softmax weight by ~1e-4 of itself. A tie is a gap ten times that.
"""

from __future__ import annotations

from pathlib import Path

from vllm_tova.reference import ReferenceResult, TovaReference, relative_gap

LOGIT_TIE = 1e-5  # (top-1 - top-2) / |top-1| of the reference's logits
EVICTION_TIE = 1e-3  # (worst kept - best dropped) / |worst kept| of the reference's scores
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


def replay_log(
    log: list[int], prompt_len: int, chunk: int, budget: int, generated: int, layers: int
) -> list[list[list[int]]]:
    """Per forward pass and layer, the positions one sequence retained, from that sequence's
    eviction log (``generate_logged``: a batch's log split by sequence).

    The log holds, per pass and layer: after a prompt chunk, the indices kept among [retained
    entries in logical-slot order, then the chunk's tokens]; after a decode step, the evicted
    index (the new token's is ``retained``) or -1 below K. Logical slots follow the
    documented layout: kept entries stay in their slots, kept new tokens fill the freed slots
    lowest first, then append.
    """
    slots: list[list[int]] = [[] for _ in range(layers)]
    passes: list[list[list[int]]] = []
    at = 0

    def take(n: int) -> list[int]:
        nonlocal at
        if at + n > len(log):
            raise AssertionError(f"eviction log ends at {len(log)} entries, expected more")
        at += n
        return log[at - n : at]

    for start in range(0, prompt_len, chunk):
        new = list(range(start, min(start + chunk, prompt_len)))
        for layer in slots:
            entries = layer + new
            keep = take(min(len(entries), budget))
            old_kept = {i for i in keep if i < len(layer)}
            freed = [i for i in range(len(layer)) if i not in old_kept]
            freed += list(range(len(layer), len(keep)))
            layout = layer + [-1] * (len(keep) - len(layer))
            for slot, i in zip(freed, [i for i in keep if i >= len(layer)]):
                layout[slot] = entries[i]
            layer[:] = layout[: len(keep)]
        passes.append([sorted(layer) for layer in slots])
    for position in range(prompt_len, prompt_len + generated - 1):
        for layer in slots:
            (evicted,) = take(1)
            if evicted == -1:
                assert len(layer) < budget, f"no eviction logged at {position} with {len(layer)} cached"
                layer.append(position)
            elif evicted < len(layer):
                layer[evicted] = position
            else:
                assert evicted == len(layer), f"evicted index {evicted} of {len(layer) + 1} entries"
        passes.append([sorted(layer) for layer in slots])
    assert at == len(log), f"eviction log has {len(log) - at} entries past the run"
    return passes


def evictions(passes: list[list[list[int]]], prompt_len: int, chunk: int) -> int:
    """Entries one sequence dropped, all layers, over a run replayed by ``replay_log``: per
    pass and layer, what it held before plus the pass's new tokens, minus what it holds."""
    new = [min(chunk, prompt_len - start) for start in range(0, prompt_len, chunk)]
    new += [1] * (len(passes) - len(new))
    dropped, before = 0, [0] * len(passes[0])
    for added, layers in zip(new, passes):
        dropped += sum(held + added - len(kept) for held, kept in zip(before, layers))
        before = [len(kept) for kept in layers]
    return dropped


def check_against_reference(
    label: str,
    out,
    expected: ReferenceResult,
    kept: list[list[list[int]]] | None = None,
    logprob_tolerance: float = LOGPROB_TOLERANCE,
) -> str:
    """Assert ``out`` (a vLLM CompletionOutput with logprobs) follows the reference, and, with
    ``kept`` (``replay_log``'s result), that it retained what the reference retained.

    Returns a one-line report: tokens and decisions identical, the largest logprob
    difference, and any accepted tie with its margin.
    """
    got = list(out.token_ids)
    generated = len(expected.tokens)
    assert len(got) == generated, f"{label}: {len(got)} tokens generated, expected {generated}"
    passes = len(expected.kept)
    if kept is not None:
        assert len(kept) == passes, f"{label}: {len(kept)} passes logged, the reference ran {passes}"
    logprobs = [step[token].logprob for step, token in zip(out.logprobs, got)]
    ties: list[str] = []
    compare_decisions = kept is not None
    worst = 0.0
    decisions = identical_tokens = checked = 0
    for p in range(passes):
        if compare_decisions:
            differing = [
                layer
                for layer, (ours, theirs) in enumerate(zip(kept[p], expected.kept[p]))
                if ours != theirs.tolist()
            ]
            for layer in differing:
                margin = expected.cut_margins[p][layer]
                ours, theirs = set(kept[p][layer]), set(expected.kept[p][layer].tolist())
                assert margin < EVICTION_TIE, (
                    f"{label}: pass {p} layer {layer}: vLLM keeps {sorted(ours - theirs)} where the "
                    f"reference keeps {sorted(theirs - ours)}; the reference's cut margin "
                    f"{margin:.2e} is no tie (< {EVICTION_TIE:.0e})"
                )
                ties.append(f"eviction tie at pass {p} layer {layer} (relative margin {margin:.2e})")
            if differing:
                compare_decisions = False
            else:
                decisions += len(kept[p])
        t = p - expected.prompt_passes + 1
        if t < 0:
            continue
        if got[t] != expected.tokens[t]:
            margin = relative_gap(expected.top_logits[t], expected.top_logits[t] - expected.logit_margins[t])
            assert margin < LOGIT_TIE, (
                f"{label}: token {t} is {got[t]}, the reference's {expected.tokens[t]}; the "
                f"reference's top-2 logit margin {margin:.2e} is no tie (< {LOGIT_TIE:.0e})"
            )
            ties.append(f"logit tie at token {t} (relative margin {margin:.2e})")
            break
        identical_tokens += 1
        if not ties:
            worst = max(worst, abs(logprobs[t] - expected.logprobs[t]))
            checked += 1
    report = f"{label}: {identical_tokens}/{generated} tokens identical"
    if kept is not None:
        total = sum(len(layers) for layers in kept)
        report += f", {decisions}/{total} layer decisions identical"
    report += f", max |logprob diff| {worst:.2e} over {checked} tokens"
    assert worst <= logprob_tolerance, report
    if ties:
        report += "; accepted: " + ", ".join(ties)
    return report


def generate_logged(llm, prompts: list[list[int]], params) -> list[tuple[object, list[list[int]]]]:
    """Generate for ``prompts`` in one batch; per prompt, its CompletionOutput and each rank's
    log of that sequence's own eviction decisions in this run (the engine must record: see
    tests/conftest.py), to hold against the reference's run of that prompt alone: so a
    request's decisions must not depend on its neighbours either. Keep the batch within
    ``max_num_seqs`` and the KV pool, all admitted at once: sequences are told apart by
    their KV blocks, which a sequence admitted after another finished could reuse."""
    llm.collective_rpc("tova_evictions_by_sequence")  # forget what earlier runs recorded
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    ranks = llm.collective_rpc("tova_evictions_by_sequence")
    for rank, logs in enumerate(ranks):
        assert len(logs) == len(prompts), f"rank {rank} logged {len(logs)} sequences for {len(prompts)} prompts"
    return [(out.outputs[0], [logs[i] for logs in ranks]) for i, out in enumerate(outputs)]


class ReferenceRuns(TovaReference):
    """The reference, computing each (prompt, K, C, policy) run once per session.

    Greedy generation stops after ``max_new_tokens`` without changing any step before it, so
    a shorter run of the same settings is the longer one's prefix: its first tokens, and its
    first ``prompt_passes + n - 1`` passes of decisions.
    """

    def __init__(self, model_path: str | Path) -> None:
        super().__init__(model_path)
        self.runs: dict[tuple, ReferenceResult] = {}

    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        budget: int | None,
        prefill_chunk: int,
        policy: str = "tova",
    ) -> ReferenceResult:
        key = (tuple(prompt), budget, prefill_chunk, policy)
        run = self.runs.get(key)
        if run is None or len(run.tokens) < max_new_tokens:
            run = self.runs[key] = super().generate(prompt, max_new_tokens, budget, prefill_chunk, policy)
        return prefix(run, max_new_tokens)


def prefix(run: ReferenceResult, n: int) -> ReferenceResult:
    """The run as if generation had stopped after ``n`` tokens."""
    passes = run.prompt_passes + n - 1
    return ReferenceResult(
        tokens=run.tokens[:n],
        logprobs=run.logprobs[:n],
        top_logits=run.top_logits[:n],
        logit_margins=run.logit_margins[:n],
        kept=run.kept[:passes],
        cut_margins=run.cut_margins[:passes],
        prompt_passes=run.prompt_passes,
    )
