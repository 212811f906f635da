"""TOVA settings: parsed once from ``VllmConfig.additional_config``.

``additional_config`` travels with the VllmConfig to EngineCore and every worker and is part
of the config hash, so one validated dataclass built from it is the single source of truth
for the block manager, the scheduler and the attention backend.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

from vllm_tova.install_check import require_plugin_installed
from vllm_tova.policy import POLICIES

#: Keys read from ``additional_config`` (the ``--kv-*`` CLI flags map onto them).
POLICY_KEY = "kv_policy"
BUDGET_KEY = "kv_budget"
CHUNK_KEY = "kv_prefill_chunk"
BUDGET_MAX_KEY = "kv_budget_max"
KEYS = (POLICY_KEY, BUDGET_KEY, CHUNK_KEY, BUDGET_MAX_KEY)
#: vllm-tova owns this key prefix: a misspelled key would otherwise be ignored in silence.
KEY_PREFIX = "kv_"

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
    budget: K, the most tokens each sequence keeps per layer unless its request asks for
        less or more (``extra_args``/``vllm_xargs`` ``kv_budget``).
    budget_max: the largest K a request may ask for (default: ``budget``). It sizes what a
        sequence may hold (the startup fit check, the GPU decode workspace); a value of at
        least max_model_len also makes room for requests with ``kv_policy: none``.
    prefill_chunk: C, prompt tokens absorbed per step before an eviction round; the
        scheduler hands prompts over in exactly these chunks so results never depend on
        what else is in the batch.
    """

    policy: str = "none"
    budget: int = 0
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    budget_max: int = 0  # 0: the same as ``budget``

    def __post_init__(self) -> None:
        if not self.budget_max:
            object.__setattr__(self, "budget_max", self.budget)

    @property
    def enabled(self) -> bool:
        return self.policy != "none"

    @classmethod
    def from_additional_config(cls, extra: Mapping[str, Any] | None) -> "TovaConfig":
        """Parse and validate; errors name the key and the allowed range."""
        extra = extra or {}
        check_known_keys(extra, "additional_config")
        policy = extra.get(POLICY_KEY, "none")
        allowed = ["none", *POLICIES]
        if policy not in allowed:
            raise ValueError(f"{label(POLICY_KEY)}={policy!r} is not supported; choose one of {allowed}.")
        if policy == "none":
            return cls()
        budget = _positive_int(extra, BUDGET_KEY, None)
        chunk = _positive_int(extra, CHUNK_KEY, DEFAULT_PREFILL_CHUNK)
        budget_max = _positive_int(extra, BUDGET_MAX_KEY, budget)
        if budget_max < budget:
            raise ValueError(
                f"{label(BUDGET_MAX_KEY)}={budget_max} is below {label(BUDGET_KEY)}={budget}, the "
                f"default every request gets; allowed: {flag(BUDGET_MAX_KEY)} >= {budget}."
            )
        return cls(policy=policy, budget=budget, prefill_chunk=chunk, budget_max=budget_max)

    def allows_exact(self, max_model_len: int) -> bool:
        """Whether a request may ask for no eviction (``kv_policy: none``): only where a
        sequence may hold max_model_len tokens, so the pool and workspace were sized for it."""
        return self.budget_max >= max_model_len

    def validate_against(
        self, block_size: int, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int
    ) -> None:
        """Checks that need the engine's resolved settings."""
        if self.budget < block_size:
            raise ValueError(
                f"{label(BUDGET_KEY)}={self.budget} is smaller than the KV block size {block_size}; "
                f"allowed: {flag(BUDGET_KEY)} >= {block_size} (or a smaller --block-size)."
            )
        for key, value in ((BUDGET_KEY, self.budget), (BUDGET_MAX_KEY, self.budget_max)):
            problem = budget_problem(value, block_size, max_model_len, flag(key))
            if problem:
                raise ValueError(f"{label(key)}={value} {problem}, or a --block-size that divides it.")
        if self.prefill_chunk > max_num_batched_tokens:
            raise ValueError(
                f"{label(CHUNK_KEY)}={self.prefill_chunk} exceeds max_num_batched_tokens="
                f"{max_num_batched_tokens}: a prompt chunk must fit one step; allowed: "
                f"1 <= {flag(CHUNK_KEY)} <= {max_num_batched_tokens}, or raise --max-num-batched-tokens."
            )
        most = starvation_free_chunk(max_num_batched_tokens, max_num_seqs)
        if self.prefill_chunk > most:
            needed = self.prefill_chunk + max_num_seqs - 1
            smaller = f"{flag(CHUNK_KEY)} <= {most}, " if most >= 1 else ""
            raise ValueError(
                f"{label(CHUNK_KEY)}={self.prefill_chunk} does not fit a step beside a full batch of "
                f"decodes (max_num_batched_tokens={max_num_batched_tokens}, max_num_seqs="
                f"{max_num_seqs}: {max_num_seqs - 1} decode tokens). Prompts advance a whole chunk at "
                f"a time, so waiting prompts would stall until running sequences finish. Allowed: "
                f"{smaller}--max-num-batched-tokens >= {needed}, or "
                f"--max-num-seqs <= {max_num_batched_tokens - self.prefill_chunk + 1}."
            )


def budget_problem(budget: int, block_size: int, max_model_len: int, name: str) -> str | None:
    """Why ``budget`` cannot be a K with this block size (None if it can).

    Refused, not rounded: K decides which tokens are evicted, so a rounded K would change the
    outputs asked for; the tail of the last block would be reserved and never used."""
    if budget < block_size:
        return f"is smaller than the KV block size {block_size}; allowed: >= {block_size}"
    if budget % block_size and budget < max_model_len:
        lower, upper = budget // block_size * block_size, -(-budget // block_size) * block_size
        return (
            f"is not a multiple of the KV block size {block_size}: each sequence would hold "
            f"{upper} slots and use {budget}. Allowed: a multiple of {block_size} (e.g. {name} {lower} or {upper})"
        )
    return None


def starvation_free_chunk(max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Largest prompt chunk that always fits a step: the other ``max_num_seqs - 1`` sequences
    take one decode token each, so the oldest prompt still in prefill gets its chunk every step."""
    return max_num_batched_tokens - (max_num_seqs - 1)


#: ``kv_*`` keys that vLLM itself puts in a request's ``extra_args`` (disaggregated prefill,
#: LMCache and NIXL read ``kv_transfer_params`` there): never ours to refuse.
VLLM_KEYS = frozenset({"kv_transfer_params"})


def check_known_keys(settings: Mapping[str, Any], where: str) -> None:
    """Refuse a ``kv_*`` key that is not one of ``KEYS`` (nor vLLM's own), suggesting the
    closest one."""
    for key in settings:
        if isinstance(key, str) and key.startswith(KEY_PREFIX) and key not in KEYS and key not in VLLM_KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"{where} key {key!r} is not a vllm-tova setting; {hint}"
                f"known keys: {', '.join(KEYS)} (vllm-tova owns the {KEY_PREFIX!r} prefix)."
            )


def additional_config(
    policy: str, budget: int, prefill_chunk: int = DEFAULT_PREFILL_CHUNK, budget_max: int | None = None
) -> dict:
    """The ``additional_config`` entries that turn a policy on (``LLM(additional_config=...)``).
    Raises first if vLLM would not load the plugin and so would silently ignore them."""
    require_plugin_installed()
    config = {POLICY_KEY: policy, BUDGET_KEY: budget, CHUNK_KEY: prefill_chunk}
    if budget_max is not None:
        config[BUDGET_MAX_KEY] = budget_max
    return config


def _positive_int(extra: Mapping[str, Any], key: str, default: int | None) -> int:
    value = extra.get(key, default)
    if value is None:
        raise ValueError(f"{label(key)} is required when {flag(POLICY_KEY)} is set (an integer >= 1).")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label(key)}={value!r} must be an integer >= 1.")
    return value
