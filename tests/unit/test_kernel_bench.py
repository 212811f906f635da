"""benchmarks.kernel_bench's launch-shape option (the timing itself needs a GPU)."""

from __future__ import annotations

import pytest

from benchmarks.kernel_bench import parse_launch, partial_launch
from vllm_tova.attention import triton_kernels
from vllm_tova.attention.triton_backend import TovaTritonMetadataBuilder


def test_launch_shapes_parse_and_apply_only_inside_their_block() -> None:
    assert parse_launch("default") is None
    assert parse_launch("128:4:2") == (128, 4, 2)
    for bad in ("64:2", "64:0:3", "a:b:c"):
        with pytest.raises(ValueError, match="BLOCK_N:WARPS:STAGES"):
            parse_launch(bad)
    shipped = triton_kernels.PARTIAL_WARPS, triton_kernels.PARTIAL_STAGES
    with partial_launch(None) as block_n:
        assert block_n == TovaTritonMetadataBuilder.block_n
        assert (triton_kernels.PARTIAL_WARPS, triton_kernels.PARTIAL_STAGES) == shipped
    with pytest.raises(RuntimeError), partial_launch((128, 8, 4)) as block_n:
        assert (block_n, triton_kernels.PARTIAL_WARPS, triton_kernels.PARTIAL_STAGES) == (128, 8, 4)
        raise RuntimeError("a failed point")
    assert (triton_kernels.PARTIAL_WARPS, triton_kernels.PARTIAL_STAGES) == shipped
