"""Where a decode step's time goes: a fixed batch of requests, all decoding, profiled.

    python -m benchmarks.step_profile --policy tova --batches 128,768 --prompt-len 512
    python -m benchmarks.step_profile --policy none --batches 128 --prompt-len 2048

One engine per invocation, run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so
that ``torch.profiler`` sees its kernels, CUDA-graph replays included. For each batch size
B: B requests of ``--prompt-len`` random tokens are admitted together and stepped until every
one decodes; then ``--steps`` engine steps are timed (wall clock, synchronised), and as many
again are profiled, the GPU time summed by kind of kernel (matmuls, vLLM's attention, TOVA's
Triton kernels, all-reduce, the rest). With TOVA at ``--prompt-len`` >= K every row's cache is
already full, which is the paper workload's steady state; stock's attention cost grows with
the context, so give it the workload's mean context (512 + 3,584 / 2 = 2,304).

Appends a section to ``benchmarks/results/kernels/step-profile-<device>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.presets import resolve_model
from benchmarks.report import append_section, device_slug
from benchmarks.workloads import random_prompts

RESULTS = Path(__file__).resolve().parent / "results" / "kernels"
#: Kernel kinds, first match wins (names as CUPTI reports them).
KINDS = [
    ("tova", re.compile(r"_decode_partial|_decode_score|_decode_evict|_column_min|_copy_slots")),
    ("attention", re.compile(r"flash|fmha|attn|paged", re.I)),
    ("all-reduce", re.compile(r"allreduce|all_reduce|nccl|cross_device", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|matmul|cublas|sm90_|wgmma", re.I)),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama3-8b", help="preset name or checkpoint path")
    p.add_argument("--policy", default="tova", help="a kv policy, or 'none' for stock vLLM")
    p.add_argument("--budget", type=int, default=512)
    p.add_argument("--prefill-chunk", type=int, default=512)
    p.add_argument("--batches", default="128", help="comma-separated batch sizes")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="steps timed, then as many profiled")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--kv-cache-dtype", default="auto", help="auto, or fp8 (FP8 K/V: twice the sequences per pool)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--compilation-config", type=json.loads, default=None)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    return p.parse_args(argv)


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def gpu_time_by_kind(prof) -> dict[str, float]:
    """Microseconds of device time per kind, summed over the profiled kernels."""
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type.name == "CUDA" and event.device_time_total > 0:
            totals[kind_of(event.name)] += event.device_time_total
    return dict(totals)


def run_steps(engine, count: int) -> None:
    for _ in range(count):
        engine.step()


def profile_batch(llm, batch: int, args, vocab: int) -> dict:
    """Admit ``batch`` requests, step until all decode, then time and profile steps."""
    import torch
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    max_tokens = engine.model_config.max_model_len - args.prompt_len
    params = SamplingParams(
        max_tokens=max_tokens, ignore_eos=True, temperature=0, output_kind=RequestOutputKind.DELTA
    )
    ids = [f"b{batch}-{i}" for i in range(batch)]
    for rid, prompt in zip(ids, random_prompts(batch, args.prompt_len, vocab, seed=batch)):
        engine.add_request(rid, {"prompt_token_ids": prompt}, params)
    decoding: set[str] = set()
    ramp_steps = 0
    while len(decoding) < batch:
        decoding.update(o.request_id for o in engine.step() if o.outputs and o.outputs[0].token_ids)
        ramp_steps += 1
        if ramp_steps > 10_000:
            raise RuntimeError(f"{len(decoding)} of {batch} requests decode after 10,000 steps")
    run_steps(engine, 5)  # past the last prefill's graphs
    torch.cuda.synchronize()
    start = time.perf_counter()
    run_steps(engine, args.steps)
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - start) * 1e3 / args.steps
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        run_steps(engine, args.steps)
        torch.cuda.synchronize()
    by_kind = {k: v / 1e3 / args.steps for k, v in gpu_time_by_kind(prof).items()}  # ms per step
    engine.abort_request(ids)
    run_steps(engine, 2)
    return {"batch": batch, "step_ms": step_ms, "gpu_ms": by_kind, "ramp_steps": ramp_steps}


def render(results: list[dict], args, device: str, versions: str) -> str:
    kinds = [k for k, _ in KINDS] + ["other"]
    system = "stock vLLM" if args.policy == "none" else f"{args.policy} K={args.budget}"
    if getattr(args, "kv_cache_dtype", "auto") != "auto":
        system += f", {args.kv_cache_dtype} K/V"
    lines = [
        f"## {system}, prompts of {args.prompt_len} tokens, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- command: `python -m benchmarks.step_profile {shlex.join(sys.argv[1:])}`",
        f"- device: {device}; {versions}; model `{args.model}` ({args.dtype})",
        f"- per step, averaged over {args.steps} steps: wall time (timed unprofiled), then GPU kernel "
        "time by kind (a second run of as many steps, under torch.profiler)",
        "",
        "| batch | step ms | tok/s | " + " | ".join(f"{k} ms" for k in kinds) + " | GPU busy ms |",
        "|---" * (len(kinds) + 4) + "|",
    ]
    for r in results:
        busy = sum(r["gpu_ms"].values())
        cells = " | ".join(f"{r['gpu_ms'].get(k, 0.0):.2f}" for k in kinds)
        tok_s = r["batch"] / r["step_ms"] * 1e3
        lines.append(f"| {r['batch']} | {r['step_ms']:.2f} | {tok_s:,.0f} | {cells} | {busy:.2f} |")
    return "\n".join(lines) + "\n\n"


def main(argv: list[str] | None = None) -> int:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the profiler must see the model's kernels
    args = parse_args(argv)
    import torch
    import vllm

    from vllm_tova.config import additional_config
    from vllm_tova.dev.runs import open_llm

    if not torch.cuda.is_available():
        sys.exit("step_profile needs a CUDA GPU")
    model = resolve_model(args.model)
    batches = [int(b) for b in args.batches.split(",")]
    kw = dict(
        dtype=args.dtype,
        max_model_len=args.prompt_len + 4096,
        max_num_seqs=max(batches),
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=False,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        seed=0,
        kv_cache_dtype=args.kv_cache_dtype,
    )
    if args.compilation_config:
        kw["compilation_config"] = args.compilation_config
    kw.update(model.load_kwargs())
    if args.policy != "none":
        kw["additional_config"] = additional_config(args.policy, args.budget, args.prefill_chunk)
    results = []
    with open_llm(model.path, **kw) as llm:
        for batch in batches:
            r = profile_batch(llm, batch, args, model.vocab_size)
            print(f"batch {batch}: {r['step_ms']:.2f} ms/step; GPU ms by kind {r['gpu_ms']}", flush=True)
            results.append(r)
    device = torch.cuda.get_device_name()
    text = render(results, args, device, f"vLLM {vllm.__version__}, torch {torch.__version__}")
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"step-profile-{device_slug(device)}.md"
    append_section(path, "Decode step profiles", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
