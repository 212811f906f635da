"""Load an OpenAI-compatible vLLM server at fixed concurrency: stock vs TOVA, on loopback.

``python -m benchmarks.serve_load`` starts the server (once per system), waits for
``/health``, sends ``--num-requests`` streamed completions with ``--concurrency`` in flight
(token-id prompts, exactly ``--gen-len`` tokens each), stops the server, and reports request
throughput, time to first token (TTFT), inter-token latency (ITL: gaps between streamed
chunks, as vLLM's own serving benchmark counts them) and time per output token (TPOT: a
request's decode time over its tokens after the first) percentiles.

Writes ``benchmarks/results/serving/serve_load-<device>.{csv,md}``; server logs go beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.presets import resolve_model
from benchmarks.report import device_slug
from benchmarks.server import openai_server
from benchmarks.workloads import random_prompts

RESULTS = Path(__file__).resolve().parent / "results" / "serving"
COLUMNS = [
    "device", "vllm_version", "policy", "budget", "prompt_len", "gen_len", "num_requests",
    "concurrency", "ok", "seconds", "req_s", "gen_tok_s", "ttft_p50_ms", "ttft_p90_ms",
    "ttft_p99_ms", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "e2e_p50_s",
    "e2e_p99_s", "model",
]  # fmt: skip


@dataclass
class RequestTiming:
    ok: bool = False
    ttft: float = math.nan
    gaps: list[float] = field(default_factory=list)  # seconds between streamed chunks (ITL)
    tokens: int = 0
    e2e: float = math.nan

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (robust to chunks carrying several)."""
        return (self.e2e - self.ttft) / (self.tokens - 1) if self.tokens > 1 else math.nan


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


async def _one(session, url: str, body: dict) -> RequestTiming:
    """One streamed completion; tokens are counted from ``token_ids`` in each SSE chunk."""
    timing = RequestTiming()
    start = last = time.perf_counter()
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            print(f"request failed: HTTP {resp.status}: {(await resp.text())[:300]}")
            return timing
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            n = sum(len(c.get("token_ids") or ()) for c in chunk.get("choices", ()))
            if not n:
                continue
            now = time.perf_counter()
            if timing.tokens == 0:
                timing.ttft = now - start
            else:
                timing.gaps.append(now - last)
            timing.tokens += n
            last = now
    timing.e2e = time.perf_counter() - start
    timing.ok = timing.tokens > 0
    return timing


async def run_load(url: str, model: str, prompts: list[list[int]], gen_len: int, concurrency: int):
    """Send every prompt, ``concurrency`` at a time; returns (timings, wall seconds)."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def limited(prompt: list[int]) -> RequestTiming:
            body = {
                "model": model,
                "prompt": prompt,
                "max_tokens": gen_len,
                "min_tokens": gen_len,
                "ignore_eos": True,
                "temperature": 0.0,
                "stream": True,
                "return_token_ids": True,
            }
            async with sem:
                return await _one(session, url, body)

        start = time.perf_counter()
        timings = await asyncio.gather(*(limited(p) for p in prompts))
        return timings, time.perf_counter() - start


def summarize(timings: list[RequestTiming], seconds: float) -> dict:
    ok = [t for t in timings if t.ok]
    ttft = [t.ttft * 1e3 for t in ok]
    itl = [g * 1e3 for t in ok for g in t.gaps]
    e2e = [t.e2e for t in ok]
    tpot = [t.tpot * 1e3 for t in ok if not math.isnan(t.tpot)]
    return {
        "ok": len(ok),
        "seconds": round(seconds, 3),
        "req_s": round(len(ok) / seconds, 4),
        "gen_tok_s": round(sum(t.tokens for t in ok) / seconds, 2),
        **{f"ttft_p{q}_ms": round(percentile(ttft, q), 2) for q in (50, 90, 99)},
        **{f"itl_p{q}_ms": round(percentile(itl, q), 3) for q in (50, 90, 99)},
        **{f"tpot_p{q}_ms": round(percentile(tpot, q), 3) for q in (50, 99)},
        "e2e_p50_s": round(percentile(e2e, 50), 3),
        "e2e_p99_s": round(percentile(e2e, 99), 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama3-8b" if gpu else "tiny-llama", help="preset name or path")
    p.add_argument("--policies", default="none,tova", help="'none' is stock vLLM")
    p.add_argument("--budget", type=int, default=512)
    p.add_argument("--prefill-chunk", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=512 if gpu else 64)
    p.add_argument("--gen-len", type=int, default=512 if gpu else 64)
    p.add_argument("--concurrency", type=int, default=256 if gpu else 8)
    p.add_argument("--num-requests", type=int, default=512 if gpu else 16)
    p.add_argument("--block-size", type=int, default=16 if gpu else 32)
    p.add_argument("--max-num-seqs", type=int, default=None, help="default: --concurrency")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192 if gpu else 1024)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--kv-pool-tokens", type=int, default=None if gpu else 4096)
    p.add_argument("--device-name", default=None)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.gpu = gpu
    return args


def server_args(args: argparse.Namespace, policy: str, block_bytes: int, max_model_len: int) -> list[str]:
    from vllm_tova.config import additional_config

    out = ["--dtype", args.dtype, "--block-size", str(args.block_size), "--seed", str(args.seed)]
    out += ["--max-model-len", str(max_model_len), "--max-num-seqs", str(args.max_num_seqs)]
    out += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    out += ["--no-enable-prefix-caching"]
    if args.kv_pool_tokens:
        out += ["--kv-cache-memory-bytes", str(args.kv_pool_tokens // args.block_size * block_bytes)]
    else:
        out += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if not args.gpu:
        out += ["--enforce-eager"]
    if policy != "none":
        extra = additional_config(policy, args.budget, args.prefill_chunk)
        out += ["--additional-config", json.dumps(extra)]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    args = parse_args(argv)
    args.max_num_seqs = args.max_num_seqs or args.concurrency
    import torch
    import vllm

    from vllm_tova.dev.runs import kv_block_bytes

    model = resolve_model(args.model)
    device = device_slug(args.device_name or (torch.cuda.get_device_name(0) if args.gpu else "cpu"))
    block_bytes = kv_block_bytes(model.path, args.dtype, args.block_size)
    max_model_len = args.prompt_len + args.gen_len
    prompts = random_prompts(args.num_requests, args.prompt_len, model.vocab_size, args.seed)
    warmup = random_prompts(2, args.prompt_len, model.vocab_size, args.seed + 1)
    rows = []
    for policy in args.policies.split(","):
        label = "stock" if policy == "none" else f"{policy} K={args.budget}"
        srv = server_args(args, policy, block_bytes, max_model_len)
        if model.dummy:
            srv += ["--load-format", "dummy", "--skip-tokenizer-init"]
        log = args.out_dir / f"serve_load-{device}-{policy}.log"
        print(f"{label}: starting the server (log: {log}) ...", flush=True)
        with openai_server(model.path, srv, log) as url:
            asyncio.run(run_load(url, model.path, warmup, 8, 2))
            timings, seconds = asyncio.run(run_load(url, model.path, prompts, args.gen_len, args.concurrency))
        row = {
            "device": device, "vllm_version": vllm.__version__, "policy": policy,
            "budget": args.budget if policy != "none" else 0, "prompt_len": args.prompt_len,
            "gen_len": args.gen_len, "num_requests": args.num_requests, "concurrency": args.concurrency,
            "model": model.name, **summarize(timings, seconds),
        }  # fmt: skip
        rows.append(row)
        print(f"{label}: {json.dumps({k: row[k] for k in COLUMNS[8:-1]})}", flush=True)
    write_outputs(rows, args.out_dir / f"serve_load-{device}")
    return rows


def write_outputs(rows: list[dict], stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
    lines = [
        "| system | concurrency | requests ok | req/s | gen tok/s | TTFT p50/p90/p99 ms "
        "| ITL p50/p90/p99 ms | TPOT p50/p99 ms | e2e p50/p99 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = "stock" if r["policy"] == "none" else f"{r['policy']} K={r['budget']}"
        lines.append(
            f"| {label} | {r['concurrency']} | {r['ok']}/{r['num_requests']} | {r['req_s']} "
            f"| {r['gen_tok_s']} | {r['ttft_p50_ms']} / {r['ttft_p90_ms']} / {r['ttft_p99_ms']} "
            f"| {r['itl_p50_ms']} / {r['itl_p90_ms']} / {r['itl_p99_ms']} "
            f"| {r['tpot_p50_ms']} / {r['tpot_p99_ms']} "
            f"| {r['e2e_p50_s']} / {r['e2e_p99_s']} |"
        )
    r0 = rows[0]
    title = f"# Serving load: {r0['model']}, {r0['prompt_len']} prompt + {r0['gen_len']} generated\n\n"
    stem.with_suffix(".md").write_text(title + "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\nwrote {stem}.csv, .md")


if __name__ == "__main__":
    main()
