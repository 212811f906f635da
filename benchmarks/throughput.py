"""Throughput of stock vLLM against vLLM + TOVA on one KV pool.

``python -m benchmarks.throughput`` (defaults suit one H100: Llama-3-8B shape, dummy weights,
the paper workload, run to completion) or, on a CPU, ``python -m benchmarks.throughput
--model tiny-llama --scale 16 --systems stock,tova:64 --prefill-chunk 32 --kv-pool-tokens 2048``
(at 1/16 of the lengths a sequence is 256 tokens, so K=512 would never evict).

Protocols (``--protocol``):
* ``completion`` (default): the same N requests go to every system, submitted at once and run
  to completion, as ``vllm bench throughput`` does. N defaults to 4x the sequences stock's
  pool holds. A point that does not finish within ``--max-point-seconds`` is reported as
  unfinished, with no throughput.
* ``steady``: B in flight with desynchronised lengths; one lifetime discarded, then a window.
* ``early-decode``: the old closed loop cut a few seconds into decoding. A diagnostic of the
  first part of decode only (stock's contexts are still short there); never a headline.

Systems (``--systems``): ``stock``, ``stock-fp8`` (``--kv-cache-dtype fp8``), ``tova:K``,
``tova:K-fp8``, or another policy's name for ``tova``; a suffix ``@M`` (``tova:512-fp8@16``)
gives that system its own completion N, M x stock bf16's capacity, so a system whose pool
holds many more sequences can run at its best batch. The first system sizes the KV pool
in bytes (``--gpu-memory-utilization``) unless ``--kv-pool-tokens`` is given; every other
system gets exactly the same bytes. Each row carries the bytes-and-FLOPs ceiling
(``benchmarks/ceiling.py``), measured on this device before the first engine starts.

Writes ``benchmarks/results/throughput/<device>-<model>-<protocol>[-tag].{csv,md,png}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path

from benchmarks import report
from benchmarks.ceiling import DeviceRates, ModelCost, binding_term
from benchmarks.closed_loop import run_closed_loop
from benchmarks.engine_run import Window, attended_context
from benchmarks.presets import ModelChoice, resolve_model
from benchmarks.protocols import Outcome, run_steady, run_to_completion
from benchmarks.workloads import WORKLOADS, Workload, random_prompts, scaled

RESULTS = Path(__file__).resolve().parent / "results" / "throughput"
PROTOCOLS = ("completion", "steady", "early-decode")
CPU_POOL_TOKENS = 16384  # the CPU engine needs an explicit pool size
#: early-decode/steady batch sizes, as multiples of stock's capacity.
DEFAULT_MULTIPLIERS = {"paper": [1, 2, 4, 8], "long-prompt": [1, 2], "short": [1, 2]}


@dataclass(frozen=True)
class System:
    policy: str  # "none" = stock vLLM
    budget: int = 0
    kv_cache_dtype: str = "auto"
    request_multiplier: float | None = None  # completion: this system's own N (x stock's capacity)

    @property
    def label(self) -> str:
        name = "stock" if self.policy == "none" else f"{self.policy} K={self.budget}"
        return name if self.kv_cache_dtype == "auto" else f"{name} {self.kv_cache_dtype}"

    @classmethod
    def parse(cls, text: str) -> System:
        """``stock``, ``stock-fp8``, ``tova:512``, ``tova:512-fp8``, ``window:256``, each with an
        optional ``@M`` (``tova:512-fp8@16``)."""
        spec, _, multiplier = text.partition("@")
        requests = float(multiplier) if multiplier else None
        name, _, dtype = spec.partition("-")
        policy, _, budget = name.partition(":")
        if policy == "stock":
            return cls("none", 0, dtype or "auto", requests)
        if not budget:
            raise argparse.ArgumentTypeError(f"--systems: {text!r} needs a budget, e.g. {policy}:512")
        return cls(policy, int(budget), dtype or "auto", requests)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _systems(text: str) -> list[System]:
    return [System.parse(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=PROTOCOLS, default="completion")
    p.add_argument(
        "--model",
        default="llama3-8b" if gpu else "tiny-llama",
        help="preset name (llama3-8b, llama2-7b, tiny-llama: dummy weights) or a checkpoint path",
    )
    p.add_argument("--workloads", default="paper", help=f"comma-separated subset of {list(WORKLOADS)}")
    p.add_argument("--scale", type=int, default=1, help="divide every workload length by this (CPU runs)")
    p.add_argument(
        "--systems",
        type=_systems,
        default=_systems("stock,stock-fp8,tova:256,tova:512,tova:1024" if gpu else "stock,tova:512"),
        help="systems to run, in order; the first sizes the pool (default on GPU: "
        "stock,stock-fp8,tova:256,tova:512,tova:1024)",
    )
    p.add_argument("--prefill-chunk", type=int, default=512, help="TOVA prompt chunk C")
    p.add_argument(
        "--request-multipliers",
        type=_floats,
        default=[4.0],
        help="completion: requests per point, as multiples of the sequences stock's pool holds",
    )
    p.add_argument("--num-requests", type=_ints, default=None, help="completion: explicit N (overrides)")
    p.add_argument(
        "--batch-multipliers",
        type=_floats,
        default=None,
        help=f"steady/early-decode: in-flight batch sizes as multiples of stock's capacity "
        f"(default per workload: {DEFAULT_MULTIPLIERS})",
    )
    p.add_argument("--batch-sizes", type=_ints, default=None, help="steady/early-decode: explicit batch sizes")
    p.add_argument("--repeats", type=int, default=3, help="runs of each point (their spread is reported)")
    p.add_argument(
        "--max-point-seconds",
        type=float,
        default=600.0 if gpu else math.inf,
        help="a point still running after this is aborted and reported unfinished (no figures); "
        "one whose ceiling-model time alone exceeds it is not started",
    )
    p.add_argument("--measure-seconds", type=float, default=30.0, help="steady: the measured window")
    p.add_argument("--time-limit", type=float, default=5.0, help="early-decode: seconds after the ramp")
    p.add_argument("--max-num-seqs", type=int, default=1024 if gpu else 64)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192 if gpu else 2048)
    p.add_argument("--block-size", type=int, default=16 if gpu else 32)
    p.add_argument("--dtype", default="bfloat16" if gpu else "float32")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument(
        "--kv-pool-tokens",
        type=int,
        default=None,
        help=f"KV pool in tokens of the first system's dtype (default: on GPU what "
        f"--gpu-memory-utilization leaves; on CPU {CPU_POOL_TOKENS})",
    )
    p.add_argument("--enforce-eager", action="store_true", default=not gpu)
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per engine")
    p.add_argument("--distributed-executor-backend", choices=["mp", "ray"], default=None)
    p.add_argument(
        "--engine-args",
        type=json.loads,
        default=None,
        help='more vLLM engine arguments as JSON, e.g. \'{"disable_custom_all_reduce": true}\'',
    )
    p.add_argument("--tag", default="", help="suffix for the output files")
    p.add_argument("--device-name", default=None, help="name in the output files (default: from torch)")
    p.add_argument(
        "--out-dir", type=Path, default=None, help=f"default {RESULTS} (early-decode: its early-decode/ folder)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the points and exit (no engine)")
    p.add_argument("--render", type=Path, default=None, help="rewrite the .md and .png of this CSV and exit")
    args = p.parse_args(argv)
    args.gpu = gpu
    if args.out_dir is None:
        args.out_dir = RESULTS / "early-decode" if args.protocol == "early-decode" else RESULTS
    return args


def device_slug(args: argparse.Namespace) -> str:
    import torch

    return report.device_slug(args.device_name or (torch.cuda.get_device_name(0) if args.gpu else "cpu"))


def per_sequence_blocks(system: System, workload: Workload, block_size: int) -> int:
    from vllm.utils.math_utils import cdiv

    from vllm_tova.kv_manager import blocks_per_sequence

    per_seq = cdiv(workload.seq_len, block_size)
    return per_seq if system.policy == "none" else min(per_seq, blocks_per_sequence(system.budget, block_size))


def capacity(system: System, workload: Workload, pool_blocks: int, block_size: int) -> int:
    """Sequences of this workload the pool holds at once (vLLM's null block excluded)."""
    return (pool_blocks - 1) // per_sequence_blocks(system, workload, block_size)


def request_counts(args, workload: Workload, stock_pool_blocks: int, system: System | None = None) -> list[int]:
    """Completion: N per point, the same for every system (multiples of stock bf16's capacity)
    unless the system names its own multiplier (``@M``)."""
    if args.num_requests:
        return args.num_requests
    stock = capacity(System("none"), workload, stock_pool_blocks, args.block_size)
    own = system.request_multiplier if system is not None else None
    return sorted({max(1, round(m * stock)) for m in ([own] if own else args.request_multipliers)})


def batch_sizes(args, system: System, workload: Workload, pool_blocks: int, stock_pool_blocks: int) -> list[int]:
    """Steady/early-decode: in-flight sizes that this system's own pool admits."""
    if args.batch_sizes:
        return [b for b in args.batch_sizes if b <= args.max_num_seqs]
    stock = capacity(System("none"), workload, stock_pool_blocks, args.block_size)
    own = capacity(system, workload, pool_blocks, args.block_size)
    multipliers = args.batch_multipliers or DEFAULT_MULTIPLIERS.get(workload.name, [1, 2])
    sizes = {max(1, round(m * stock)) for m in multipliers}
    return sorted(b for b in sizes if b <= min(own, args.max_num_seqs))


def engine_kwargs(args, model: ModelChoice, system: System, max_model_len: int, pool_bytes: int | None) -> dict:
    from vllm_tova.config import additional_config

    kw = dict(
        dtype=args.dtype,
        block_size=args.block_size,
        max_model_len=max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=False,  # TOVA needs it off; random prompts would never hit anyway
        enforce_eager=args.enforce_eager,
        disable_log_stats=False,
        seed=args.seed,
        tensor_parallel_size=args.tensor_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        kv_cache_dtype=system.kv_cache_dtype,
    )
    if pool_bytes:
        kw["kv_cache_memory_bytes"] = pool_bytes
    else:
        kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    if system.policy != "none":
        kw["additional_config"] = additional_config(system.policy, system.budget, args.prefill_chunk)
    kw.update(args.engine_args or {})
    kw.update(model.load_kwargs())
    return kw


def _prompt_fn(workload: Workload, vocab: int, seed: int):
    def prompt(i: int) -> list[int]:
        return random_prompts(1, workload.prompt_len, vocab, seed=seed * 1_000_003 + i)[0]

    return prompt


def lower_bound_seconds(
    system: System, workload: Workload, n: int, cap: int, cost: ModelCost, rates: DeviceRates
) -> float:
    """The ceiling model's time for N requests run to completion at ``cap`` at once: a
    lower bound, used to skip a point that could not finish in time."""
    from benchmarks.ceiling import CostTally

    tally = CostTally()
    budget = None if system.policy == "none" else system.budget
    left = n
    while left > 0:
        batch = min(cap, left)
        left -= batch
        tally.add_step(batch * workload.prompt_len, 0)
        for g in range(1, workload.gen_len):
            length = workload.prompt_len + g
            tally.add_step(batch, batch * attended_context(length, budget))
    return tally.predict(cost, rates)


def main(argv: list[str] | None = None) -> list[dict]:
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # skips a ~15 s CPU probe per start
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # its JIT costs ~2 min per start
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    import vllm

    from vllm_tova.dev.runs import kv_block_bytes, open_llm

    model = resolve_model(args.model)
    workloads = [scaled(WORKLOADS[n], args.scale) for n in args.workloads.split(",")]
    max_model_len = max(w.seq_len for w in workloads)
    tp = args.tensor_parallel_size
    first = args.systems[0]
    first_block_bytes = kv_block_bytes(model.path, _cache_dtype(args, first), args.block_size) // tp
    stock_block_bytes = kv_block_bytes(model.path, args.dtype, args.block_size) // tp
    pool_bytes = (
        args.kv_pool_tokens // args.block_size * first_block_bytes
        if args.kv_pool_tokens
        else (None if args.gpu else CPU_POOL_TOKENS // args.block_size * first_block_bytes)
    )
    device = device_slug(args)
    stem = args.out_dir / "-".join(
        [device, model.name, *([f"tp{tp}"] if tp > 1 else []), args.protocol, *([args.tag] if args.tag else [])]
    )
    print(
        f"plan: {args.protocol} protocol; systems {', '.join(s.label for s in args.systems)}; "
        f"workloads {[f'{w.name} {w.prompt_len}+{w.gen_len}' for w in workloads]}; "
        f"{args.repeats} repeat(s) per point",
        flush=True,
    )
    if args.dry_run:
        if pool_bytes is None:
            raise SystemExit("--dry-run needs --kv-pool-tokens (the pool decides the points)")
        stock_blocks = pool_bytes // stock_block_bytes
        for w in workloads:
            counts = {s.label: request_counts(args, w, stock_blocks, s) for s in args.systems}
            print(f"  {w.name}: N = {counts} (stock holds "
                  f"{capacity(System('none'), w, stock_blocks, args.block_size)})")
        return []
    rates = DeviceRates.measure(args.dtype)
    print(f"device: copy {rates.copy_bytes_per_s / 1e12:.2f} TB/s, matmul "
          f"{rates.matmul_flops_per_s / 1e12:.1f} TFLOP/s ({args.dtype})", flush=True)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "benchmarks.throughput", *given])
    gpus = f"{tp} x {device}" if tp > 1 else device
    title = f"{model.name} on {gpus}, vLLM {vllm.__version__}, {args.protocol} protocol"
    write_outputs([], stem, title, command)  # so --render can finish an interrupted run's files
    rows: list[dict] = []
    for system in args.systems:
        cost = ModelCost.from_config(model.path, args.dtype, system.kv_cache_dtype)
        kw = engine_kwargs(args, model, system, max_model_len, pool_bytes)
        t_start = time.perf_counter()
        with open_llm(model.path, **kw) as llm:
            pool_blocks = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
            if pool_bytes is None:
                pool_bytes = pool_blocks * first_block_bytes  # the same bytes for the next engines
            stock_blocks = pool_bytes // stock_block_bytes
            print(f"{system.label}: engine up in {time.perf_counter() - t_start:.0f} s, "
                  f"{pool_blocks} KV blocks of {args.block_size}", flush=True)
            _warm_up(llm, model, pool_blocks, system, args)
            for workload in workloads:
                prompt = _prompt_fn(workload, model.vocab_size, args.seed)
                cap = capacity(system, workload, pool_blocks, args.block_size)
                if cap < 1:
                    raise SystemExit(f"{system.label}: the KV pool ({pool_blocks} blocks) holds no full "
                                     f"{workload.seq_len}-token sequence; give it more --kv-pool-tokens")
                if args.protocol == "completion":
                    sizes = request_counts(args, workload, stock_blocks, system)
                else:
                    sizes = batch_sizes(args, system, workload, pool_blocks, stock_blocks)
                for size in sizes:
                    floor = lower_bound_seconds(system, workload, size, min(cap, args.max_num_seqs), cost, rates)
                    for repeat in range(args.repeats):
                        if args.protocol == "completion" and floor > args.max_point_seconds:
                            outcome = Outcome(None, "skipped", f"ceiling model alone needs {floor:.0f} s")
                        else:
                            outcome = _measure(args, llm, prompt, workload, size, pool_blocks, system)
                        row = _row(args, device, vllm.__version__, model, system, workload, size, repeat,
                                   pool_blocks, cap, outcome, cost, rates)  # fmt: skip
                        rows.append(row)
                        print(report.one_line(row), flush=True)
                        report.write_csv(rows, stem.with_suffix(".csv"), report.COLUMNS)
                        if outcome.window is None:
                            break  # the other repeats would not finish either
    write_outputs(rows, stem, title, command)
    return rows


def _cache_dtype(args, system: System) -> str:
    return args.dtype if system.kv_cache_dtype == "auto" else system.kv_cache_dtype


def _warm_up(llm, model: ModelChoice, pool_blocks: int, system: System, args) -> None:
    """A few short requests, so the first point does not pay for first-use costs."""
    warm = Workload("warm-up", 64, 8)
    budget = None if system.policy == "none" else system.budget
    run_to_completion(llm, _prompt_fn(warm, model.vocab_size, 99), warm, 4, pool_blocks, budget, args.prefill_chunk)


def _measure(args, llm, prompt, workload: Workload, size: int, pool_blocks: int, system: System) -> Outcome:
    budget = None if system.policy == "none" else system.budget
    if args.protocol == "completion":
        return run_to_completion(
            llm, prompt, workload, size, pool_blocks, budget, args.prefill_chunk, args.max_point_seconds
        )
    if args.protocol == "steady":
        return run_steady(
            llm, prompt, workload, size, pool_blocks, budget, args.prefill_chunk,
            args.measure_seconds, args.max_point_seconds,
        )  # fmt: skip
    res = run_closed_loop(
        llm, prompt, workload.gen_len, size, 2 * size, pool_blocks, args.block_size,
        time_limit=args.time_limit, max_seconds=args.max_point_seconds,
    )  # fmt: skip
    window = Window(0.0, res.seconds, res.finished, res.prompt_tokens, res.gen_tokens)
    window.samples = res.samples
    window.peak_running, window.peak_kv_blocks, window.preemptions = (
        res.peak_running, res.peak_kv_blocks, res.preemptions,
    )  # fmt: skip
    return Outcome(window, "early-decode", "cut a few seconds into decode: not a throughput figure")


def _row(args, device, version, model, system, workload, size, repeat, pool_blocks, cap, outcome, cost, rates) -> dict:
    w = outcome.window
    row = {
        "protocol": args.protocol, "status": outcome.status, "detail": outcome.detail,
        "device": device, "vllm_version": version, "model": model.name, "system": system.label,
        "policy": system.policy, "budget": system.budget, "kv_cache_dtype": _cache_dtype(args, system),
        "evicts": int(system.policy != "none" and system.budget < workload.seq_len),
        "workload": workload.name, "prompt_len": workload.prompt_len, "gen_len": workload.gen_len,
        "num_requests": size, "repeat": repeat, "capacity": cap, "kv_pool_blocks": pool_blocks,
        "block_size": args.block_size, "prefill_chunk": args.prefill_chunk, "dtype": args.dtype,
        "tensor_parallel_size": args.tensor_parallel_size,
        "copy_tb_s": round(rates.copy_bytes_per_s / 1e12, 3),
        "matmul_tflops": round(rates.matmul_flops_per_s / 1e12, 3),
    }  # fmt: skip
    if w is None:
        return row
    terms = w.tally.terms(cost, rates) if w.tally.steps else {}
    predicted = sum(terms.values())
    row.update({
        "seconds": round(w.seconds, 3), "finished": w.finished,
        "gen_tok_s": round(w.gen_tok_s, 2), "total_tok_s": round(w.total_tok_s, 2),
        "mean_running": round(w.mean_running, 2), "peak_running": w.peak_running,
        "mean_attended_context": round(w.mean_attended_context, 1),
        "mean_sequence_length": round(w.mean_logical_context, 1),
        "peak_kv_blocks": round(w.peak_kv_blocks, 1),
        "peak_pool_use": round(w.peak_kv_blocks / max(pool_blocks - 1, 1), 4),
        "preemptions": w.preemptions, "steps": w.tally.steps,
        "mean_step_ms": round(1e3 * w.seconds / w.tally.steps, 3) if w.tally.steps else "",
    })  # fmt: skip
    if terms:
        row.update({
            "predicted_s": round(predicted, 3), "ceiling_fraction": round(predicted / w.seconds, 4),
            "weights_s": round(terms["weights"], 3), "kv_s": round(terms["kv"], 3),
            "flops_s": round(terms["flops"], 3), "binding": binding_term(terms),
        })  # fmt: skip
    return row


def write_outputs(rows: list[dict], stem: Path, title: str, command: str, notes: Sequence[str] = ()) -> None:
    """CSV, markdown (every run, the per-point summary over repeats, ratios and targets), PNG.
    The markdown's title, command and note lines are what ``--render`` keeps."""
    report.write_csv(rows, stem.with_suffix(".csv"), report.COLUMNS)
    text = report.completion_markdown(rows)
    header = f"# Throughput: {title}\n\n- command: `{command}`\n" + "".join(f"{n}\n" for n in notes)
    if rows and rows[0].get("copy_tb_s"):
        header += (
            f"- device rates measured before the first engine: copy {rows[0]['copy_tb_s']} TB/s, "
            f"matmul {rows[0]['matmul_tflops']} TFLOP/s ({rows[0]['dtype']})\n"
        )
    stem.with_suffix(".md").write_text(header + "\n" + text)
    if rows:
        report.plot_completion(rows, stem.with_suffix(".png"), title)
    print("\n" + text + f"\nwrote {stem}.csv, .md, .png")


def render(csv_path: Path) -> list[dict]:
    """Re-render a CSV's markdown and plot (e.g. after a run stopped between points)."""
    rows = report.read_csv(csv_path)
    stem = csv_path.with_suffix("")
    md = stem.with_suffix(".md")
    old = md.read_text().splitlines() if md.exists() else []
    title = old[0].removeprefix("# Throughput: ") if old else stem.name
    command = next((line[len("- command: `"):-1] for line in old if line.startswith("- command: `")), "")
    header = list(itertools.takewhile(lambda line: not line.startswith("|"), old))
    notes = [line for line in header if line.startswith("- ") and not line.startswith(("- command", "- device rates"))]
    write_outputs(rows, stem, title, command, notes)
    return rows


if __name__ == "__main__":
    main()
