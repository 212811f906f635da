"""The early-decode diagnostic (``benchmarks.throughput --protocol early-decode``): keep B
requests in flight on one engine, replace each one that finishes, and cut the point a few
seconds into decoding.

It measures only the first part of decode, where stock's contexts are still short, so it is
never a throughput headline (``benchmarks/protocols.py`` has the protocols that are).

One engine (with a large ``max_num_seqs``) serves every batch size of a sweep: the batch
size is the number of requests in flight, which the client controls. Engine starts are the
expensive part on a GPU (about a minute each), so this is what makes a sweep affordable.

Two windows are measured per point:
* the whole run, from the first submission to the last token (or to the cut, below);
* the steady window, from the end of the ramp (the first engine step after which every
  request of the first wave has emitted a token, or the ``SETTLED_STEPS``-th step in a row on
  which every running request emitted one and none more was admitted: the pool holds no
  more) to the same end.

A point is cut ``time_limit`` seconds after its ramp (or ``max_seconds`` after its start),
in-flight requests aborted and the result marked truncated: on a GPU a 3,584-token
generation at a large batch would otherwise take minutes. A cut run's whole-run numbers
include the first wave's prefill but not the rest of its life; its steady window is the
throughput at that batch size over the first part of the decode phase, where contexts are
shorter than at steady state (which favours stock: its attention cost grows with context,
TOVA's stops growing at K).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vllm import LLM

from benchmarks.engine_run import KV_USAGE, PREEMPTIONS, RUNNING, bench_params
from benchmarks.engine_run import time_weighted_mean as _time_weighted_mean
from vllm_tova.dev.runs import blocks_in_use, read_metrics

WAITING = "vllm:num_requests_waiting"
_ids = itertools.count()
#: Steps in a row on which every running request decoded and none started before the ramp
#: counts as over without the whole first wave in (the pool cannot admit more).
SETTLED_STEPS = 16
#: Columns of ``PointResult.ramp_trace``: one row per engine step until the ramp ends.
RAMP_TRACE_COLUMNS = ("seconds", "emitted", "new_starts", "running", "waiting")


@dataclass
class PointResult:
    """What one closed-loop run measured (tokens counted from the engine's own outputs)."""

    batch_size: int
    num_requests: int
    finished: int = 0
    truncated: bool = False
    seconds: float = 0.0
    prompt_tokens: int = 0  # prompts fully prefilled (a request's first token was emitted)
    gen_tokens: int = 0
    ramp_seconds: float = math.nan
    steady_seconds: float = 0.0
    steady_gen_tokens: int = 0
    steady_finished: int = 0
    mean_running: float = 0.0  # time-weighted, over the steady window if there is one
    peak_running: int = 0
    peak_kv_blocks: float = 0.0
    peak_kv_slots_per_seq: float = 0.0  # blocks in use x block size / running, at its max
    preemptions: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list, repr=False)
    # What the ramp test saw at each step (RAMP_TRACE_COLUMNS): why a ramp ended where it did.
    ramp_trace: list[tuple[float, int, int, int, int]] = field(default_factory=list, repr=False)

    @property
    def gen_tok_s(self) -> float:
        return self.gen_tokens / self.seconds if self.seconds else 0.0

    @property
    def total_tok_s(self) -> float:
        return (self.prompt_tokens + self.gen_tokens) / self.seconds if self.seconds else 0.0

    @property
    def req_s(self) -> float:
        return self.finished / self.seconds if self.seconds else 0.0

    @property
    def steady_gen_tok_s(self) -> float:
        return self.steady_gen_tokens / self.steady_seconds if self.steady_seconds else math.nan


def run_closed_loop(
    llm: LLM,
    prompt: Callable[[int], list[int]],
    gen_len: int,
    batch_size: int,
    num_requests: int,
    pool_blocks: int,
    block_size: int,
    time_limit: float = math.inf,
    max_seconds: float = math.inf,
    sample_interval: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
) -> PointResult:
    """Run ``num_requests`` requests, ``batch_size`` in flight, on an idle engine.

    ``prompt(i)`` gives request i's token ids. Gauges are read every ``sample_interval``
    seconds (every step during the ramp): reading them costs a registry walk. ``clock`` is
    there for tests that script an engine.
    """
    engine = llm.llm_engine
    params = bench_params(gen_len)
    res = PointResult(batch_size, num_requests)
    prompt_lens: dict[str, int] = {}
    started: set[str] = set()
    in_flight: set[str] = set()
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        rid = f"b{next(_ids)}"
        ids = prompt(submitted)
        engine.add_request(rid, {"prompt_token_ids": ids}, params)
        prompt_lens[rid] = len(ids)
        in_flight.add(rid)
        submitted += 1

    preempted_before = read_metrics(llm, (PREEMPTIONS,))[PREEMPTIONS]
    start = clock()
    for _ in range(min(batch_size, num_requests)):
        submit()
    ramp_end: float | None = None
    settled_steps = 0
    last_sample = -math.inf
    own_output = False  # until then, gauges may still describe the previous point's last step
    while engine.has_unfinished_requests():
        emitted = new_starts = 0
        for out in engine.step():
            rid = out.request_id
            own_output = own_output or rid in prompt_lens
            n = len(out.outputs[0].token_ids) if out.outputs else 0
            emitted += n
            if n and rid not in started:
                started.add(rid)
                new_starts += 1
                res.prompt_tokens += prompt_lens[rid]
            if ramp_end is not None:
                res.steady_gen_tokens += n
            if out.finished:
                in_flight.discard(rid)
                res.finished += 1
                res.steady_finished += ramp_end is not None
                if submitted < num_requests:
                    submit()
            res.gen_tokens += n
        now = clock()
        if own_output and (ramp_end is None or now - last_sample >= sample_interval):
            last_sample = now
            m = read_metrics(llm, (RUNNING, WAITING, KV_USAGE))
            running = int(m[RUNNING])
            res.samples.append((now - start, running))
            if ramp_end is None:
                res.ramp_trace.append((now - start, emitted, new_starts, running, int(m[WAITING])))
            used = blocks_in_use(m[KV_USAGE], pool_blocks)
            res.peak_running = max(res.peak_running, running)
            res.peak_kv_blocks = max(res.peak_kv_blocks, used)
            if running:
                res.peak_kv_slots_per_seq = max(res.peak_kv_slots_per_seq, used * block_size / running)
            # Ramp over: the whole first wave has started, or nothing more could be admitted
            # (a pool too small for the batch). The waiting gauge cannot tell the second case:
            # it leaves out requests still on their way to the engine core, which steps while
            # the client submits. Under Ray at TP=2 (2026-11-28) a step with every running
            # request decoding and nothing waiting ended ramps 0.05 s and 0.23 s in (138 of 175
            # running on average after); likely, not measured, that such a step came during
            # the submissions of 175 and 700 requests.
            all_decoding = running and emitted >= running
            first_wave_in = len(started) >= min(batch_size, num_requests)
            settled = all_decoding and not new_starts
            settled_steps = settled_steps + 1 if settled else 0
            if ramp_end is None and (first_wave_in or settled_steps >= SETTLED_STEPS):
                ramp_end = now
        cut = now - start >= max_seconds or (ramp_end is not None and now - ramp_end >= time_limit)
        if cut and in_flight:
            res.truncated = True
            engine.abort_request(sorted(in_flight))
            break
    end = clock()
    while engine.has_unfinished_requests():  # let the aborts land before the next point
        engine.step()
    res.seconds = end - start
    res.preemptions = int(read_metrics(llm, (PREEMPTIONS,))[PREEMPTIONS] - preempted_before)
    if ramp_end is not None:
        res.ramp_seconds = ramp_end - start
        res.steady_seconds = end - ramp_end
    window_start = res.ramp_seconds if ramp_end is not None and res.steady_seconds > 0 else 0.0
    res.mean_running = _time_weighted_mean(res.samples, window_start, res.seconds)
    return res
