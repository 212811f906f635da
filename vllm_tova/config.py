"""TOVA settings: parsed once from ``VllmConfig.additional_config``.

``additional_config`` travels with the VllmConfig to EngineCore and every worker and is part
of the config hash, so one validated dataclass built from it is the single source of truth
for the block manager, the scheduler and the attention backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vllm_tova.install_check import require_plugin_installed
from vllm_tova.policy import POLICIES

#: Keys read from ``additional_config`` (the CLI flags of the serving issue map onto them).
POLICY_KEY = "kv_policy"
BUDGET_KEY = "kv_budget"
CHUNK_KEY = "kv_prefill_chunk"

DEFAULT_PREFILL_CHUNK = 512


def flag(key: str) -> str:
    """The ``vllm serve`` flag of an ``additional_config`` key ("kv_budget" -> "--kv-budget")."""
    return "--" + key.replace("_", "-")


def label(key: str) -> str:
    """How errors name a setting: the CLI flag and the ``additional_config`` key, both."""
    return f"{flag(key)} / {key}"


@dataclass(frozen=True)
class TovaConfig:
    """One server-wide KV eviction setting.

    policy: name of the eviction policy ("none" = stock vLLM).
    budget: K, the most tokens each sequence keeps per layer.
    prefill_chunk: C, prompt tokens absorbed per step before an eviction round; the
        scheduler hands prompts over in exactly these chunks so results never depend on
        what else is in the batch.
    """

    policy: str = "none"
    budget: int = 0
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK

    @property
    def enabled(self) -> bool:
        return self.policy != "none"

    @classmethod
    def from_additional_config(cls, extra: Mapping[str, Any] | None) -> "TovaConfig":
        """Parse and validate; errors name the key and the allowed range."""
        extra = extra or {}
        policy = extra.get(POLICY_KEY, "none")
        allowed = ["none", *POLICIES]
        if policy not in allowed:
            raise ValueError(f"{label(POLICY_KEY)}={policy!r} is not supported; choose one of {allowed}.")
        if policy == "none":
            return cls()
        budget = _positive_int(extra, BUDGET_KEY, None)
        chunk = _positive_int(extra, CHUNK_KEY, DEFAULT_PREFILL_CHUNK)
        return cls(policy=policy, budget=budget, prefill_chunk=chunk)

    def validate_against(self, block_size: int, max_num_batched_tokens: int) -> None:
        """Checks that need the engine's resolved settings."""
        if self.budget < block_size:
            raise ValueError(
                f"{label(BUDGET_KEY)}={self.budget} is smaller than the KV block size {block_size}; "
                f"allowed: {flag(BUDGET_KEY)} >= {block_size} (or a smaller --block-size)."
            )
        if self.prefill_chunk > max_num_batched_tokens:
            raise ValueError(
                f"{label(CHUNK_KEY)}={self.prefill_chunk} exceeds max_num_batched_tokens="
                f"{max_num_batched_tokens}: a prompt chunk must fit one step; allowed: "
                f"1 <= {flag(CHUNK_KEY)} <= {max_num_batched_tokens}, or raise --max-num-batched-tokens."
            )


def additional_config(policy: str, budget: int, prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> dict:
    """The ``additional_config`` entries that turn a policy on (``LLM(additional_config=...)``).
    Raises first if vLLM would not load the plugin and so would silently ignore them."""
    require_plugin_installed()
    return {POLICY_KEY: policy, BUDGET_KEY: budget, CHUNK_KEY: prefill_chunk}


def _positive_int(extra: Mapping[str, Any], key: str, default: int | None) -> int:
    value = extra.get(key, default)
    if value is None:
        raise ValueError(f"{label(key)} is required when {flag(POLICY_KEY)} is set (an integer >= 1).")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label(key)}={value!r} must be an integer >= 1.")
    return value
