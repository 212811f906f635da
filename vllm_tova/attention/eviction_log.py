"""An optional record of every eviction decision a worker makes.

Exact TOVA under tensor parallelism needs every rank to evict the same entries, or the ranks'
caches hold different tokens and the heads they serve drift apart. This log lets a test or a
benchmark check that at every step: with ``VLLM_TOVA_RECORD_EVICTIONS=1`` in the environment
(workers inherit it, Ray workers included), each backend appends its decisions per layer and
step. Start the engine with ``worker_extension_cls=eviction_log.WORKER_EXTENSION``, then
``LLM.collective_rpc("tova_evictions")`` returns one list per rank, and
``LLM.collective_rpc("tova_evictions_by_sequence")`` splits each rank's list by sequence, so
that a batch's sequences can be checked one by one. Off by default: recording copies every
decision. The switch is read when an engine builds its attention layers, so an engine inside
the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) follows it too.
"""

from __future__ import annotations

import os

import torch

ENABLED = False
_records: list[tuple[torch.Tensor, torch.Tensor]] = []  # (decisions, their sequences' keys)


def configure() -> None:
    """Read the switch and empty the log: each engine's attention layers call this as they
    are built, so an engine started in a process that ran another records only its own."""
    global ENABLED
    ENABLED = os.environ.get("VLLM_TOVA_RECORD_EVICTIONS", "0") == "1"
    _records.clear()


configure()


def record(decisions: torch.Tensor, sequences: torch.Tensor | int, made: torch.Tensor | None = None) -> None:
    """Append one layer-step's decisions (evicted logical slots, or the indices kept), a row
    per sequence; ``sequences`` holds each row's first KV block id, which names a running
    sequence (the backends see no request ids). Rows where ``made`` is False are logged as
    -1 (no eviction). Costs nothing when off."""
    if ENABLED:
        if made is not None:
            decisions = torch.where(made, decisions, -1)
        keys = torch.as_tensor(sequences, device=decisions.device)
        keys = keys.reshape(keys.shape + (1,) * (decisions.dim() - keys.dim())).expand_as(decisions)
        _records.append(tuple(t.detach().flatten().to(torch.int64, copy=True) for t in (decisions, keys)))


def _drain() -> tuple[list[int], list[int]]:
    """Every decision recorded since the last call and its sequence's key; then forgets them."""
    if not _records:
        return [], []
    decisions, keys = (torch.cat([r[i].cpu() for r in _records]) for i in (0, 1))
    _records.clear()
    return decisions.tolist(), keys.tolist()


def collect() -> list[int]:
    """Every decision this process recorded since the last call, in order; then forgets them."""
    return _drain()[0]


def collect_by_sequence() -> list[list[int]]:
    """As ``collect``, one list per sequence, in the order the sequences first made a
    decision (a batch's order of admission). A sequence preempted and resumed, or one whose
    blocks a later sequence reuses, does not read as one sequence: split batches that run
    to completion together."""
    by_key: dict[int, list[int]] = {}
    for decision, key in zip(*_drain()):
        by_key.setdefault(key, []).append(decision)
    return list(by_key.values())


class EvictionLogExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``), so that ``collective_rpc``
    can fetch each rank's log by method name, without pickling a function."""

    def tova_evictions(self) -> list[int]:
        return collect()

    def tova_evictions_by_sequence(self) -> list[list[int]]:
        return collect_by_sequence()


WORKER_EXTENSION = f"{__name__}.EvictionLogExtension"
