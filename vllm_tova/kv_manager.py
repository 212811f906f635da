"""Block side of TOVA (EngineCore): a KV-cache spec and a manager that cap each sequence.

The attention backend keeps a sequence's retained tokens packed into its first
``min(tokens_seen, K)`` slots (incoming tokens are attended from activations, then written
into slots freed by eviction), so a sequence never needs more than ``ceil(K / block_size)``
blocks. Capping here is what lets the scheduler admit many more sequences.

Admission reserves that cap: a request is handed every block it will ever hold when it is
first scheduled (``ceil(min(prompt + max_tokens, max_model_len, K) / block_size)``), so a
running request never asks for another block and is never preempted for one; requests that
do not fit wait in the queue instead.

K is the request's own (``request_params.row_budget``): the spec carries the largest K a
request may ask for (``kv_budget_max``), which sizes the startup checks; each request is
capped at its own. A request without eviction (``kv_policy: none``) reserves nothing ahead
and grows block by block as in stock vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Self

from vllm.config import VllmConfig
from vllm.utils.math_utils import cdiv
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry
from vllm.v1.request import Request

from vllm_tova.config import TovaConfig
from vllm_tova.request_params import asks_exact, row_budget


def blocks_per_sequence(budget: int, block_size: int) -> int:
    """Most blocks one sequence ever holds with K = ``budget``."""
    return cdiv(budget, block_size)


@dataclass(frozen=True, kw_only=True)
class TovaAttentionSpec(FullAttentionSpec):
    """Full-attention layout whose per-sequence footprint is capped at ``kv_budget`` tokens
    (the largest budget a request may ask for)."""

    kv_budget: int = 0

    @property
    def max_blocks_per_sequence(self) -> int:
        return blocks_per_sequence(self.kv_budget, self.block_size)

    def max_memory_usage_bytes(self, vllm_config: VllmConfig) -> int:
        # Startup checks ("does one max_model_len request fit?") and the concurrency
        # estimate both read this: report the capped size, not max_model_len's.
        full = cdiv(vllm_config.model_config.max_model_len, self.block_size)
        return min(full, self.max_blocks_per_sequence) * self.page_size_bytes

    @classmethod
    def merge(cls, specs: list[Self]) -> Self:
        budgets = {spec.kv_budget for spec in specs}
        if len(budgets) != 1:
            raise ValueError(f"All TOVA layers of a KV-cache group need one budget, got {budgets}.")
        return replace(super().merge(specs), kv_budget=budgets.pop())


class TovaKVCacheManager(FullAttentionManager):
    """FullAttentionManager that caps each request at its own K and reserves that cap up front.

    Both the admission count (``get_num_blocks_to_allocate``) and the allocation
    (``allocate_new_blocks``) ask for the same number of tokens, so BlockPool never sees a
    request for more blocks than were checked: the tokens scheduled so far, raised to the
    request's final length once the scheduler has attached its requests, clamped to the
    request's cap. Requests without eviction are neither raised nor clamped (stock growth).
    """

    requests: Mapping[str, Request] | None = None
    max_model_len: int = 0
    settings: TovaConfig | None = None

    def attach_requests(
        self, requests: Mapping[str, Request], max_model_len: int, settings: TovaConfig
    ) -> None:
        """Let the manager see each request (the scheduler's live dict) and its settings."""
        self.requests, self.max_model_len, self.settings = requests, max_model_len, settings

    def _request(self, request_id: str) -> Request | None:
        return self.requests.get(request_id) if self.requests is not None and self.settings else None

    def _cap_tokens(self, request: Request | None) -> int | None:
        """Most tokens ``request`` may hold: whole blocks of its K (of the spec's, the largest
        allowed, before requests are attached); None without eviction (stock growth)."""
        assert isinstance(self.kv_cache_spec, TovaAttentionSpec)
        if request is None:
            budget = self.kv_cache_spec.kv_budget
        elif asks_exact(_extra_args(request)):
            return None
        else:
            budget = request_budget(request, self.settings, self.max_model_len)
        return blocks_per_sequence(budget, self.block_size) * self.block_size

    def _clamp(self, request_id: str, num_tokens: int) -> int:
        cap = self._cap_tokens(self._request(request_id))
        return num_tokens if cap is None else min(num_tokens, cap)

    def _reserve(self, request_id: str, num_tokens: int) -> int:
        request = self._request(request_id)
        cap = self._cap_tokens(request)
        if cap is None:
            return num_tokens
        if request is not None:
            num_tokens = max(num_tokens, final_length(request, self.max_model_len))
        return min(num_tokens, cap)

    def get_num_blocks_to_allocate(self, request_id, num_tokens, *args, **kwargs) -> int:
        reserved = self._reserve(request_id, num_tokens)
        return super().get_num_blocks_to_allocate(request_id, reserved, *args, **kwargs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int):
        return super().allocate_new_blocks(
            request_id, self._reserve(request_id, num_tokens), self._clamp(request_id, num_tokens_main_model)
        )


def _extra_args(request: Request) -> dict | None:
    params = request.sampling_params
    return params.extra_args if params is not None else None


def request_budget(request: Request, settings: TovaConfig, max_model_len: int) -> int:
    """A scheduled request's K (its ``extra_args``, validated by the front end)."""
    return row_budget(_extra_args(request), settings, max_model_len)


def final_length(request: Request, max_model_len: int) -> int:
    """Most tokens a request can reach: its prompt plus ``max_tokens``, within max_model_len."""
    return min(request.num_prompt_tokens + request.max_tokens, max_model_len)


def register_kv_cache_spec() -> None:
    """Register spec + manager (idempotent).

    vLLM registers its built-in specs only while the registry is empty, so make it register
    them first; otherwise FullAttentionSpec layers of a stock engine would find no manager.
    """
    KVCacheSpecRegistry._ensure_registered()
    KVCacheSpecRegistry.register(
        TovaAttentionSpec, TovaKVCacheManager, uniform_type_base_spec=FullAttentionSpec
    )
