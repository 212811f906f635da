"""Half precision against float32 on the same windows, judged by bounds fixed before any run.

Each half-precision run (dtype, policy, K) is paired with the float32 run of the same policy
and K, window by window and token by token: every token's |Δ logprob| (teacher-forced, so the
two runs predict the same tokens from their own evicted caches) and the relative perplexity
gap. The bounds are the issue's: perplexity within 1% of float32's, mean |Δ| at most 0.05
nats per token for TOVA (the baselines' and the full cache's |Δ| are reported beside it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from benchmarks.perplexity import AGREEMENT
from benchmarks.ppl_scoring import Scored, perplexity

BASELINE_DTYPE = "float32"
#: |ppl(half) - ppl(fp32)| / ppl(fp32), every policy and the full cache.
PPL_BOUND = 0.01
#: Mean |Δ logprob| per predicted token (nats), for the policies named in DELTA_JUDGED.
MEAN_DELTA_BOUND = 0.05
DELTA_JUDGED = ("tova",)
#: The float32 engine against the HF reference: benchmarks/perplexity.py's relative bound.
REFERENCE_BOUND = AGREEMENT
#: An FP8 cache against a bf16 cache (same engine dtype, policy and K): TOVA's perplexity
#: gap may exceed stock's own FP8 gap (the full cache's, in absolute value) by at most this,
#: relative. e4m3 noise per entry is the same for both (same format, same scales); TOVA adds
#: eviction choices that the noise flips where scores nearly tie, which changes the retained
#: set but should not bias the loss. 0.02 is the engine test's NLL slack
#: (tests/gpu/test_gpu.py: FP8_NLL_SLACK, 0.02 nats ~ 2% perplexity), fixed before any run.
FP8_PPL_SLACK = 0.02
FP8_JUDGED = ("tova",)
FP8_CACHE_BASE = "auto"


class Config(NamedTuple):
    """One run's settings: budget None is the full cache; engine "vllm" or "reference" (the
    HF oracle, vllm_tova/reference.py); ``kv_cache_dtype`` as vLLM's ``--kv-cache-dtype``."""

    dtype: str
    policy: str
    budget: int | None
    engine: str = "vllm"
    kv_cache_dtype: str = "auto"


def abs_deltas(ours: Sequence[Scored], theirs: Sequence[Scored]) -> np.ndarray:
    """|Δ logprob| of every token, windows paired in order; they must be the same windows."""
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} windows against {len(theirs)}")
    parts = []
    for a, b in zip(ours, theirs):
        if a.window != b.window or len(a.logprobs) != len(b.logprobs) or not a.logprobs:
            raise ValueError(f"window {a.window.text}#{a.window.index} is not scored alike on both sides")
        parts.append(np.abs(np.asarray(a.logprobs, dtype=np.float64) - np.asarray(b.logprobs, dtype=np.float64)))
    return np.concatenate(parts)


def p99(values: np.ndarray) -> float:
    """The 99th percentile (linear interpolation between order statistics), not the max:
    one token in a hundred may sit above it."""
    return float(np.quantile(values, 0.99))


@dataclass(frozen=True)
class Agreement:
    """One run against another on the same windows: a half-precision run against the float32
    run of the same policy and K, or the float32 engine against the reference."""

    dtype: str
    policy: str
    budget: int | None
    against: str  # "vllm float32" or "reference float32"
    windows: str  # which windows, e.g. "6x2048" or "emma#0"
    tokens: int
    ppl: float
    ppl_base: float
    mean_delta: float
    p99_delta: float
    max_delta: float
    kv_cache_dtype: str = "auto"

    @property
    def ppl_gap(self) -> float:
        """Signed relative gap: positive when this run's perplexity is the higher."""
        return (self.ppl - self.ppl_base) / self.ppl_base

    @property
    def ppl_pass(self) -> bool:
        return abs(self.ppl_gap) <= PPL_BOUND

    @property
    def delta_pass(self) -> bool | None:
        """None where the bound does not apply (reported only)."""
        return self.mean_delta <= MEAN_DELTA_BOUND if self.policy in DELTA_JUDGED else None

    @property
    def passed(self) -> bool:
        return self.ppl_pass and self.delta_pass is not False


def describe(scored: Sequence[Scored]) -> str:
    """"6x2048" for several windows of one length, "emma#0" for one."""
    if len(scored) == 1:
        return f"{scored[0].window.text}#{scored[0].window.index}"
    lengths = sorted({len(s.window.ids) for s in scored})
    return f"{len(scored)}x" + "/".join(map(str, lengths))


def agreement(config: Config, ours: Sequence[Scored], base: Sequence[Scored], against: str) -> Agreement:
    deltas = abs_deltas(ours, base)
    return Agreement(
        dtype=config.dtype,
        policy=config.policy,
        budget=config.budget,
        against=against,
        windows=describe(ours),
        tokens=len(deltas),
        ppl=perplexity(list(ours)),
        ppl_base=perplexity(list(base)),
        mean_delta=float(deltas.mean()),
        p99_delta=p99(deltas),
        max_delta=float(deltas.max()),
        kv_cache_dtype=config.kv_cache_dtype,
    )


def _paired(
    runs: Mapping[Config, Sequence[Scored]],
    selected: Callable[[Config], bool],
    twin_of: Callable[[Config], Config],
    against: str,
) -> tuple[list[Agreement], list[Config]]:
    """Each selected vLLM run against its twin; also the selected runs that lack one."""
    rows, unpaired = [], []
    for config, scored in runs.items():
        if config.engine != "vllm" or not selected(config):
            continue
        twin = twin_of(config)
        if twin in runs:
            rows.append(agreement(config, scored, runs[twin], against.format(dtype=config.dtype)))
        else:
            unpaired.append(config)
    return rows, unpaired


def compare(runs: Mapping[Config, Sequence[Scored]]) -> tuple[list[Agreement], list[Config]]:
    """Every half-precision run against its float32 twin; also the runs that lack one."""
    return _paired(
        runs,
        lambda c: c.dtype != BASELINE_DTYPE and c.kv_cache_dtype == FP8_CACHE_BASE,
        lambda c: c._replace(dtype=BASELINE_DTYPE),
        f"vllm {BASELINE_DTYPE}",
    )


def reference_checks(runs: Mapping[Config, Sequence[Scored]]) -> list[Agreement]:
    """The vLLM engine against every reference run of the same settings, on the reference's
    windows (the engine's first ones) and tokens: the reference may score only each window's
    first tokens, which, teacher-forced and causal, the rest of the window does not change."""
    rows = []
    for config, theirs in runs.items():
        engine = config._replace(engine="vllm")
        if config.engine != "reference" or engine not in runs:
            continue
        scored = {(s.window.text, s.window.index): s for s in runs[engine]}
        ours = [
            Scored.from_logprobs(s.window, list(scored[(s.window.text, s.window.index)].logprobs[: s.tokens]))
            for s in theirs
        ]
        rows.append(agreement(engine, ours, theirs, f"reference {config.dtype}"))
    return rows


def reference_agrees(row: Agreement) -> bool:
    return abs(row.ppl_gap) <= REFERENCE_BOUND


@dataclass(frozen=True)
class Fp8Verdict:
    """One FP8-cache run against its bf16-cache twin, beside stock's (the full cache's) own
    FP8 gap on the same windows."""

    row: Agreement
    stock: Agreement | None

    @property
    def bound(self) -> float | None:
        """The largest perplexity gap allowed; None where not judged (the full cache itself,
        the baselines) or where stock's FP8 run is missing."""
        if self.row.policy not in FP8_JUDGED or self.stock is None:
            return None
        return abs(self.stock.ppl_gap) + FP8_PPL_SLACK

    @property
    def passed(self) -> bool | None:
        """None where not judged; a judged policy without stock's FP8 run is judged later, as
        a missing configuration."""
        return None if self.bound is None else self.row.ppl_gap <= self.bound


def compare_fp8(runs: Mapping[Config, Sequence[Scored]]) -> tuple[list[Fp8Verdict], list[Config]]:
    """Every FP8-cache run against the same engine with the default cache, and the runs that
    lack that twin."""
    rows, unpaired = _paired(
        runs,
        lambda c: c.kv_cache_dtype != FP8_CACHE_BASE,
        lambda c: c._replace(kv_cache_dtype=FP8_CACHE_BASE),
        f"vllm {{dtype}}, {FP8_CACHE_BASE} cache",
    )
    stock = {(r.dtype, r.kv_cache_dtype): r for r in rows if r.budget is None}
    return [Fp8Verdict(r, stock.get((r.dtype, r.kv_cache_dtype))) for r in rows], unpaired
