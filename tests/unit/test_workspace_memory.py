"""The CUDA decode workspace's size, reserved before vLLM sizes the KV pool (no GPU needed).

The worker patch subtracts ``reserved_bytes`` from the memory vLLM hands the KV pool; the
GPU test (tests/gpu/test_gpu.py::test_workspace_counted_before_the_pool) checks the result on a
device. Here: the count equals what the workspace allocates, and it follows min(K,
max_model_len) and min(max_num_seqs, max_num_batched_tokens), not K.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vllm_tova.attention import triton_kernels
from vllm_tova.attention.triton_backend import TovaTritonMetadataBuilder, workspace_size
from vllm_tova.config import additional_config
from vllm_tova.patches.worker_memory import reserved_bytes

NUM_SMS = 132  # an H100 SXM


def fake_config(budget: int | None, max_model_len: int = 4096, max_num_seqs: int = 256,
                max_num_batched_tokens: int = 8192, kv_cache_memory_bytes: int | None = None,
                ubatches: int | None = None) -> SimpleNamespace:  # fmt: skip
    """The few VllmConfig fields the sizing reads (Llama-3-8B heads: 32 query, 8 KV, 128)."""
    model = SimpleNamespace(
        max_model_len=max_model_len,
        get_num_attention_heads=lambda parallel: 32,
        get_num_kv_heads=lambda parallel: 8,
        get_head_size=lambda: 128,
    )
    return SimpleNamespace(
        model_config=model,
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        parallel_config=SimpleNamespace(use_ubatching=ubatches is not None, num_ubatches=ubatches or 1),
        cache_config=SimpleNamespace(kv_cache_memory_bytes=kv_cache_memory_bytes),
        additional_config=additional_config("tova", budget, 256) if budget else {},
    )


@pytest.mark.parametrize(("heads", "head_size", "budget", "rows", "split_rows", "block_c"),
                         [(32, 128, 512, 64, 256, None), (9, 64, 4096, 7, 30, None), (4, 16, 100, 3, 12, 16)])  # fmt: skip
def test_nbytes_is_what_the_workspace_allocates(heads, head_size, budget, rows, split_rows, block_c) -> None:
    ws = triton_kernels.DecodeWorkspace(heads, head_size, budget, torch.device("cpu"), rows, split_rows, block_c)
    allocated = sum(t.nbytes for t in vars(ws).values() if isinstance(t, torch.Tensor))
    assert allocated == triton_kernels.DecodeWorkspace.nbytes(heads, head_size, budget, rows, split_rows, block_c)


def test_reservation_follows_max_model_len_not_k() -> None:
    huge = reserved_bytes(fake_config(131_072), NUM_SMS)  # a budget the README accepts
    at_length = reserved_bytes(fake_config(4096), NUM_SMS)
    assert huge == at_length
    split_rows = triton_kernels.max_split_rows(256, 8, 4097, NUM_SMS, TovaTritonMetadataBuilder.block_n)
    assert huge == triton_kernels.DecodeWorkspace.nbytes(32, 128, 4096, 256, split_rows)
    # 256 rows x 32 heads x 4,097 fp32 logits (128 MiB) dominate: ~165 MiB, not the ~16 GiB
    # that sizing by K would ask.
    assert 256 * 32 * 4097 * 4 < huge < 256 << 20, huge / 2**20
    assert reserved_bytes(fake_config(512), NUM_SMS) < huge / 4  # a small K asks less


def test_rows_are_the_real_batch_limit() -> None:
    assert workspace_size(fake_config(512, max_num_seqs=256, max_num_batched_tokens=128), NUM_SMS).max_rows == 128
    assert workspace_size(fake_config(512, max_num_seqs=64), NUM_SMS).max_rows == 64
    few = reserved_bytes(fake_config(4096, max_num_seqs=64), NUM_SMS)
    many = reserved_bytes(fake_config(4096, max_num_seqs=256), NUM_SMS)
    assert 3.5 * few < many <= 4 * few  # the row buffers scale with rows; split buffers less


def test_nothing_reserved_where_nothing_is_allocated_after_the_pool() -> None:
    assert reserved_bytes(fake_config(None), NUM_SMS) == 0  # stock: no TOVA builder
    assert reserved_bytes(fake_config(512), None) == 0  # no CUDA: the torch backend has no workspace
    assert reserved_bytes(fake_config(512, kv_cache_memory_bytes=1 << 30), NUM_SMS) == 0  # pool fixed by the user
    one = reserved_bytes(fake_config(512), NUM_SMS)
    assert reserved_bytes(fake_config(512, ubatches=2), NUM_SMS) == 2 * one  # one builder per micro-batch
