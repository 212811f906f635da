"""Soak ``vllm serve --kv-policy tova`` on loopback: many streaming clients, bad and broken-off
requests mixed in, for minutes; then check that nothing leaked.

``python -m benchmarks.soak`` (CPU, fp32 SmolLM2, greedy) runs the good prompts through the
offline engine (the reference texts), closes it, starts ``vllm serve`` with the same settings,
warms it up with every prompt and every bad and broken-off kind once, then keeps ``--clients`` requests in
flight until ``--minutes`` have passed or ``--max-requests`` were sent. Afterwards:

- every good request's streamed text equals the offline engine's for its prompt;
- every bad one got a 4xx; broken-off ones (cancelled, reset) ask nothing of their answer;
- the server is still up and serves one more good request;
- vLLM's KV usage (``vllm:kv_cache_usage_perc``) is back to 0 with nothing running or waiting;
- the server's resident memory (its whole process tree) grew by at most ``RSS_GROWTH_MIB``
  from just after the warm-up to after the load.

Writes ``--out`` (JSON) and the same stem ``.md``; exits 1 if any check failed.

    python -m benchmarks.soak --minutes 5 --clients 64 --max-requests 4000 \\
        --out benchmarks/results/reliability/soak-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from subprocess import Popen

from benchmarks.serve_load import percentile
from benchmarks.server import metric, scrape
from benchmarks.soak_client import BAD, BROKEN, GOOD, Outcome, Prompt, bad_body, good_body, send

# Growth of the server tree's RSS allowed from after the warm-up to after the load. The tree
# (API server, EngineCore, worker: ~3.8 GiB here) holds its weights and KV pool from start-up,
# and the warm-up has already run every prompt length and every error path once, so what
# remains is allocator caching of batch shapes not seen yet: tens of MiB at most. The bound
# catches a leak of 64 KiB or more per request over the ~1,000 requests expected in 5 minutes
# (a kept request with its token lists and output buffers), or of a few MiB per request over a
# short run's few dozen; smaller leaks pass unseen.
RSS_GROWTH_MIB = 64.0
SETTLE_S = 60.0  # after the load, how long the engine may take to finish what is in flight
# glibc's malloc raises its mmap threshold as large blocks are freed, then serves later large
# blocks from a heap it rarely returns: the TOVA torch backend's step-sized tensors then grow
# the worker's RSS for minutes without any leak (measured: +374 MiB in 5 minutes; +3.7 MiB
# with the threshold fixed, the same requests). A fixed threshold makes RSS follow live
# memory, so a leak shows; vLLM's CPU guide recommends tcmalloc for the same reason.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@dataclass(frozen=True)
class Mix:
    """Shares of the request kinds (the rest are good) and of long prompts among good ones."""

    bad: float = 0.2
    broken: float = 0.1
    long: float = 0.25


@dataclass
class Plan:
    """What the clients send: prompts (``long_from`` on are long), their reference texts, and
    the server limits the bad requests are built against."""

    model: str
    prompts: list[Prompt]
    references: list[str]
    long_from: int
    max_model_len: int
    budget: int
    mix: Mix = field(default_factory=Mix)
    seed: int = 0
    stream_bad: bool = False  # see soak_client.bad_body

    def draw(self, index: int) -> tuple[str, int, float]:
        """Request ``index``'s kind, prompt and cancel delay (the same for the same seed)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        u = rng.random()
        kind = (
            rng.choice(BAD) if u < self.mix.bad
            else rng.choice(BROKEN) if u < self.mix.bad + self.mix.broken
            else GOOD
        )  # fmt: skip
        longs = range(self.long_from, len(self.prompts))
        prompt = rng.choice(longs) if longs and rng.random() < self.mix.long else rng.randrange(self.long_from)
        return kind, prompt, rng.uniform(0.0, 3.0)

    def request(self, kind: str, prompt: int) -> dict:
        if kind in BAD:
            return bad_body(kind, self.model, self.prompts[prompt], self.max_model_len, self.budget, self.stream_bad)
        return good_body(self.model, self.prompts[prompt])


def soak_prompts(ids: list[int], lengths: list[int], max_tokens: list[int]) -> list[Prompt]:
    """Prompts of the given lengths from distinct places of a token stream."""
    return [Prompt(ids[2000 * i : 2000 * i + n], m) for i, (n, m) in enumerate(zip(lengths, max_tokens, strict=True))]


def reference_texts(llm, prompts: list[Prompt]) -> list[str]:
    """Each prompt's greedy text from the offline engine (one batch: outputs do not depend on
    the batch, which is what the soak checks of the server)."""
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0, max_tokens=p.max_tokens, ignore_eos=True) for p in prompts]
    outs = llm.generate([{"prompt_token_ids": p.token_ids} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].text for o in outs]


def tree_rss_mib(pid: int) -> dict[str, float]:
    """Resident memory (MiB) of a process and each descendant (the engine runs in children),
    by process name (``VLLM::EngineCor``, ``VLLM::Worker``, the API server's)."""
    import psutil

    root = psutil.Process(pid)
    by_name: dict[str, float] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            name = "api_server" if p.pid == pid else p.name()
            by_name[name] = by_name.get(name, 0.0) + p.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    return by_name


@contextmanager
def soak_server(model: str, flags: list[str], log: Path, default_malloc: bool = False) -> Iterator[tuple[str, Popen]]:
    """``vllm serve MODEL FLAGS`` (its URL and process), with glibc's mmap threshold fixed
    unless ``default_malloc`` (see ``FIXED_MMAP_THRESHOLD``)."""
    from benchmarks.server import VLLM, server_process
    from benchmarks.tensor_parallel import environment

    with environment(**({} if default_malloc else FIXED_MMAP_THRESHOLD)):
        with server_process([VLLM, "serve", model, *flags], log) as (url, proc):
            yield url, proc


Draw = tuple[int, tuple[str, int, float]]  # (request index, (kind, prompt, cancel delay))


async def _run(url: str, plan: Plan, draws: Iterable[Draw], clients: int, deadline: float) -> list[Outcome]:
    """``clients`` workers take requests in turn until ``draws`` runs out or the deadline
    passes (requests in flight then finish)."""
    import aiohttp

    outcomes: list[Outcome] = []
    it = iter(draws)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            while time.monotonic() < deadline and (draw := next(it, None)) is not None:
                index, (kind, prompt, cancel_after) = draw
                outcome = Outcome(index, kind, prompt)
                body = plan.request(kind, prompt)
                outcomes.append(await send(session, url, outcome, body, plan.references[prompt], cancel_after))

        await asyncio.gather(*(worker() for _ in range(clients)))
    return outcomes


def warmup_requests(plan: Plan) -> list[Draw]:
    """Every prompt once (good), every bad and every broken-off kind once, so that RSS is
    measured after each path ran, and a short soak exercises every kind."""
    good = [(-1 - i, (GOOD, i, 0.0)) for i in range(len(plan.prompts))]
    others = [(-100 - i, (kind, 0, 1.0)) for i, kind in enumerate((*BAD, *BROKEN))]
    return good + others


def _wait_idle(url: str, timeout: float) -> dict:
    """Poll /metrics until nothing runs or waits and KV usage is 0, or the timeout passes;
    returns the last readings."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(url)
        reading = {
            "running": metric(text, "vllm:num_requests_running"),
            "waiting": metric(text, "vllm:num_requests_waiting"),
            "kv_usage": metric(text, "vllm:kv_cache_usage_perc"),
        }
        if not any(reading.values()) or time.monotonic() > deadline:
            return reading
        time.sleep(1.0)


def soak(url: str, pid: int, plan: Plan, clients: int, seconds: float, max_requests: int) -> dict:
    """Warm up, load, settle, probe; returns the record (``problems`` empty when all passed)."""
    warm = asyncio.run(_run(url, plan, warmup_requests(plan), clients, time.monotonic() + 3600))
    rss_start = tree_rss_mib(pid)
    rss_samples: list[float] = []
    start = time.monotonic()

    async def sample_rss(stop: asyncio.Event) -> None:
        while not stop.is_set():
            rss_samples.append(sum(tree_rss_mib(pid).values()))
            try:
                await asyncio.wait_for(stop.wait(), 5.0)
            except asyncio.TimeoutError:
                pass

    async def load() -> list[Outcome]:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(stop))
        try:
            draws = ((i, plan.draw(i)) for i in range(max_requests))
            return await _run(url, plan, draws, clients, start + seconds)
        finally:
            stop.set()
            await sampler

    outcomes = asyncio.run(load())
    load_s = time.monotonic() - start
    idle = _wait_idle(url, SETTLE_S)
    probe = asyncio.run(_run(url, plan, [(-1000, (GOOD, 0, 0.0))], 1, time.monotonic() + 3600))
    after = _wait_idle(url, SETTLE_S)
    rss_end = tree_rss_mib(pid)
    return _record(plan, clients, seconds, max_requests, warm, outcomes, probe, idle, after,
                   load_s, rss_start, rss_samples, rss_end)  # fmt: skip


def _record(plan, clients, seconds, max_requests, warm, outcomes, probe, idle, after, load_s,
            rss_start_by, rss_samples, rss_end_by) -> dict:  # fmt: skip
    rss_start, rss_end = sum(rss_start_by.values()), sum(rss_end_by.values())
    everything = [*warm, *outcomes, *probe]
    failed = [o for o in everything if not o.ok]
    by_kind = {k: {"sent": 0, "ok": 0} for k in (GOOD, *BAD, *BROKEN)}
    for o in everything:
        by_kind[o.kind]["sent"] += 1
        by_kind[o.kind]["ok"] += o.ok
    good_s = [o.seconds for o in outcomes if o.kind == GOOD and o.ok]  # under load only
    problems = [f"request {o.index} ({o.kind}, prompt {o.prompt}): {o.detail}" for o in failed]
    if after["kv_usage"] != 0 or after["running"] != 0 or after["waiting"] != 0:
        problems.append(f"after the load and {SETTLE_S:.0f} s to settle: {after} (want all 0)")
    if rss_end - rss_start > RSS_GROWTH_MIB:
        problems.append(f"server RSS grew {rss_end - rss_start:.1f} MiB > {RSS_GROWTH_MIB} MiB")
    return {
        "clients": clients, "seconds_limit": seconds, "max_requests": max_requests,
        "load_seconds": round(load_s, 1), "requests": len(everything), "requests_under_load": len(outcomes),
        "by_kind": by_kind,
        "good_ok": by_kind[GOOD]["ok"], "bad_4xx": sum(by_kind[k]["ok"] for k in BAD),
        "bad_sent": sum(by_kind[k]["sent"] for k in BAD), "broken_sent": sum(by_kind[k]["sent"] for k in BROKEN),
        "failed": len(failed), "good_p50_s": round(percentile(good_s, 50), 2),
        "good_p99_s": round(percentile(good_s, 99), 2), "idle_after_load": idle, "after_probe": after,
        "rss_mib": {"after_warmup": round(rss_start, 1), "peak_during_load": round(max(rss_samples, default=0), 1),
                    "after_load": round(rss_end, 1), "bound_growth": RSS_GROWTH_MIB,
                    "after_warmup_by_process": {k: round(v, 1) for k, v in rss_start_by.items()},
                    "after_load_by_process": {k: round(v, 1) for k, v in rss_end_by.items()}},
        "rss_samples_mib": [round(x, 1) for x in rss_samples],
        "prompts": [{"tokens": len(p.token_ids), "max_tokens": p.max_tokens} for p in plan.prompts],
        "mix": asdict(plan.mix), "stream_bad": plan.stream_bad, "problems": problems,
    }  # fmt: skip


def write_record(record: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    rows = "\n".join(f"| {k} | {v['sent']} | {v['ok']} |" for k, v in record["by_kind"].items())
    rss = record["rss_mib"]
    md = (
        f"# Soak: {record.get('label', '')}\n\n"
        f"{record.get('machine', '')}; {record.get('date_utc', '')} UTC; load average before "
        f"{record.get('loadavg_before', '')}, after {record.get('loadavg_after', '')}\n\n"
        f"{record['clients']} clients, {record['load_seconds']} s of load (limit {record['seconds_limit']} s, "
        f"{record['max_requests']} requests): {record['requests_under_load']} requests under load, "
        f"{record['requests']} with the warm-up and the probe after it; failed: {record['failed']}\n\n"
        "| kind | sent | as expected |\n|---|---:|---:|\n" + rows + "\n\n"
        f"Good requests' latency p50 / p99: {record['good_p50_s']} / {record['good_p99_s']} s.\n\n"
        f"After the load: {record['after_probe']} (KV usage, running, waiting).\n\n"
        f"Server RSS (MiB): after warm-up {rss['after_warmup']}, peak during load "
        f"{rss['peak_during_load']}, after load {rss['after_load']} (bound: +{rss['bound_growth']}).\n\n"
        f"Problems: {record['problems'] or 'none'}\n"
    )
    out.with_suffix(".md").write_text(md)


# The benchmark's engine: the tests' CPU settings (fp32, block 32), with room for 64 sequences.
ENGINE = dict(
    dtype="float32", block_size=32, max_model_len=2048, enforce_eager=True, seed=0,
    kv_cache_memory_bytes=256 << 20, max_num_batched_tokens=1024, max_num_seqs=64,
)  # fmt: skip
SHORT, LONG = [9, 23, 47, 95], [300, 700, 1200]
SHORT_GEN, LONG_GEN = 48, 16


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="load time limit")
    p.add_argument("--clients", type=int, default=64, help="requests in flight")
    p.add_argument("--max-requests", type=int, default=4000, help="request count limit")
    p.add_argument("--policy", default="tova", help="'none': stock vLLM (the plugin loaded, no policy), as a baseline")
    p.add_argument("--budget", type=int, default=128, help="K")
    p.add_argument("--prefill-chunk", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's mmap threshold dynamic (see FIXED_MMAP_THRESHOLD)")
    p.add_argument("--stream-bad", action="store_true", help="stream the bad requests too (see soak_client.bad_body)")
    p.add_argument("--label", default="", help="what code ran (e.g. a commit)")
    p.add_argument("--out", type=Path, required=True, help="JSON record (and .md beside it)")
    p.add_argument("--log", type=Path, help="server log (default: --out with .log)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # see tests/conftest.py
    from transformers import AutoTokenizer

    from benchmarks.overload import _cpu_model
    from benchmarks.server import cli_flags
    from vllm_tova.dev import assets
    from vllm_tova.config import additional_config
    from vllm_tova.dev.runs import open_llm

    model = str(assets.smollm2_path())
    ids = AutoTokenizer.from_pretrained(model)(assets.austen_text("emma")[:300_000]).input_ids
    prompts = soak_prompts(ids, SHORT + LONG, [SHORT_GEN] * len(SHORT) + [LONG_GEN] * len(LONG))
    tova = dict(policy=args.policy, budget=args.budget, prefill_chunk=args.prefill_chunk)
    stock = args.policy == "none"
    with open_llm(model, **ENGINE, additional_config={} if stock else additional_config(*tova.values())) as llm:
        references = reference_texts(llm, prompts)
    plan = Plan(model, prompts, references, len(SHORT), ENGINE["max_model_len"], args.budget, seed=args.seed,
                stream_bad=args.stream_bad)
    flags = cli_flags(ENGINE) + ([] if stock else cli_flags({f"kv_{k}": v for k, v in tova.items()}))
    log = args.log or args.out.with_suffix(".log")
    meta = {"label": args.label, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "machine": f"{_cpu_model()}, {os.cpu_count()} cores", "model": Path(model).name,
            "engine": ENGINE, "tova": tova, "loadavg_before": os.getloadavg(),
            "server_env": {} if args.default_malloc else FIXED_MMAP_THRESHOLD}  # fmt: skip
    with soak_server(model, flags, log, args.default_malloc) as (url, proc):
        record = soak(url, proc.pid, plan, args.clients, args.minutes * 60, args.max_requests)
        record["server_alive"] = proc.poll() is None
    if not record["server_alive"]:
        record["problems"].append("the server exited during the soak")
    record = {**meta, "loadavg_after": os.getloadavg(), **record}
    write_record(record, args.out)
    print(json.dumps({k: v for k, v in record.items() if k != "rss_samples_mib"}, indent=1))
    if record["problems"]:
        raise SystemExit(1)
    return record


if __name__ == "__main__":
    main()
