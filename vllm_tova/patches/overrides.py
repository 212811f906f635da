"""vLLM members the plugin's subclasses override, and private vLLM symbols it calls.

These are not patches (nothing in vLLM is changed), but a vLLM release that renames one, or
changes its parameters, would break the plugin as surely: a renamed private hook is simply
never called. So their signatures are checked at plugin load, like the patches' (``wrap``).
``None`` marks an attribute, which only has to exist. ``tests/unit/test_patch_index.py`` checks
that this table matches the code and ``patches/README.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from vllm_tova.patches.wrap import check_signature

_SCHED = "vllm.v1.core.sched"
_BACKEND = "vllm.v1.attention.backend"
_MANAGER = "vllm.v1.core.single_type_kv_cache_manager.SingleTypeKVCacheManager"

#: Overridden by a subclass in vllm_tova -> the vLLM signature it was written against.
OVERRIDDEN: dict[str, str | None] = {
    f"{_SCHED}.scheduler.Scheduler._mamba_block_aligned_split": (
        "(self, request, num_new_tokens, num_new_local_computed_tokens=0, "
        "num_external_computed_tokens=0)"
    ),
    f"{_SCHED}.scheduler.Scheduler._update_after_schedule": "(self, scheduler_output)",
    f"{_SCHED}.async_scheduler.AsyncScheduler._update_after_schedule": "(self, scheduler_output)",
    f"{_SCHED}.scheduler.Scheduler.make_stats": (
        "(self, spec_decoding_stats=None, kv_connector_stats=None, cudagraph_stats=None, "
        "perf_stats=None)"
    ),
    f"{_MANAGER}.get_num_blocks_to_allocate": (
        "(self, request_id, num_tokens, new_computed_blocks, total_computed_tokens, "
        "num_local_computed_tokens, num_tokens_main_model, apply_admission_cap=False)"
    ),
    f"{_MANAGER}.allocate_new_blocks": "(self, request_id, num_tokens, num_tokens_main_model)",
    "vllm.v1.kv_cache_interface.FullAttentionSpec.max_memory_usage_bytes": "(self, vllm_config)",
    "vllm.v1.kv_cache_interface.FullAttentionSpec.merge": "(cls, specs)",
    f"{_BACKEND}.AttentionBackend.forward_includes_kv_cache_update": None,
    f"{_BACKEND}.AttentionBackend.supported_dtypes": None,
    f"{_BACKEND}.AttentionBackend.supported_kv_cache_dtypes": None,
    f"{_BACKEND}.AttentionBackend.get_supported_kernel_block_sizes": "()",
    f"{_BACKEND}.AttentionBackend.supports_attn_type": "(cls, attn_type)",
    f"{_BACKEND}.AttentionMetadataBuilder._cudagraph_support": None,
    f"{_BACKEND}.AttentionMetadataBuilder.get_cudagraph_support": "(cls, vllm_config, kv_cache_spec)",
    "vllm.v1.metrics.loggers.StatLoggerBase.log": "(self)",
    "vllm.v1.engine.EngineCoreOutputs.scheduler_stats": None,
}

#: Private vLLM symbols called from vllm_tova -> their signature.
PRIVATE_CALLS: dict[str, str | None] = {
    "vllm.v1.kv_cache_spec_registry.KVCacheSpecRegistry._ensure_registered": "(cls, vllm_config=None)",
}


def resolve(path: str) -> tuple[Any, str]:
    """``"pkg.module.Class.member"`` -> (``Class``, ``"member"``), importing the module."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:split])
        try:
            owner: Any = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not f"{module}.".startswith(f"{error.name}."):
                raise  # a module that exists failed to import one of its own
            continue
        for name in parts[split:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ModuleNotFoundError(path)


def check() -> None:
    """Raise, naming the symbol, if vLLM lacks one of them or changed its signature."""
    for path, expected in {**OVERRIDDEN, **PRIVATE_CALLS}.items():
        owner, name = resolve(path)
        if expected is None:
            if not hasattr(owner, name):
                raise RuntimeError(f"vllm-tova needs {path}, which this vLLM does not have.")
        else:
            check_signature(owner, name, expected)
