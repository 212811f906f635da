"""The reference itself: without eviction it is plain HF attention; with it, it keeps K."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from vllm_tova.policy import TovaPolicy
from vllm_tova.reference import TovaCache, TovaReference


@pytest.fixture(scope="module")
def reference(model_path: Path) -> TovaReference:
    return TovaReference(model_path)


def test_without_eviction_matches_hf_eager(model_path: Path, austen_ids: list[int], reference) -> None:
    prompt = austen_ids[500:800]
    ours = reference.generate(prompt, 24, budget=None, prefill_chunk=64)
    hf = AutoModelForCausalLM.from_pretrained(
        str(model_path), dtype=torch.float32, attn_implementation="eager"
    )
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    assert ours.tokens == out[0, len(prompt) :].tolist()


def test_cache_never_exceeds_budget_and_keeps_best(reference, austen_ids: list[int]) -> None:
    cache = TovaCache(reference.model.config, budget=32)
    ids = austen_ids[:100]
    reference._step(cache, ids[:80], 0)  # one 80-token chunk: trimmed to the 32 best
    assert all(layer.keys.shape[2] == 32 for layer in cache.layers)
    reference._step(cache, ids[80:81], 80)  # a decode step: 33 entries, one dropped
    assert all(layer.keys.shape[2] == 32 for layer in cache.layers)


def test_eviction_drops_lowest_score() -> None:
    cache = TovaCache.__new__(TovaCache)
    cache.budget = 2
    cache.policy = TovaPolicy(budget=2)
    cache.positions, cache.accumulated = [torch.arange(2)], [torch.zeros(2)]  # + 1 new entry
    layer = type("Layer", (), {})()
    layer.keys = torch.arange(3.0).view(1, 1, 3, 1)
    layer.values = layer.keys.clone()
    cache.layers = [layer]
    weights = torch.tensor([[0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])  # means 0.4, 0.2, 0.4
    margin = cache.evict(0, weights, num_new=1)
    assert layer.keys.flatten().tolist() == [0.0, 2.0]
    assert margin == pytest.approx(0.2)
