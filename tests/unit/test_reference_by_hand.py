"""Hand-worked examples pin the reference's definition of each policy (a few tokens, two
query heads, numbers worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_tova.reference import ReferenceLayer, attend, select


def _two_heads(keys: list[float], queries: tuple[float, float]) -> torch.Tensor:
    """Newest-query weights of two query heads sharing one KV head, d = 1, scale 1: head h's
    logit on entry j is queries[h] * keys[j], so keys = log(x) give weights x / sum(x)."""
    query = torch.tensor(queries).view(1, 2, 1, 1)
    key = torch.tensor(keys).view(1, 1, -1, 1)
    _, weights = attend(query, key, key.clone(), scaling=1.0)
    return weights[0, :, -1]


def _decide(policy: str, budget: int, weights=None, positions=None, accumulated=None):
    n = len(positions) if positions is not None else weights.shape[-1]
    positions = torch.arange(n) if positions is None else torch.tensor(positions)
    weights = torch.full((2, n), 1.0 / n) if weights is None else weights
    accumulated = torch.zeros(n) if accumulated is None else torch.tensor(accumulated)
    return select(policy, budget, weights, positions, accumulated)


def test_tova_decode_by_hand() -> None:
    # Keys log 1, log 2, log 4 (the last is the new token). Head 0 (query +1): 1/7, 2/7, 4/7;
    # head 1 (query -1): weights 1, 1/2, 1/4 over 7/4: 4/7, 2/7, 1/7. Mean: 5/14, 4/14, 5/14.
    weights = _two_heads([0.0, math.log(2), math.log(4)], (1.0, -1.0))
    assert torch.allclose(weights, torch.tensor([[1, 2, 4], [4, 2, 1]]) / 7)
    decision = _decide("tova", 2, weights)
    # The middle entry goes (head 0 alone would drop entry 0; head 1 alone the new token).
    assert decision.keep.tolist() == [0, 2]
    assert decision.margin == pytest.approx((5 / 14 - 4 / 14) / (5 / 14))  # 0.2


def test_tova_can_drop_the_new_token() -> None:
    # Keys log 4, log 2, log 1, both queries +1: 4/7, 2/7, 1/7: the new token is the weakest.
    weights = _two_heads([math.log(4), math.log(2), 0.0], (1.0, 1.0))
    decision = _decide("tova", 2, weights)
    assert decision.keep.tolist() == [0, 1]
    assert decision.margin == pytest.approx(0.5)  # (2/7 - 1/7) / (2/7)


def test_tova_chunk_is_scored_by_its_last_query() -> None:
    # A 3-token chunk, K = 2, keys log 1, log 2, log 4, every query +1 (both heads). Causal:
    # query 0 sees entry 0 only (weight 1); query 1: 1/3, 2/3; query 2 (the last): 1/7, 2/7,
    # 4/7. The last query keeps entries 1 and 2; summing all three queries' weights (1.48,
    # 0.95, 0.57) would keep 0 and 1 instead.
    keys = torch.tensor([0.0, math.log(2), math.log(4)]).view(1, 1, 3, 1)
    query = torch.ones(1, 2, 3, 1)
    _, weights = attend(query, keys, keys.clone(), scaling=1.0)
    assert torch.allclose(weights[0, 0, 0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(weights[0, 1, 1], torch.tensor([1 / 3, 2 / 3, 0]))
    layer = ReferenceLayer()
    decision = layer.absorb("tova", 2, weights[0, :, -1], torch.arange(3), weights[0].mean(0).sum(0))
    assert decision.keep.tolist() == [1, 2]
    assert layer.positions.tolist() == [1, 2]
    assert torch.allclose(layer.accumulated, torch.tensor([2 / 3 + 2 / 7, 4 / 7]))


def test_window_by_hand() -> None:
    decision = _decide("window", 3, positions=[0, 1, 2, 3, 4, 5])
    assert decision.keep.tolist() == [3, 4, 5]
    assert decision.margin == math.inf  # integer positions cannot tie by rounding


def test_sink_by_hand() -> None:
    # K = 6: the first four tokens of the text, then the two most recent.
    decision = _decide("sink", 6, positions=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert decision.keep.tolist() == [0, 1, 2, 3, 8, 9]


def test_h2o_by_hand() -> None:
    # K = 4: the K // 2 = 2 most recent, then the two heaviest of the rest.
    layer = ReferenceLayer()
    sums = torch.tensor([1.5, 0.2, 0.9, 0.4, 0.3, 0.1])
    decision = layer.absorb("h2o", 4, torch.zeros(2, 6), torch.arange(6), sums)
    # Newest 5: recent 4, 5; the rest by accumulated: 0 (1.5), 2 (0.9); 3 (0.4) and 1 go.
    assert layer.positions.tolist() == [0, 2, 4, 5]
    assert decision.margin == pytest.approx((0.9 - 0.4) / 0.9)
    # Decode at 6: accumulated 1.6, 1.4, 0.35, 0.25, 0.2; recent 5, 6; then 0 and 2; 4 goes.
    layer.absorb("h2o", 4, torch.zeros(2, 5), torch.tensor([6]), torch.tensor([0.1, 0.5, 0.05, 0.15, 0.2]))
    assert layer.positions.tolist() == [0, 2, 5, 6]
    assert torch.allclose(layer.accumulated, torch.tensor([1.6, 1.4, 0.25, 0.2]))


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy='lru'"):
        _decide("lru", 2, positions=[0, 1, 2])
