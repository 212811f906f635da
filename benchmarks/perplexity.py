"""Perplexity versus KV budget, through vLLM with the plugin (the TOVA paper's Fig. 3 setup).

Scores Austen novels in ``--seq-len``-token windows with SmolLM2-135M for every policy and
budget K, plus the full cache; each token is predicted from the already-evicted cache (one
token per step). All windows of one (policy, K) run as one batch in one engine. The HF
reference re-scores the first ``--reference-windows`` windows of every configuration and
must agree within 0.5% of perplexity.

    python -m benchmarks.perplexity --seq-len 4096 --windows 2       # the paper's grid
    python -m benchmarks.perplexity --quick                          # CI smoke run

Writes ``perplexity-<model>.csv`` (rows of earlier runs with other keys are kept), and
``perplexity-<model>-<seq_len>.md`` / ``.png`` for this run's seq_len.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
import vllm

from benchmarks.ppl_report import COLUMNS, Row, markdown_table, plot, write_csv
from benchmarks.ppl_scoring import FULL, Scored, Window, make_windows, perplexity, score_reference, score_vllm
from vllm_tova.dev import assets
from vllm_tova.policy import POLICIES

DEFAULT_BUDGETS = [64, 128, 256, 512, 1024, 2048]
AGREEMENT = 0.005  # reference vs vLLM, relative perplexity difference
RESULTS = Path(__file__).parent / "results" / "quality"


def add_window_arguments(
    p: argparse.ArgumentParser, seq_len: int, budgets: list[int], policies: list[str]
) -> None:
    """The model, the Austen windows and the (policy, K) grid: what every perplexity-style
    benchmark scores, with its own defaults."""
    p.add_argument("--model", default=None, help="HF checkpoint (default: the cached SmolLM2-135M)")
    p.add_argument("--texts", nargs="+", default=list(assets.AUSTEN_NOVELS), choices=assets.AUSTEN_NOVELS)
    p.add_argument("--windows", type=int, default=1, help="windows per novel")
    p.add_argument("--seq-len", type=int, default=seq_len)
    p.add_argument("--budgets", type=int, nargs="+", default=budgets)
    p.add_argument("--policies", nargs="+", default=policies, choices=[*POLICIES, FULL])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_window_arguments(p, 4096, DEFAULT_BUDGETS, [*POLICIES, FULL])
    p.add_argument("--reference-windows", type=int, default=0, help="windows re-scored by the reference")
    p.add_argument(
        "--reference-threads",
        type=int,
        default=1,
        help="torch threads for the reference (on a busy 2-core machine 1 thread ran 28x faster)",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="free GPU memory an engine demands at start (the KV pool is sized in bytes "
        "regardless); e.g. 0.05 to run several configurations side by side on one GPU",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="CSV",
        help="score nothing: merge these runs' CSVs (e.g. configurations run in separate "
        "processes with their own --out-dir) into this one and rewrite the table and plot",
    )
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI preset: persuasion, 1 window of 64 tokens, h2o at K=32, reference-checked",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.texts, args.windows, args.seq_len = ["persuasion"], 1, 64
        args.budgets, args.policies, args.reference_windows = [32], ["h2o"], 1
    return args


def load_windows(model: str, texts: list[str], seq_len: int, count: int) -> list[Window]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    windows = []
    for text in texts:
        ids = tokenizer(assets.austen_text(text)).input_ids
        windows += make_windows(text, ids, seq_len, count)
    return windows


def aggregate(scored: list[Scored], **key) -> list[Row]:
    """One row per text, plus ``all`` when there are several texts."""
    by_text: dict[str, list[Scored]] = {}
    for s in scored:
        by_text.setdefault(s.window.text, []).append(s)
    if len(by_text) > 1:
        by_text["all"] = scored
    return [
        Row(text=text, ppl=perplexity(group), tokens=sum(s.tokens for s in group), **key)
        for text, group in by_text.items()
    ]


def read_rows(path: Path) -> list[Row]:
    if not path.exists():
        return []
    with path.open() as f:
        return [
            Row(
                model=r["model"],
                text=r["text"],
                seq_len=int(r["seq_len"]),
                policy=r["policy"],
                budget=int(r["budget"]) if r["budget"] else None,
                engine=r["engine"],
                ppl=float(r["ppl"]),
                tokens=int(r["tokens"]),
            )
            for r in csv.DictReader(f)
        ]


def merge(old: list[Row], new: list[Row]) -> list[Row]:
    def key(r: Row) -> tuple:
        return tuple(getattr(r, c) for c in COLUMNS[:6])

    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def write_report(rows: list[Row], name: str, args: argparse.Namespace, provenance: str) -> None:
    """The markdown table and the plot of every row with this run's model and seq_len."""
    text = "all" if len(args.texts) > 1 else args.texts[0]
    stem = args.out_dir / f"perplexity-{name}-{args.seq_len}"
    same_len = [r for r in rows if r.model == name and r.seq_len == args.seq_len]
    table = markdown_table(same_len, text)
    stem.with_suffix(".md").write_text(
        f"Perplexity of {name} on {text} ({args.seq_len}-token windows), vLLM + vllm-tova:\n\n"
        f"- command: `python -m benchmarks.perplexity {' '.join(sys.argv[1:])}`\n"
        f"- {provenance}; vLLM {vllm.__version__}; {datetime.date.today()}\n\n{table}"
    )
    plot(same_len, text, f"{name}, {text}, {args.seq_len}-token windows", stem.with_suffix(".png"))
    print(table)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # skips a ~15 s ISA probe per start
    args = parse_args(argv)
    model = args.model or str(assets.smollm2_path())
    name = Path(model).name
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.out_dir / f"perplexity-{name}.csv"
    rows = read_rows(csv_path)
    if args.merge:
        for other in args.merge:
            rows = merge(rows, [r for r in read_rows(other) if r.model == name])
        write_csv(rows, csv_path)
        # Rows carry no device: each merged run's own log or table says where it ran.
        write_report(rows, name, args, "merged from " + ", ".join(map(str, args.merge)))
        return 0
    windows = load_windows(model, args.texts, args.seq_len, args.windows)
    if not windows:
        sys.exit(f"no text is {args.seq_len} tokens long")
    # Budget-major order: a partial run still compares every policy at the budgets it reached.
    budgets = sorted(k for k in args.budgets if k < args.seq_len)
    configs = [(p, k) for k in budgets for p in args.policies if p != FULL]
    if FULL in args.policies:
        configs.insert(0, (FULL, None))
    checked = windows[: args.reference_windows]
    reference = None
    threads = torch.get_num_threads()
    if checked:
        from vllm_tova.reference import TovaReference

        torch.set_num_threads(args.reference_threads)
        reference = TovaReference(model)

    disagreements = []
    for policy, budget in configs:
        key = dict(model=name, seq_len=args.seq_len, policy=policy, budget=budget)
        scored, seconds = score_vllm(model, policy, budget, windows, args.gpu_memory_utilization)
        new = aggregate(scored, engine="vllm", **key)
        print(
            f"{policy} K={budget}: ppl {perplexity(scored):.3f} over {len(windows)} windows "
            f"x {args.seq_len} tokens, {seconds:.0f} s in vLLM",
            flush=True,
        )
        for s in scored[: len(checked)]:
            start = time.perf_counter()
            ref = score_reference(reference, policy, budget, s.window)
            label = f"{s.window.text}#{s.window.index}"
            ours, theirs = perplexity([s]), perplexity([ref])
            new.append(Row(text=label, ppl=ours, tokens=s.tokens, engine="vllm", **key))
            new.append(Row(text=label, ppl=theirs, tokens=ref.tokens, engine="reference", **key))
            gap = abs(ours - theirs) / theirs
            took = time.perf_counter() - start
            print(f"  reference {label}: {theirs:.4f} vs vLLM {ours:.4f} ({gap:.3%}), {took:.0f} s")
            if gap > AGREEMENT:
                disagreements.append(f"{policy} K={budget} {label}: {gap:.3%}")
        rows = merge(rows, new)
        write_csv(rows, csv_path)  # after every configuration: partial grids survive

    torch.set_num_threads(threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    write_report(rows, name, args, f"device: {device}")
    if disagreements:
        print("reference disagrees beyond 0.5%: " + "; ".join(disagreements), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
