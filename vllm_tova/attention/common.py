"""What the torch and Triton TOVA attention Impls share: the configurations both refuse, and
the settings each layer reads when it is built (policy, budget, head averaging across
tensor-parallel ranks, per-slot history). Each backend's forward is its own."""

from __future__ import annotations

import torch
from vllm.config import get_current_vllm_config
from vllm.v1.attention.backend import AttentionImpl, AttentionType

from vllm_tova.attention import eviction_log, fp8
from vllm_tova.attention.head_average import HeadAverage
from vllm_tova.attention.slot_state import SlotState
from vllm_tova.config import TovaConfig
from vllm_tova.policy import EvictionPolicy, get_policy


class TovaImplBase(AttentionImpl):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        unsupported = {
            "ALiBi": alibi_slopes is not None,
            "sliding-window attention": sliding_window is not None,
            "logit soft-capping": bool(logits_soft_cap),
            "attention sinks": sinks is not None,
            "cross-layer KV sharing": kv_sharing_target_layer_name is not None,
            f"{attn_type} attention": attn_type != AttentionType.DECODER,
            f"--kv-cache-dtype {kv_cache_dtype} (allowed: {', '.join(fp8.SUPPORTED_KV_CACHE_DTYPES)})": (
                kv_cache_dtype not in fp8.SUPPORTED_KV_CACHE_DTYPES
            ),
        }
        refused = [name for name, present in unsupported.items() if present]
        if refused:
            raise NotImplementedError(
                f"vllm-tova KV eviction does not support {', '.join(refused)}; "
                "run this model without a kv_policy."
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.group = num_heads // num_kv_heads
        self.fp8 = fp8.is_fp8(kv_cache_dtype)
        vllm_config = get_current_vllm_config()
        settings = TovaConfig.from_additional_config(vllm_config.additional_config)
        self.head_average = HeadAverage(vllm_config.parallel_config.tensor_parallel_size)
        self.policy: EvictionPolicy = get_policy(settings.policy, settings.budget)
        self.state = SlotState(self.policy)
        eviction_log.configure()

    @staticmethod
    def profiling_output(output: torch.Tensor) -> torch.Tensor:
        """The profiling run (no metadata): zeros, as vLLM's GPU backends return, not the
        uninitialized buffer. --calculate-kv-scales sets the FP8 scales from this pass's K/V,
        which garbage from earlier layers would make NaN."""
        return output.fill_(0)
