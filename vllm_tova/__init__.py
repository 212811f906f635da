"""vllm-tova: TOVA KV-cache eviction (arXiv 2401.06104) as a vLLM plugin.

``register`` is the ``vllm.general_plugins`` entry point: vLLM calls it once in every
process (front end, EngineCore, workers), so everything it does is idempotent.

Offline use: ``LLM(model, additional_config=vllm_tova.additional_config("tova", budget=512))``.
"""

from __future__ import annotations

from vllm_tova.config import additional_config

__all__ = ["additional_config", "register"]
__version__ = "0.1.0"

TORCH_BACKEND = "vllm_tova.attention.torch_backend.TovaTorchBackend"
TRITON_BACKEND = "vllm_tova.attention.triton_backend.TovaTritonBackend"


def backend_path() -> str:
    """Triton kernels on CUDA; the plain-torch backend elsewhere (the CPU build)."""
    from vllm.platforms import current_platform

    return TRITON_BACKEND if current_platform.is_cuda() else TORCH_BACKEND


def register() -> None:
    """Install the KV spec + manager, the attention backend and the vLLM patches."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from vllm_tova import patches
    from vllm_tova.kv_manager import register_kv_cache_spec

    patches.apply_all()
    register_kv_cache_spec()
    register_backend(AttentionBackendEnum.CUSTOM, backend_path())
