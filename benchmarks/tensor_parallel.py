"""Tensor parallelism: exact TOVA across GPUs, checked and timed.

    python -m benchmarks.tensor_parallel                   # 2 GPUs: Ray and mp executors
    python -m benchmarks.tensor_parallel --tensor-parallel-size 4
    python -m benchmarks.tensor_parallel --part throughput # only the throughput half
    python -m benchmarks.tensor_parallel --quick           # CPU smoke run (CI)

Agreement: a real checkpoint with seeded random weights and Llama-3-8B's layer shape
(``presets.random_checkpoint``; vLLM's dummy weights give each rank a different model), in
float32, runs the same greedy prompts through stock vLLM and TOVA at TP=1 and at TP=N (TOVA
under each executor). Checked: every rank's eviction decisions, per layer and step, are the
same (``VLLM_TOVA_RECORD_EVICTIONS``); and how far TOVA's TP=N tokens follow its TP=1
tokens, beside the same rate for stock (TP changes the order of floating-point sums, so
near-ties can flip in both).

Throughput: ``benchmarks/throughput.py`` at TP=N, stock against TOVA, paper-like workload.

Writes ``benchmarks/results/tensor-parallel/tp-<device>.md`` (``tp-<device>-tp<N>.md`` for N
other than 2), and ``.json``, which keeps each part's results so the two parts can run as
separate commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks import report
from benchmarks.workloads import random_prompts

RESULTS = Path(__file__).resolve().parent / "results" / "tensor-parallel"


@contextmanager
def environment(**values: str):
    """Set variables for the engine processes started inside, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cpu_binding(ranks: int) -> dict[str, str]:
    """On CPU, vLLM binds one NUMA node per rank; one core per rank (round robin) instead."""
    import torch

    if torch.cuda.is_available() or ranks == 1:
        return {}
    cores = sorted(os.sched_getaffinity(0))
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(str(cores[r % len(cores)]) for r in range(ranks))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tensor-parallel-size", type=int, default=2)
    p.add_argument("--executors", default="ray,mp", help="executors for TOVA at TP=N (stock: the first)")
    p.add_argument("--part", choices=["all", "agreement", "throughput"], default="all")
    p.add_argument("--model", default="llama3-8b-8layers", help="preset written as a seeded checkpoint")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--budget", type=int, default=128)
    p.add_argument("--prefill-chunk", type=int, default=256)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-lens", default="300,1000", help="prompt lengths range low,high")
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--throughput-args", default="--workloads paper --systems stock,tova:512 --repeats 1",
                   help="extra arguments for benchmarks.throughput")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model, mp, short")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.executors, args.prompts, args.gen_len = "tiny-llama", "mp", 3, 24
        args.budget, args.prefill_chunk, args.prompt_lens = 32, 32, "40,120"
        args.part = "agreement"
    return args


def run_engine(args, model, tp: int, executor: str | None, tova: bool, prompts) -> tuple[list, list | None]:
    """Greedy tokens per prompt, and each rank's eviction log (TOVA only)."""
    import torch
    from vllm import SamplingParams

    from vllm_tova.attention import eviction_log
    from vllm_tova.config import additional_config
    from vllm_tova.dev.runs import open_llm

    kw = dict(
        dtype=args.dtype, enforce_eager=True, seed=0, max_model_len=2048, max_num_seqs=len(prompts),
        max_num_batched_tokens=2048, enable_prefix_caching=False, tensor_parallel_size=tp,
        skip_tokenizer_init=True, block_size=16,
        distributed_executor_backend=executor if tp > 1 else None,
    )  # fmt: skip
    gpu = torch.cuda.is_available()
    kw.update(dict(gpu_memory_utilization=0.85) if gpu else dict(kv_cache_memory_bytes=64 << 20))
    if tova:
        kw.update(
            additional_config=additional_config("tova", args.budget, args.prefill_chunk),
            worker_extension_cls=eviction_log.WORKER_EXTENSION,
        )
    env = {**cpu_binding(tp), "VLLM_TOVA_RECORD_EVICTIONS": "1" if tova else "0"}
    with environment(**env), open_llm(model.path, **kw) as llm:
        params = SamplingParams(max_tokens=args.gen_len, temperature=0, ignore_eos=True, detokenize=False)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        logs = llm.collective_rpc("tova_evictions") if tova else None
    return [list(o.outputs[0].token_ids) for o in outputs], logs


def prefix_rate(a: list[list[int]], b: list[list[int]]) -> tuple[float, int]:
    """Mean fraction of tokens identical before the first difference, and identical outputs."""
    fractions = []
    for x, y in zip(a, b):
        same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), len(x))
        fractions.append(same / max(1, len(x)))
    return sum(fractions) / len(fractions), sum(f == 1.0 for f in fractions)


def rank_check(logs: list[list[int]]) -> dict:
    first = next((i for i, d in enumerate(zip(*logs)) if len(set(d)) > 1), None)
    return {
        "ranks": len(logs),
        "decisions_per_rank": [len(log) for log in logs],
        "identical": all(log == logs[0] for log in logs),
        "first_mismatch": first,
    }


def agreement(args) -> dict:
    from benchmarks.presets import random_checkpoint

    t0 = time.perf_counter()
    model = random_checkpoint(args.model, args.dtype)
    print(f"checkpoint {model.path} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    low, high = (int(x) for x in args.prompt_lens.split(","))
    lengths = [low + (high - low) * i // max(1, args.prompts - 1) for i in range(args.prompts)]
    prompts = [random_prompts(1, n, model.vocab_size, seed=i)[0] for i, n in enumerate(lengths)]
    tp, executors = args.tensor_parallel_size, args.executors.split(",")
    runs: dict[str, dict] = {}
    failures: dict[str, str] = {}
    plan = [("stock", 1, None), ("tova", 1, None), ("stock", tp, executors[0])]
    plan += [("tova", tp, e) for e in executors]
    for system, size, executor in plan:
        name = f"{system} TP={size}" + (f" ({executor})" if executor else "")
        t0 = time.perf_counter()
        try:
            tokens, logs = run_engine(args, model, size, executor, system == "tova", prompts)
        except Exception as error:  # one executor failing must not lose the other runs
            print(f"{name}: FAILED: {error!r}", flush=True)
            failures[name] = repr(error)
            continue
        runs[name] = {"tokens": tokens, "ranks": rank_check(logs) if logs else None}
        print(f"{name}: {time.perf_counter() - t0:.0f} s; ranks {runs[name]['ranks']}", flush=True)
    rows = []
    for name, run in runs.items():
        system, size = name.split()[0], name.split()[1]
        if size == "TP=1" or f"{system} TP=1" not in runs:
            continue
        rate, identical = prefix_rate(run["tokens"], runs[f"{system} TP=1"]["tokens"])
        rows.append({"run": name, "vs": f"{system} TP=1", "prefix_rate": rate, "identical": identical,
                     "prompts": len(prompts), "ranks": run["ranks"]})  # fmt: skip
        print(f"{name} vs {system} TP=1: prefix agreement {rate:.3f}, {identical}/{len(prompts)} identical")
    return {
        "model": args.model, "dtype": args.dtype, "budget": args.budget, "prefill_chunk": args.prefill_chunk,
        "prompt_lens": lengths, "gen_len": args.gen_len, "tensor_parallel_size": tp, "rows": rows,
        "failures": failures,
    }  # fmt: skip


def throughput(args) -> dict:
    from benchmarks import throughput as bench

    extra = shlex.split(args.throughput_args)  # quoted JSON stays one argument
    argv = ["--tensor-parallel-size", str(args.tensor_parallel_size),
            "--distributed-executor-backend", args.executors.split(",")[0], "--out-dir", str(args.out_dir),
            *extra]  # fmt: skip
    rows = bench.main(argv)
    return {"command": "python -m benchmarks.throughput " + shlex.join(argv), "rows": rows}


def render(results: dict, device: str, versions: str) -> str:
    lines = [f"# Tensor parallelism on {device}", "", f"{versions}", ""]
    a = results.get("agreement")
    if a:
        n = a["tensor_parallel_size"]
        lines += [
            "## Agreement",
            "",
            f"- command: `{a['command']}`",
            f"- model: `{a['model']}` preset as a seeded random checkpoint, {a['dtype']}; "
            f"TOVA K={a['budget']}, C={a['prefill_chunk']}; prompts of {a['prompt_lens']} tokens, "
            f"{a['gen_len']} greedy tokens each",
            "",
            "| run | against | tokens identical before the first difference | identical outputs "
            "| ranks' eviction decisions |",
            "|---|---|---|---|---|",
        ]
        for r in a["rows"]:
            ranks = r["ranks"]
            verdict = "-" if ranks is None else (
                f"{'identical' if ranks['identical'] else 'DIFFER at ' + str(ranks['first_mismatch'])}"
                f" on {ranks['ranks']} ranks ({ranks['decisions_per_rank'][0]:,} decisions each)"
            )
            lines.append(
                f"| {r['run']} | {r['vs']} | {100 * r['prefix_rate']:.1f}% | {r['identical']}/{r['prompts']} "
                f"| {verdict} |"
            )
        lines += ["", f"Rates at TP={n} compare with each system's own TP=1 run.", ""]
        lines += [f"- FAILED: {name}: `{error}`" for name, error in a.get("failures", {}).items()]
    t = results.get("throughput")
    if t:
        rows = t["rows"]
        table = (
            report.completion_markdown(rows)
            if rows and "protocol" in rows[0]
            else "Rows of the older early-decode script: see the .json beside this file.\n"
        )
        lines += ["## Throughput", "", f"- command: `{t['command']}`", "", table, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    args = parse_args(argv)
    import torch
    import vllm

    device = report.device_slug(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    tp = args.tensor_parallel_size
    stem = args.out_dir / (f"tp-{device}" if tp == 2 else f"tp-{device}-tp{tp}")
    path = stem.with_suffix(".json")
    results = json.loads(path.read_text()) if path.exists() and not args.quick else {}
    if args.part in ("all", "agreement"):
        results["agreement"] = agreement(args)
        given = sys.argv[1:] if argv is None else argv
        results["agreement"]["command"] = " ".join(["python -m benchmarks.tensor_parallel", *given])
    if args.part in ("all", "throughput"):
        results["throughput"] = throughput(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    versions = f"vLLM {vllm.__version__}, torch {torch.__version__}"
    stem.with_suffix(".md").write_text(render(results, device, versions))
    print(f"wrote {stem}.md, .json")
    return results


if __name__ == "__main__":
    main()
