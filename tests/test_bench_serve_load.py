"""CI smoke run of benchmarks/serve_load.py: it starts the OpenAI server (stock, then TOVA)
for a tiny dummy Llama on CPU, streams a few requests through it and stops it."""

from __future__ import annotations

from pathlib import Path

from benchmarks.serve_load import main, percentile


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == 9.0


def test_serve_load_smoke(tmp_path: Path) -> None:
    rows = main(
        [
            "--model", "tiny-llama", "--prompt-len", "64", "--gen-len", "32",
            "--concurrency", "4", "--num-requests", "8", "--budget", "64", "--prefill-chunk", "32",
            "--kv-pool-tokens", "4096", "--max-num-batched-tokens", "256", "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert [r["policy"] for r in rows] == ["none", "tova"]
    for row in rows:
        assert row["ok"] == 8 and row["req_s"] > 0
        assert row["gen_tok_s"] > 0
        assert 0 < row["ttft_p50_ms"] <= row["ttft_p99_ms"]
        assert 0 <= row["itl_p50_ms"] <= row["itl_p99_ms"]
        assert 0 < row["tpot_p50_ms"] <= row["tpot_p99_ms"]
    for suffix in (".csv", ".md"):
        assert (tmp_path / f"serve_load-cpu{suffix}").stat().st_size > 0
