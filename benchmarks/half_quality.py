"""bf16 and fp16 against fp32 through vLLM with the plugin: teacher-forced log-probabilities
and perplexity on the same windows, judged by bounds fixed before the run.

Every window is scored as a prompt in chunks of one token (C=1), so each token is predicted
from the cache as already evicted (the full cache runs stock vLLM). For each (dtype, policy,
K) one engine scores all windows in one batch; the float32 side is the vLLM engine in
float32 on the same device, and the HF reference (``vllm_tova/reference.py``, float32)
re-scores the first ``--reference-tokens`` tokens of the first ``--reference-windows`` windows
of TOVA at the smallest K to check it.
Engines run side by side, one process each (``benchmarks/ppl_job.py``), most important first
(the reference, TOVA, the full cache, then the baselines); ``--time-limit`` stops the rest
and still reports what finished, and a rerun with the same ``--work-dir`` resumes.

Bounds (``benchmarks/half_stats.py``): perplexity within 1% of float32's on every row; mean
|Δ logprob| ≤ 0.05 nats per token for TOVA; float32 engine within 0.5% of the reference.

``--fp8`` adds bf16 engines with vLLM's FP8 cache (``--kv-cache-dtype fp8``, default scales)
for every policy, K and the full cache (stock FP8), each against the same bf16 engine with
the default cache: TOVA's perplexity gap may exceed stock's FP8 gap by at most 2% (GPU only
where the CPU lacks AVX-512: vLLM's CPU attention refuses an FP8 cache there).

    python -m benchmarks.half_quality --work-dir runs      # GPU: 6 novels x 2,048 tokens, K 128 and 512
    python -m benchmarks.half_quality --quick              # CPU smoke: 256 tokens, K=64, fp32 vs bf16
    python -m benchmarks.half_quality --work-dir runs --fp8  # GPU: also the FP8 cache against bf16

Writes ``half-precision-<model>-<device>.csv`` and ``.md`` to ``--out-dir``; exits 1 if a
row fails its bound, the reference disagrees, or a configuration did not finish.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks import half_report
from benchmarks.half_stats import BASELINE_DTYPE, Config, compare, compare_fp8, reference_checks
from benchmarks.job_pool import Job, Outcome, run_jobs
from benchmarks.perplexity import RESULTS, add_window_arguments, load_windows
from benchmarks.ppl_job import command, read_result, read_windows, result_name, write_windows
from benchmarks.ppl_scoring import FULL, Scored, Window
from benchmarks.report import device_slug, tree_commit
from vllm_tova.dev import assets

REPO = Path(__file__).resolve().parents[1]
HALF_DTYPES = ("bfloat16", "float16")
#: The engine dtype of the FP8-cache runs: what people serve in.
FP8_DTYPE = "bfloat16"
#: Free GPU memory each engine demands at start; its KV pool is sized in bytes regardless.
SHARED_GPU_MEMORY_UTILIZATION = 0.03


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_window_arguments(p, 2048, [128, 512], ["tova", FULL, "h2o", "sink", "window"])
    p.add_argument("--dtypes", nargs="+", default=list(HALF_DTYPES), choices=HALF_DTYPES)
    p.add_argument("--fp8", action="store_true", help=f"also {FP8_DTYPE} engines with an FP8 KV cache, against bf16's")
    p.add_argument("--reference-windows", type=int, default=1, help="windows the HF reference re-scores (0: none)")
    p.add_argument(
        "--reference-tokens",
        type=int,
        default=512,
        help="tokens of each such window it scores (teacher-forced, a window's first tokens do not "
        "depend on the rest); one step per token in HF eager, the slowest run of the grid",
    )
    p.add_argument("--jobs", type=int, default=None, help="engines at once (default: CPU cores on a GPU host, else 1)")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; then stop and report what finished")
    p.add_argument("--work-dir", type=Path, default=None, help="per-configuration results (default: a new temp dir)")
    p.add_argument("--report-only", action="store_true", help="run nothing: report --work-dir's results")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="CPU smoke: persuasion, 1 x 256 tokens, tova K=64, bf16")
    args = p.parse_args(argv)
    if args.quick:
        args.texts, args.windows, args.seq_len = ["persuasion"], 1, 256
        args.budgets, args.policies, args.dtypes = [64], ["tova"], ["bfloat16"]
    if args.report_only and args.work_dir is None:
        p.error("--report-only needs --work-dir")
    return args


def plan(args: argparse.Namespace) -> list[Config]:
    """Every run, most important first: a cut run keeps the TOVA rows."""
    budgets = sorted(k for k in args.budgets if k < args.seq_len)
    dtypes = [BASELINE_DTYPE, *args.dtypes]
    runs = []
    if args.reference_windows and "tova" in args.policies and budgets:
        runs.append(Config(BASELINE_DTYPE, "tova", budgets[0], "reference"))
    ordered = ["tova", FULL] + [p for p in args.policies if p not in ("tova", FULL)]
    for policy in (p for p in ordered if p in args.policies):
        for budget in [None] if policy == FULL else budgets:
            runs += [Config(dtype, policy, budget) for dtype in dtypes]
            if args.fp8:
                base = Config(FP8_DTYPE, policy, budget)
                if base not in runs:
                    runs.append(base)
                runs.append(base._replace(kv_cache_dtype="fp8"))
    return runs


def job_environment(on_gpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if on_gpu:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # one process per engine: more fit the host's cores
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def prepare(args: argparse.Namespace, model: str, work: Path) -> list[Window]:
    """The windows, written once to the work dir; a resumed run must score the same ones."""
    path = work / "windows.json"
    windows = load_windows(model, args.texts, args.seq_len, args.windows)
    if not windows:
        sys.exit(f"no text is {args.seq_len} tokens long")
    if path.exists():
        if read_windows(path) != windows:
            sys.exit(f"{work} holds results for other windows: use another --work-dir")
    else:
        write_windows(windows, path)
    checked = [Window(w.text, w.index, w.ids[: args.reference_tokens]) for w in windows[: args.reference_windows]]
    write_windows(checked, work / "windows-reference.json")
    return windows


def run_all(args: argparse.Namespace, model: str, work: Path, configs: list[Config]) -> None:
    import torch

    on_gpu = torch.cuda.is_available()
    meta = work / "run.json"
    if not meta.exists():
        import vllm

        device = torch.cuda.get_device_name() if on_gpu else "cpu"
        meta.write_text(json.dumps({"device": device, "vllm": vllm.__version__, "torch": torch.__version__,
                                    "date": str(datetime.date.today()), "commit": tree_commit()}))  # fmt: skip
    todo = [c for c in configs if not (work / result_name(c)).exists()]
    jobs_at_once = args.jobs or (len(os.sched_getaffinity(0)) if on_gpu else 1)
    memory = SHARED_GPU_MEMORY_UTILIZATION if on_gpu else None
    inputs = {"vllm": work / "windows.json", "reference": work / "windows-reference.json"}
    jobs = [
        Job(result_name(c), command(model, c, inputs[c.engine], work / result_name(c), memory),
            work / result_name(c).replace(".json", ".log"))  # fmt: skip
        for c in todo
    ]
    print(
        f"{len(jobs)} runs to go ({len(configs) - len(jobs)} done before), {jobs_at_once} at a time, "
        f"{args.seq_len} steps each; raw results in {work}",
        flush=True,
    )
    start = time.monotonic()
    deadline = None if args.time_limit is None else start + args.time_limit

    def report(outcome: Outcome) -> None:
        state = "stopped" if outcome.returncode is None else f"rc {outcome.returncode}"
        print(f"  {outcome.job.name}: {state}, {outcome.seconds:.0f} s (at {time.monotonic() - start:.0f} s)", flush=True)
        if outcome.returncode:
            print("    " + "\n    ".join(outcome.job.log.read_text().splitlines()[-15:]), flush=True)

    run_jobs(jobs, jobs_at_once, deadline, job_environment(on_gpu), report, stagger=0.5 if on_gpu else 0.0)
    print(f"all runs: {time.monotonic() - start:.0f} s", flush=True)


def load_runs(work: Path, windows: list[Window]) -> tuple[dict[Config, list[Scored]], dict[Config, float]]:
    """Every finished configuration's scores, and the seconds its scoring took."""
    runs, seconds = {}, {}
    for path in sorted(work.glob("*.json")):
        if not path.name.startswith(("windows", "run.json")):
            config, scored, took = read_result(path, windows)
            runs[config], seconds[config] = scored, took
    return runs, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.model or str(assets.smollm2_path())
    name = Path(model).name
    if args.work_dir is None:
        import tempfile

        args.work_dir = Path(tempfile.mkdtemp(prefix="half-quality-"))
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    windows = prepare(args, model, work)
    configs = plan(args)
    if not args.report_only:
        run_all(args, model, work, configs)
    runs, seconds = load_runs(work, windows)
    rows, unpaired = compare(runs)
    fp8_rows, fp8_unpaired = compare_fp8(runs)
    unpaired += fp8_unpaired
    checks = reference_checks(runs)
    meta = json.loads((work / "run.json").read_text())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"half-precision-{name}-{device_slug(meta['device'])}"
    half_report.write_rows(rows, checks, fp8_rows, name, meta["device"], stem.with_suffix(".csv"))
    setup = (
        f"{len(windows)} x {args.seq_len} tokens ({', '.join(args.texts)}; {args.windows} per text), "
        f"{sum(len(w.ids) - 1 for w in windows):,} predicted tokens per configuration"
    )
    command = "python -m benchmarks.half_quality " + shlex.join(sys.argv[1:] if argv is None else argv)
    missing = [result_name(c)[:-5] for c in configs if c not in runs]
    unpaired_names = [result_name(c)[:-5] for c in unpaired]
    timings = {result_name(c)[:-5]: seconds[c] for c in configs if c in seconds}
    page, passed = half_report.page(
        name, meta, command, setup, rows, checks, missing + unpaired_names, timings, fp8_rows
    )
    page += "\n" + half_report.perplexity_grids(runs, name, args.seq_len)
    stem.with_suffix(".md").write_text(page)
    print(page)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
