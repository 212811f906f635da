"""Throughput versus batch size, stock vLLM vs vLLM + TOVA, on one KV pool.

``python -m benchmarks.throughput`` (defaults suit one H100: Llama-3-8B shape, dummy weights)
or, on a CPU, ``python -m benchmarks.throughput --model tiny-llama --scale 16 ...``.

One engine per system (stock, then TOVA at each budget), started once and reused for every
workload and batch size: the batch size is the number of requests kept in flight by a
closed loop (``benchmarks/closed_loop.py``), with ``max_num_seqs`` set above the largest.
The stock engine sizes the KV pool (``--gpu-memory-utilization``, or ``--kv-pool-tokens``);
every TOVA engine gets exactly the same pool in bytes. Batch sizes are multiples of the
number of full sequences stock can hold (``--batch-multipliers``); each system runs those that
its own capacity admits, so the lines share x positions.

Writes ``benchmarks/results/throughput-<device>.{csv,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import report
from benchmarks.closed_loop import RAMP_TRACE_COLUMNS, PointResult, run_closed_loop
from benchmarks.presets import ModelChoice, resolve_model
from benchmarks.workloads import WORKLOADS, Workload, random_prompts, scaled

RESULTS = Path(__file__).resolve().parent / "results"
#: Batch sizes as multiples of stock's capacity. Long prompts are prefill-bound (a bigger
#: batch only lengthens the ramp), so fewer points there.
DEFAULT_MULTIPLIERS = {"paper": [1, 2, 4, 8], "long-prompt": [1, 2], "short": [1, 2]}
CPU_POOL_TOKENS = 16384  # the CPU engine needs an explicit pool size
ENGINE_START_S = 75  # rough H100 engine start (with CUDA graphs), for the printed plan only


@dataclass(frozen=True)
class System:
    policy: str  # "none" = stock vLLM
    budget: int = 0

    @property
    def label(self) -> str:
        return "stock" if self.policy == "none" else f"{self.policy} K={self.budget}"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default="llama3-8b" if gpu else "tiny-llama",
        help="preset name (llama3-8b, tiny-llama: dummy weights) or a checkpoint path",
    )
    p.add_argument("--workloads", default="paper,long-prompt,short", help=f"subset of {list(WORKLOADS)}")
    p.add_argument("--scale", type=int, default=1, help="divide every workload length by this (CPU runs)")
    p.add_argument(
        "--budgets",
        type=_ints,
        default=[512],
        help="TOVA budgets K for 'paper' (the issue's 256,1024: a second run, see README)",
    )
    p.add_argument("--budget", type=int, default=512, help="the TOVA budget for the other workloads")
    p.add_argument("--policy", default="tova")
    p.add_argument("--prefill-chunk", type=int, default=512, help="TOVA prompt chunk C")
    p.add_argument(
        "--batch-multipliers",
        type=_floats,
        default=None,
        help="batch sizes, as multiples of the full sequences stock's pool holds "
        f"(default per workload: {DEFAULT_MULTIPLIERS})",
    )
    p.add_argument(
        "--batch-sizes", type=_ints, default=None, help="explicit batch sizes (overrides multipliers)"
    )
    p.add_argument("--waves", type=float, default=2.0, help="requests per point = waves x batch size")
    p.add_argument("--max-requests", type=int, default=4096, help="cap on requests per point")
    p.add_argument(
        "--time-limit",
        type=float,
        default=5.0 if gpu else math.inf,
        help="seconds of steady window per point (after the first wave's prefill); then in-flight "
        "requests are aborted and the row marked truncated",
    )
    p.add_argument(
        "--max-point-seconds",
        type=float,
        default=90.0 if gpu else math.inf,
        help="hard cap on one point, ramp included",
    )
    p.add_argument("--max-num-seqs", type=int, default=1024 if gpu else 64)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192 if gpu else 2048)
    p.add_argument("--block-size", type=int, default=16 if gpu else 32)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument(
        "--kv-pool-tokens",
        type=int,
        default=None,
        help="KV pool size in tokens (default: on GPU what --gpu-memory-utilization leaves, "
        f"with --no-stock --append the CSV's; on CPU {CPU_POOL_TOKENS})",
    )
    p.add_argument("--enforce-eager", action="store_true", default=not gpu)
    p.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="GPUs per engine; results go to throughput-<device>-tp<N>.* when above 1",
    )
    p.add_argument("--distributed-executor-backend", choices=["mp", "ray"], default=None)
    p.add_argument("--tag", default="", help="suffix for the output files, e.g. small-batch")
    p.add_argument(
        "--compilation-config",
        type=json.loads,
        default=None,
        help='vLLM compilation config as JSON, e.g. \'{"pass_config": {"fuse_allreduce_rms": false}}\'',
    )
    p.add_argument(
        "--engine-args",
        type=json.loads,
        default=None,
        help='more vLLM engine arguments as JSON, e.g. \'{"disable_custom_all_reduce": true}\'',
    )
    p.add_argument(
        "--no-stock",
        action="store_true",
        help="skip stock; the pool is then --kv-pool-tokens or, with --append, the CSV's",
    )
    p.add_argument("--device-name", default=None, help="name in the output files (default: from torch)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the points and exit (no engine)")
    p.add_argument(
        "--ramp-trace",
        action="store_true",
        help="also write <stem>-ramps.json: per point, what the ramp test read at every step "
        "until the ramp ended (to see why a steady window starts where it does)",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the rows already in the CSV (split a sweep over several invocations)",
    )
    args = p.parse_args(argv)
    args.gpu = gpu
    return args


def device_slug(args: argparse.Namespace) -> str:
    import torch

    return report.device_slug(args.device_name or (torch.cuda.get_device_name(0) if args.gpu else "cpu"))


def systems_for(args: argparse.Namespace, workloads: list[Workload]) -> list[tuple[System, list[Workload]]]:
    """Engines to start, in order, with the workloads each runs.

    ``paper`` runs on every TOVA engine; the other workloads only at ``--budget``, whose engine
    is started when one of them is selected.
    """
    plan = [] if args.no_stock else [(System("none"), workloads)]
    budgets = set(args.budgets) | ({args.budget} if any(w.name != "paper" for w in workloads) else set())
    for k in sorted(budgets):
        mine = [w for w in workloads if k == args.budget or w.name == "paper"]
        if mine:
            plan.append((System(args.policy, k), mine))
    return plan


def capacity(system: System, workload: Workload, pool_blocks: int, block_size: int) -> int:
    """Sequences of this workload the pool holds at once (vLLM's null block excluded)."""
    from vllm.utils.math_utils import cdiv

    from vllm_tova.kv_manager import blocks_per_sequence

    per_seq = cdiv(workload.seq_len, block_size)
    if system.policy != "none":
        per_seq = min(per_seq, blocks_per_sequence(system.budget, block_size))
    return (pool_blocks - 1) // per_seq


def batch_sizes(args, system: System, workload: Workload, pool_blocks: int) -> list[int]:
    if args.batch_sizes:
        return [b for b in args.batch_sizes if b <= args.max_num_seqs]
    stock = capacity(System("none"), workload, pool_blocks, args.block_size)
    own = capacity(system, workload, pool_blocks, args.block_size)
    multipliers = args.batch_multipliers or DEFAULT_MULTIPLIERS.get(workload.name, [1, 2])
    sizes = {max(1, round(m * stock)) for m in multipliers}
    return sorted(b for b in sizes if b <= min(own, args.max_num_seqs))


def engine_kwargs(args, model: ModelChoice, max_model_len: int) -> dict:
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
    )
    if args.compilation_config:
        kw["compilation_config"] = args.compilation_config
    kw.update(args.engine_args or {})
    kw.update(model.load_kwargs())
    return kw


def _prompt_fn(workload: Workload, vocab: int, seed: int):
    def prompt(i: int) -> list[int]:
        return random_prompts(1, workload.prompt_len, vocab, seed=seed * 1_000_003 + i)[0]

    return prompt


def print_plan(args, plan: list[tuple[System, list[Workload]]], pool_blocks: int | None) -> None:
    """The points a run would measure (needs the pool size, i.e. --kv-pool-tokens)."""
    if pool_blocks is None:
        raise SystemExit("--dry-run needs --kv-pool-tokens (the pool decides the batch sizes)")
    points = prompt_tokens = 0
    for system, mine in plan:
        for w in mine:
            sizes = batch_sizes(args, system, w, pool_blocks)
            points += len(sizes)
            prompt_tokens += sum(sizes) * w.prompt_len
            print(f"  {system.label:>12} {w.name:>11}: batch sizes {sizes}")
    print(
        f"{points} points; their first waves prefill {prompt_tokens:,} prompt tokens; "
        f"steady windows {points * args.time_limit:.0f} s in all"
    )


def pool_size(args, rows: list[dict], model_name: str, block_bytes: int) -> int | None:
    """KV pool bytes: --kv-pool-tokens; else, for --no-stock, the pool of the CSV appended to;
    else on CPU 16,384 tokens; None = stock sizes it from --gpu-memory-utilization."""
    if args.kv_pool_tokens:
        return args.kv_pool_tokens // args.block_size * block_bytes
    if args.no_stock:
        pools = {int(r["kv_pool_blocks"]) for r in rows if r["model"] == model_name}
        if len(pools) != 1:
            raise SystemExit("--no-stock needs --kv-pool-tokens, or --append to a CSV with one pool")
        return pools.pop() * block_bytes  # the same pool as the rows appended to
    return None if args.gpu else CPU_POOL_TOKENS // args.block_size * block_bytes


def main(argv: list[str] | None = None) -> list[dict]:
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # skips a ~15 s CPU probe per start
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # its JIT costs ~2 min per start
    args = parse_args(argv)
    import vllm
    from tqdm import tqdm

    from vllm_tova.config import additional_config
    from vllm_tova.stats import kv_block_bytes, open_llm

    model = resolve_model(args.model)
    workloads = [scaled(WORKLOADS[n], args.scale) for n in args.workloads.split(",")]
    plan = systems_for(args, workloads)
    max_model_len = max(w.seq_len for w in workloads)
    # Per GPU: each rank holds 1/N of the KV heads, and KV pool sizes are per GPU.
    block_bytes = kv_block_bytes(model.path, args.dtype, args.block_size) // args.tensor_parallel_size
    device = device_slug(args)
    tp = args.tensor_parallel_size
    stem = args.out_dir / "-".join(
        ["throughput", device, *([f"tp{tp}"] if tp > 1 else []), *([args.tag] if args.tag else [])]
    )
    csv_path = stem.with_suffix(".csv")
    rows: list[dict] = report.read_csv(csv_path) if args.append and csv_path.exists() else []
    ramps: list[dict] = []
    pool_bytes = pool_size(args, rows, model.name, block_bytes)
    print(
        f"plan: {len(plan)} engines ({', '.join(s.label for s, _ in plan)}), workloads "
        f"{[f'{w.name} {w.prompt_len}+{w.gen_len}' for w in workloads]}, "
        f"steady window {args.time_limit} s/point"
        + (f"; on an H100 expect about {len(plan) * ENGINE_START_S} s of engine starts" if args.gpu else ""),
        flush=True,
    )
    if args.dry_run:
        print_plan(args, plan, pool_bytes // block_bytes if pool_bytes else None)
        return []
    bar = tqdm(desc="points", unit="pt")
    for system, mine in plan:
        kw = engine_kwargs(args, model, max_model_len)
        kw.update(
            {"kv_cache_memory_bytes": pool_bytes}
            if pool_bytes
            else {"gpu_memory_utilization": args.gpu_memory_utilization}
        )
        if system.policy != "none":
            kw["additional_config"] = additional_config(system.policy, system.budget, args.prefill_chunk)
        bar.set_postfix_str(f"starting {system.label}")
        with open_llm(model.path, **kw) as llm:
            pool_blocks = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
            pool_bytes = pool_bytes or pool_blocks * block_bytes  # the same pool for the next engines
            if any(int(r["kv_pool_blocks"]) != pool_blocks for r in rows):
                tqdm.write(f"WARNING: {pool_blocks} KV blocks here, other pools in {csv_path}")
            warm = replace(mine[0], prompt_len=min(mine[0].prompt_len, 64), gen_len=8)
            run_closed_loop(
                llm, _prompt_fn(warm, model.vocab_size, 99), 8, 4, 4, pool_blocks, args.block_size
            )
            todo = [(w, b) for w in mine for b in batch_sizes(args, system, w, pool_blocks)]
            bar.total = (bar.total or 0) + len(todo)
            for workload, batch in todo:
                bar.set_postfix_str(f"{system.label} {workload.name} batch {batch}")
                n = min(args.max_requests, max(batch, math.ceil(args.waves * batch)))
                t0 = time.perf_counter()
                res = run_closed_loop(
                    llm,
                    _prompt_fn(workload, model.vocab_size, args.seed),
                    workload.gen_len,
                    batch,
                    n,
                    pool_blocks,
                    args.block_size,
                    time_limit=args.time_limit,
                    max_seconds=args.max_point_seconds,
                )
                rows.append(
                    _row(args, device, vllm.__version__, model, system, workload, n, pool_blocks, res)
                )
                tqdm.write(
                    f"{system.label:>12} {workload.name:>11} batch {batch:>5}: "
                    f"gen {res.gen_tok_s:9.1f} tok/s, "
                    f"steady {res.steady_gen_tok_s:9.1f}, mean running {res.mean_running:6.1f}, "
                    f"preemptions {res.preemptions}{', truncated' if res.truncated else ''} "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
                bar.update()
                report.write_csv(rows, csv_path)  # partial results survive a kill
                if args.ramp_trace:
                    ramps.append(_ramp_record(system, workload, res))
                    stem.with_name(stem.name + "-ramps.json").write_text(json.dumps(ramps, indent=1))
    bar.close()
    gpus = f"{tp} x {device}" if tp > 1 else device
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "benchmarks.throughput", *given])
    write_outputs(rows, stem, args.budget, f"{model.name} on {gpus}, vLLM {vllm.__version__}", command)
    return rows


def _row(args, device, version, model, system, workload, n, pool_blocks, res) -> dict:
    return {
        "device": device, "vllm_version": version, "policy": system.policy, "budget": system.budget,
        "workload": workload.name, "prompt_len": workload.prompt_len, "gen_len": workload.gen_len,
        "num_requests": n, "max_num_seqs": args.max_num_seqs, "batch_size": res.batch_size,
        "gen_tok_s": round(res.gen_tok_s, 2), "total_tok_s": round(res.total_tok_s, 2),
        "req_s": round(res.req_s, 4), "steady_gen_tok_s": round(res.steady_gen_tok_s, 2),
        "ramp_s": round(res.ramp_seconds, 3), "seconds": round(res.seconds, 3), "finished": res.finished,
        "truncated": int(res.truncated), "mean_running": round(res.mean_running, 2),
        "peak_running": res.peak_running, "preemptions": res.preemptions,
        "peak_kv_blocks": round(res.peak_kv_blocks, 1),
        "peak_kv_slots_per_seq": round(res.peak_kv_slots_per_seq, 1),
        "kv_pool_blocks": pool_blocks, "block_size": args.block_size, "prefill_chunk": args.prefill_chunk,
        "model": model.name, "tensor_parallel_size": args.tensor_parallel_size,
    }  # fmt: skip


def _ramp_record(system: System, workload: Workload, res: PointResult) -> dict:
    return {
        "system": system.label,
        "workload": workload.name,
        "batch_size": res.batch_size,
        "ramp_s": None if math.isnan(res.ramp_seconds) else round(res.ramp_seconds, 4),
        "columns": list(RAMP_TRACE_COLUMNS),
        "steps": [[round(t, 4), *rest] for t, *rest in res.ramp_trace],
    }


def write_outputs(rows: list[dict], stem: Path, budget: int, title: str, command: str) -> None:
    """CSV, markdown (all points, best per system, the issue's targets) and PNG."""
    report.write_csv(rows, stem.with_suffix(".csv"))
    text = report.markdown(rows) + "\n" + report.targets(rows, budget)
    header = f"# Throughput versus batch size: {title}\n\n- command (last run): `{command}`\n\n"
    stem.with_suffix(".md").write_text(header + text)
    report.plot(rows, stem.with_suffix(".png"), title)
    print("\n" + text + f"\nwrote {stem}.csv, .md, .png")


if __name__ == "__main__":
    main()
