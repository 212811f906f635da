"""benchmarks/tensor_parallel.py --quick on the CPU engine (TP=2, mp): the script cannot rot."""

from __future__ import annotations

from pathlib import Path

from benchmarks import tensor_parallel


def test_tensor_parallel_quick(tmp_path: Path) -> None:
    results = tensor_parallel.main(["--quick", "--out-dir", str(tmp_path)])
    rows = {row["run"]: row for row in results["agreement"]["rows"]}
    assert set(rows) == {"stock TP=2 (mp)", "tova TP=2 (mp)"}
    ranks = rows["tova TP=2 (mp)"]["ranks"]
    assert ranks["ranks"] == 2 and ranks["identical"], ranks
    assert ranks["decisions_per_rank"][0] > 0
    assert rows["stock TP=2 (mp)"]["ranks"] is None
    # Ranks all-reduce their scores, so TP=2 evicts what TP=1 evicts: the same tokens. The run
    # is deterministic (CPU, fixed seeds); the real-model TP test holds any tie to its margin.
    assert rows["tova TP=2 (mp)"]["prefix_rate"] == 1.0
    assert rows["tova TP=2 (mp)"]["identical"] == rows["tova TP=2 (mp)"]["prompts"]
    text = (tmp_path / "tp-cpu.md").read_text()
    assert "| tova TP=2 (mp) | tova TP=1 |" in text and "identical on 2 ranks" in text
