"""Drive one offline vLLM engine step by step and account for what every step did.

Both throughput protocols (``benchmarks/protocols.py``) run on this: it submits token-id
requests, steps the engine, and tallies per measurement window the tokens generated, the
context each generated token attended (all of it for stock vLLM, at most K + 1 entries under
an eviction budget), the running-sequence gauge over time, the KV pool's use and preemptions.
The tally also feeds the bytes-and-FLOPs ceiling (``benchmarks/ceiling.py``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vllm import LLM, SamplingParams
from vllm.sampling_params import RequestOutputKind

from benchmarks.ceiling import CostTally
from vllm_tova.dev.runs import blocks_in_use, read_metrics

RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
PREEMPTIONS = "vllm:num_preemptions"
_ids = itertools.count()


def bench_params(gen_len: int) -> SamplingParams:
    """Exactly ``gen_len`` tokens, greedy, no detokenization, deltas per step."""
    return SamplingParams(
        max_tokens=gen_len,
        min_tokens=gen_len,
        ignore_eos=True,
        temperature=0.0,
        detokenize=False,
        output_kind=RequestOutputKind.DELTA,
    )


def prompt_attention_pairs(prompt_len: int, budget: int | None, chunk: int) -> int:
    """Causal (query, key) pairs computed while absorbing a prompt: each chunk attends to the
    entries kept so far (at most K under a budget) and causally to itself."""
    if budget is None:
        return prompt_len * (prompt_len + 1) // 2
    pairs = kept = 0
    for start in range(0, prompt_len, chunk):
        size = min(chunk, prompt_len - start)
        pairs += size * kept + size * (size + 1) // 2
        kept = min(kept + size, budget)
    return pairs


def attended_context(length: int, budget: int | None) -> int:
    """K/V entries a token at sequence length ``length`` attends: all of them for stock vLLM,
    at most K cached + itself under a budget."""
    return length if budget is None else min(length, budget + 1)


def time_weighted_mean(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Mean of a step function given by (time, value) samples, over [start, end]."""
    total, acc = 0.0, 0.0
    for (t0, v), (t1, _) in zip(samples, [*samples[1:], (end, 0)]):
        lo, hi = max(t0, start), min(t1, end)
        if hi > lo:
            acc += v * (hi - lo)
            total += hi - lo
    return acc / total if total else 0.0


@dataclass
class Window:
    """What the engine did between ``start`` and ``end`` (seconds since the run began)."""

    start: float = 0.0
    end: float = 0.0
    finished: int = 0
    prompt_tokens: int = 0  # prompts fully absorbed (their first token emitted) in the window
    gen_tokens: int = 0
    decode_tokens: int = 0  # generated tokens after each request's first
    logical_context: int = 0  # sum over decode tokens of the sequence's full length
    peak_running: int = 0
    peak_kv_blocks: float = 0.0
    preemptions: int = 0
    tally: CostTally = field(default_factory=CostTally)
    samples: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def gen_tok_s(self) -> float:
        return self.gen_tokens / self.seconds if self.seconds > 0 else math.nan

    @property
    def total_tok_s(self) -> float:
        return (self.prompt_tokens + self.gen_tokens) / self.seconds if self.seconds > 0 else math.nan

    @property
    def mean_running(self) -> float:
        return time_weighted_mean(self.samples, self.start, self.end)

    @property
    def mean_attended_context(self) -> float:
        """Mean K/V entries one decode token attended (capped at K + 1 under a budget)."""
        return self.tally.kv_tokens_read / self.decode_tokens if self.decode_tokens else math.nan

    @property
    def mean_logical_context(self) -> float:
        """Mean full sequence length at a decode token, whatever was evicted."""
        return self.logical_context / self.decode_tokens if self.decode_tokens else math.nan


@dataclass
class _Request:
    prompt_len: int
    generated: int = 0


class EngineRun:
    """One engine, driven from this process; ``window`` accumulates until ``new_window``."""

    def __init__(
        self,
        llm: LLM,
        prompt: Callable[[int], list[int]],
        pool_blocks: int,
        budget: int | None = None,
        prefill_chunk: int = 512,
        sample_interval: float = 0.05,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.llm, self.engine = llm, llm.llm_engine
        self.prompt, self.pool_blocks = prompt, pool_blocks
        self.budget, self.prefill_chunk = budget, prefill_chunk
        self.sample_interval, self.clock = sample_interval, clock
        self.requests: dict[str, _Request] = {}
        self.submitted = 0
        self._t0 = clock()
        self._last_sample = -math.inf
        self._preempted = self._preemptions()
        self.window = Window()

    def _preemptions(self) -> int:
        return int(read_metrics(self.llm, (PREEMPTIONS,))[PREEMPTIONS])

    def now(self) -> float:
        return self.clock() - self._t0

    def submit(self, gen_len: int) -> str:
        rid = f"r{next(_ids)}"
        ids = self.prompt(self.submitted)
        self.engine.add_request(rid, {"prompt_token_ids": ids}, bench_params(gen_len))
        self.requests[rid] = _Request(len(ids))
        self.submitted += 1
        return rid

    def new_window(self) -> Window:
        """Close the current window and start an empty one now."""
        done = self._close()
        carried = [(done.end, done.samples[-1][1])] if done.samples else []  # the gauge's last value
        self.window = Window(start=done.end, samples=carried)
        return done

    def _close(self) -> Window:
        w = self.window
        w.end = self.now()
        preempted = self._preemptions()
        w.preemptions, self._preempted = preempted - self._preempted, preempted
        return w

    def finish(self) -> Window:
        return self._close()

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    def step(self) -> list[str]:
        """One engine step; returns the ids of requests that finished in it."""
        w, finished = self.window, []
        tokens = kv_read = pairs = 0
        for out in self.engine.step():
            req = self.requests.get(out.request_id)
            if req is None:
                continue
            n = len(out.outputs[0].token_ids) if out.outputs else 0
            for _ in range(n):
                if req.generated == 0:
                    w.prompt_tokens += req.prompt_len
                    tokens += req.prompt_len
                    pairs += prompt_attention_pairs(req.prompt_len, self.budget, self.prefill_chunk)
                else:
                    tokens += 1
                    length = req.prompt_len + req.generated
                    w.decode_tokens += 1
                    w.logical_context += length
                    kv_read += attended_context(length, self.budget)
                req.generated += 1
            w.gen_tokens += n
            if out.finished:
                del self.requests[out.request_id]
                w.finished += 1
                finished.append(out.request_id)
        if tokens:
            w.tally.add_step(tokens, kv_read, pairs)
        now = self.now()
        if now - self._last_sample >= self.sample_interval:
            self._last_sample = now
            m = read_metrics(self.llm, (RUNNING, KV_USAGE))
            running = int(m[RUNNING])
            w.samples.append((now, running))
            w.peak_running = max(w.peak_running, running)
            w.peak_kv_blocks = max(w.peak_kv_blocks, blocks_in_use(m[KV_USAGE], self.pool_blocks))
        return finished

    def abort_all(self) -> None:
        """Abort what is in flight and let the aborts land (the engine is then idle)."""
        self.engine.abort_request(sorted(self.requests))
        self.requests.clear()
        while self.engine.has_unfinished_requests():
            self.engine.step()
