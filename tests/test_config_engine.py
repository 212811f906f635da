"""Start-up configuration: what the plugin changes, and what it refuses (no engine is started)."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"additional_config": tova(0, 256)}, r"kv_budget=0 must be an integer >= 1"),
        ({"additional_config": tova(16, 256)}, r"kv_budget=16 is smaller than the KV block size 32"),
        (
            {"additional_config": tova(128, 256), "enable_prefix_caching": True},
            r"--enable-prefix-caching cannot be combined with kv_policy=tova",
        ),
        (
            {"additional_config": tova(128, 256), "attention_backend": "FLEX_ATTENTION"},
            r"--attention-backend .* cannot be combined with kv_policy=tova",
        ),
        (
            {"additional_config": tova(128, 4096), "max_num_batched_tokens": 2048},
            r"kv_prefill_chunk=4096 exceeds max_num_batched_tokens=2048",
        ),
        (
            {"additional_config": {"kv_policy": "lru", "kv_budget": 64}},
            r"kv_policy='lru' is not supported",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_flag_named(model_path: Path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        _config(model_path, **kwargs)
