"""Overload with prompts shorter than K: preemptions, exactness and throughput (CPU or GPU).

A KV pool holds ``--pool-sequences`` sequences at their TOVA cap; ``--multiplier`` times as
many requests (prompt about K/4 tokens of Jane Austen, about 4K generated, greedy, fp32
SmolLM2) are submitted at once and run to completion. If admission reserved only what a
request needs now, short prompts would be admitted, outgrow the pool and be preempted (and
replayed one token per step); with the cap reserved at admission they wait instead.

``--alone`` also runs each request by itself on the same engine and counts identical outputs;
``--reference FILE`` counts them against the alone outputs of an earlier record.

    python -m benchmarks.overload --out after.json --alone
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from vllm import SamplingParams

from vllm_tova.dev import assets
from vllm_tova.config import additional_config
from vllm_tova.kv_manager import blocks_per_sequence
from vllm_tova.dev.runs import kv_block_bytes, open_llm, run_batch

BLOCK_SIZE = 32


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=64, help="K")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--gen-len", type=int, default=256)
    p.add_argument("--pool-sequences", type=int, default=8, help="sequences the pool holds at their cap")
    p.add_argument("--multiplier", type=int, default=4, help="requests = multiplier x pool sequences")
    p.add_argument("--alone", action="store_true", help="also run every request alone")
    p.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="eager mode (default: on the CPU engine only; a GPU runs CUDA graphs as users do)",
    )
    p.add_argument("--reference", type=Path, help="a record whose alone outputs to compare with")
    p.add_argument("--label", default="", help="what code ran (e.g. a commit)")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def _cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")]
    return names[0] if names else platform.processor()


def _machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{_cpu_model()}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # see tests/conftest.py
    model = str(assets.smollm2_path())
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model)(assets.austen_text("emma")[:300_000]).input_ids
    num_requests = args.multiplier * args.pool_sequences
    prompts = [ids[1000 * i : 1000 * i + args.prompt_len] for i in range(num_requests)]
    cap = blocks_per_sequence(args.budget, BLOCK_SIZE)
    pool_blocks = args.pool_sequences * cap + 1  # + vLLM's null block
    params = SamplingParams(max_tokens=args.gen_len, temperature=0, ignore_eos=True)
    import torch

    eager = not torch.cuda.is_available() if args.enforce_eager is None else args.enforce_eager
    engine = dict(
        dtype="float32", block_size=BLOCK_SIZE, max_model_len=max(2048, args.prompt_len + args.gen_len),
        enforce_eager=eager, seed=0,
        disable_log_stats=False, max_num_batched_tokens=max(1024, 256 + num_requests - 1), max_num_seqs=num_requests,
        kv_cache_memory_bytes=pool_blocks * kv_block_bytes(model, "float32", BLOCK_SIZE),
        additional_config=additional_config("tova", args.budget, 256),
    )  # fmt: skip
    record: dict = {
        "label": args.label, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": _machine(), "model": Path(model).name, "dtype": "float32",
        "budget": args.budget, "block_size": BLOCK_SIZE, "enforce_eager": eager, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
        "pool_blocks": pool_blocks, "pool_sequences": args.pool_sequences, "num_requests": num_requests,
    }  # fmt: skip
    with open_llm(model, **engine) as llm:
        stats = run_batch(llm, prompts, params)
        batch = [list(o.outputs[0].token_ids) for o in stats.outputs]
        record.update(
            seconds=round(stats.seconds, 2), preemptions=stats.preemptions, peak_running=stats.peak_running,
            generated_tokens=stats.generated_tokens,
            gen_tok_s=round(stats.generated_tokens / stats.seconds, 2),
            total_tok_s=round((stats.generated_tokens + stats.prompt_tokens) / stats.seconds, 2),
        )  # fmt: skip
        if args.alone:
            record["alone"] = [list(llm.generate([{"prompt_token_ids": p}], params, use_tqdm=False)[0]
                                    .outputs[0].token_ids) for p in prompts]  # fmt: skip
    record["batch"] = batch
    alone = record.get("alone") or (json.loads(args.reference.read_text())["alone"] if args.reference else None)
    if alone is not None:
        record["identical_to_alone"] = sum(a == b for a, b in zip(alone, batch, strict=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record) + "\n")
    summary = {k: v for k, v in record.items() if k not in ("alone", "batch")}
    print(json.dumps(summary, indent=1))
    return record


if __name__ == "__main__":
    main()
