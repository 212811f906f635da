"""The FP8 KV-cache format of the TOVA backends, as vLLM stores FP8 for its own attention.

``--kv-cache-dtype fp8`` (= ``fp8_e4m3``): e4m3 values with one float32 scale per layer for
K and one for V, the layer's ``_k_scale`` / ``_v_scale`` (1.0, a checkpoint's scales, or
``--calculate-kv-scales``' first-batch estimate: vLLM sets them, the backends only read
them). An entry is stored as ``value / scale`` saturated to the e4m3 range and read as
``stored * scale``, as vLLM's ``reshape_and_cache`` kernels write it and its attention
kernels read it. vLLM allocates the cache as uint8; torch code here gathers and scatters
those bytes (indexing works on uint8 on every device) and the Triton kernels view them as
e4m3.

The TOVA backends attend a step's new tokens from activations, not from the cache, so with
FP8 they first round-trip them through the format (``as_stored``): every entry, new or
retained, is attended and scored as the cache holds it, as stock vLLM reads it back.
"""

from __future__ import annotations

import torch

FP8_KV_CACHE_DTYPES = ("fp8", "fp8_e4m3")
#: ``--kv-cache-dtype`` values the TOVA backends serve.
SUPPORTED_KV_CACHE_DTYPES = ("auto", *FP8_KV_CACHE_DTYPES)
STORAGE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(STORAGE).max)  # 448


def is_fp8(kv_cache_dtype: str) -> bool:
    return kv_cache_dtype in FP8_KV_CACHE_DTYPES


def byte_view(cache: torch.Tensor) -> torch.Tensor:
    """The cache as uint8, however the model runner typed its bytes (vLLM's runners use the
    spec's dtype, uint8, for ``fp8``), so writes store bytes rather than convert numbers."""
    return cache if cache.dtype == torch.uint8 else cache.view(torch.uint8)


def fp8_view(cache: torch.Tensor) -> torch.Tensor:
    """vLLM's uint8 allocation seen as e4m3 (a view: same memory)."""
    return cache.view(STORAGE) if cache.dtype == torch.uint8 else cache


def quantize(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The cache bytes (uint8) for ``values``: divided by the scale, saturated (as the GPU's
    satfinite conversion does; torch's own cast turns overflow into NaN), rounded to nearest
    even."""
    return (values.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(STORAGE).view(torch.uint8)


def dequantize(entries: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``entries``: cache bytes (uint8) or e4m3."""
    return (fp8_view(entries).float() * scale).to(dtype)


def as_stored(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``values`` as the cache would give them back."""
    return dequantize(quantize(values, scale), scale, values.dtype)


def read(cache: torch.Tensor, slots: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Entries at ``slots`` as attended: dequantized where ``scale`` marks an FP8 cache."""
    return cache[slots] if scale is None else dequantize(cache[slots], scale, dtype)


def write(cache: torch.Tensor, slots: torch.Tensor, values: torch.Tensor, scale: torch.Tensor | None) -> None:
    """Store ``values`` at ``slots``: quantized where ``scale`` marks an FP8 cache."""
    cache[slots] = values if scale is None else quantize(values, scale)
