"""Score one (dtype, policy, K, cache dtype) in a process of its own and write each token's
log-probability.

An engine's settings (dtype, policy, budget) hold for its whole life, so a grid of
configurations is a grid of engines. On a GPU they are small (SmolLM2-135M) and mostly wait on
the host, so several run side by side, each in its own process; the files they leave behind
are the run's raw data (a cut run keeps the configurations that finished). ``--engine
reference`` scores the same windows with the HF reference instead (one token per step).

    python -m benchmarks.ppl_job --model M --dtype bfloat16 --policy tova --budget 128 \\
        --windows windows.json --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.half_stats import Config
from benchmarks.ppl_scoring import FULL, Scored, Window, score_reference, score_vllm


def write_windows(windows: list[Window], path: Path) -> None:
    path.write_text(json.dumps([{"text": w.text, "index": w.index, "ids": w.ids} for w in windows]))


def read_windows(path: Path) -> list[Window]:
    return [Window(w["text"], w["index"], w["ids"]) for w in json.loads(path.read_text())]


def result_name(config: Config) -> str:
    budget = "full" if config.budget is None else f"k{config.budget}"
    cache = "" if config.kv_cache_dtype == "auto" else f"-{config.kv_cache_dtype}"
    return f"{config.engine}-{config.dtype}{cache}-{config.policy}-{budget}.json"


def write_result(config: Config, scored: list[Scored], seconds: float, path: Path) -> None:
    record = {
        "config": config._asdict(),
        "seconds": seconds,
        "windows": [{"text": s.window.text, "index": s.window.index, "logprobs": list(s.logprobs)} for s in scored],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # a file that exists is complete


def read_result(path: Path, windows: list[Window]) -> tuple[Config, list[Scored], float]:
    """The record, re-attached to ``windows`` (which must be the windows it scored)."""
    record = json.loads(path.read_text())
    by_key = {(w.text, w.index): w for w in windows}
    scored = [
        Scored.from_logprobs(by_key[(s["text"], s["index"])], s["logprobs"]) for s in record["windows"]
    ]
    return Config(**record["config"]), scored, record["seconds"]


def command(model: str, config: Config, windows: Path, out: Path, gpu_memory_utilization: float | None) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.ppl_job", "--model", model, "--dtype", config.dtype]
    argv += ["--engine", config.engine]
    argv += ["--policy", config.policy, "--windows", str(windows), "--out", str(out)]
    if config.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", config.kv_cache_dtype]
    if config.budget is not None:
        argv += ["--budget", str(config.budget)]
    if gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return argv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--budget", type=int, default=None, help="omit for the full cache")
    p.add_argument("--windows", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--engine", choices=["vllm", "reference"], default="vllm")
    p.add_argument("--kv-cache-dtype", default="auto", help="vLLM's --kv-cache-dtype (vllm engine only)")
    args = p.parse_args(argv)
    if (args.policy == FULL) != (args.budget is None):
        p.error("--budget is required with a policy and refused with the full cache")
    if args.engine == "reference" and args.kv_cache_dtype != "auto":
        p.error("--kv-cache-dtype: the reference keeps its cache in --dtype; use it with --engine vllm")
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # skips a ~15 s ISA probe per start
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # its JIT costs ~2 min per start
    config = Config(args.dtype, args.policy, args.budget, args.engine, args.kv_cache_dtype)
    windows = read_windows(args.windows)
    if config.engine == "vllm":
        scored, seconds = score_vllm(
            args.model, config.policy, config.budget, windows, args.gpu_memory_utilization, config.dtype,
            config.kv_cache_dtype,
        )  # fmt: skip
    else:
        scored, seconds = score_with_reference(args.model, config, windows)
    write_result(config, scored, seconds, args.out)
    return 0


def score_with_reference(model: str, config: Config, windows: list[Window]) -> tuple[list[Scored], float]:
    import torch

    from vllm_tova.reference import TovaReference

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # beside busy engines on a small CPU, 1 thread ran 28x faster
    reference = TovaReference(model, dtype=getattr(torch, config.dtype))
    start = time.perf_counter()
    scored = [score_reference(reference, config.policy, config.budget, w) for w in windows]
    return scored, time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
