"""Start-up configuration: what the plugin changes, and what it refuses (no engine is started)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from vllm.engine.arg_utils import EngineArgs

import vllm_tova
from tests.conftest import tova


def _config(model_path: Path, **kwargs):
    vllm_tova.register()  # as vLLM's plugin loader does in every process
    args = EngineArgs(model=str(model_path), block_size=32, max_model_len=2048, **kwargs)
    return args.create_engine_config()


def test_no_policy_leaves_vllm_stock(model_path: Path) -> None:
    config = _config(model_path)
    assert config.attention_config.backend is None
    assert config.scheduler_config.scheduler_cls is None


def test_tova_turns_on_what_it_needs(model_path: Path) -> None:
    config = _config(model_path, additional_config=tova(128, 256))
    assert config.attention_config.backend.name == "CUSTOM"
    assert config.cache_config.enable_prefix_caching is False
    assert config.scheduler_config.scheduler_cls.startswith("vllm_tova.scheduler.Tova")


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e4m3"])
def test_fp8_kv_cache_is_accepted(model_path: Path, kv_cache_dtype: str) -> None:
    config = _config(model_path, additional_config=tova(128, 256), kv_cache_dtype=kv_cache_dtype)
    assert config.cache_config.cache_dtype == kv_cache_dtype


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"additional_config": tova(0, 256)}, r"--kv-budget / kv_budget=0 must be an integer >= 1"),
        (
            {"additional_config": tova(16, 256)},
            r"--kv-budget / kv_budget=16 is smaller than the KV block size 32; allowed: --kv-budget >= 32",
        ),
        (
            {"additional_config": tova(128, 256), "enable_prefix_caching": True},
            r"--enable-prefix-caching cannot be combined with --kv-policy / kv_policy=tova",
        ),
        (
            {"additional_config": tova(128, 256), "attention_backend": "FLEX_ATTENTION"},
            r"--attention-backend .* cannot be combined with --kv-policy / kv_policy=tova",
        ),
        (
            {"additional_config": tova(128, 4096), "max_num_batched_tokens": 2048},
            r"--kv-prefill-chunk / kv_prefill_chunk=4096 exceeds max_num_batched_tokens=2048: .* "
            r"allowed: 1 <= --kv-prefill-chunk <= 2048",
        ),
        (
            {"additional_config": tova(100, 256)},
            r"--kv-budget / kv_budget=100 is not a multiple of the KV block size 32: .* "
            r"\(e.g. --kv-budget 96 or 128\)",
        ),
        (
            {"additional_config": {**tova(128, 256), "kv_budget_max": 200}},
            r"--kv-budget-max / kv_budget_max=200 is not a multiple of the KV block size 32: .* "
            r"\(e.g. --kv-budget-max 192 or 224\)",
        ),
        (
            {"additional_config": tova(128, 1024), "max_num_batched_tokens": 1024, "max_num_seqs": 32},
            r"kv_prefill_chunk=1024 does not fit a step beside a full batch of decodes .* Allowed: "
            r"--kv-prefill-chunk <= 993, --max-num-batched-tokens >= 1055, or --max-num-seqs <= 1\.",
        ),
        (
            {"additional_config": {**tova(128, 256), "kv_budgte": 64}},
            r"additional_config key 'kv_budgte' is not a vllm-tova setting; did you mean 'kv_budget'\?",
        ),
        (
            {"additional_config": {"kv_policy": "lru", "kv_budget": 64}},
            r"--kv-policy / kv_policy='lru' is not supported; choose one of \['none', 'tova'",
        ),
        (
            {
                "additional_config": tova(128, 256),
                "speculative_config": {
                    "method": "ngram",
                    "num_speculative_tokens": 2,
                    "prompt_lookup_max": 3,
                    "prompt_lookup_min": 2,
                },
            },
            r"kv_policy=tova does not support speculative decoding \(--speculative-config\)",
        ),
        (
            {"additional_config": tova(128, 256), "kv_cache_dtype": "fp8_e5m2"},
            r"--kv-cache-dtype fp8_e5m2 cannot be combined with --kv-policy / kv_policy=tova; "
            r"allowed: auto, fp8, fp8_e4m3",
        ),
        (
            {"additional_config": tova(128, 256), "pipeline_parallel_size": 2},
            r"kv_policy=tova does not support pipeline parallelism \(--pipeline-parallel-size > 1\)",
        ),
        (
            {
                "additional_config": tova(128, 256),
                "kv_transfer_config": {"kv_connector": "ExampleConnector", "kv_role": "kv_both"},
            },
            r"kv_policy=tova does not support KV connectors \(--kv-transfer-config\)",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_flag_named(model_path: Path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        _config(model_path, **kwargs)


def _sliding_window(model_path: Path) -> dict:
    """SmolLM2's own config declared as a sliding-window (Mistral) model."""
    config = json.loads((model_path / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=64)
    return config


def _mla(model_path: Path) -> dict:
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=49152, hidden_size=256, intermediate_size=512, moe_intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, n_routed_experts=4, num_experts_per_tok=2,
        n_group=1, topk_group=1, first_k_dense_replace=2, max_position_embeddings=4096,
    ).to_dict()  # fmt: skip


def _hybrid(model_path: Path) -> dict:
    from transformers import GraniteMoeHybridConfig

    return GraniteMoeHybridConfig(
        vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, layer_types=["mamba", "attention"],
        mamba_n_heads=8, mamba_d_head=64, mamba_n_groups=1, mamba_d_state=16,
        num_local_experts=0, max_position_embeddings=4096,
    ).to_dict()  # fmt: skip


@pytest.mark.parametrize(
    ("make_config", "refusal"),
    [
        (_sliding_window, "sliding-window attention models"),
        (_mla, "MLA attention models"),
        (_hybrid, r"hybrid \(Mamba / linear-attention\) models"),
    ],
)
def test_unsupported_model_kinds_are_refused(model_path: Path, tmp_path: Path, make_config, refusal) -> None:
    """Config-only model directories (no weights are needed to build the engine config)."""
    (tmp_path / "config.json").write_text(json.dumps(make_config(model_path)))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_path / name, tmp_path / name)
    with pytest.raises(ValueError, match=rf"--kv-policy / kv_policy=tova does not support {refusal}"):
        _config(tmp_path, additional_config=tova(128, 256))
    _config(tmp_path)  # the same model without a policy is accepted: the refusal is TOVA's


def test_budget_at_or_above_max_model_len_warns(model_path: Path, caplog) -> None:
    import logging

    logging.getLogger("vllm.tova").propagate = True
    with caplog.at_level(logging.WARNING, logger="vllm.tova"):
        _config(model_path, additional_config=tova(2048, 256))
    assert "nothing will ever be evicted" in caplog.text


def test_startup_log_states_the_per_request_limits(model_path: Path, caplog) -> None:
    import logging

    logging.getLogger("vllm.tova").propagate = True
    with caplog.at_level(logging.INFO, logger="vllm.tova"):
        _config(model_path, additional_config={**tova(128, 256), "kv_budget_max": 2048})
    assert "a request may ask for its own kv_budget up to 2048 (64 KV blocks), or kv_policy none" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vllm.tova"):
        _config(model_path, additional_config={**tova(128, 256), "kv_budget_max": 256})
    assert "up to 256 (8 KV blocks)." in caplog.text  # no room for exact attention
