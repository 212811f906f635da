"""The baseline policies on small tensors: which entries each keeps, and the history the
reference cache carries for them (positions, accumulated attention)."""

from __future__ import annotations

import pytest
import torch

from vllm_tova.attention.slot_state import SlotState
from vllm_tova.config import TovaConfig, additional_config
from vllm_tova.policy import POLICIES, EvictionPolicy, H2OPolicy, SinkPolicy, WindowPolicy, get_policy
from vllm_tova.reference import TovaCache

UNIFORM = torch.full((1, 8), 1 / 8)  # attention carries no signal for position-based policies


def _kept(policy: EvictionPolicy, positions: list[int], accumulated=None, budget: int = 4) -> list[int]:
    pos = torch.tensor([positions])
    acc = None if accumulated is None else torch.tensor([accumulated])
    scores = policy.score(UNIFORM[..., : len(positions)], pos, acc)[0]
    return pos[0, EvictionPolicy.keep_top(scores, budget)].tolist()


def test_window_keeps_most_recent() -> None:
    assert _kept(WindowPolicy(), [5, 0, 7, 1, 6, 2, 4, 3]) == [5, 7, 6, 4]


def test_sink_keeps_first_four_and_most_recent() -> None:
    assert sorted(_kept(SinkPolicy(), [9, 0, 7, 1, 6, 2, 8, 3], budget=6)) == [0, 1, 2, 3, 8, 9]


def test_h2o_keeps_recent_half_then_heavy_hitters() -> None:
    positions = [0, 1, 2, 3, 4, 5, 6, 7]
    accumulated = [0.1, 3.0, 0.2, 2.0, 0.3, 0.0, 0.0, 0.0]
    # K=4: positions 6, 7 (recent half) regardless of score; then 1 and 3, the heaviest.
    assert _kept(H2OPolicy(budget=4), positions, accumulated) == [1, 3, 6, 7]


def test_h2o_needs_budget() -> None:
    with pytest.raises(ValueError, match="budget"):
        H2OPolicy().score(UNIFORM, torch.arange(8)[None], torch.zeros(1, 8))


def test_evict_one_never_picks_protected_or_invalid() -> None:
    positions = torch.tensor([[0, 1, 2, 3, 9, 10, -1]])
    scores = SinkPolicy().score(UNIFORM[..., :7], positions)
    valid = positions >= 0
    assert EvictionPolicy.evict_one(scores, valid).tolist() == [4]  # oldest non-sink


def test_registry_and_config_know_every_policy() -> None:
    assert set(POLICIES) == {"tova", "window", "sink", "h2o"}
    for name in POLICIES:
        assert get_policy(name, 64).budget == 64
        assert TovaConfig.from_additional_config(additional_config(name, 64, 1)).policy == name


def test_slot_state_follows_slot_writes() -> None:
    state = SlotState(H2OPolicy(budget=4))
    state.ensure(16, torch.device("cpu"))
    state.write(torch.tensor([3, 7]), torch.tensor([10, 11]), torch.tensor([0.5, 0.25]))
    state.write(torch.tensor([3]), torch.tensor([12]), torch.tensor([0.0]))  # slot reuse
    assert state.read_positions(torch.tensor([3, 7])).tolist() == [12, 11]
    assert state.read_accumulated(torch.tensor([3, 7])).tolist() == [0.0, 0.25]
    assert SlotState(get_policy("tova")).read_positions(torch.tensor([0])) is None


def _fake_cache(policy: EvictionPolicy, budget: int) -> TovaCache:
    cache = TovaCache.__new__(TovaCache)
    cache.budget, cache.policy = budget, policy
    cache.positions, cache.accumulated = [], []
    layer = type("Layer", (), {})()
    layer.keys = torch.zeros(1, 1, 0, 1)
    cache.layers = [layer]
    return cache


def _absorb(cache: TovaCache, positions: list[int], weights: torch.Tensor, sums: torch.Tensor) -> None:
    layer = cache.layers[0]
    new = torch.tensor(positions, dtype=torch.float32).view(1, 1, -1, 1)
    layer.keys = torch.cat([layer.keys, new], dim=2)
    layer.values = layer.keys.clone()
    cache.evict(0, weights, len(positions), torch.tensor(positions), sums)


def test_reference_cache_window_and_h2o_history() -> None:
    cache = _fake_cache(WindowPolicy(), budget=3)
    _absorb(cache, [0, 1, 2, 3, 4], torch.full((2, 5), 0.2), torch.ones(5))
    _absorb(cache, [5], torch.full((2, 4), 0.25), torch.full((4,), 0.25))
    assert cache.layers[0].keys.flatten().tolist() == [3.0, 4.0, 5.0]
    assert cache.positions[0].tolist() == [3, 4, 5]

    cache = _fake_cache(H2OPolicy(budget=2), budget=2)
    _absorb(cache, [0, 1], torch.tensor([[0.5, 0.5]] * 2), torch.tensor([1.5, 0.5]))
    # Step 2: entry 0 keeps gathering; K//2 = 1 recent slot, so 1 competes with 0 and loses.
    _absorb(cache, [2], torch.tensor([[0.6, 0.1, 0.3]] * 2), torch.tensor([0.6, 0.1, 0.3]))
    assert cache.positions[0].tolist() == [0, 2]
    assert torch.allclose(cache.accumulated[0], torch.tensor([2.1, 0.3]))
