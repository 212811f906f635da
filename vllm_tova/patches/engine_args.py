"""``EngineArgs.create_engine_config`` (see ``patches/README.md``)."""

from __future__ import annotations

import copy

from vllm.config import CUDAGraphMode, VllmConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.utils.math_utils import cdiv
from vllm.v1.attention.backends.registry import AttentionBackendEnum

from vllm_tova.attention import fp8
from vllm_tova.config import BUDGET_KEY, CHUNK_KEY, POLICY_KEY, TovaConfig, flag, label
from vllm_tova.kv_manager import blocks_per_sequence
from vllm_tova.patches.wrap import wrap
from vllm_tova.policy import CUDA_POLICIES

CUSTOM = AttentionBackendEnum.CUSTOM

logger = init_logger("vllm.tova")


def apply() -> None:
    wrap(
        EngineArgs,
        "create_engine_config",
        "(self, usage_context=None, headless=False)",
        _create_engine_config,
    )


def _create_engine_config(original, self: EngineArgs, *args, **kwargs) -> VllmConfig:
    settings = TovaConfig.from_additional_config(self.additional_config)
    if not settings.enabled:
        return original(self, *args, **kwargs)
    _prepare_args(self, settings)
    user_chose_graphs = _user_chose_capture_sizes(self)
    config = original(self, *args, **kwargs)
    if current_platform.is_cuda() and not user_chose_graphs and _raise_capture_size(self, config):
        config = original(self, *args, **kwargs)  # vLLM derives the capture list itself
    _check_config(config, settings)
    _adjust_config(config)
    _log_startup(config, settings)
    if current_platform.is_cuda():
        _warn_uncaptured_batches(config)
    return config


def _prepare_args(args: EngineArgs, settings: TovaConfig) -> None:
    if args.enable_prefix_caching:
        raise ValueError(
            f"--enable-prefix-caching cannot be combined with {label(POLICY_KEY)}={settings.policy}: "
            "evicted slots are overwritten in place, so cached blocks would be wrong. "
            "Drop the flag (vllm-tova turns prefix caching off)."
        )
    args.enable_prefix_caching = False
    chosen = args.attention_backend
    if args.attention_config.backend is not None or chosen not in (None, "CUSTOM", CUSTOM):
        raise ValueError(
            f"--attention-backend {chosen or args.attention_config.backend} cannot be combined "
            f"with {label(POLICY_KEY)}={settings.policy}: the TOVA backend is selected automatically; "
            "drop the flag."
        )
    args.attention_backend = "CUSTOM"


def _check_config(config: VllmConfig, settings: TovaConfig) -> None:
    """Refuse what the TOVA backend cannot honour, naming the setting."""
    model = config.model_config
    sched = config.scheduler_config
    refusals = {
        "speculative decoding (--speculative-config)": config.speculative_config is not None,
        "KV connectors (--kv-transfer-config)": config.kv_transfer_config is not None,
        "pipeline parallelism (--pipeline-parallel-size > 1)": (
            config.parallel_config.pipeline_parallel_size > 1
        ),
        "MLA attention models": model.use_mla,
        "hybrid (Mamba / linear-attention) models": model.is_hybrid,
        "attention-free models": model.is_attention_free,
        "sliding-window attention models": (
            model.get_sliding_window() is not None
            or any("sliding" in str(t) for t in getattr(model.hf_text_config, "layer_types", None) or ())
        ),
    }
    cache_dtype = config.cache_config.cache_dtype
    if cache_dtype not in fp8.SUPPORTED_KV_CACHE_DTYPES:
        raise ValueError(
            f"--kv-cache-dtype {cache_dtype} cannot be combined with {label(POLICY_KEY)}={settings.policy}; "
            f"allowed: {', '.join(fp8.SUPPORTED_KV_CACHE_DTYPES)} (fp8 = fp8_e4m3, with per-layer "
            "K and V scales as vLLM's own attention uses them)."
        )
    if current_platform.is_cuda():
        if fp8.is_fp8(cache_dtype) and not current_platform.has_device_capability(89):
            refusals["an FP8 KV cache below compute capability 8.9 (--kv-cache-dtype auto)"] = True
        if settings.policy not in CUDA_POLICIES:
            refusals[f"CUDA GPUs yet (their kernels serve {', '.join(CUDA_POLICIES)})"] = True
        head_size = model.get_head_size()
        if head_size & (head_size - 1):
            refusals[f"head size {head_size} on CUDA GPUs (the kernels need a power of two)"] = True
    refused = [name for name, present in refusals.items() if present]
    if refused:
        raise ValueError(
            f"{label(POLICY_KEY)}={settings.policy} does not support {', '.join(refused)}; "
            f"remove {flag(POLICY_KEY)} or those settings."
        )
    settings.validate_against(
        config.cache_config.block_size, sched.max_num_batched_tokens, sched.max_num_seqs, model.max_model_len
    )
    threshold = sched.long_prefill_token_threshold
    if 0 < threshold < settings.prefill_chunk:
        raise ValueError(
            f"--long-prefill-token-threshold {threshold} is below {label(CHUNK_KEY)}="
            f"{settings.prefill_chunk}; prompt chunks could never be scheduled. Use "
            f"{flag(CHUNK_KEY)} <= {threshold} or a larger threshold."
        )
    if settings.budget >= model.max_model_len:
        logger.warning(
            "%s=%d >= max_model_len=%d: nothing will ever be evicted (allowed and exact, but "
            "%s < %d is what saves KV memory).",
            label(BUDGET_KEY),
            settings.budget,
            model.max_model_len,
            flag(BUDGET_KEY),
            model.max_model_len,
        )


def _adjust_config(config: VllmConfig) -> None:
    # The chunk-aligned scheduler keeps results independent of batch composition.
    sched = config.scheduler_config
    name = "TovaAsyncScheduler" if sched.async_scheduling else "TovaScheduler"
    sched.scheduler_cls = f"vllm_tova.scheduler.{name}"


def _log_startup(config: VllmConfig, settings: TovaConfig) -> None:
    block_size = config.cache_config.block_size
    max_len = config.model_config.max_model_len
    cap = blocks_per_sequence(settings.budget, block_size)
    full = cdiv(max_len, block_size)
    logger.info(
        "vllm-tova: policy=%s budget=%d prefill_chunk=%d block_size=%d -> at most %d KV blocks "
        "per sequence (a full %d-token sequence needs %d): up to %.1fx more sequences per KV pool.",
        settings.policy,
        settings.budget,
        settings.prefill_chunk,
        block_size,
        cap,
        max_len,
        full,
        full / cap,
    )
    if settings.budget_max != settings.budget:
        logger.info(
            "vllm-tova: a request may ask for its own kv_budget up to %d (%d KV blocks)%s.",
            settings.budget_max,
            blocks_per_sequence(min(settings.budget_max, max_len), block_size),
            ", or kv_policy none (exact attention)" if settings.allows_exact(max_len) else "",
        )


def _user_chose_capture_sizes(args: EngineArgs) -> bool:
    chosen = args.compilation_config
    return chosen.max_cudagraph_capture_size is not None or chosen.cudagraph_capture_sizes is not None


def raised_capture_size(max_num_seqs: int, max_capture_size: int | None, graphs_on: bool) -> int | None:
    """The CUDA-graph capture size TOVA wants, or None to keep vLLM's.

    vLLM captures decode graphs up to min(2 x max_num_seqs, 512): stock vLLM rarely fits more
    sequences than that, but TOVA exists to run larger batches, and an uncaptured batch
    launches every kernel from Python. Measured side by side on two H200s (Llama-3-8B shape,
    K=512, batch 696): 17,513 generated tok/s with graphs up to 512, 21,310 up to 1,024.
    """
    if not graphs_on or not max_capture_size or max_num_seqs <= max_capture_size:
        return None
    return max_num_seqs


def _raise_capture_size(args: EngineArgs, config: VllmConfig) -> bool:
    """Set ``args``' capture size to the largest decode batch (``max_num_seqs``, at most
    ``max_num_batched_tokens``) if vLLM's default stops short of it."""
    compilation = config.compilation_config
    size = raised_capture_size(
        _largest_decode_batch(config), compilation.max_cudagraph_capture_size, _graphs_on(config)
    )
    if size is None:
        return False
    logger.info(
        "vllm-tova: capturing CUDA graphs for decode batches up to %d sequences (vLLM's "
        "default stops at %d); pass --compilation-config '{\"max_cudagraph_capture_size\": N}' "
        "to choose otherwise.",
        size,
        compilation.max_cudagraph_capture_size,
    )
    args.compilation_config = copy.deepcopy(args.compilation_config)
    args.compilation_config.max_cudagraph_capture_size = size
    return True


def uncaptured_batch_warning(max_num_seqs: int, max_capture_size: int | None, graphs_on: bool) -> str | None:
    """Why large batches may be slow when the user capped the capture size below
    ``max_num_seqs`` (vllm-tova leaves a chosen size alone). Measured on an H200
    (benchmarks/results/kernels/README.md, "Where the step time goes"): batch 640 took 62 ms per step of which 27 ms ran on the GPU."""
    if raised_capture_size(max_num_seqs, max_capture_size, graphs_on) is None:
        return None
    return (
        f"vllm-tova: max_num_seqs={max_num_seqs} but CUDA graphs are captured for batches of at "
        f"most {max_capture_size}; larger decode batches launch every kernel from Python (on an "
        f"H200 with a Llama-3-8B shape: 62 ms per step at batch 640, of which the GPU ran 27 ms). "
        f"To capture them: --compilation-config '{{\"max_cudagraph_capture_size\": {max_num_seqs}}}'."
    )


def _largest_decode_batch(config: VllmConfig) -> int:
    sched = config.scheduler_config
    return min(sched.max_num_seqs, sched.max_num_batched_tokens)


def _graphs_on(config: VllmConfig) -> bool:
    mode = config.compilation_config.cudagraph_mode
    return mode is not None and mode != CUDAGraphMode.NONE


def _warn_uncaptured_batches(config: VllmConfig) -> None:
    message = uncaptured_batch_warning(
        _largest_decode_batch(config),
        config.compilation_config.max_cudagraph_capture_size,
        _graphs_on(config),
    )
    if message:
        logger.warning(message)
