"""The two throughput protocols, each on one engine.

* **Run to completion** (the headline, what ``vllm bench throughput`` does): a fixed set of N
  requests is submitted at once and the clock stops at the last token. Every request lives its
  whole life, so stock's contexts grow to their full length and its pool fills: the regime
  where eviction pays. A run that would not finish in the time allowed is aborted and
  reported as unfinished, never as a throughput.
* **Steady state** (a serving view): B requests are kept in flight; the first wave's
  generation lengths are spread uniformly over the workload's, so finishes are desynchronised
  from the start. One full request lifetime is discarded (until the first request submitted
  after the first wave finishes), then a window is measured. The window's mean sequence length
  must match the workload's expected mean (prompt + half the generation) within
  ``CONTEXT_TOLERANCE``, or its figures are flagged as not steady.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from vllm import LLM

from benchmarks.engine_run import EngineRun, Window
from benchmarks.workloads import Workload

#: A steady window whose mean sequence length is further than this from the workload's
#: expected mean is not steady state.
CONTEXT_TOLERANCE = 0.10


@dataclass
class Outcome:
    """One measured point: its window, or why there is none."""

    window: Window | None
    status: str  # "finished", "steady", "not-steady", "unfinished", "skipped"
    detail: str = ""


def expected_mean_length(workload: Workload) -> float:
    """Mean sequence length at a decode token, over a request's life."""
    return workload.prompt_len + workload.gen_len / 2


def run_to_completion(
    llm: LLM,
    prompt: Callable[[int], list[int]],
    workload: Workload,
    num_requests: int,
    pool_blocks: int,
    budget: int | None,
    prefill_chunk: int,
    max_seconds: float = math.inf,
    clock: Callable[[], float] = time.perf_counter,
) -> Outcome:
    """Submit ``num_requests`` at once and step until the last one finishes."""
    run = EngineRun(llm, prompt, pool_blocks, budget, prefill_chunk, clock=clock)
    for _ in range(num_requests):
        run.submit(workload.gen_len)
    while run.in_flight:
        run.step()
        if run.now() > max_seconds:
            done = run.finish()
            run.abort_all()
            return Outcome(
                None, "unfinished", f"{done.finished}/{num_requests} finished after {max_seconds:.0f} s; aborted"
            )
    window = run.finish()
    return Outcome(window, "finished")


def run_steady(
    llm: LLM,
    prompt: Callable[[int], list[int]],
    workload: Workload,
    batch_size: int,
    pool_blocks: int,
    budget: int | None,
    prefill_chunk: int,
    measure_seconds: float,
    max_seconds: float = math.inf,
    clock: Callable[[], float] = time.perf_counter,
) -> Outcome:
    """``batch_size`` in flight; discard one lifetime; measure ``measure_seconds``."""
    run = EngineRun(llm, prompt, pool_blocks, budget, prefill_chunk, clock=clock)
    for i in range(batch_size):  # first wave: lengths uniform over 1..gen_len
        run.submit(max(1, round((i + 1) * workload.gen_len / batch_size)))
    sentinel: str | None = None
    measuring = False
    while run.now() <= max_seconds:
        for _ in run.step():
            rid = run.submit(workload.gen_len)
            sentinel = sentinel or rid
        if not measuring and sentinel is not None and sentinel not in run.requests:
            run.new_window()  # one lifetime has passed: discard it
            measuring = True
        if measuring and run.now() - run.window.start >= measure_seconds:
            break
    window = run.finish()
    run.abort_all()
    if not measuring:
        return Outcome(None, "unfinished", f"no full lifetime within {max_seconds:.0f} s")
    expected = expected_mean_length(workload)
    off = window.mean_logical_context / expected - 1
    detail = f"mean sequence length {window.mean_logical_context:.0f} vs expected {expected:.0f} ({off:+.1%})"
    return Outcome(window, "steady" if abs(off) <= CONTEXT_TOLERANCE else "not-steady", detail)
