"""Eviction policies: each scores cached entries; the eviction itself lives once, here.

As in NVIDIA kvpress, a policy is a small class with one ``score`` method (higher = keep).
The attention backends call ``keep_top`` (prompt chunks) and ``evict_one`` (decode steps),
so every policy shares the same selection, slot reuse and block arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class EvictionPolicy:
    """Base class: subclasses implement ``score``."""

    name: ClassVar[str]

    def score(self, weights: torch.Tensor) -> torch.Tensor:
        """Score entries from attention weights.

        weights: (rows, num_query_heads, entries) float32 softmax weights of each row's newest
        query over all its entries (masked entries hold 0).
        Returns (rows, entries); higher = keep.
        """
        raise NotImplementedError

    @staticmethod
    def keep_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
        """Indices of the ``budget`` best entries of a 1-D score vector, in index order."""
        if scores.numel() <= budget:
            return torch.arange(scores.numel(), device=scores.device)
        return torch.topk(scores, budget, sorted=False).indices.sort().values

    @staticmethod
    def evict_one(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per row, the index of the lowest-scoring valid entry. scores, valid: (rows, entries)."""
        return scores.masked_fill(~valid, float("inf")).argmin(dim=-1)


@dataclass(frozen=True)
class TovaPolicy(EvictionPolicy):
    """TOVA: the newest query's softmax weight, averaged over all query heads of the layer."""

    name: ClassVar[str] = "tova"

    def score(self, weights: torch.Tensor) -> torch.Tensor:
        return weights.mean(dim=1)


POLICIES: dict[str, type[EvictionPolicy]] = {TovaPolicy.name: TovaPolicy}


def get_policy(name: str) -> EvictionPolicy:
    return POLICIES[name]()
