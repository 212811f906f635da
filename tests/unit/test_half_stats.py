"""benchmarks/half_stats.py on hand-made log-probabilities: the statistics and verdicts the
half-precision table is judged by (no engine)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.half_stats import (
    MEAN_DELTA_BOUND,
    PPL_BOUND,
    Agreement,
    Config,
    abs_deltas,
    compare,
    p99,
    reference_agrees,
    reference_checks,
)
from benchmarks.ppl_scoring import FULL, Scored, Window

WINDOWS = [Window("emma", 0, list(range(6))), Window("persuasion", 0, list(range(6)))]


def scored(*per_window: list[float]) -> list[Scored]:
    return [Scored.from_logprobs(w, lp) for w, lp in zip(WINDOWS, per_window)]


def test_deltas_are_absolute_and_paired_token_by_token() -> None:
    ours = scored([-1.0, -2.0, -3.0, -4.0, -5.0], [-1.0] * 5)
    theirs = scored([-1.5, -1.5, -3.0, -4.0, -5.0], [-1.0, -1.0, -1.0, -1.0, -1.2])
    deltas = abs_deltas(ours, theirs)
    assert deltas.tolist() == pytest.approx([0.5, 0.5, 0, 0, 0, 0, 0, 0, 0, 0.2])
    # Signed differences would cancel to a mean of 0.02; absolute ones do not.
    assert deltas.mean() == pytest.approx(0.12)


def test_windows_must_be_the_same_on_both_sides() -> None:
    ours = scored([-1.0] * 5, [-1.0] * 5)
    with pytest.raises(ValueError):
        abs_deltas(ours, ours[::-1])
    with pytest.raises(ValueError):
        abs_deltas(ours, ours[:1])


def test_p99_is_the_percentile_not_the_max() -> None:
    values = np.arange(1001) / 1000  # 0.000 .. 1.000: the 99th percentile is 0.990
    assert p99(values) == pytest.approx(0.99)
    one_outlier = np.concatenate([np.full(999, 0.01), [5.0]])
    assert p99(one_outlier) == pytest.approx(0.01)


def _agreement(ppl: float, ppl_base: float, mean_delta: float, policy: str = "tova") -> Agreement:
    return Agreement("bfloat16", policy, 128, "vllm float32", "6x2048", 100, ppl, ppl_base, mean_delta, 0.0, 0.0)


def test_verdicts_against_the_bounds() -> None:
    assert PPL_BOUND == 0.01 and MEAN_DELTA_BOUND == 0.05  # the issue's, fixed before the run
    assert _agreement(100.9, 100.0, 0.05).passed  # bounds are inclusive
    assert not _agreement(101.1, 100.0, 0.01).ppl_pass
    assert not _agreement(98.9, 100.0, 0.01).ppl_pass  # lower perplexity is a departure too
    worse = _agreement(100.0, 100.0, 0.051)
    assert worse.delta_pass is False and not worse.passed
    # |Δ| is judged for TOVA only; a baseline's is reported.
    baseline = _agreement(100.0, 100.0, 0.2, policy="h2o")
    assert baseline.delta_pass is None and baseline.passed
    assert not _agreement(101.5, 100.0, 0.0, policy="window").passed


def test_each_half_run_is_compared_with_float32_of_the_same_settings() -> None:
    fp32 = scored([-1.0] * 5, [-2.0] * 5)
    runs = {
        Config("float32", "tova", 128): fp32,
        Config("bfloat16", "tova", 128): scored([-1.1] * 5, [-2.1] * 5),
        Config("float16", "tova", 128): scored([-1.0] * 5, [-2.02] * 5),
        Config("float32", "tova", 512): scored([-9.0] * 5, [-9.0] * 5),  # other K: never the twin
        Config("float16", "h2o", 128): scored([-1.0] * 5, [-2.0] * 5),  # no float32 twin
        Config("float32", "tova", 128, "reference"): fp32[:1],  # the reference is no twin either
    }
    rows, unpaired = compare(runs)
    assert unpaired == [Config("float16", "h2o", 128)]
    by_dtype = {r.dtype: r for r in rows}
    assert set(by_dtype) == {"bfloat16", "float16"}
    bf16, fp16 = by_dtype["bfloat16"], by_dtype["float16"]
    assert bf16.mean_delta == pytest.approx(0.1) and bf16.tokens == 10
    assert fp16.mean_delta == pytest.approx(0.01) and fp16.max_delta == pytest.approx(0.02)
    assert bf16.ppl_base == fp16.ppl_base == pytest.approx(math.exp(1.5))
    assert bf16.ppl == pytest.approx(math.exp(1.6))
    assert bf16.against == "vllm float32" and bf16.windows == "2x6"


def test_reference_check_uses_the_reference_windows_of_the_same_settings() -> None:
    engine = scored([-1.0] * 5, [-2.0] * 5)
    runs = {
        Config("float32", "tova", 128): engine,
        Config("float32", "tova", 512): scored([-5.0] * 5, [-5.0] * 5),
        Config("float32", "tova", 128, "reference"): scored([-1.001] * 5),  # the first window only
    }
    (check,) = reference_checks(runs)
    assert check.windows == "emma#0" and check.tokens == 5
    assert check.mean_delta == pytest.approx(0.001)
    assert check.ppl_base == pytest.approx(math.exp(1.001)) and reference_agrees(check)
    runs[Config("float32", "tova", 128, "reference")] = scored([-1.01] * 5)  # ppl 1.0% apart
    assert not reference_agrees(reference_checks(runs)[0])
    # A reference that scored a window's first tokens only is compared on those tokens.
    runs[Config("float32", "tova", 128)] = scored([-1.0, -1.0, -7.0, -7.0, -7.0], [-2.0] * 5)
    runs[Config("float32", "tova", 128, "reference")] = scored([-1.0, -1.002])
    (check,) = reference_checks(runs)
    assert check.tokens == 2 and check.max_delta == pytest.approx(0.002) and reference_agrees(check)


def test_page_prints_each_rows_verdict_and_fails_on_any_row_or_missing_run() -> None:
    from benchmarks.half_report import agreement_table, page

    rows = [_agreement(100.5, 100.0, 0.01), _agreement(102.0, 100.0, 0.01), _agreement(100.0, 100.0, 0.2, "h2o")]
    lines = agreement_table(rows).splitlines()[2:]
    assert lines[0].endswith("| +0.500% | 0.0100 | 0.0000 | 0.0000 | pass | pass |")
    assert lines[1].endswith("| FAIL | pass |") and lines[2].endswith("| pass | — |")
    meta = dict(device="cpu", vllm="0", torch="0", commit="x", date="today")
    args = ("m", meta, "cmd", "1 x 64 tokens")
    assert page(*args, rows[::2], [], [], {})[1]
    assert not page(*args, rows, [], [], {})[1]
    assert not page(*args, rows[::2], [], ["vllm-float16-tova-k128"], {})[1]
    text, _ = page(*args, rows[::2], [], ["vllm-float16-tova-k128"], {})
    assert "**FAIL**" in text and "vllm-float16-tova-k128" in text


def test_each_fp8_run_is_compared_with_the_default_cache_and_judged_against_stock() -> None:
    from benchmarks.half_stats import FP8_PPL_SLACK, compare_fp8

    bf16 = scored([-1.0] * 5, [-2.0] * 5)
    runs = {
        Config("float32", "tova", 128): scored([-9.0] * 5, [-9.0] * 5),  # another dtype: never the twin
        Config("bfloat16", "tova", 128): bf16,
        Config("bfloat16", "tova", 128, kv_cache_dtype="fp8"): scored([-1.0] * 5, [-2.02] * 5),
        Config("bfloat16", FULL, None): scored([-3.0] * 5, [-3.0] * 5),
        Config("bfloat16", FULL, None, kv_cache_dtype="fp8"): scored([-3.01] * 5, [-2.99] * 5),
        Config("bfloat16", "h2o", 128, kv_cache_dtype="fp8"): bf16,  # no default-cache twin
    }
    verdicts, unpaired = compare_fp8(runs)
    assert unpaired == [Config("bfloat16", "h2o", 128, kv_cache_dtype="fp8")]
    # The half-precision comparison leaves FP8 runs out (neither rows nor runs without a twin).
    half_rows, half_unpaired = compare(runs)
    assert all(r.kv_cache_dtype == "auto" for r in half_rows) and half_unpaired == [Config("bfloat16", FULL, None)]
    tova, stock = sorted(verdicts, key=lambda v: v.row.budget is None)
    assert tova.row.against == "vllm bfloat16, auto cache" and tova.row.kv_cache_dtype == "fp8"
    assert tova.row.mean_delta == pytest.approx(0.01) and tova.row.ppl_base == pytest.approx(math.exp(1.5))
    assert stock.row.ppl_gap == pytest.approx(0.0) and stock.bound is None and stock.passed is None
    assert tova.stock is stock.row and tova.bound == pytest.approx(FP8_PPL_SLACK)
    assert tova.row.ppl_gap == pytest.approx(math.exp(0.01) - 1) and tova.passed


def test_fp8_bound_is_stocks_gap_plus_the_slack() -> None:
    from benchmarks.half_stats import FP8_PPL_SLACK, Fp8Verdict

    assert FP8_PPL_SLACK == 0.02  # fixed before the run, as the engine test's NLL slack

    def row(policy: str, budget: int | None, ppl: float) -> Agreement:
        return Agreement("bfloat16", policy, budget, "vllm bfloat16, auto cache", "6x2048", 100, ppl, 100.0,
                         0.0, 0.0, 0.0, "fp8")  # fmt: skip

    for stock_ppl in (101.0, 99.0):  # stock's gap counts in absolute value
        stock = row(FULL, None, stock_ppl)
        assert Fp8Verdict(row("tova", 128, 102.9), stock).passed  # +2.9% <= 1% + 2%
        assert not Fp8Verdict(row("tova", 128, 103.1), stock).passed
    assert Fp8Verdict(row("tova", 128, 90.0), row(FULL, None, 100.0)).passed  # a lower perplexity is no loss
    assert Fp8Verdict(row("h2o", 128, 150.0), row(FULL, None, 100.0)).passed is None  # reported only
    assert Fp8Verdict(row("tova", 128, 150.0), None).passed is None  # stock missing: judged as missing


def test_fp8_rows_fail_the_page() -> None:
    from benchmarks.half_report import fp8_table, page
    from benchmarks.half_stats import Fp8Verdict

    def row(policy: str, budget: int | None, ppl: float) -> Agreement:
        return Agreement("bfloat16", policy, budget, "vllm bfloat16, auto cache", "6x2048", 100, ppl, 100.0,
                         0.01, 0.02, 0.03, "fp8")  # fmt: skip

    stock = row(FULL, None, 100.5)
    good, bad = Fp8Verdict(row("tova", 128, 101.0), stock), Fp8Verdict(row("tova", 512, 104.0), stock)
    lines = fp8_table([good, bad, Fp8Verdict(stock, stock)]).splitlines()[2:]
    assert lines[0].endswith("| +1.000% | +0.500% | ≤ +2.500% | 0.0100 | 0.0200 | 0.0300 | pass |")
    assert lines[1].endswith("| FAIL |") and lines[2].endswith("| — | 0.0100 | 0.0200 | 0.0300 | — |")
    meta = dict(device="cpu", vllm="0", torch="0", commit="x", date="today")
    args = ("m", meta, "cmd", "1 x 64 tokens", [_agreement(100.0, 100.0, 0.01)], [], [], {})
    assert page(*args, [good])[1] and not page(*args, [good, bad])[1]
    assert "an FP8 cache against bf16" in page(*args, [good])[0]


def test_fp8_plan_pairs_every_fp8_run_with_a_default_cache_run_of_its_own() -> None:
    from benchmarks.half_quality import parse_args, plan
    from benchmarks.ppl_job import command, result_name

    configs = plan(parse_args(["--fp8", "--dtypes", "float16", "--policies", "tova", FULL, "--budgets", "128"]))
    fp8 = [c for c in configs if c.kv_cache_dtype == "fp8"]
    assert fp8 == [Config("bfloat16", "tova", 128, kv_cache_dtype="fp8"), Config("bfloat16", FULL, None, kv_cache_dtype="fp8")]
    assert all(c._replace(kv_cache_dtype="auto") in configs for c in fp8) and len(set(configs)) == len(configs)
    assert Config("float16", "tova", 128) in configs  # the half-precision grid stays
    assert not any(c.kv_cache_dtype != "auto" for c in plan(parse_args([])))
    # Each FP8 run writes a file of its own and asks its engine for the FP8 cache.
    assert len({result_name(c) for c in configs}) == len(configs)
    argv = command("m", fp8[0], Path("w.json"), Path("o.json"), None)
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert "--kv-cache-dtype" not in command("m", fp8[0]._replace(kv_cache_dtype="auto"), Path("w"), Path("o"), None)
