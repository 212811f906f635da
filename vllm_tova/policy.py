"""Eviction policies: each scores cached entries; the eviction itself lives once, here.

As in NVIDIA kvpress, a policy is a small class with one ``score`` method (higher = keep).
The attention backends call ``keep_top`` (prompt chunks) and ``evict_one`` (decode steps),
so every policy shares the same selection, slot reuse and block arithmetic.

A backend hands ``score`` what the policy declares it needs, never knowing its name:
always the newest query's softmax weights averaged over all the layer's query heads (the
backends own that average: under tensor parallelism it spans ranks); each entry's token
position if ``needs_positions``; each entry's accumulated attention if ``needs_accumulated``
(backends keep both per physical slot, so they survive slot reuse).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

#: Score of an entry a policy never evicts (sinks, H2O's recent window).
PROTECTED = float("inf")
#: Sink tokens StreamingLLM keeps (window+4).
SINKS = 4
#: Policies the CUDA kernels serve, in the order of their kernel switch codes
#: (``triton_kernels.POLICY_CODES``); any other policy is refused on CUDA at start-up.
CUDA_POLICIES = ("tova", "window", "sink", "h2o")


@dataclass(frozen=True)
class EvictionPolicy:
    """Base class: subclasses implement ``score``.

    budget: K, the entries kept per sequence and layer (policies that split the budget,
    like H2O, need it; others ignore it): an int, or a (rows, 1) tensor when rows of one
    batch keep different budgets.
    """

    name: ClassVar[str]
    needs_positions: ClassVar[bool] = False
    needs_accumulated: ClassVar[bool] = False

    budget: int | torch.Tensor | None = None

    def with_budget(self, budget: int | torch.Tensor) -> "EvictionPolicy":
        """This policy for rows that keep ``budget`` entries (per-request budgets)."""
        return replace(self, budget=budget)

    def score(
        self,
        attention: torch.Tensor,
        positions: torch.Tensor | None = None,
        accumulated: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score entries; higher = keep.

        attention: (rows, entries) float32 softmax weight of each row's newest query on each
            entry, averaged over all the layer's query heads (masked entries hold 0).
        positions: (rows, entries) int64 token position of each entry (masked entries -1).
        accumulated: (rows, entries) float32 accumulated attention of each entry, this step's
            queries included (see ``H2OPolicy``).
        Returns (rows, entries) float32.
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

    def score(self, attention, positions=None, accumulated=None) -> torch.Tensor:
        return attention


@dataclass(frozen=True)
class WindowPolicy(EvictionPolicy):
    """Window: keep the K most recent tokens (score = token position)."""

    name: ClassVar[str] = "window"
    needs_positions: ClassVar[bool] = True

    def score(self, attention, positions=None, accumulated=None) -> torch.Tensor:
        assert positions is not None, "window needs positions"
        return positions.float()


@dataclass(frozen=True)
class SinkPolicy(EvictionPolicy):
    """Window+4 (StreamingLLM): the first ``sinks`` tokens of the text plus the K - sinks most
    recent. The first tokens soak up attention that has nowhere else to go; losing them is
    what makes a plain window collapse once the text outgrows it.
    """

    name: ClassVar[str] = "sink"
    needs_positions: ClassVar[bool] = True
    sinks: int = SINKS

    def score(self, attention, positions=None, accumulated=None) -> torch.Tensor:
        assert positions is not None, "sink needs positions"
        is_sink = (positions >= 0) & (positions < self.sinks)
        return positions.float().masked_fill(is_sink, PROTECTED)


@dataclass(frozen=True)
class H2OPolicy(EvictionPolicy):
    """H2O (Zhang et al. 2023), as compared in the TOVA paper: recent half + heavy hitters.

    Definitions, per sequence and layer, with newest position p and budget K:
    - accumulated attention of an entry = the sum, over every query that has attended to it
      since it was cached (itself included; all queries of a prompt chunk count, masked
      causally), of that query's softmax weight on it averaged over the layer's query heads;
    - the ``K // 2`` most recent positions (p - K//2 < position <= p) are always kept;
    - the other ``K - K // 2`` entries are those with the highest accumulated attention.
    """

    name: ClassVar[str] = "h2o"
    needs_positions: ClassVar[bool] = True
    needs_accumulated: ClassVar[bool] = True

    def score(self, attention, positions=None, accumulated=None) -> torch.Tensor:
        assert positions is not None and accumulated is not None, "h2o needs positions, scores"
        if self.budget is None:
            raise ValueError("h2o needs the budget to size its recent window")
        newest = positions.max(dim=-1, keepdim=True).values
        recent = positions > newest - self.budget // 2
        return accumulated.float().masked_fill(recent, PROTECTED)


POLICIES: dict[str, type[EvictionPolicy]] = {
    policy.name: policy for policy in (TovaPolicy, WindowPolicy, SinkPolicy, H2OPolicy)
}


def get_policy(name: str, budget: int | None = None) -> EvictionPolicy:
    return POLICIES[name](budget=budget)
