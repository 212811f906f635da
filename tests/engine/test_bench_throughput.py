"""benchmarks/throughput.py and its protocols.

The CPU smoke run (tiny dummy Llama, a KV pool of 7 full sequences) keeps the script from
rotting and checks its accounting against closed forms; a scripted engine drives the
protocols' control flow without vLLM.
"""

from __future__ import annotations

import csv
import math
from argparse import Namespace
from pathlib import Path

import pytest

from benchmarks import report, throughput
from benchmarks.ceiling import CostTally, DeviceRates, ModelCost
from benchmarks.engine_run import prompt_attention_pairs, time_weighted_mean
from benchmarks.protocols import run_steady, run_to_completion
from benchmarks.workloads import Workload


def test_systems_parse() -> None:
    parse = throughput.System.parse
    assert parse("stock") == throughput.System("none", 0, "auto")
    assert parse("stock-fp8").label == "stock fp8"
    assert parse("tova:512") == throughput.System("tova", 512)
    assert parse("tova:256-fp8").label == "tova K=256 fp8"
    assert parse("tova:512-fp8@16") == throughput.System("tova", 512, "fp8", 16.0)
    assert parse("stock@2").request_multiplier == 2.0
    with pytest.raises(Exception, match="needs a budget"):
        parse("tova")


def test_request_and_batch_sizes_follow_capacity() -> None:
    args = Namespace(num_requests=None, request_multipliers=[4.0], batch_sizes=None,
                     batch_multipliers=[0.5, 1, 4], block_size=32, max_num_seqs=64)  # fmt: skip
    work = Workload("paper", 32, 224)  # 8 blocks of 32: stock holds 8 in 65 blocks
    stock, tova = throughput.System("none"), throughput.System("tova", 64)  # 2 blocks
    assert throughput.request_counts(args, work, stock_pool_blocks=65) == [32]
    assert throughput.request_counts(args, work, 65, throughput.System("tova", 64, "fp8", 16.0)) == [128]
    assert throughput.request_counts(args, work, 65, tova) == [32]
    assert throughput.batch_sizes(args, stock, work, 65, 65) == [4, 8]
    assert throughput.batch_sizes(args, tova, work, 65, 65) == [4, 8, 32]


def test_time_weighted_mean() -> None:
    samples = [(0.0, 2), (1.0, 4), (3.0, 0)]
    assert time_weighted_mean(samples, 0.0, 4.0) == (2 * 1 + 4 * 2 + 0 * 1) / 4
    assert time_weighted_mean(samples, 1.0, 3.0) == 4


def test_prompt_attention_pairs() -> None:
    assert prompt_attention_pairs(4, None, 2) == 10  # causal: 1+2+3+4
    # K=2, C=2 over 6 tokens: each chunk sees min(kept, 2) old entries plus itself causally.
    assert prompt_attention_pairs(6, 2, 2) == 3 + (2 * 2 + 3) + (2 * 2 + 3)


def test_ceiling_terms() -> None:
    cost = ModelCost(weight_bytes=100, kv_bytes_per_token=10, flops_per_token=4, attn_flops_per_context_token=2)
    rates = DeviceRates(copy_bytes_per_s=1000.0, matmul_flops_per_s=100.0)
    tally = CostTally()
    tally.add_step(tokens=3, kv_tokens_read=20)
    tally.add_step(tokens=3, kv_tokens_read=30)
    terms = tally.terms(cost, rates)
    assert terms == pytest.approx({"weights": 0.2, "kv": 0.5, "flops": (6 * 4 + 50 * 2) / 100})
    assert tally.predict(cost, rates) == pytest.approx(0.2 + 0.5 + 1.24)


def test_model_cost_from_a_preset() -> None:
    from benchmarks.presets import resolve_model

    path = resolve_model("llama3-8b").path
    bf16, fp8 = ModelCost.from_config(path, "bfloat16"), ModelCost.from_config(path, "bfloat16", "fp8")
    assert bf16.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 2 * fp8.kv_bytes_per_token
    # Llama-3-8B: 8.03e9 parameters, of which the 0.53e9 of the input embedding are only indexed.
    assert bf16.weight_bytes == 2 * (32 * (4096 * 48 * 128 + 4096 * 4096 + 3 * 4096 * 14336) + 128256 * 4096)


def test_throughput_smoke(tmp_path: Path) -> None:
    """Stock and TOVA K=64 run the same 28 requests to completion on a pool of 7 full
    sequences; the accounting matches the workload's closed forms."""
    rows = throughput.main(
        [
            "--model", "tiny-llama", "--workloads", "paper", "--scale", "16",  # 32 + 224 tokens
            "--systems", "stock,tova:64", "--prefill-chunk", "32", "--repeats", "1",
            "--kv-pool-tokens", "2048",  # 64 blocks of 32: 7 full stock sequences
            "--max-num-seqs", "32", "--max-num-batched-tokens", "256",  # small warm-up shapes
            "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    stem = tmp_path / "cpu-tiny-llama-completion"
    for suffix in (".csv", ".md", ".png"):
        assert stem.with_suffix(suffix).stat().st_size > 0
    with stem.with_suffix(".csv").open() as f:
        table = {r["system"]: r for r in csv.DictReader(f)}
    assert len(rows) == 2 and set(table) == {"stock", "tova K=64"}
    prompt, gen, budget = 32, 224, 64
    for row in table.values():
        assert row["status"] == "finished" and int(row["finished"]) == int(row["num_requests"]) == 28
        assert int(row["num_requests"]) == 4 * int(table["stock"]["capacity"])
        assert float(row["total_tok_s"]) > float(row["gen_tok_s"]) > 0
        assert float(row["mean_sequence_length"]) == prompt + gen / 2  # mean of 32+g, g = 1..223
        assert float(row["predicted_s"]) > 0 and row["binding"] in ("weights", "kv", "flops")
    stock_context = sum(prompt + g for g in range(1, gen)) / (gen - 1)
    tova_context = sum(min(prompt + g, budget + 1) for g in range(1, gen)) / (gen - 1)
    assert float(table["stock"]["mean_attended_context"]) == round(stock_context, 1)
    assert float(table["tova K=64"]["mean_attended_context"]) == round(tova_context, 1)
    # TOVA's cap (2 blocks) admits all 28 at once; stock holds 7 full sequences.
    assert int(table["tova K=64"]["preemptions"]) == 0
    assert float(table["tova K=64"]["mean_running"]) > 2 * float(table["stock"]["mean_running"])
    assert float(table["tova K=64"]["peak_kv_blocks"]) <= 28 * 2
    text = stem.with_suffix(".md").read_text()
    assert "| paper | tova K=64 | 28 |" in text and "Targets" in text
    # --render rebuilds the same markdown from the CSV.
    throughput.main(["--render", str(stem.with_suffix(".csv"))])
    assert stem.with_suffix(".md").read_text() == text


def _row(system, gen, n=100, status="finished", repeat=0, policy=None, evicts=1, model="llama3-8b",
         workload="paper", frac=0.9):  # fmt: skip
    row = {"protocol": "completion", "status": status, "model": model, "workload": workload,
           "prompt_len": 512, "gen_len": 3584, "system": system, "num_requests": n, "repeat": repeat,
           "policy": policy or ("none" if system.startswith("stock") else "tova"), "evicts": evicts,
           "detail": "" if status == "finished" else "why"}  # fmt: skip
    if status == "finished":
        row.update({"gen_tok_s": gen, "total_tok_s": 2 * gen, "seconds": 10.0, "mean_running": 50,
                    "mean_attended_context": 513, "peak_pool_use": 0.5, "preemptions": 0,
                    "mean_step_ms": 20.0, "ceiling_fraction": frac, "binding": "kv"})  # fmt: skip
    return row


def test_report_ratios_spread_and_targets() -> None:
    rows = [
        _row("stock", 1000.0), _row("stock", 1100.0, repeat=1), _row("stock fp8", 2000.0, evicts=0),
        _row("tova K=512", 2500.0), _row("tova K=512", 3100.0, repeat=1), _row("tova K=512", 2000.0, n=50),
        _row("tova K=4096", 1200.0, evicts=0), _row("tova K=1024", 0, status="unfinished"),
    ]  # fmt: skip
    summary = {(e["system"], e["num_requests"]): e for e in report.summarize(rows)}
    assert summary[("stock", 100)]["spread"] == (1000.0, 1100.0)
    assert summary[("stock", 100)]["gen_tok_s"] == 1050.0
    assert "gen_tok_s" not in summary[("tova K=1024", 100)]  # an unfinished run has no figures
    text = report.completion_markdown(rows)
    assert "| paper | tova K=512 | 100 | 2,800.0 | 2.67x | 1.40x |" in text  # best N, mean of 2 runs
    assert "tova K=4096 (never evicts)" in text and "stock fp8 (never evicts)" not in text
    assert "unfinished: why" in text
    assert "tova K=512 2.67x stock (target >= 2.8x): not met; tova K=512 runs at 90%" in text
    assert "where the kv term binds" in text
    assert "tova K=512 1.40x stock fp8 (target >= 1.5x): not met" in text


def test_report_draws_no_ratio_from_early_decode() -> None:
    rows = [dict(_row("stock", 1000.0), protocol="early-decode", status="early-decode"),
            dict(_row("tova K=512", 5000.0), protocol="early-decode", status="early-decode")]  # fmt: skip
    text = report.completion_markdown(rows)
    assert "vs stock" not in text and "Targets" not in text and "no ratios drawn" in text
    assert "| paper (512+3584) | tova K=512 | 100 | 1 | 5,000.0 (5,000-5,000) |" in text  # its figures shown


def test_device_slug_is_shared_by_every_result_file() -> None:
    assert report.device_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert report.device_slug("cpu") == "cpu"
    assert report.device_slug("NVIDIA A100-SXM4-80GB") == "a100-sxm4-80gb"


class _Gauge:
    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value


class _ScriptedEngine:
    """An engine stand-in whose scheduler admits ``admits[step]`` waiting requests per step
    (the last entry repeats), up to ``capacity`` running; every running request emits one
    token per step and finishes at its ``max_tokens``. Submitted requests reach the scheduler
    (and its waiting gauge) at the next step; with ``arrivals``, only that many per step, as
    when the engine core steps while the client still submits. Enough to drive the protocols
    and ``run_closed_loop``'s ramp detection without vLLM."""

    def __init__(self, admits: list[int], capacity: int, arrivals: int | None = None) -> None:
        self.admits, self.capacity, self.arrivals, self.steps = admits, capacity, arrivals, 0
        self.in_transit: list[str] = []
        self.waiting: list[str] = []
        self.running: list[str] = []
        self.left: dict[str, int] = {}

    # LLMEngine surface
    def add_request(self, rid, prompt, params) -> None:
        self.in_transit.append(rid)
        self.left[rid] = params.max_tokens

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
        outs = []
        for rid in self.running:
            self.left[rid] -= 1
            outs.append(Namespace(request_id=rid, outputs=[Namespace(token_ids=[0])], finished=not self.left[rid]))
        self.running = [rid for rid in self.running if self.left[rid]]
        return outs


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


def _ticks():
    times = iter(range(10**6))
    return lambda: next(times)


def test_completion_runs_every_request_to_its_end() -> None:
    llm = _ScriptedLLM(_ScriptedEngine([100], capacity=3))
    out = run_to_completion(llm, lambda i: [1, 2, 3], Workload("w", 3, 5), 7, 101, None, 512, clock=_ticks())
    w = out.window
    assert out.status == "finished" and (w.finished, w.gen_tokens, w.decode_tokens) == (7, 35, 28)
    assert w.prompt_tokens == 21 and w.mean_logical_context == 3 + (1 + 2 + 3 + 4) / 4
    assert w.peak_running == 3 and w.tally.steps == 15  # 3 waves (3, 3, 1) of 5 steps


def test_completion_budget_caps_the_attended_context() -> None:
    llm = _ScriptedLLM(_ScriptedEngine([100], capacity=8))
    out = run_to_completion(llm, lambda i: [1, 2, 3], Workload("w", 3, 6), 2, 101, 4, 512, clock=_ticks())
    # Lengths 4..8 attended as min(length, K + 1 = 5).
    assert out.window.mean_attended_context == (4 + 5 + 5 + 5 + 5) / 5


def test_completion_past_its_time_limit_is_unfinished_not_a_figure() -> None:
    engine = _ScriptedEngine([100], capacity=2)
    out = run_to_completion(_ScriptedLLM(engine), lambda i: [1], Workload("w", 1, 50), 4, 101, None, 512,
                            max_seconds=20, clock=_ticks())  # fmt: skip
    assert out.status == "unfinished" and out.window is None and "0/4 finished" in out.detail
    assert not engine.has_unfinished_requests()  # aborted, the engine is idle for the next point


def test_steady_discards_a_lifetime_then_measures_desynchronised_lengths() -> None:
    llm = _ScriptedLLM(_ScriptedEngine([100], capacity=100))
    work = Workload("w", 3, 16)
    out = run_steady(llm, lambda i: [1, 2, 3], work, 8, 101, None, 512, measure_seconds=400, clock=_ticks())
    assert out.status == "steady", out.detail
    # Lengths in the window spread like a request's life: mean near prompt + gen / 2.
    assert abs(out.window.mean_logical_context / (3 + 16 / 2) - 1) <= 0.10
    # 8 in flight; a finished request's replacement is admitted at the next step.
    assert 7 <= out.window.mean_running <= 8


def test_steady_flags_a_window_that_is_not_steady() -> None:
    """Measured right after the discard with a synchronised wave (one request in flight),
    the window sees only the start of a life: flagged, and no ratio would be drawn."""
    llm = _ScriptedLLM(_ScriptedEngine([100], capacity=100))
    out = run_steady(llm, lambda i: [1], Workload("w", 1, 40), 1, 101, None, 512, measure_seconds=10, clock=_ticks())
    assert out.status == "not-steady" and "vs expected 21" in out.detail
