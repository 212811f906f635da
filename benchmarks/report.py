"""Benchmark outputs: the CSV rows, a markdown table with the best point per system, a PNG plot."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

#: CSV columns, in order (the issue's required ones first).
COLUMNS = [
    "device", "vllm_version", "policy", "budget", "workload", "prompt_len", "gen_len",
    "num_requests", "max_num_seqs", "gen_tok_s", "total_tok_s", "mean_running", "preemptions",
    "batch_size", "req_s", "steady_gen_tok_s", "ramp_s", "seconds", "finished", "truncated",
    "peak_running", "peak_kv_blocks", "peak_kv_slots_per_seq", "kv_pool_blocks", "block_size",
    "prefill_chunk", "model", "tensor_parallel_size",
]  # fmt: skip


def device_slug(name: str) -> str:
    """The device as it appears in result file names and CSV rows, the same for every
    benchmark: 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3', 'cpu' -> 'cpu'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removeprefix("nvidia ")).strip("-")


def system_label(row: dict) -> str:
    return "stock" if row["policy"] == "none" else f"{row['policy']} K={row['budget']}"


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


def write_csv(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in COLUMNS})


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def best_rows(rows: Sequence[dict], key: str = "gen_tok_s") -> dict[tuple[str, str], dict]:
    """(workload, system) -> the row with the highest ``key`` (each system at its best batch)."""
    best: dict[tuple[str, str], dict] = {}
    for row in rows:
        k = (row["workload"], system_label(row))
        if k not in best or _num(row[key]) > _num(best[k][key]):
            best[k] = row
    return best


def _fmt(value, digits: int = 1) -> str:
    x = _num(value)
    return "n/a" if math.isnan(x) else f"{x:,.{digits}f}"


def _ratio(a: dict, b: dict | None, key: str) -> str:
    return "n/a" if b is None or not _num(b[key]) else f"{_num(a[key]) / _num(b[key]):.2f}x"


def markdown(rows: Sequence[dict]) -> str:
    """All points, then each system's best point per workload with its ratio to stock."""
    lines = [
        "| workload | system | batch | requests | gen tok/s | total tok/s | req/s | steady gen tok/s "
        "| mean running | peak KV blocks | peak KV slots/seq | preemptions | truncated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} ({r['prompt_len']}+{r['gen_len']}) | {system_label(r)} | {r['batch_size']} "
            f"| {r['num_requests']} | {_fmt(r['gen_tok_s'])} | {_fmt(r['total_tok_s'])} "
            f"| {_fmt(r['req_s'], 2)} | {_fmt(r['steady_gen_tok_s'])} | {_fmt(r['mean_running'])} "
            f"| {_fmt(r['peak_kv_blocks'], 0)} | {_fmt(r['peak_kv_slots_per_seq'], 0)} "
            f"| {r['preemptions']} | {r['truncated']} |"
        )
    lines += [
        "",
        "Best batch size per system (by generated tok/s over the whole run; and by steady tok/s):",
        "",
    ]
    lines += [
        "| workload | system | best batch | gen tok/s | vs stock | best batch (steady) | steady gen tok/s "
        "| vs stock | total tok/s (at gen best) | vs stock |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    best, steady = best_rows(rows), best_rows(rows, "steady_gen_tok_s")
    for (workload, system), r in best.items():
        base, base_s, s = (
            best.get((workload, "stock")),
            steady.get((workload, "stock")),
            steady[(workload, system)],
        )
        lines.append(
            f"| {workload} | {system} | {r['batch_size']} | {_fmt(r['gen_tok_s'])} "
            f"| {_ratio(r, base, 'gen_tok_s')} | {s['batch_size']} | {_fmt(s['steady_gen_tok_s'])} "
            f"| {_ratio(s, base_s, 'steady_gen_tok_s')} | {_fmt(r['total_tok_s'])} "
            f"| {_ratio(r, base, 'total_tok_s')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: Path, title: str) -> None:
    """Generated tok/s versus batch size, one panel per workload, one line per system
    (solid: whole run; dashed: steady window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        mine = [r for r in rows if r["workload"] == workload]
        for i, system in enumerate(dict.fromkeys(system_label(r) for r in mine)):
            pts = sorted((int(r["batch_size"]), r) for r in mine if system_label(r) == system)
            xs = [b for b, _ in pts]
            color = f"C{i}"
            ax.plot(xs, [_num(r["gen_tok_s"]) for _, r in pts], "o-", color=color, label=system)
            ax.plot(xs, [_num(r["steady_gen_tok_s"]) for _, r in pts], "x--", color=color, alpha=0.6)
        r0 = mine[0]
        ax.set_title(f"{workload}: {r0['prompt_len']} prompt + {r0['gen_len']} generated")
        ax.set_xscale("log", base=2)
        ticks = sorted({int(r["batch_size"]) for r in mine})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("batch size (requests in flight)")
        ax.set_ylabel("generated tok/s (dashed: steady window)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(rows: Sequence[dict], budget: int) -> str:
    """The issue's three checks, computed from the measured rows (nothing assumed)."""
    best, steady = best_rows(rows), best_rows(rows, "steady_gen_tok_s")
    tova = f"tova K={budget}"
    out = [f"Targets (TOVA K={budget} vs stock, each at its best batch size):", ""]

    def ratio(table: dict, workload: str, key: str) -> float:
        a, b = table.get((workload, tova)), table.get((workload, "stock"))
        return _num(a[key]) / _num(b[key]) if a and b and _num(b[key]) else math.nan

    if ("paper", tova) in best:
        r, s = ratio(best, "paper", "gen_tok_s"), ratio(steady, "paper", "steady_gen_tok_s")
        out.append(
            f"- paper: generated tok/s {r:.2f}x stock over whole runs, {s:.2f}x in the steady window "
            f"(target >= 5.5x): {'met' if max(r, s) >= 5.5 else 'not met'}"
        )
    long_rows = [r for r in rows if r["workload"] == "long-prompt" and system_label(r) == tova]
    if long_rows:
        peak = max(_num(r["peak_kv_slots_per_seq"]) for r in long_rows)
        bound = budget + 1 + int(long_rows[0]["prefill_chunk"])
        out.append(
            f"- long-prompt: peak KV slots per running sequence {peak:.0f} (bound K+1+C = {bound}): "
            f"{'met' if peak <= bound else 'not met'}; generated tok/s "
            f"{ratio(best, 'long-prompt', 'gen_tok_s'):.2f}x stock, total tok/s "
            f"{ratio(best, 'long-prompt', 'total_tok_s'):.2f}x"
        )
    if ("short", tova) in best:
        r = ratio(best, "short", "gen_tok_s")
        out.append(
            f"- short: generated tok/s {r:.2f}x stock (target >= 0.95x): {'met' if r >= 0.95 else 'not met'}"
        )
    return "\n".join(out) + "\n"
