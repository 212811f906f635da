"""What a request may ask of a TOVA engine: its own budget, exact attention, or beam search.

A request may set ``kv_budget`` (``SamplingParams.extra_args``; ``vllm_xargs`` over HTTP)
to any K the server's block size allows, up to ``--kv-budget-max``; without it the request
gets ``--kv-budget``. It may set ``kv_policy`` to the server's policy or to ``none`` (exact
attention, no eviction), the latter only where ``--kv-budget-max`` >= max_model_len, since
only then were the pool and the GPU workspace sized for a sequence that keeps everything.
Policies do not mix in one engine: the decode kernels compile one policy (a constexpr), and
one policy plus ``none`` covers the traffic the feature is for (bounded long generations
beside exact short turns). ``none`` is carried as a budget of max_model_len, which never
evicts, so the backends need nothing but a per-row budget.

Everything else is refused with a ``ValueError`` naming the key, the limit and the flag that
sets it (the OpenAI server answers 400): a misspelled ``kv_*`` key, a per-request
``kv_prefill_chunk`` (chunk boundaries are scheduler-wide), any setting on a server without
a policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vllm_tova.config import (
    BUDGET_KEY,
    BUDGET_MAX_KEY,
    CHUNK_KEY,
    KEYS,
    POLICY_KEY,
    TovaConfig,
    budget_problem,
    check_known_keys,
    flag,
    label,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig

WHERE = "extra_args/vllm_xargs"


def server_values(settings: TovaConfig) -> dict[str, Any]:
    """What every request of this engine gets by default, per ``additional_config`` key."""
    if not settings.enabled:
        return {POLICY_KEY: "none", BUDGET_KEY: None, CHUNK_KEY: None, BUDGET_MAX_KEY: None}
    return {
        POLICY_KEY: settings.policy,
        BUDGET_KEY: settings.budget,
        CHUNK_KEY: settings.prefill_chunk,
        BUDGET_MAX_KEY: settings.budget_max,
    }


def row_budget(extra_args: Mapping[str, Any] | None, settings: TovaConfig, max_model_len: int) -> int:
    """The K a (validated) request runs with: its ``kv_budget``, max_model_len for
    ``kv_policy: none`` (never evicts), else the server's ``kv_budget``."""
    if asks_exact(extra_args):
        return max_model_len
    return int((extra_args or {}).get(BUDGET_KEY, settings.budget))


def asks_exact(extra_args: Mapping[str, Any] | None) -> bool:
    """Whether a (validated) request asked for exact attention: its blocks grow as in stock
    vLLM, with nothing reserved ahead."""
    return (extra_args or {}).get(POLICY_KEY) == "none"


def check_request(extra_args: Mapping[str, Any] | None, config: "VllmConfig") -> None:
    """``check_extra_args`` against an engine's configuration."""
    check_extra_args(
        extra_args,
        TovaConfig.from_additional_config(config.additional_config),
        config.cache_config.block_size,
        config.model_config.max_model_len,
    )


def check_extra_args(
    extra_args: Mapping[str, Any] | None, settings: TovaConfig, block_size: int, max_model_len: int
) -> None:
    """Raise ``ValueError`` naming the key and the allowed values if a request asks for a KV
    setting this server cannot give it."""
    if not extra_args:
        return
    check_known_keys(extra_args, WHERE)
    if not settings.enabled:
        _refuse_on_stock(extra_args)
        return
    for key in (CHUNK_KEY, BUDGET_MAX_KEY):
        if key in extra_args and extra_args[key] != server_values(settings)[key]:
            raise ValueError(
                f"{WHERE} key {key!r}={extra_args[key]!r} is not supported per request: it is "
                f"server-wide ({flag(key)} {server_values(settings)[key]}). Drop {key!r}."
            )
    policy = extra_args.get(POLICY_KEY, settings.policy)
    if policy not in (settings.policy, "none"):
        raise ValueError(
            f"{WHERE} key {POLICY_KEY!r}={policy!r} is not allowed: this server runs "
            f"{flag(POLICY_KEY)} {settings.policy}; a request may ask for {settings.policy!r} or "
            f"'none' (exact attention). Policies do not mix in one engine: start a server with "
            f"{flag(POLICY_KEY)} {policy} for it."
        )
    if policy == "none":
        if BUDGET_KEY in extra_args:
            raise ValueError(
                f"{WHERE} keys {POLICY_KEY!r}='none' and {BUDGET_KEY!r} contradict each other: "
                f"exact attention keeps every token. Drop one."
            )
        if not settings.allows_exact(max_model_len):
            raise ValueError(
                f"{WHERE} key {POLICY_KEY!r}='none' (exact attention) needs room for a whole "
                f"{max_model_len}-token sequence, but this server caps sequences at "
                f"{label(BUDGET_MAX_KEY)}={settings.budget_max}. Start the server with "
                f"{flag(BUDGET_MAX_KEY)} {max_model_len} (>= --max-model-len) to allow it, or "
                f"ask for {BUDGET_KEY!r} <= {settings.budget_max}."
            )
        return
    if BUDGET_KEY in extra_args:
        _check_budget(extra_args[BUDGET_KEY], settings, block_size, max_model_len)


def _check_budget(value: Any, settings: TovaConfig, block_size: int, max_model_len: int) -> None:
    limit = settings.budget_max
    allowed = f"allowed: {block_size} <= {BUDGET_KEY} <= {limit}, a multiple of {block_size}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{WHERE} key {BUDGET_KEY!r}={value!r} must be an integer; {allowed}.")
    if value > limit:
        raise ValueError(
            f"{WHERE} key {BUDGET_KEY!r}={value} exceeds this server's maximum "
            f"{label(BUDGET_MAX_KEY)}={limit}; {allowed} (start the server with a larger "
            f"{flag(BUDGET_MAX_KEY)} to allow more)."
        )
    problem = budget_problem(value, block_size, max_model_len, BUDGET_KEY)
    if problem:
        raise ValueError(f"{WHERE} key {BUDGET_KEY!r}={value} {problem}; at most {limit}.")


def _refuse_on_stock(extra_args: Mapping[str, Any]) -> None:
    for key in KEYS:
        if key in extra_args and extra_args[key] != server_values(TovaConfig())[key]:
            raise ValueError(
                f"{WHERE} key {key!r}={extra_args[key]!r} is not supported: this server runs no "
                f"KV eviction policy. Drop {key!r}, or start a server with {flag(POLICY_KEY)} and "
                f"{flag(BUDGET_KEY)} (and {flag(BUDGET_MAX_KEY)} for per-request budgets)."
            )


def check_beam_search(settings: TovaConfig) -> None:
    """Raise ``ValueError`` if beam search is asked of an engine that evicts.

    vLLM runs beam search as one-token requests that resend each beam's whole text every
    step, so every generated token would be re-absorbed as a prompt chunk: O(L^2) prefill
    work, and evictions chosen by chunk rather than by the decode rule.
    """
    if settings.enabled:
        raise ValueError(
            f"beam search (use_beam_search / LLM.beam_search) cannot be combined with "
            f"{label(POLICY_KEY)}={settings.policy}: vLLM resends every beam as a new prompt each "
            f"step, so each generated token would be re-absorbed as a prompt chunk (quadratic "
            f"prefill, evictions that differ from decoding). Use sampling or greedy decoding "
            f"(n > 1 for several candidates), or a server without {flag(POLICY_KEY)}."
        )
