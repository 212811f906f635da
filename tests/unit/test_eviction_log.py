"""The eviction log splits a batch's decisions by sequence, in the shapes both backends record."""

from __future__ import annotations

import torch

from vllm_tova.attention import eviction_log


def test_batch_decisions_split_by_sequence_in_order_of_first_decision(monkeypatch) -> None:
    monkeypatch.setenv("VLLM_TOVA_RECORD_EVICTIONS", "1")
    eviction_log.configure()
    try:
        eviction_log.record(torch.tensor([0, 1, 2]), 7)  # torch backend: one chunk row's kept indices
        eviction_log.record(torch.tensor([[0, 2], [1, 3]]), torch.tensor([3, 7]))  # Triton: chunk rows
        # Decode rows (sequence 3 not yet full: no eviction, logged -1), then a sequence's
        # first decision in the same step.
        eviction_log.record(torch.tensor([5, 6]), torch.tensor([7, 3]), made=torch.tensor([True, False]))
        eviction_log.record(torch.tensor([4]), torch.tensor([9]))
        by_sequence = eviction_log.collect_by_sequence()
        assert by_sequence == [[0, 1, 2, 1, 3, 5], [0, 2, -1], [4]]
        assert eviction_log.collect() == []  # collecting forgets
        eviction_log.record(torch.tensor([5, 6]), torch.tensor([7, 3]))
        assert eviction_log.collect() == [5, 6]
    finally:
        monkeypatch.setenv("VLLM_TOVA_RECORD_EVICTIONS", "0")
        eviction_log.configure()


def test_off_records_nothing(monkeypatch) -> None:
    monkeypatch.setenv("VLLM_TOVA_RECORD_EVICTIONS", "0")
    eviction_log.configure()
    eviction_log.record(torch.tensor([1]), 3)
    assert eviction_log.collect_by_sequence() == [] and eviction_log.collect() == []
