"""CI smoke run of benchmarks/throughput.py: tiny dummy Llama, CPU, a KV pool of 7 sequences.

Keeps the script from rotting and checks what it measures is sane: on a pool too small for
stock, TOVA keeps more sequences running and generates faster per second.
"""

from __future__ import annotations

import csv
import json
import math
from argparse import Namespace
from pathlib import Path

from benchmarks import throughput
from benchmarks.closed_loop import _time_weighted_mean
from benchmarks.workloads import Workload
from vllm_tova.kv_manager import blocks_per_sequence


def test_batch_sizes_follow_each_systems_capacity() -> None:
    args = Namespace(batch_sizes=None, batch_multipliers=[0.5, 1, 4], block_size=32, max_num_seqs=64)
    work = Workload("paper", 32, 224)  # 8 blocks of 32
    stock, tova = throughput.System("none"), throughput.System("tova", 64)  # 2 blocks
    assert throughput.batch_sizes(args, stock, work, pool_blocks=65) == [4, 8]
    assert throughput.batch_sizes(args, tova, work, pool_blocks=65) == [4, 8, 32]


def test_time_weighted_mean() -> None:
    samples = [(0.0, 2), (1.0, 4), (3.0, 0)]
    assert _time_weighted_mean(samples, 0.0, 4.0) == (2 * 1 + 4 * 2 + 0 * 1) / 4
    assert _time_weighted_mean(samples, 1.0, 3.0) == 4


def test_throughput_smoke(tmp_path: Path) -> None:
    rows = throughput.main(
        [
            "--model", "tiny-llama", "--workloads", "paper", "--scale", "16",  # 32 + 224 tokens
            "--budgets", "64", "--budget", "64", "--prefill-chunk", "32",
            "--kv-pool-tokens", "2048",  # 64 blocks of 32: 7 full stock sequences
            "--batch-multipliers", "1,4", "--waves", "1", "--max-num-seqs", "32",
            "--max-num-batched-tokens", "256",  # small warm-up shapes: a faster engine start
            "--out-dir", str(tmp_path), "--ramp-trace",
        ]
    )  # fmt: skip
    stem = tmp_path / "throughput-cpu"
    for suffix in (".csv", ".md", ".png"):
        assert stem.with_suffix(suffix).stat().st_size > 0
    with stem.with_suffix(".csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 3  # stock at 7; TOVA at 7 and 28
    for row in table:
        assert float(row["gen_tok_s"]) > 0 and float(row["total_tok_s"]) > float(row["gen_tok_s"])
        assert int(row["finished"]) == int(row["num_requests"]) and row["truncated"] == "0"
        assert not math.isnan(float(row["steady_gen_tok_s"]))
    stock = [r for r in table if r["policy"] == "none"]
    tova = [r for r in table if r["policy"] == "tova"]
    assert [r["batch_size"] for r in stock] == ["7"] and [r["batch_size"] for r in tova] == ["7", "28"]
    best_stock = max(float(r["mean_running"]) for r in stock)
    best_tova = max(float(r["mean_running"]) for r in tova)
    print(f"mean running: stock {best_stock}, TOVA {best_tova}")
    assert best_tova > 2 * best_stock
    # A sequence's retained tokens occupy logical slots [0, min(seen, K)) at every stage,
    # prompt chunks included: at most ceil(K / block_size) blocks, 64 slots. The pool is shared.
    assert all(float(r["peak_kv_slots_per_seq"]) <= blocks_per_sequence(64, 32) * 32 for r in tova)
    assert len({r["kv_pool_blocks"] for r in table}) == 1
    assert "Targets" in stem.with_suffix(".md").read_text()
    ramps = json.loads((tmp_path / "throughput-cpu-ramps.json").read_text())
    assert [(r["system"], r["batch_size"]) for r in ramps] == [
        ("stock", 7), ("tova K=64", 7), ("tova K=64", 28),
    ]  # fmt: skip
    for ramp in ramps:
        # The ramp ended at the last step traced, with no more than the first wave started.
        assert ramp["ramp_s"] == ramp["steps"][-1][0]
        assert 0 < sum(step[2] for step in ramp["steps"]) <= ramp["batch_size"]


def test_report_picks_each_systems_best_batch(tmp_path: Path) -> None:
    from benchmarks import report

    def row(policy, budget, workload, batch, gen, slots=0.0):
        return {
            "policy": policy, "budget": budget, "workload": workload, "batch_size": batch,
            "prompt_len": 512, "gen_len": 512, "num_requests": 2 * batch, "gen_tok_s": gen,
            "total_tok_s": 2 * gen, "req_s": 1.0, "steady_gen_tok_s": gen, "mean_running": batch,
            "peak_kv_blocks": 1, "peak_kv_slots_per_seq": slots, "preemptions": 0, "truncated": 0,
            "prefill_chunk": 512,
        }  # fmt: skip

    rows = [
        row("none", 0, "paper", 100, 1000.0), row("none", 0, "paper", 50, 800.0),
        row("tova", 512, "paper", 400, 6000.0), row("tova", 512, "paper", 800, 5000.0),
        row("none", 0, "short", 400, 1000.0), row("tova", 512, "short", 400, 940.0),
        row("none", 0, "long-prompt", 50, 100.0), row("tova", 512, "long-prompt", 50, 150.0, slots=1040),
    ]  # fmt: skip
    best = report.best_rows(rows)
    assert best[("paper", "stock")]["batch_size"] == 100
    assert best[("paper", "tova K=512")]["batch_size"] == 400
    text = report.targets(rows, 512)
    assert "6.00x stock" in text and ": met" in text.splitlines()[2]
    assert "peak KV slots per running sequence 1040 (bound K+1+C = 1025): not met" in text
    assert "0.94x stock (target >= 0.95x): not met" in text
    report.write_csv(rows, tmp_path / "t.csv")
    assert len(report.read_csv(tmp_path / "t.csv")) == len(rows)
    assert "| paper | tova K=512 | 400 | 6,000.0 | 6.00x |" in report.markdown(rows)
    report.plot(rows, tmp_path / "t.png", "synthetic")
    assert (tmp_path / "t.png").stat().st_size > 0


def test_device_slug_is_shared_by_every_result_file() -> None:
    from benchmarks.report import device_slug

    assert device_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"  # kernel/gpu-correctness files
    assert device_slug("cpu") == "cpu"
    assert device_slug("NVIDIA A100-SXM4-80GB") == "a100-sxm4-80gb"


class _Gauge:
    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value


class _ScriptedEngine:
    """An engine stand-in whose scheduler admits ``admits[step]`` waiting requests per step
    (the last entry repeats), up to ``capacity`` running; every running request emits one
    token per step. Submitted requests reach the scheduler (and its waiting gauge) at the
    next step; with ``arrivals``, only that many per step, as when the engine core steps
    while the client still submits. Enough to drive ``run_closed_loop``'s ramp detection without vLLM."""

    def __init__(self, admits: list[int], capacity: int, arrivals: int | None = None) -> None:
        self.admits, self.capacity, self.arrivals, self.steps = admits, capacity, arrivals, 0
        self.in_transit: list[str] = []
        self.waiting: list[str] = []
        self.running: list[str] = []

    # LLMEngine surface
    def add_request(self, rid, prompt, params) -> None:
        self.in_transit.append(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self.in_transit or self.waiting or self.running)

    def abort_request(self, rids) -> None:
        self.in_transit = [r for r in self.in_transit if r not in rids]
        self.waiting = [r for r in self.waiting if r not in rids]
        self.running = [r for r in self.running if r not in rids]

    def step(self) -> list[Namespace]:
        arrived = self.in_transit[: self.arrivals]  # all of them when arrivals is None
        del self.in_transit[: len(arrived)]
        self.waiting += arrived
        admit = self.admits[min(self.steps, len(self.admits) - 1)]
        admit = min(admit, self.capacity - len(self.running), len(self.waiting))
        self.running += self.waiting[:admit]
        self.waiting = self.waiting[admit:]
        self.steps += 1
        return [
            Namespace(request_id=rid, outputs=[Namespace(token_ids=[0])], finished=False)
            for rid in self.running
        ]


class _ScriptedLLM:
    def __init__(self, engine: _ScriptedEngine) -> None:
        self.llm_engine = engine

    def get_metrics(self) -> list[_Gauge]:
        e = self.llm_engine
        return [
            _Gauge("vllm:num_requests_running", len(e.running)),
            _Gauge("vllm:num_requests_waiting", len(e.waiting)),
            _Gauge("vllm:kv_cache_usage_perc", len(e.running) / 100),
            _Gauge("vllm:num_preemptions", 0),
        ]


def _scripted_point(admits: list[int], capacity: int, batch: int = 8, arrivals: int | None = None):
    """A closed-loop point on the scripted engine; the clock ticks once per step."""
    from benchmarks.closed_loop import run_closed_loop

    times = iter(range(10**6))
    engine = _ScriptedEngine(admits, capacity, arrivals)
    return run_closed_loop(
        _ScriptedLLM(engine), lambda i: [1, 2, 3], 10**6, batch, batch,
        pool_blocks=101, block_size=1, time_limit=50, sample_interval=0, clock=lambda: next(times),
    )  # fmt: skip


def test_ramp_waits_out_a_step_that_admits_nobody() -> None:
    # Two requests in, one step admitting nobody, then the rest: the ramp is the first wave.
    point = _scripted_point([2, 0, 6], capacity=8)
    assert (point.ramp_seconds, point.mean_running) == (3, 8)
    # What the ramp test read at each step, up to the one that ended the ramp.
    assert point.ramp_trace == [(1, 2, 2, 2, 6), (2, 2, 0, 2, 6), (3, 8, 6, 8, 0)]


def test_ramp_waits_for_requests_still_on_their_way_to_the_engine() -> None:
    # One submission reaches the scheduler per step: nothing is ever waiting, every running
    # request decodes, yet the first wave is not in until step 40.
    point = _scripted_point([100], capacity=100, batch=40, arrivals=1)
    assert all(waiting == 0 for *_, waiting in point.ramp_trace)
    assert (point.ramp_seconds, point.mean_running) == (40, 40)


def test_ramp_ends_when_the_pool_holds_no_more() -> None:
    from benchmarks.closed_loop import SETTLED_STEPS

    point = _scripted_point([3], capacity=3)
    assert point.mean_running == 3
    assert point.ramp_seconds <= SETTLED_STEPS + 2
