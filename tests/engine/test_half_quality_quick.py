"""``python -m benchmarks.half_quality`` end to end on the CPU at a tiny scale, so the
benchmark cannot rot: float32 and bfloat16 engines (TOVA K=32, one-token prompt chunks) each
in its own process, the HF reference re-scoring the window, every output file, and a
report rebuilt from the raw results alone. bf16 is emulated on some CPUs: keep it tiny."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks import half_quality
from benchmarks.half_report import COLUMNS

ARGS = ["--texts", "persuasion", "--seq-len", "64", "--budgets", "32", "--policies", "tova", "--dtypes", "bfloat16"]


def test_tiny_run_writes_rows_judged_by_the_bounds(tmp_path: Path) -> None:
    work, out = tmp_path / "runs", tmp_path / "out"
    rc = half_quality.main([*ARGS, "--work-dir", str(work), "--out-dir", str(out)])
    (table,) = out.glob("half-precision-*-cpu.csv")
    rows = list(csv.DictReader(table.open()))
    assert list(rows[0]) == COLUMNS
    half, check = rows  # bf16 against the fp32 engine, then the fp32 engine against the reference
    assert (half["dtype"], half["against"], half["policy"], half["budget"]) == ("bfloat16", "vllm float32", "tova", "32")
    assert (check["dtype"], check["against"], check["windows"]) == ("float32", "reference float32", "persuasion#0")
    assert half["tokens"] == check["tokens"] == "63"
    for row in rows:
        mean, p99, worst = (float(row[k]) for k in ("mean_abs_delta", "p99_abs_delta", "max_abs_delta"))
        assert 0 <= mean <= worst and p99 <= worst and 1 < float(row["ppl"]) < 1000
    assert float(half["mean_abs_delta"]) > 1e-4  # bf16 really ran: float32 would agree to ~1e-5
    assert check["verdict"] == "pass" and float(check["mean_abs_delta"]) < 1e-3
    # The exit status is the verdict: bf16 on 63 tokens may miss a bound, and then says so.
    assert rc == (0 if half["verdict"] == "pass" else 1)
    page = next(out.glob("half-precision-*-cpu.md")).read_text()
    assert "| bfloat16 | tova | 32 | 63 |" in page and "within 1%" in page
    # The raw results alone rebuild the same table (a GPU run's files, read anywhere).
    before = table.read_text()
    table.unlink()
    assert half_quality.main([*ARGS, "--work-dir", str(work), "--out-dir", str(out), "--report-only"]) == rc
    assert table.read_text() == before
