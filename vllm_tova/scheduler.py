"""Scheduler that hands prompts to TOVA in fixed chunks (EngineCore).

TOVA evicts after each prompt chunk, scored by the chunk's last query, so the chunk
boundaries are part of the result. vLLM cuts a prefill wherever the step's token budget
runs out, which depends on the rest of the batch. These schedulers cut prompts only at
multiples of ``kv_prefill_chunk`` (or the prompt's end), and replay the tokens of a
preempted request one per step, as they were first decoded, so a request's output never
depends on its neighbours or on preemption.

vLLM 0.26 already has the hook: ``_mamba_block_aligned_split`` clips a prefill chunk to an
aligned end and skips the request for the step when nothing aligned fits.

They also count what TOVA does with the cache (``vllm_tova.metrics.stats``) and hand it out with
vLLM's per-step ``SchedulerStats``.
"""

from __future__ import annotations

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.metrics.stats import SchedulerStats
from vllm.v1.request import Request

from vllm_tova.config import TovaConfig
from vllm_tova.kv_manager import TovaAttentionSpec, TovaKVCacheManager, blocks_per_sequence, request_budget
from vllm_tova.metrics.stats import EvictionCounter, TovaSchedulerStats, TovaStats, blocks_by_class, count_blocks


def aligned_chunk(start: int, num_new_tokens: int, prompt_len: int, chunk: int) -> int:
    """Tokens to schedule from ``start``: up to the next chunk end, or 0 if it does not fit.

    Prompt tokens go in chunks of ``chunk`` aligned to the prompt start; tokens past the
    prompt (replayed output after preemption) go one at a time.
    """
    if start < prompt_len:
        end = min((start // chunk + 1) * chunk, prompt_len)
    else:
        end = start + 1
    wanted = end - start
    return wanted if num_new_tokens >= wanted else 0


class _ChunkAlignedMixin:
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tova_chunk = TovaConfig.from_additional_config(
            self.vllm_config.additional_config
        ).prefill_chunk
        self.need_mamba_block_aligned_split = True

    def _mamba_block_aligned_split(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_local_computed_tokens: int = 0,
        num_external_computed_tokens: int = 0,
    ) -> int:
        start = request.num_computed_tokens + num_new_local_computed_tokens
        start += num_external_computed_tokens
        return aligned_chunk(start, num_new_tokens, request.num_prompt_tokens, self.tova_chunk)


class _ReserveCapMixin:
    """Hands the TOVA block managers this scheduler's requests, so that each is admitted with
    its whole block cap reserved (``TovaKVCacheManager``): running requests then never grow
    into a preemption. The replay path above stays for preemptions vLLM still makes (e.g.
    ``reset_prefix_cache(reset_running_requests=True)``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = TovaConfig.from_additional_config(self.vllm_config.additional_config)
        for manager in self.kv_cache_manager.coordinator.single_type_managers:
            if isinstance(manager, TovaKVCacheManager):
                manager.attach_requests(self.requests, self.max_model_len, settings)


class _EvictionStatsMixin:
    """Counts evictions and held blocks each step; reports them in ``make_stats``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = TovaConfig.from_additional_config(self.vllm_config.additional_config)
        self.tova_settings = settings
        groups = self.kv_cache_config.kv_cache_groups
        tova_layers = sum(
            len(g.layer_names) for g in groups if isinstance(g.kv_cache_spec, TovaAttentionSpec)
        )
        self.tova_evictions = EvictionCounter(tova_layers)
        self.tova_block_cap = blocks_per_sequence(settings.budget, self.cache_config.block_size)

    def _tova_budget(self, request: Request) -> int:
        return request_budget(request, self.tova_settings, self.max_model_len)

    def _update_after_schedule(self, scheduler_output: SchedulerOutput) -> None:
        # Runs once per schedule(), before num_computed_tokens advances by this step's tokens.
        scheduled = scheduler_output.num_scheduled_tokens
        absorbed = {r: self.requests[r].num_computed_tokens for r in scheduled}
        budgets = {r: self._tova_budget(self.requests[r]) for r in scheduled}
        self.tova_evictions.observe(scheduled, absorbed, budgets)
        super()._update_after_schedule(scheduler_output)

    def make_stats(self, *args, **kwargs) -> SchedulerStats | None:
        stats = super().make_stats(*args, **kwargs)
        if stats is None:
            return None
        manager = self.kv_cache_manager
        blocks = {r.request_id: count_blocks([manager.get_block_ids(r.request_id)]) for r in self.running}
        budgets = {r.request_id: self._tova_budget(r) for r in self.running}
        tova = TovaStats(
            evicted_tokens_total=self.tova_evictions.total,
            running_sequences=len(self.running),
            kv_blocks_held=sum(blocks.values()),
            kv_block_cap=self.tova_block_cap,
            kv_blocks_by_budget=blocks_by_class(blocks, budgets, self.max_model_len),
        )
        return TovaSchedulerStats.extend(stats, tova)


class TovaScheduler(_EvictionStatsMixin, _ReserveCapMixin, _ChunkAlignedMixin, Scheduler):
    pass


class TovaAsyncScheduler(_EvictionStatsMixin, _ReserveCapMixin, _ChunkAlignedMixin, AsyncScheduler):
    pass
