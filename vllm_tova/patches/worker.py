"""Worker side: the TOVA KV spec and backend selection (see ``patches/README.md``)."""

from __future__ import annotations

from dataclasses import fields

from vllm.config import VllmConfig
from vllm.model_executor.layers.attention.attention import Attention
from vllm.platforms.cpu import CpuPlatform
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.kv_cache_interface import FullAttentionSpec

from vllm_tova.config import TovaConfig
from vllm_tova.kv_manager import TovaAttentionSpec
from vllm_tova.patches.wrap import wrap


def apply() -> None:
    wrap(Attention, "get_kv_cache_spec", "(self, vllm_config)", _get_kv_cache_spec)
    wrap(
        CpuPlatform,
        "get_attn_backend_cls",
        "(cls, selected_backend, attn_selector_config, num_heads=None)",
        _cpu_get_attn_backend_cls,
    )


def _get_kv_cache_spec(original, self: Attention, vllm_config: VllmConfig):
    spec = original(self, vllm_config)
    settings = TovaConfig.from_additional_config(vllm_config.additional_config)
    if not settings.enabled or type(spec) is not FullAttentionSpec:
        return spec
    values = {f.name: getattr(spec, f.name) for f in fields(spec) if f.init}
    return TovaAttentionSpec(**values, kv_budget=settings.budget_max)


def _cpu_get_attn_backend_cls(original, cls, selected_backend, attn_selector_config, num_heads=None) -> str:
    if selected_backend == AttentionBackendEnum.CUSTOM:
        return AttentionBackendEnum.CUSTOM.get_path()
    return original(cls, selected_backend, attn_selector_config, num_heads)
