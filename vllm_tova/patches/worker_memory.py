"""Worker side: leave room for the CUDA decode workspace when vLLM sizes the KV pool.

vLLM gives the KV pool what its profile run leaves of ``gpu_memory_utilization``. The
profile run never builds attention metadata, so the TOVA metadata builder's decode workspace,
allocated afterwards with the builders, would sit outside that budget. The workspace's size
is known from the config alone (``triton_backend.workspace_size``), so the worker subtracts it
from the memory it reports as available, exactly as if the profile had seen it (see
``patches/README.md``).
"""

from __future__ import annotations

from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.v1.worker.gpu_worker import Worker

from vllm_tova.config import TovaConfig
from vllm_tova.patches.wrap import wrap

logger = init_logger(__name__)


def apply() -> None:
    wrap(Worker, "determine_available_memory", "(self)", _determine_available_memory)


def reserved_bytes(vllm_config, num_sms: int | None) -> int:
    """Bytes the TOVA builders allocate after the KV pool is sized: one decode workspace per
    metadata builder (one KV-cache group, as the plugin refuses hybrid models; one builder per
    micro-batch with ubatching). 0 without a policy, without CUDA (``num_sms`` None), and when
    ``kv_cache_memory_bytes`` fixes the pool (vLLM then profiles nothing and reserves that)."""
    settings = TovaConfig.from_additional_config(vllm_config.additional_config)
    if not settings.enabled or num_sms is None or vllm_config.cache_config.kv_cache_memory_bytes:
        return 0
    from vllm_tova.attention.triton_backend import workspace_bytes

    parallel = vllm_config.parallel_config
    builders = parallel.num_ubatches if parallel.use_ubatching else 1
    return builders * workspace_bytes(vllm_config, num_sms)


def _determine_available_memory(original, self: Worker) -> int:
    available = original(self)
    num_sms = None
    if current_platform.is_cuda():
        from vllm_tova.attention.triton_backend import multiprocessor_count

        num_sms = multiprocessor_count(self.device)
    reserve = reserved_bytes(self.vllm_config, num_sms)
    if reserve:
        available -= reserve
        self.available_kv_cache_memory_bytes = available
        logger.info(
            "vllm-tova: %.1f MiB reserved for the TOVA decode workspace before sizing the KV pool "
            "(%.2f GiB left for it).", reserve / 2**20, available / 2**30,
        )  # fmt: skip
    return available
