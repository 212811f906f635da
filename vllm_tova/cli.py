"""``vllm serve`` flags for the KV policy, mapped onto ``additional_config``.

``additional_config`` is what reaches EngineCore and every worker (and the config hash), so
the flags are only a friendlier spelling of its keys: ``--kv-budget 512`` is
``--additional-config '{"kv_budget": 512}'``. Checks that need no engine (an integer >= 1, a
known policy) run in argparse, so a bad flag exits with status 2 before anything loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from vllm_tova.config import BUDGET_KEY, BUDGET_MAX_KEY, CHUNK_KEY, DEFAULT_PREFILL_CHUNK, KEYS, POLICY_KEY, flag
from vllm_tova.policy import POLICIES

GROUP_TITLE = "TovaConfig"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``TovaConfig`` group (idempotent: vLLM may build a parser more than once)."""
    if flag(POLICY_KEY) in parser._option_string_actions:
        return
    group = parser.add_argument_group(
        title=GROUP_TITLE,
        description="KV-cache eviction by vllm-tova: every sequence keeps at most --kv-budget "
        "cached tokens per layer, so each holds a capped number of KV blocks and more "
        "sequences run at once. Same as the additional_config keys kv_policy, kv_budget, "
        "kv_budget_max, kv_prefill_chunk.",
    )
    group.add_argument(
        flag(POLICY_KEY),
        choices=["none", *POLICIES],
        default=None,
        help="Eviction policy; 'none' (the default) runs stock vLLM.",
    )
    group.add_argument(
        flag(BUDGET_KEY),
        type=positive_int,
        default=None,
        metavar="K",
        help="Tokens kept per sequence and layer; required with a policy. Allowed: "
        "a multiple of block_size; K >= max_model_len is accepted but evicts nothing. "
        "A request may ask for its own (extra_args / vllm_xargs kv_budget) up to "
        "--kv-budget-max; this is its default.",
    )
    group.add_argument(
        flag(BUDGET_MAX_KEY),
        type=positive_int,
        default=None,
        metavar="KMAX",
        help="Largest kv_budget a request may ask for (default: --kv-budget). At least "
        "--max-model-len also lets requests ask for kv_policy none (exact attention).",
    )
    group.add_argument(
        flag(CHUNK_KEY),
        type=positive_int,
        default=None,
        metavar="C",
        help=f"Prompt tokens absorbed per step before each eviction round (default "
        f"{DEFAULT_PREFILL_CHUNK}). Allowed: 1 <= C <= --max-num-batched-tokens minus "
        f"(--max-num-seqs - 1), so a chunk fits beside a full batch of decodes.",
    )


def merge_flags(args: argparse.Namespace, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """``additional_config`` with the given flags folded in; a flag and a key must agree."""
    merged = dict(extra or {})
    given = {key: getattr(args, key, None) for key in KEYS}
    for key, value in given.items():
        if value is None:
            continue
        if key in merged and merged[key] != value:
            raise ValueError(
                f"{flag(key)} {value} conflicts with --additional-config {key}={merged[key]!r}; "
                "give the setting once."
            )
        merged[key] = value
    tuning = [flag(key) for key in (BUDGET_KEY, CHUNK_KEY, BUDGET_MAX_KEY) if given[key] is not None]
    if tuning and merged.get(POLICY_KEY, "none") == "none":
        raise ValueError(
            f"{' and '.join(tuning)} take effect only with an eviction policy; add "
            f"{flag(POLICY_KEY)} {{{','.join(POLICIES)}}} or drop them."
        )
    return merged
