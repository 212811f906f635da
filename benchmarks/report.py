"""Throughput outputs: CSV rows, a markdown summary (spread over repeats, ratios, targets), a PNG."""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: CSV columns, in order: what a row is, then what it measured, then the ceiling model.
COLUMNS = [
    "protocol", "status", "model", "workload", "prompt_len", "gen_len", "system", "policy", "budget",
    "kv_cache_dtype", "evicts", "num_requests", "repeat", "seconds", "finished", "gen_tok_s",
    "total_tok_s", "mean_running", "peak_running", "capacity", "mean_attended_context",
    "mean_sequence_length", "peak_kv_blocks", "peak_pool_use", "preemptions", "steps", "mean_step_ms",
    "predicted_s", "ceiling_fraction", "weights_s", "kv_s", "flops_s", "binding", "copy_tb_s",
    "matmul_tflops", "kv_pool_blocks", "block_size", "prefill_chunk", "dtype", "device",
    "vllm_version", "tensor_parallel_size", "detail",
]  # fmt: skip

#: Run-to-completion targets on the paper workload: (model, system, baseline) -> ratio.
TARGETS = {
    ("llama2-7b", "tova K=512", "stock"): 4.0,
    ("llama3-8b", "tova K=512", "stock"): 2.8,
    ("llama3-8b", "tova K=512", "stock fp8"): 1.5,
    ("llama2-7b", "tova K=512 fp8", "stock"): 6.0,
    ("llama2-7b", "tova K=512 fp8", "stock fp8"): 3.0,
    ("llama3-8b", "tova K=512 fp8", "stock"): 3.5,
    ("llama3-8b", "tova K=512 fp8", "stock fp8"): 2.0,
}
SHORT_TARGET = 1.0  # short workload: TOVA at least stock
CEILING_TARGET = 0.85  # measured step at least this fraction of the ceiling model's


def device_slug(name: str) -> str:
    """The device as it appears in result file names and CSV rows, the same for every
    benchmark: 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3', 'cpu' -> 'cpu'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removeprefix("nvidia ")).strip("-")


def tree_commit() -> str:
    """The tree a record was made from: HEAD, and whether it had uncommitted changes, or
    ``VLLM_TOVA_COMMIT`` where the checkout was copied without its current ``.git``."""
    if os.environ.get("VLLM_TOVA_COMMIT"):
        return os.environ["VLLM_TOVA_COMMIT"] + " (from VLLM_TOVA_COMMIT)"
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def append_section(path: Path, title: str, section: str) -> None:
    """Append one run's section to a markdown record (created with ``title``): the GPU
    scripts keep every run, each under its own heading."""
    previous = path.read_text().rstrip("\n") if path.exists() else f"# {title}"
    path.write_text(f"{previous}\n\n{section.strip(chr(10))}\n")


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _fmt(value, digits: int = 1) -> str:
    x = _num(value)
    return "n/a" if math.isnan(x) else f"{x:,.{digits}f}"


def _times(ratio: float) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"


def one_line(row: dict) -> str:
    """A progress line for one run."""
    head = f"{row['system']:>16} {row['workload']:>11} N={row['num_requests']:>5} #{row['repeat']}"
    if "gen_tok_s" not in row:
        return f"{head}: {row['status']} ({row['detail']})"
    return (
        f"{head}: {row['status']}, {_fmt(row['seconds'])} s, gen {_fmt(row['gen_tok_s'])} tok/s, "
        f"mean running {_fmt(row['mean_running'])}, attended context {_fmt(row['mean_attended_context'], 0)}, "
        f"preemptions {row['preemptions']}, ceiling {_fmt(100 * _num(row.get('ceiling_fraction')), 0)}% "
        f"({row.get('binding', '')}-bound)"
    )


def summarize(rows: Sequence[dict]) -> list[dict]:
    """One entry per (workload, system, N): means over the repeats that produced figures,
    with the spread (min-max) of generated tok/s."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["system"], int(r["num_requests"])), []).append(r)
    out = []
    for (workload, system, n), runs in groups.items():
        good = [r for r in runs if r["status"] in ("finished", "steady", "early-decode")]
        entry = {"workload": workload, "system": system, "num_requests": n, "runs": len(good),
                 "status": runs[-1]["status"], "detail": runs[-1].get("detail", ""), "first": runs[0]}  # fmt: skip
        if good:
            gen = [_num(r["gen_tok_s"]) for r in good]
            for key in ("gen_tok_s", "total_tok_s", "seconds", "mean_running", "mean_attended_context",
                        "ceiling_fraction", "peak_pool_use", "mean_step_ms"):  # fmt: skip
                entry[key] = sum(_num(r.get(key)) for r in good) / len(good)
            entry["spread"] = (min(gen), max(gen))
            entry["preemptions"] = max(int(_num(r["preemptions"])) for r in good)
            entry["binding"] = good[-1].get("binding", "")
            entry["evicts"] = str(good[-1].get("evicts", ""))
        out.append(entry)
    return out


def best_per_system(summary: Sequence[dict]) -> dict[tuple[str, str], dict]:
    """(workload, system) -> its entry at the N with the highest mean generated tok/s."""
    best: dict[tuple[str, str], dict] = {}
    for e in summary:
        if "gen_tok_s" not in e:
            continue
        k = (e["workload"], e["system"])
        if k not in best or e["gen_tok_s"] > best[k]["gen_tok_s"]:
            best[k] = e
    return best


def _ratio(a: dict | None, b: dict | None) -> float:
    return a["gen_tok_s"] / b["gen_tok_s"] if a and b and b.get("gen_tok_s") else math.nan


def completion_markdown(rows: Sequence[dict]) -> str:
    """Per-point summary, each system's best point against stock (and stock fp8), targets.
    Early-decode rows are a diagnostic: no ratios or targets are drawn from them."""
    protocol = rows[0]["protocol"] if rows else "completion"
    summary = summarize(rows)
    lines = [
        "| workload | system | N | runs | gen tok/s (spread) | total tok/s | wall s | mean running "
        "| mean attended context | peak pool use | preemptions | step ms | of ceiling | bound by |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        f = e["first"]
        name = f"{e['workload']} ({f['prompt_len']}+{f['gen_len']})"
        if "gen_tok_s" not in e:
            lines.append(f"| {name} | {e['system']} | {e['num_requests']} | 0 | {e['status']}: {e['detail']} "
                         "| | | | | | | | | |")  # fmt: skip
            continue
        lo, hi = e["spread"]
        never = " (never evicts)" if e["evicts"] == "0" and f["policy"] != "none" else ""
        lines.append(
            f"| {name} | {e['system']}{never} | {e['num_requests']} | {e['runs']} "
            f"| {_fmt(e['gen_tok_s'])} ({_fmt(lo, 0)}-{_fmt(hi, 0)}) | {_fmt(e['total_tok_s'])} "
            f"| {_fmt(e['seconds'])} | {_fmt(e['mean_running'])} | {_fmt(e['mean_attended_context'], 0)} "
            f"| {_fmt(100 * e['peak_pool_use'], 0)}% | {e['preemptions']} | {_fmt(e['mean_step_ms'], 2)} "
            f"| {_fmt(100 * e['ceiling_fraction'], 0)}% | {e['binding']} |"
        )
    if protocol == "early-decode":
        return "\n".join(lines) + "\n\nEarly-decode diagnostic: cut seconds into decode, no ratios drawn.\n"
    unsteady = [e for e in summary if e["status"] == "not-steady"]
    best = best_per_system(summary)
    lines += ["", "Each system at its best N (mean generated tok/s over the runs):", "",
              "| workload | system | N | gen tok/s | vs stock | vs stock fp8 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for (workload, system), e in best.items():
        stock, fp8 = best.get((workload, "stock")), best.get((workload, "stock fp8"))
        lines.append(
            f"| {workload} | {system} | {e['num_requests']} | {_fmt(e['gen_tok_s'])} "
            f"| {_times(_ratio(e, stock))} | {_times(_ratio(e, fp8))} |"
        )
    lines += [f"- not steady, no ratio drawn: {e['system']} N={e['num_requests']}: {e['detail']}" for e in unsteady]
    if protocol == "completion":
        lines += ["", *targets(rows, best)]
    return "\n".join(lines) + "\n"


def targets(rows: Sequence[dict], best: dict[tuple[str, str], dict]) -> list[str]:
    """The project's throughput targets (``TARGETS``, ``SHORT_TARGET``, ``CEILING_TARGET``),
    computed from the measured rows (nothing assumed)."""
    model = rows[0]["model"] if rows else ""
    out = ["Targets (run to completion, each system at its best N):", ""]
    for (name, system, base), goal in TARGETS.items():
        if name == model and ("paper", system) in best and ("paper", base) in best:
            e = best[("paper", system)]
            r = _ratio(e, best[("paper", base)])
            verdict = "met" if r >= goal else (
                f"not met; {system} runs at {100 * e['ceiling_fraction']:.0f}% of its ceiling model, "
                f"where the {e['binding']} term binds"
            )
            out.append(f"- paper: {system} {r:.2f}x {base} (target >= {goal}x): {verdict}")
    tova = [k for k in best if k[0] == "short" and k[1].startswith("tova") and "fp8" not in k[1]]
    for k in tova:
        r = _ratio(best[k], best.get(("short", "stock")))
        out.append(f"- short: {k[1]} {r:.2f}x stock (target >= {SHORT_TARGET}x): {'met' if r >= SHORT_TARGET else 'not met'}")
    for (workload, system), e in best.items():
        if system.startswith("tova"):
            frac = e["ceiling_fraction"]
            verdict = "met" if frac >= CEILING_TARGET else f"not met; the {e['binding']} term binds"
            out.append(f"- {workload}: {system} at N={e['num_requests']} ran at {100 * frac:.0f}% of the ceiling "
                       f"model (target >= {100 * CEILING_TARGET:.0f}%): {verdict}")  # fmt: skip
    return out


def plot_completion(rows: Sequence[dict], path: Path, title: str) -> None:
    """Generated tok/s against the measured batch (mean running sequences), one panel per
    workload, one line per system (one point per N, the mean over its runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [e for e in summarize(rows) if "gen_tok_s" in e]
    workloads = list(dict.fromkeys(e["workload"] for e in summary)) or ["none"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        mine = [e for e in summary if e["workload"] == workload]
        for i, system in enumerate(dict.fromkeys(e["system"] for e in mine)):
            pts = sorted((e["mean_running"], e["gen_tok_s"]) for e in mine if e["system"] == system)
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", color=f"C{i}", label=system)
        ax.set_title(workload)
        ax.set_xlabel("mean running sequences")
        ax.set_ylabel("generated tok/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
