"""Per-request KV settings (``SamplingParams.extra_args``, ``vllm_xargs`` over HTTP): refused.

The engine honours one budget for every sequence. The attention backend keeps no per-request
state: it derives every slot from ``seq_lens``, the query lengths and the engine-wide K
(vLLM's attention metadata carries no request ids), and the block manager caps every sequence
at the same ``ceil(K / block_size)`` blocks. A per-request K would need both to learn request
identities. Rather than silently ignore a request's ``kv_budget``, the front end rejects it
(a ``ValueError``, which the OpenAI server answers with 400); restating the server's own
setting is accepted because it is exactly what the request gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vllm_tova.cli import KEYS
from vllm_tova.config import BUDGET_KEY, CHUNK_KEY, POLICY_KEY, TovaConfig, flag


def server_values(settings: TovaConfig) -> dict[str, Any]:
    """What every request of this engine gets, per ``additional_config`` key."""
    if not settings.enabled:
        return {POLICY_KEY: "none", BUDGET_KEY: None, CHUNK_KEY: None}
    return {POLICY_KEY: settings.policy, BUDGET_KEY: settings.budget, CHUNK_KEY: settings.prefill_chunk}


def check_extra_args(extra_args: Mapping[str, Any] | None, settings: TovaConfig) -> None:
    """Raise ``ValueError`` naming the key if a request asks for a KV setting of its own."""
    if not extra_args:
        return
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
