"""Settings vllm-tova cannot honour are refused with a message naming them (no engine started)."""

from __future__ import annotations

import pytest

from vllm_tova.config import TovaConfig, starvation_free_chunk
from vllm_tova.request_params import check_beam_search, check_extra_args

TOVA = {"kv_policy": "tova", "kv_budget": 128}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({**TOVA, "kv_budgt": 64}, r"additional_config key 'kv_budgt' is not a vllm-tova setting; did you mean 'kv_budget'\?"),
        # Refused without a policy too: a misspelled kv_policy would otherwise serve stock vLLM.
        ({"kv_polcy": "tova", "kv_budget": 128}, r"key 'kv_polcy' .* did you mean 'kv_policy'\?"),
        ({**TOVA, "kv_chunk": 64}, r"key 'kv_chunk' is not a vllm-tova setting; did you mean 'kv_prefill_chunk'\?"),
        ({**TOVA, "kv_cache_dtype_x": 1}, r"key 'kv_cache_dtype_x' is not a vllm-tova setting; known keys: kv_policy, kv_budget"),
    ],
)  # fmt: skip
def test_misspelled_additional_config_keys_are_refused(extra: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TovaConfig.from_additional_config(extra)


def test_other_plugins_keys_pass() -> None:
    assert TovaConfig.from_additional_config({**TOVA, "ascend_scheduler_config": {}}).budget == 128
    assert not TovaConfig.from_additional_config({"gdn_prefill_backend": "auto"}).enabled


def test_misspelled_request_keys_are_refused_with_the_closest_key() -> None:
    settings = TovaConfig.from_additional_config(TOVA)
    with pytest.raises(ValueError, match=r"extra_args/vllm_xargs key 'kv_prefil_chunk' .* 'kv_prefill_chunk'\?"):
        check_extra_args({"kv_prefil_chunk": 512}, settings, 32, 2048)
    with pytest.raises(ValueError, match=r"key 'kv_budgets' .* did you mean 'kv_budget'\?"):
        check_extra_args({"kv_budgets": 128}, TovaConfig(), 32, 2048)  # stock engines refuse them as well
    check_extra_args({"kv_budget": 128, "my_plugin_key": 1}, settings, 32, 2048)
    # vLLM's own kv_* request key (disaggregated prefill, LMCache) passes, stock or TOVA.
    check_extra_args({"kv_transfer_params": {"do_remote_prefill": True}}, settings, 32, 2048)
    check_extra_args({"kv_transfer_params": None}, TovaConfig(), 32, 2048)


def test_beam_search_is_refused_only_with_a_policy() -> None:
    with pytest.raises(ValueError, match=r"beam search .* cannot be combined with --kv-policy / kv_policy=tova"):
        check_beam_search(TovaConfig.from_additional_config(TOVA))
    check_beam_search(TovaConfig())


BLOCK, MAX_LEN = 32, 4096


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (100, r"kv_budget=100 is not a multiple of the KV block size 32: each sequence would hold 128 slots "
              r"and use 100. Allowed: a multiple of 32 \(e.g. --kv-budget 96 or 128\)"),
        (4095, r"kv_budget=4095 is not a multiple"),
        (16, r"kv_budget=16 is smaller than the KV block size 32"),
    ],
)  # fmt: skip
def test_budgets_off_the_block_grid_are_refused(budget: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TovaConfig(policy="tova", budget=budget).validate_against(BLOCK, 2048, 32, MAX_LEN)


def test_budgets_on_the_grid_or_past_max_model_len_are_accepted() -> None:
    for budget in (32, 96, 4096, 4100):  # K >= max_model_len evicts nothing: rounding is moot
        TovaConfig(policy="tova", budget=budget).validate_against(BLOCK, 2048, 32, MAX_LEN)


def test_the_largest_chunk_fits_beside_a_full_decode_batch() -> None:
    """Bound: C + (max_num_seqs - 1) <= max_num_batched_tokens, tested at the edge."""
    assert starvation_free_chunk(1024, 32) == 993
    TovaConfig(policy="tova", budget=128, prefill_chunk=993).validate_against(BLOCK, 1024, 32, MAX_LEN)
    message = (
        r"kv_prefill_chunk=994 does not fit a step beside a full batch of decodes \(max_num_batched_tokens=1024, "
        r"max_num_seqs=32: 31 decode tokens\).* Allowed: --kv-prefill-chunk <= 993, "
        r"--max-num-batched-tokens >= 1025, or --max-num-seqs <= 31\."
    )
    with pytest.raises(ValueError, match=message):
        TovaConfig(policy="tova", budget=128, prefill_chunk=994).validate_against(BLOCK, 1024, 32, MAX_LEN)
    # More seats than tokens: no chunk can be guaranteed, so the message offers no chunk size.
    with pytest.raises(ValueError, match=r"Allowed: --max-num-batched-tokens >= 2560, or --max-num-seqs <= 1537\."):
        TovaConfig(policy="tova", budget=128, prefill_chunk=512).validate_against(BLOCK, 2048, 2049, MAX_LEN)
