"""What a request may not ask of a TOVA engine: its own KV settings, or beam search.

Per-request KV settings (``SamplingParams.extra_args``, ``vllm_xargs`` over HTTP) are refused.

The engine honours one budget for every sequence. The attention backend keeps no per-request
state: it derives every slot from ``seq_lens``, the query lengths and the engine-wide K
(vLLM's attention metadata carries no request ids), and the block manager caps every sequence
at the same ``ceil(K / block_size)`` blocks. A per-request K would need both to learn request
identities. Rather than silently ignore a request's ``kv_budget``, the front end rejects it
(a ``ValueError``, which the OpenAI server answers with 400); restating the server's own
setting is accepted because it is exactly what the request gets. A misspelled ``kv_*`` key
is refused too, with the closest known key, rather than ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vllm_tova.config import BUDGET_KEY, CHUNK_KEY, KEYS, POLICY_KEY, TovaConfig, check_known_keys, flag, label


def server_values(settings: TovaConfig) -> dict[str, Any]:
    """What every request of this engine gets, per ``additional_config`` key."""
    if not settings.enabled:
        return {POLICY_KEY: "none", BUDGET_KEY: None, CHUNK_KEY: None}
    return {POLICY_KEY: settings.policy, BUDGET_KEY: settings.budget, CHUNK_KEY: settings.prefill_chunk}


def check_extra_args(extra_args: Mapping[str, Any] | None, settings: TovaConfig) -> None:
    """Raise ``ValueError`` naming the key if a request asks for a KV setting of its own."""
    if not extra_args:
        return
    check_known_keys(extra_args, "extra_args/vllm_xargs")
    current = server_values(settings)
    for key in KEYS:
        if key in extra_args and extra_args[key] != current[key]:
            running = (
                f"{flag(POLICY_KEY)} {settings.policy} {flag(BUDGET_KEY)} {settings.budget}"
                if settings.enabled
                else "no KV eviction policy"
            )
            raise ValueError(
                f"extra_args/vllm_xargs key {key!r}={extra_args[key]!r} is not supported per "
                f"request: this server runs {running} for every sequence (the engine keeps one "
                f"budget; its attention backend holds no per-request state). Drop {key!r}, or "
                f"start a server with {flag(key)} {extra_args[key]}."
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
