"""An optional record of every eviction decision a worker makes.

Exact TOVA under tensor parallelism needs every rank to evict the same entries, or the ranks'
caches hold different tokens and the heads they serve drift apart. This log lets a test or a
benchmark check that at every step: with ``VLLM_TOVA_RECORD_EVICTIONS=1`` in the environment
(workers inherit it, Ray workers included), each backend appends its decisions per layer and
step. Start the engine with ``worker_extension_cls=eviction_log.WORKER_EXTENSION``, then
``LLM.collective_rpc("tova_evictions")`` returns one list per rank. Off by default: recording
copies every decision. The switch is read when an engine builds its attention layers, so an
engine inside the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) follows it too.
"""

from __future__ import annotations

import os

import torch

ENABLED = False
_records: list[torch.Tensor] = []


def configure() -> None:
    """Read the switch and empty the log: each engine's attention layers call this as they
    are built, so an engine started in a process that ran another records only its own."""
    global ENABLED
    ENABLED = os.environ.get("VLLM_TOVA_RECORD_EVICTIONS", "0") == "1"
    _records.clear()


configure()


def record(decisions: torch.Tensor, made: torch.Tensor | None = None) -> None:
    """Append one layer-step's decisions (evicted logical slots, or the indices kept);
    rows where ``made`` is False are logged as -1 (no eviction). Costs nothing when off."""
    if ENABLED:
        if made is not None:
            decisions = torch.where(made, decisions, -1)
        _records.append(decisions.detach().flatten().to(torch.int64, copy=True))


def collect() -> list[int]:
    """Every decision this process recorded since the last call, in order; then forgets them."""
    decisions = torch.cat([r.cpu() for r in _records]) if _records else torch.zeros(0, dtype=torch.int64)
    _records.clear()
    return decisions.tolist()


class EvictionLogExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``), so that ``collective_rpc``
    can fetch each rank's log by method name, without pickling a function."""

    def tova_evictions(self) -> list[int]:
        return collect()


WORKER_EXTENSION = f"{__name__}.EvictionLogExtension"
