"""The step profiler's bookkeeping (its GPU run is in benchmarks/results/kernels/step-profile-*.md)."""

from __future__ import annotations

import argparse

from benchmarks.step_profile import kind_of, render


def test_kernels_are_sorted_into_kinds() -> None:
    assert kind_of("_decode_score") == "tova"
    assert kind_of("_decode_evict") == "tova"
    assert kind_of("void flash::flash_fwd_splitkv_kernel<...>") == "attention"
    assert kind_of("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "matmul"
    assert kind_of("void vllm::cross_device_reduce_1stage<...>") == "all-reduce"
    assert kind_of("void vllm::rms_norm_kernel<...>") == "other"


def test_table_has_one_row_per_batch_and_totals_the_kinds() -> None:
    args = argparse.Namespace(
        policy="tova", budget=512, prompt_len=512, steps=4, model="llama3-8b", dtype="bfloat16"
    )
    results = [{"batch": 8, "step_ms": 10.0, "gpu_ms": {"matmul": 6.0, "tova": 2.5, "other": 1.0}}]
    text = render(results, args, "H100", "vLLM 0.26.0")
    row = next(line for line in text.splitlines() if line.startswith("| 8 |"))
    assert row == "| 8 | 10.00 | 800 | 2.50 | 0.00 | 0.00 | 6.00 | 1.00 | 9.50 |"
