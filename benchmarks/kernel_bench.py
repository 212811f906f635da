"""Decode attention per layer: TOVA's Triton kernels against vLLM's FlashAttention decode.

Both attend the same number of tokens per row (K retained + the new one) in the same paged
cache, and both include writing the new token: TOVA scores, evicts and writes into the freed
slot; FlashAttention's side is vLLM's ``reshape_and_cache_flash`` plus its decode call.
GPU time per call is measured inside CUDA graphs (``triton.testing.do_bench_cudagraph``), so
launch overhead is out of both. Achieved bandwidth counts the K/V bytes read once.

    python -m benchmarks.kernel_bench            # Llama-3-8B heads, bf16; writes
                                                 # benchmarks/results/kernels/kernel-<device>.csv
    python -m benchmarks.kernel_bench --batches 64 --budgets 1024 --splits auto,2,4,8
                                                 # TOVA also at forced split counts
    python -m benchmarks.kernel_bench --launches default,64:4:3,128:4:2
                                                 # and at other launch shapes of the decode
                                                 # kernel (slots per tile:warps:stages)
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

from benchmarks.report import device_slug
from vllm_tova.attention import triton_kernels

RESULTS = Path(__file__).parent / "results" / "kernels"


def copy_bandwidth_gbs(nbytes: int = 4 << 30) -> float:
    """The card's measured device-to-device copy bandwidth (read + write bytes per second)."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench_cudagraph(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def parse_launch(text: str) -> tuple[int, int, int] | None:
    """'default' -> None (the backend's own launch), 'BLOCK_N:WARPS:STAGES' -> the triple."""
    if text == "default":
        return None
    parts = text.split(":")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(
            f"--launches entry {text!r}: expected 'default' or BLOCK_N:WARPS:STAGES, e.g. 64:2:3"
        )
    block_n, warps, stages = map(int, parts)
    return block_n, warps, stages


@contextmanager
def partial_launch(launch: tuple[int, int, int] | None) -> Iterator[int]:
    """Run TOVA's decode kernel with ``launch`` (the module constants it reads at each call)
    and yield its tile; None leaves the backend's own launch."""
    from vllm_tova.attention.triton_backend import TovaTritonMetadataBuilder

    if launch is None:
        yield TovaTritonMetadataBuilder.block_n
        return
    saved = triton_kernels.PARTIAL_WARPS, triton_kernels.PARTIAL_STAGES
    triton_kernels.PARTIAL_WARPS, triton_kernels.PARTIAL_STAGES = launch[1], launch[2]
    try:
        yield launch[0]
    finally:
        triton_kernels.PARTIAL_WARPS, triton_kernels.PARTIAL_STAGES = saved


def bench_point(
    batch: int, budget: int, splits: int | None, args, fa, block_n: int
) -> tuple[float, float, float, int]:
    """(tova_us, flash_us, K/V bytes read, splits) for one batch size and budget; splits None
    is the backend's own choice (``choose_splits``)."""
    from vllm._custom_ops import reshape_and_cache_flash

    flash_attn_varlen_func, fa_version = fa
    dtype = getattr(torch, args.dtype)
    heads, kv_heads, head, bs = args.heads, args.kv_heads, args.head_size, args.block_size
    attended = budget + 1
    blocks_per_row = math.ceil(attended / bs)
    num_blocks = batch * blocks_per_row + 1
    f = dict(dtype=dtype, device="cuda")
    key_cache = torch.randn(num_blocks, bs, kv_heads, head, **f)
    value_cache = torch.randn(num_blocks, bs, kv_heads, head, **f)
    block_table = (torch.randperm(num_blocks - 1, device="cuda") + 1)[: batch * blocks_per_row]
    block_table = block_table.view(batch, blocks_per_row).to(torch.int32)
    seq_lens = torch.full((batch,), attended, dtype=torch.int32, device="cuda")
    query = torch.randn(batch, heads, head, **f)
    key = torch.randn(batch, kv_heads, head, **f)
    value = torch.randn(batch, kv_heads, head, **f)
    output = torch.empty_like(query)
    rows = torch.arange(batch, dtype=torch.int32, device="cuda")
    scale = head**-0.5

    if splits is None:
        splits = triton_kernels.choose_splits(batch, kv_heads, attended, args.num_sms, block_n)
    workspace = triton_kernels.DecodeWorkspace(
        heads, head, budget, torch.device("cuda"), max_rows=batch, max_split_rows=batch * splits
    )

    budgets = torch.full((batch,), budget, dtype=torch.int32, device="cuda")  # as the backend passes it

    def tova() -> None:
        triton_kernels.tova_decode(
            query, key, value, key_cache, value_cache, block_table, seq_lens, rows, rows,
            output, scale, budgets, splits, budget, workspace, block_n=block_n,
        )

    slots = (block_table[:, budget // bs].long() * bs + budget % bs).contiguous()
    cu_q = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    one = torch.tensor(1.0, device="cuda")

    def flash() -> None:
        reshape_and_cache_flash(key, value, key_cache, value_cache, slots, "auto", one, one)
        flash_attn_varlen_func(
            q=query, k=key_cache, v=value_cache, out=output,
            cu_seqlens_q=cu_q, max_seqlen_q=1, seqused_k=seq_lens, max_seqlen_k=attended,
            softmax_scale=scale, causal=True, block_table=block_table, fa_version=fa_version,
        )

    tova()
    flash()
    torch.cuda.synchronize()
    tova_us = do_bench_cudagraph(tova) * 1e3
    flash_us = do_bench_cudagraph(flash) * 1e3
    kv_bytes = 2 * batch * attended * kv_heads * head * key_cache.element_size()
    return tova_us, flash_us, kv_bytes, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--batches", default="1,4,16,64,256,1024")
    parser.add_argument("--budgets", default="256,512,1024,2048")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-size", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument(
        "--splits",
        default="auto",
        help="TOVA's split counts per point, comma-separated: 'auto' (the backend's choice) or "
        "a number, e.g. auto,2,4,8 to test the split heuristic",
    )
    parser.add_argument(
        "--launches",
        default="default",
        help="launch shapes of TOVA's decode kernel, comma-separated: 'default' (the backend's) "
        "or BLOCK_N:WARPS:STAGES, e.g. default,64:4:3,128:4:2",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.num_sms = torch.cuda.get_device_properties(0).multi_processor_count

    from vllm.v1.attention.backends.fa_utils import flash_attn_varlen_func, get_flash_attn_version

    fa = (flash_attn_varlen_func, get_flash_attn_version())
    device = device_slug(torch.cuda.get_device_name())
    copy_gbs = copy_bandwidth_gbs()
    name = torch.cuda.get_device_name()
    print(f"device {name}, FlashAttention {fa[1]}, copy bandwidth {copy_gbs:.0f} GB/s")
    rows = []
    header = "| batch | K | launch | splits | TOVA us | flash us | overhead | TOVA GB/s | % of copy |"
    print(header + "\n|---|---|---|---|---|---|---|---|---|")
    split_choices = [None if s == "auto" else int(s) for s in args.splits.split(",")]
    launches = [(text, parse_launch(text)) for text in args.launches.split(",")]
    points = [
        (budget, batch, splits, launch)
        for budget in map(int, args.budgets.split(","))
        for batch in map(int, args.batches.split(","))
        for splits in split_choices
        for launch in launches
    ]
    for budget, batch, forced, (launch_name, launch) in points:
        with partial_launch(launch) as block_n:
            tova_us, flash_us, kv_bytes, splits = bench_point(batch, budget, forced, args, fa, block_n)
        gbs = kv_bytes / (tova_us * 1e-6) / 1e9
        overhead = tova_us / flash_us - 1
        rows.append(
            dict(
                device=device, batch=batch, budget=budget, tova_us=f"{tova_us:.2f}",
                flash_us=f"{flash_us:.2f}", overhead=f"{overhead:.4f}",
                tova_gbs=f"{gbs:.0f}", copy_gbs=f"{copy_gbs:.0f}",
                splits=f"{splits}" if forced is not None else f"auto ({splits})",
                launch=launch_name,
            )
        )
        print(
            f"| {batch} | {budget} | {launch_name} | {rows[-1]['splits']} | {tova_us:.1f} | "
            f"{flash_us:.1f} | {overhead:+.1%} | {gbs:.0f} | {gbs / copy_gbs:.0%} |",
            flush=True,
        )
        torch.cuda.empty_cache()
    out = args.out or RESULTS / f"kernel-{device}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
