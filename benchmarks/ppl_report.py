"""Perplexity results on disk: the CSV (one row per model/text/policy/budget/engine), a
markdown table and a PNG plot of perplexity versus budget."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

COLUMNS = ["model", "text", "seq_len", "policy", "budget", "engine", "ppl", "tokens"]


@dataclass(frozen=True)
class Row:
    model: str
    text: str
    seq_len: int
    policy: str
    budget: int | None  # None for the full cache
    engine: str  # "vllm" or "reference"
    ppl: float
    tokens: int


def write_csv(rows: Iterable[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            values = asdict(row)
            values["budget"] = "" if row.budget is None else row.budget
            values["ppl"] = f"{row.ppl:.4f}"
            writer.writerow(values)


def _curves(rows: list[Row], text: str) -> tuple[dict[str, dict[int, float]], float | None, list[int]]:
    """Per policy, ppl by budget (vLLM rows), and the full-cache ppl (vLLM, else reference)."""
    curves: dict[str, dict[int, float]] = {}
    full = {r.engine: r.ppl for r in rows if r.text == text and r.budget is None}
    for r in rows:
        if r.text == text and r.engine == "vllm" and r.budget is not None:
            curves.setdefault(r.policy, {})[r.budget] = r.ppl
    budgets = sorted({b for c in curves.values() for b in c})
    return curves, full.get("vllm", full.get("reference")), budgets


def markdown_table(rows: list[Row], text: str) -> str:
    curves, full, budgets = _curves(rows, text)
    lines = ["| policy | " + " | ".join(f"K={b}" for b in budgets) + " |"]
    lines.append("|---" * (len(budgets) + 1) + "|")
    for policy, by_budget in curves.items():
        cells = [f"{by_budget[b]:.2f}" if b in by_budget else "" for b in budgets]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    if full is not None:
        lines.append("| full | " + " | ".join(f"{full:.2f}" for _ in budgets) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], text: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, full, _ = _curves(rows, text)
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, by_budget in curves.items():
        budgets = sorted(by_budget)
        ax.plot(budgets, [by_budget[b] for b in budgets], marker="o", label=policy)
    if full is not None:
        ax.axhline(full, color="black", linestyle="--", label="full")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("KV budget K (tokens per layer)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
