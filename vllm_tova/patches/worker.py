"""Patches 6 and 7: the TOVA KV spec and backend selection (see the index in ``__init__``)."""

from __future__ import annotations

import functools
from dataclasses import fields

from vllm.config import VllmConfig
from vllm.model_executor.layers.attention.attention import Attention
from vllm.platforms.cpu import CpuPlatform
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.kv_cache_interface import FullAttentionSpec

from vllm_tova.config import TovaConfig
from vllm_tova.kv_manager import TovaAttentionSpec

_ORIGINAL_SPEC = Attention.get_kv_cache_spec
_ORIGINAL_CPU_BACKEND = CpuPlatform.get_attn_backend_cls.__func__  # classmethod underneath


def apply() -> None:
    if not getattr(Attention.get_kv_cache_spec, "_vllm_tova", False):
        Attention.get_kv_cache_spec = _get_kv_cache_spec
    if not getattr(CpuPlatform.get_attn_backend_cls, "_vllm_tova", False):
        CpuPlatform.get_attn_backend_cls = classmethod(_cpu_get_attn_backend_cls)


@functools.wraps(_ORIGINAL_SPEC)
def _get_kv_cache_spec(self: Attention, vllm_config: VllmConfig):
    spec = _ORIGINAL_SPEC(self, vllm_config)
    settings = TovaConfig.from_additional_config(vllm_config.additional_config)
    if not settings.enabled or type(spec) is not FullAttentionSpec:
        return spec
    values = {f.name: getattr(spec, f.name) for f in fields(spec) if f.init}
    return TovaAttentionSpec(**values, kv_budget=settings.budget)


_get_kv_cache_spec._vllm_tova = True  # type: ignore[attr-defined]


@functools.wraps(_ORIGINAL_CPU_BACKEND)
def _cpu_get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None) -> str:
    if selected_backend == AttentionBackendEnum.CUSTOM:
        return AttentionBackendEnum.CUSTOM.get_path()
    return _ORIGINAL_CPU_BACKEND(cls, selected_backend, attn_selector_config, num_heads)


_cpu_get_attn_backend_cls._vllm_tova = True  # type: ignore[attr-defined]
