"""vLLM's own benchmark tools with the plugin's flags, on the CPU engine.

``vllm bench throughput --kv-policy tova ...`` (offline) and ``vllm bench serve`` against
``vllm serve --kv-policy tova ...`` must run and report numbers, with TOVA really on: the
tiny dummy-weight preset carries SmolLM2's tokenizer (``benchmarks.presets --tokenizer``), and
its 32 + 96-token requests outgrow the budget of 64, so TOVA must evict.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.presets import with_tokenizer
from tests.server import VLLM, metric, scrape, serve_flags, vllm_server

TOVA_FLAGS = ["--kv-policy", "tova", "--kv-budget", "64", "--kv-prefill-chunk", "32"]
ENGINE_FLAGS = [
    "--load-format", "dummy", "--dtype", "float32", "--block-size", "32", "--max-model-len", "256",
    "--enforce-eager", "--kv-cache-memory-bytes", str(64 << 20), "--max-num-batched-tokens", "512",
]  # fmt: skip
RANDOM = ["--dataset-name", "random", "--random-input-len", "32", "--random-output-len", "96", "--num-prompts", "16"]


@pytest.fixture(scope="module")
def preset() -> Path:
    return with_tokenizer("tiny-llama-smol")


def test_vllm_bench_throughput_with_tova(preset: Path, tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [VLLM, "bench", "throughput", "--model", str(preset), *ENGINE_FLAGS, *TOVA_FLAGS, *RANDOM,
         "--output-json", str(out)],  # fmt: skip
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "vllm-tova: policy=tova budget=64" in log  # the flags reached the engine
    result = json.loads(out.read_text())
    assert result["num_requests"] == 16 and result["tokens_per_second"] > 0
    assert result["total_num_tokens"] == 16 * (32 + 96)


def test_vllm_bench_serve_against_tova_server(preset: Path, tmp_path: Path) -> None:
    flags = serve_flags(max_model_len=256, kv_cache_memory_bytes=64 << 20, max_num_batched_tokens=512)
    flags += ["--load-format", "dummy", *TOVA_FLAGS]
    with vllm_server(preset, flags, tmp_path / "server.log") as url:
        evicted_before = metric(scrape(url), "vllm_tova:evicted_tokens_total")
        proc = subprocess.run(
            [VLLM, "bench", "serve", "--backend", "vllm", "--base-url", url, "--model", str(preset), *RANDOM,
             "--ignore-eos", "--save-result", "--result-dir", str(tmp_path), "--result-filename", "serve.json"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        # Each request caches 32 prompt + 95 generated entries (the last token is never fed
        # back) per layer, 63 over the budget: 63 evictions in each of the preset's 2 layers.
        expected, deadline = 16 * 2 * 63, time.monotonic() + 30
        while (evicted := metric(scrape(url), "vllm_tova:evicted_tokens_total") - evicted_before) != expected:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads((tmp_path / "serve.json").read_text())
    assert result["completed"] == 16 and result["output_throughput"] > 0
    assert result["total_output_tokens"] == 16 * 96
    assert evicted == expected
