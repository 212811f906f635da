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
