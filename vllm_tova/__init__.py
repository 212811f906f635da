"""vllm-tova: TOVA KV-cache eviction (arXiv 2401.06104) as a vLLM plugin.

``register`` is the ``vllm.general_plugins`` entry point: vLLM calls it once in every
process (front end, EngineCore, workers), so everything it does is idempotent.
"""

from __future__ import annotations

__version__ = "0.1.0"

BACKEND_PATH = "vllm_tova.attention.torch_backend.TovaTorchBackend"


def register() -> None:
    """Install the KV spec + manager, the attention backend and the vLLM patches."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from vllm_tova import patches
    from vllm_tova.kv_manager import register_kv_cache_spec

    patches.apply_all()
    register_kv_cache_spec()
    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
