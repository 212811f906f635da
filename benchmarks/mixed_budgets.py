"""Mixed traffic in one engine: short chat turns without eviction beside long generations at K.

A fixed request set, submitted at once and run to completion (the throughput protocol):
``--short-fraction`` of the requests are short turns (``--short-prompt`` + ``--short-gen``),
the rest long generations (``--long-prompt`` + ``--long-gen``), interleaved. Three engines,
one after the other, on the same KV pool:

- ``stock``: vLLM without a policy (every request keeps everything);
- ``tova``: every request at K = ``--budget`` (a short turn shorter than K evicts nothing
  but still reserves its capped blocks at admission; a longer one is evicted too);
- ``mixed``: the server's default K = ``--budget`` with ``--kv-budget-max`` = max_model_len;
  short turns ask for ``kv_policy: none`` (exact attention, stock block growth), long ones
  take the default.

Reported per engine: wall time, generated and total tok/s, the short and long requests'
latency (submission to last token; all are submitted at t = 0) and time to first token,
preemptions, peak running sequences.

    python -m benchmarks.mixed_budgets --out mixed.json                   # CPU smoke scale
    python -m benchmarks.mixed_budgets --model llama3-8b --dtype bfloat16 --num-requests 1024 \\
        --short-prompt 256 --short-gen 128 --long-prompt 512 --long-gen 3584 --budget 512 \\
        --max-model-len 4096 --block-size 16 --out mixed-h100.json        # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from vllm import LLM, SamplingParams
from vllm.sampling_params import RequestOutputKind

from benchmarks.overload import _cpu_model
from benchmarks.presets import resolve_model
from benchmarks.workloads import random_prompts
from vllm_tova.dev import assets
from vllm_tova.config import additional_config
from vllm_tova.dev.runs import open_llm, read_metrics

SYSTEMS = ("stock", "tova", "mixed")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="'smollm2' (real weights) or a benchmarks.presets name")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--num-requests", type=int, default=20)
    p.add_argument("--short-fraction", type=float, default=0.7)
    p.add_argument("--short-prompt", type=int, default=64)
    p.add_argument("--short-gen", type=int, default=32)
    p.add_argument("--long-prompt", type=int, default=128)
    p.add_argument("--long-gen", type=int, default=384)
    p.add_argument("--budget", type=int, default=64, help="K of the long requests")
    p.add_argument("--prefill-chunk", type=int, default=256)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--kv-cache-memory-bytes", type=int, help="pool size (default: vLLM's own sizing)")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--label", default="", help="what code ran (e.g. a commit)")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def is_short(i: int, fraction: float) -> bool:
    """Request ``i`` is a short turn: spread evenly, ``fraction`` of every run of requests."""
    return int((i + 1) * fraction) > int(i * fraction)


def requests(args: argparse.Namespace, vocab_size: int) -> list[tuple[list[int], int, bool]]:
    """(prompt, tokens to generate, short?) per request."""
    if args.model == "smollm2":
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(str(assets.smollm2_path()))(assets.austen_text("emma")[:300_000]).input_ids
        source = lambda i, n: ids[1000 * i : 1000 * i + n]  # noqa: E731
    else:
        rows = random_prompts(args.num_requests, max(args.short_prompt, args.long_prompt), vocab_size, seed=0)
        source = lambda i, n: rows[i][:n]  # noqa: E731
    out = []
    for i in range(args.num_requests):
        short = is_short(i, args.short_fraction)
        prompt = source(i, args.short_prompt if short else args.long_prompt)
        out.append((prompt, args.short_gen if short else args.long_gen, short))
    return out


def params(gen_len: int, extra: dict | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=gen_len, min_tokens=gen_len, ignore_eos=True, temperature=0.0, detokenize=False,
        output_kind=RequestOutputKind.DELTA, extra_args=extra,
    )  # fmt: skip


def run(llm: LLM, work: list[tuple[list[int], int, bool]], system: str) -> dict:
    """Submit everything at t = 0, step to completion; per-request first and last token times."""
    engine = llm.llm_engine
    preempted_before = read_metrics(llm, ("vllm:num_preemptions",))["vllm:num_preemptions"]
    start = time.perf_counter()
    for i, (prompt, gen_len, short) in enumerate(work):
        extra = {"kv_policy": "none"} if system == "mixed" and short else None
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params(gen_len, extra))
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    generated = 0
    peak = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter() - start
        for out in outputs:
            i = int(out.request_id)
            new = len(out.outputs[0].token_ids)
            generated += new
            if new and i not in first:
                first[i] = now
            if out.finished:
                last[i] = now
        peak = max(peak, int(read_metrics(llm, ("vllm:num_requests_running",))["vllm:num_requests_running"]))
    seconds = time.perf_counter() - start
    preemptions = read_metrics(llm, ("vllm:num_preemptions",))["vllm:num_preemptions"] - preempted_before
    prompt_tokens = sum(len(p) for p, _, _ in work)

    def latency(short: bool) -> dict:
        ids = [i for i, (_, _, s) in enumerate(work) if s == short]
        ends, firsts = sorted(last[i] for i in ids), [first[i] for i in ids]
        if not ids:
            return {}
        return {
            "count": len(ids),
            "mean_s": round(statistics.fmean(ends), 3),
            "p50_s": round(ends[len(ends) // 2], 3),
            "p90_s": round(ends[min(len(ends) - 1, int(0.9 * len(ends)))], 3),
            "mean_ttft_s": round(statistics.fmean(firsts), 3),
        }

    return {
        "system": system,
        "seconds": round(seconds, 2),
        "generated_tokens": generated,
        "gen_tok_s": round(generated / seconds, 2),
        "total_tok_s": round((generated + prompt_tokens) / seconds, 2),
        "preemptions": int(preemptions),
        "peak_running": peak,
        "short": latency(True),
        "long": latency(False),
    }


def engine_kwargs(args: argparse.Namespace, system: str, model) -> dict:
    kwargs = dict(
        dtype=args.dtype, block_size=args.block_size, max_model_len=args.max_model_len, seed=0,
        disable_log_stats=False, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, **model.load_kwargs(),
    )  # fmt: skip
    if args.kv_cache_memory_bytes:
        kwargs["kv_cache_memory_bytes"] = args.kv_cache_memory_bytes
    if args.dtype == "float32":
        kwargs["enforce_eager"] = True  # the CPU build
    if system != "stock":
        budget_max = args.max_model_len if system == "mixed" else None
        kwargs["additional_config"] = additional_config("tova", args.budget, args.prefill_chunk, budget_max)
    return kwargs


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # see tests/conftest.py
    model = resolve_model(str(assets.smollm2_path())) if args.model == "smollm2" else resolve_model(args.model)
    work = requests(args, model.vocab_size)
    record: dict = {
        "label": args.label, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores", "model": model.name, "dtype": args.dtype,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "label")},
        "runs": [],
    }  # fmt: skip
    try:
        import torch

        if torch.cuda.is_available():
            record["machine"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    for system in args.systems.split(","):
        with open_llm(model.path, **engine_kwargs(args, system, model)) as llm:
            record["runs"].append(run(llm, work, system))
        print(json.dumps(record["runs"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
