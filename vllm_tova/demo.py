"""Demo: stock vLLM vs vLLM + TOVA on one KV pool, CPU engine, real model, real text.

``python -m vllm_tova.demo`` (or ``make demo``) prepares SmolLM2-135M-Instruct and Jane
Austen's *Emma* on first use, then runs the same long-prompt workload twice through vLLM's
offline engine, once stock and once with TOVA, on a KV pool sized to hold only a couple of
full sequences. It prints per-sequence KV blocks, how many sequences ran at once (vLLM's own
scheduler stats), throughput, and a sample of the generated text.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass

import vllm
from vllm import SamplingParams
from vllm.utils.math_utils import cdiv

from vllm_tova import assets
from vllm_tova.config import additional_config
from vllm_tova.kv_manager import blocks_per_sequence
from vllm_tova.stats import RunStats, kv_block_bytes, open_llm, run_batch

BLOCK_SIZE = 32


@dataclass
class Row:
    label: str
    cap_blocks: int
    stats: RunStats
    pool_blocks: int

    @property
    def blocks_per_running_sequence(self) -> float:
        return self.stats.peak_blocks_in_use(self.pool_blocks) / max(self.stats.peak_running, 1)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--budget", type=int, default=128, help="TOVA budget K (tokens per layer)")
    parser.add_argument("--prefill-chunk", type=int, default=256, help="prompt chunk C")
    parser.add_argument("--prompt-len", type=int, default=1000)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument(
        "--pool-sequences", type=int, default=2, help="KV pool size, in full stock sequences"
    )
    parser.add_argument("--dtype", default="bfloat16")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # see tests/conftest.py
    model = str(assets.smollm2_path())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    text_ids = tokenizer(assets.austen_text("emma")).input_ids
    stride = len(text_ids) // args.requests
    prompts = [text_ids[i * stride : i * stride + args.prompt_len] for i in range(args.requests)]
    seq_len = args.prompt_len + args.gen_len
    full_blocks = cdiv(seq_len, BLOCK_SIZE)
    pool_blocks = args.pool_sequences * full_blocks + 1
    common = dict(
        dtype=args.dtype,
        block_size=BLOCK_SIZE,
        max_model_len=max(2048, seq_len),
        max_num_seqs=max(32, args.requests),
        max_num_batched_tokens=max(1024, args.prefill_chunk),
        kv_cache_memory_bytes=pool_blocks * kv_block_bytes(model, args.dtype, BLOCK_SIZE),
        disable_log_stats=False,
        seed=0,
    )
    params = SamplingParams(max_tokens=args.gen_len, temperature=0, ignore_eos=True)
    tova = additional_config("tova", args.budget, args.prefill_chunk)
    rows = []
    for label, extra, cap in [
        ("stock vLLM", {}, full_blocks),
        (f"TOVA K={args.budget}", tova, blocks_per_sequence(args.budget, BLOCK_SIZE)),
    ]:
        print(f"\n=== {label}: starting the engine ...", flush=True)
        with open_llm(model, additional_config=extra, **common) as llm:
            rows.append(Row(label, cap, run_batch(llm, prompts, params), pool_blocks))

    print(
        f"\nvllm-tova demo: SmolLM2-135M-Instruct ({args.dtype}) on Jane Austen's Emma, vLLM "
        f"{vllm.__version__} CPU engine, {os.cpu_count()} cores ({platform.machine()})"
    )
    print(
        f"workload: {args.requests} prompts x {args.prompt_len} tokens + {args.gen_len} generated; "
        f"KV pool {pool_blocks} blocks x {BLOCK_SIZE} tokens ({args.pool_sequences} full "
        f"sequences); TOVA prompt chunk {args.prefill_chunk}\n"
    )
    print(
        "| engine | KV blocks / sequence (cap) | KV blocks / running sequence (measured) "
        "| sequences at once | preemptions | generated tok/s | total tok/s | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        s = row.stats
        print(
            f"| {row.label} | {row.cap_blocks} | {row.blocks_per_running_sequence:.1f} | "
            f"{s.peak_running} | {s.preemptions} | {s.generated_tokens / s.seconds:.1f} | "
            f"{(s.generated_tokens + s.prompt_tokens) / s.seconds:.1f} | {s.seconds:.1f} |"
        )
    print("\nSample (request 0), end of the prompt, then each engine's continuation:")
    print("  ..." + tokenizer.decode(prompts[0][-40:]).replace("\n", " "))
    for row in rows:
        text = row.stats.outputs[0].outputs[0].text.replace("\n", " ")
        print(f"  [{row.label}] {text}")


if __name__ == "__main__":
    main()
