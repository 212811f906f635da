"""Half-precision results on disk: one CSV row per comparison and a markdown page with the
bounds, each row's verdict and the perplexity grid per dtype (ppl_report's table)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.half_stats import (
    DELTA_JUDGED,
    FP8_JUDGED,
    FP8_PPL_SLACK,
    MEAN_DELTA_BOUND,
    PPL_BOUND,
    REFERENCE_BOUND,
    Agreement,
    Config,
    Fp8Verdict,
    reference_agrees,
)
from benchmarks.ppl_report import Row, markdown_table
from benchmarks.ppl_scoring import Scored, perplexity
from benchmarks.report import write_csv

COLUMNS = [
    "model", "device", "dtype", "kv_cache_dtype", "against", "policy", "budget", "windows", "tokens", "ppl", "ppl_base",
    "ppl_gap", "mean_abs_delta", "p99_abs_delta", "max_abs_delta", "ppl_bound", "mean_delta_bound", "verdict",
]  # fmt: skip


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else "pass" if ok else "FAIL"


def csv_row(row: Agreement, model: str, device: str, reference: bool) -> dict:
    judged = row.policy in DELTA_JUDGED and not reference
    ok = reference_agrees(row) if reference else row.passed
    return {
        "model": model,
        "device": device,
        "dtype": row.dtype,
        "kv_cache_dtype": row.kv_cache_dtype,
        "against": row.against,
        "policy": row.policy,
        "budget": "" if row.budget is None else row.budget,
        "windows": row.windows,
        "tokens": row.tokens,
        "ppl": f"{row.ppl:.4f}",
        "ppl_base": f"{row.ppl_base:.4f}",
        "ppl_gap": f"{row.ppl_gap:.6f}",
        "mean_abs_delta": f"{row.mean_delta:.6f}",
        "p99_abs_delta": f"{row.p99_delta:.6f}",
        "max_abs_delta": f"{row.max_delta:.6f}",
        "ppl_bound": REFERENCE_BOUND if reference else PPL_BOUND,
        "mean_delta_bound": MEAN_DELTA_BOUND if judged else "",
        "verdict": "pass" if ok else "FAIL",
    }


def fp8_csv_row(verdict: Fp8Verdict, model: str, device: str) -> dict:
    """An FP8 row: its perplexity bound is stock's gap plus the slack (empty where not judged)."""
    row = csv_row(verdict.row, model, device, False)
    row.update(ppl_bound="" if verdict.bound is None else f"{verdict.bound:.6f}", mean_delta_bound="")
    row["verdict"] = _verdict(verdict.passed)
    return row


def write_rows(
    rows: Sequence[Agreement],
    checks: Sequence[Agreement],
    fp8_rows: Sequence[Fp8Verdict],
    model: str,
    device: str,
    path: Path,
) -> None:
    dicts = [csv_row(r, model, device, False) for r in rows] + [csv_row(r, model, device, True) for r in checks]
    dicts += [fp8_csv_row(v, model, device) for v in fp8_rows]
    write_csv(dicts, path, COLUMNS)


def _k(budget: int | None) -> str:
    return "full" if budget is None else str(budget)


def agreement_table(rows: Sequence[Agreement]) -> str:
    lines = [
        f"| dtype | policy | K | tokens | ppl | ppl fp32 | gap | mean \\|Δ\\| | p99 \\|Δ\\| | max \\|Δ\\| "
        f"| ppl within {PPL_BOUND:.0%} | mean \\|Δ\\| ≤ {MEAN_DELTA_BOUND} |",
        "|---" * 12 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r.dtype} | {r.policy} | {_k(r.budget)} | {r.tokens:,} | {r.ppl:.4f} | {r.ppl_base:.4f} "
            f"| {r.ppl_gap:+.3%} | {r.mean_delta:.4f} | {r.p99_delta:.4f} | {r.max_delta:.4f} "
            f"| {_verdict(r.ppl_pass)} | {_verdict(r.delta_pass)} |"
        )
    return "\n".join(lines) + "\n"


def fp8_table(verdicts: Sequence[Fp8Verdict]) -> str:
    lines = [
        "| dtype | policy | K | tokens | ppl fp8 cache | ppl default cache | gap | stock's gap | bound "
        "| mean \\|Δ\\| | p99 \\|Δ\\| | max \\|Δ\\| | verdict |",
        "|---" * 13 + "|",
    ]
    for v in verdicts:
        r, stock = v.row, v.stock
        lines.append(
            f"| {r.dtype} | {r.policy} | {_k(r.budget)} | {r.tokens:,} | {r.ppl:.4f} | {r.ppl_base:.4f} "
            f"| {r.ppl_gap:+.3%} | {'—' if stock is None else f'{stock.ppl_gap:+.3%}'} "
            f"| {'—' if v.bound is None else f'≤ {v.bound:+.3%}'} | {r.mean_delta:.4f} | {r.p99_delta:.4f} "
            f"| {r.max_delta:.4f} | {_verdict(v.passed)} |"
        )
    return "\n".join(lines) + "\n"


def reference_lines(checks: Sequence[Agreement]) -> list[str]:
    return [
        f"- {c.dtype} engine, {c.policy} K={_k(c.budget)}, {c.windows} ({c.tokens:,} tokens): ppl "
        f"{c.ppl:.4f} against the reference's {c.ppl_base:.4f} ({c.ppl_gap:+.4%}; bound "
        f"{REFERENCE_BOUND:.1%}: {_verdict(reference_agrees(c))}); |Δ logprob| mean {c.mean_delta:.2e}, "
        f"p99 {c.p99_delta:.2e}, max {c.max_delta:.2e}"
        for c in checks
    ]


def perplexity_grids(runs: dict[Config, list[Scored]], model: str, seq_len: int) -> str:
    """Per dtype, ppl by policy and K (the vLLM runs), in ppl_report's layout."""
    parts = ["Perplexity by dtype:\n"]
    for dtype, cache in sorted({(c.dtype, c.kv_cache_dtype) for c in runs if c.engine == "vllm"}):
        rows = [
            Row(model=model, text="all", seq_len=seq_len, policy=c.policy, budget=c.budget, engine="vllm",
                ppl=perplexity(scored), tokens=sum(s.tokens for s in scored))  # fmt: skip
            for c, scored in runs.items()
            if (c.dtype, c.kv_cache_dtype, c.engine) == (dtype, cache, "vllm")
        ]
        label = dtype if cache == "auto" else f"{dtype}, {cache} KV cache"
        parts.append(f"{label}:\n\n{markdown_table(rows, 'all')}")
    return "\n".join(parts)


def bounds_text() -> str:
    judged = ", ".join(DELTA_JUDGED)
    return (
        f"Bounds, fixed in `benchmarks/half_stats.py` before any run: perplexity within "
        f"{PPL_BOUND:.0%} (relative) of float32's for every policy, K and the full cache; mean "
        f"|Δ logprob| ≤ {MEAN_DELTA_BOUND} nats per predicted token for {judged} (the other rows' "
        f"|Δ| is reported, not judged: —). The float32 engine must match the HF reference within "
        f"{REFERENCE_BOUND:.1%} of perplexity."
    )


def page(
    model: str,
    meta: dict,
    command: str,
    setup: str,
    rows: Sequence[Agreement],
    checks: Sequence[Agreement],
    unfinished: Sequence[str],
    timings: dict[str, float],
    fp8_rows: Sequence[Fp8Verdict] = (),
) -> tuple[str, bool]:
    """The markdown page, and whether the run passed: every row within its bounds, every
    reference check in agreement, no configuration missing."""
    passed = all(r.passed for r in rows) and all(map(reference_agrees, checks)) and not unfinished
    passed = passed and all(v.passed is not False for v in fp8_rows)
    within = sum(r.passed for r in rows)
    lines = [
        f"# bf16 and fp16 against fp32{', an FP8 cache against bf16' if fp8_rows else ''}: {model} on {meta['device']}",
        "",
        f"- command: `{command}`",
        f"- device: {meta['device']}; vLLM {meta['vllm']}, torch {meta['torch']}; commit {meta['commit']}; "
        f"{meta['date']}",
        f"- windows: {setup}; prompts in chunks of one token (C=1) under a policy, so each token is "
        "predicted from the already-evicted cache; the full cache is stock vLLM",
        "- float32 side: the vLLM engine in float32 on the same device, same windows",
        f"- {bounds_text()}",
        f"- outcome: **{'PASS' if passed else 'FAIL'}** ({within}/{len(rows)} rows within bounds; reference "
        f"checks {sum(map(reference_agrees, checks))}/{len(checks)}"
        + (f"; not finished or without a float32 twin: {', '.join(unfinished)}" if unfinished else "")
        + ")",
        "- scoring seconds per configuration (engine start excluded): "
        + ", ".join(f"{name} {s:.0f}" for name, s in timings.items()),
        "",
        "The float32 engine against the HF reference (`vllm_tova/reference.py`, float32, one token per step):",
        "",
        *(reference_lines(checks) or ["- not run"]),
        "",
        "Half precision against the float32 engine, per token (|Δ| = |logprob(half) - logprob(fp32)|, nats):",
        "",
        agreement_table(rows),
    ]
    if fp8_rows:
        judged = ", ".join(FP8_JUDGED)
        lines += [
            f"An FP8 KV cache (vLLM's e4m3, default scales) against the same engine with its default cache, "
            f"per token (|Δ| = |logprob(fp8 cache) - logprob(default cache)|, nats). Judged for {judged}: "
            f"perplexity gap ≤ |stock's FP8 gap| + {FP8_PPL_SLACK:.0%} (stock: the full cache's own FP8 row; "
            "bound fixed in `benchmarks/half_stats.py` before any run); the others are reported (—):",
            "",
            fp8_table(fp8_rows),
        ]
    return "\n".join(lines), passed
