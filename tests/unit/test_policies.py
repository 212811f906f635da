"""The baseline policies on small tensors: which entries each keeps, and the per-slot history
(positions, accumulated attention) the backends carry for them."""

from __future__ import annotations

import pytest
import torch

from vllm_tova.attention.slot_state import SlotState
from vllm_tova.config import TovaConfig, additional_config
from vllm_tova.policy import POLICIES, EvictionPolicy, H2OPolicy, SinkPolicy, WindowPolicy, get_policy

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

