"""``python -m benchmarks.perplexity --quick`` end to end, so the benchmark cannot rot: one
engine (h2o, K=32, one-token prompt chunks: positions and accumulated attention through
slot reuse), the reference re-scoring the same window, and every output file."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks import perplexity


def test_quick_preset_writes_results_that_match_the_reference(tmp_path: Path) -> None:
    assert perplexity.main(["--quick", "--out-dir", str(tmp_path)]) == 0  # 1 = beyond 0.5%
    (table,) = tmp_path.glob("perplexity-*-64.md")
    assert "| h2o |" in table.read_text()
    assert next(tmp_path.glob("perplexity-*-64.png")).stat().st_size > 0
    (results,) = tmp_path.glob("perplexity-*.csv")
    rows = list(csv.DictReader(results.open()))
    assert list(rows[0]) == perplexity.COLUMNS
    engines = {r["engine"] for r in rows if r["policy"] == "h2o" and r["budget"] == "32"}
    assert engines == {"vllm", "reference"}
    assert all(r["seq_len"] == "64" and 1 < float(r["ppl"]) < 1000 for r in rows)
    assert {int(r["tokens"]) for r in rows} == {63}


def test_merge_folds_separate_runs_into_one_table(tmp_path: Path) -> None:
    """``--merge``: configurations scored in separate processes (each with its own --out-dir)
    end up in one CSV, table and plot; a merged row replaces the same key, others are kept."""
    from benchmarks.ppl_report import Row, write_csv

    name = "SmolLM2-135M-Instruct"

    def row(policy: str, budget: int | None, ppl: float) -> Row:
        return Row(model=name, text="all", seq_len=64, policy=policy, budget=budget, engine="vllm",
                   ppl=ppl, tokens=63)  # fmt: skip

    ours, theirs = tmp_path / f"perplexity-{name}.csv", tmp_path / "other" / f"perplexity-{name}.csv"
    theirs.parent.mkdir()
    write_csv([row("full", None, 20.0), row("tova", 32, 30.0)], ours)
    write_csv([row("tova", 32, 25.0), row("h2o", 32, 26.0)], theirs)
    # Merge mode never loads the model: a path that does not exist is enough for its name.
    argv = ["--model", f"/nowhere/{name}", "--seq-len", "64", "--out-dir", str(tmp_path)]
    argv += ["--merge", str(theirs)]
    assert perplexity.main(argv) == 0
    rows = {(r["policy"], r["ppl"]) for r in csv.DictReader(ours.open())}
    assert rows == {("full", "20.0000"), ("tova", "25.0000"), ("h2o", "26.0000")}
    table = (tmp_path / f"perplexity-{name}-64.md").read_text()
    assert "| tova | 25.00 |" in table and "| h2o | 26.00 |" in table
