"""The reference on the real model: without eviction it is plain HF attention; with it,
each layer keeps the best K by HF's own eager attention weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from vllm_tova.reference import TovaCache, TovaReference


@pytest.fixture(scope="module")
def reference(model_path: Path) -> TovaReference:
    return TovaReference(model_path)


@pytest.fixture(scope="module")
def hf_eager(model_path: Path):
    return AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32, attn_implementation="eager")


def test_without_eviction_matches_hf_eager(austen_ids: list[int], reference, hf_eager) -> None:
    prompt = austen_ids[500:800]
    ours = reference.generate(prompt, 24, budget=None, prefill_chunk=64)
    with torch.inference_mode():
        out = hf_eager.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    assert ours.tokens == out[0, len(prompt) :].tolist()


def test_cache_keeps_the_best_by_hf_weights(reference, austen_ids: list[int], hf_eager) -> None:
    """An 80-token chunk at K = 32: each layer keeps exactly the 32 positions with the highest
    head-averaged weight of the last query, as HF's own eager attention computes it; then a
    decode step drops exactly the entry its query weighs least."""
    ids = austen_ids[:81]
    with torch.inference_mode():
        attentions = hf_eager(torch.tensor([ids[:80]]), output_attentions=True).attentions
    cache = TovaCache(reference.model.config, budget=32)
    reference._step(cache, ids[:80], 0)
    for layer, (kept, weights) in enumerate(zip(cache.kept_positions(), attentions)):
        best = weights[0, :, -1].mean(0).topk(32).indices.sort().values
        assert kept.tolist() == best.tolist(), f"layer {layer}"
        assert cache.layers[layer].keys.shape[2] == 32
    before = cache.kept_positions()
    _, decisions = reference._step(cache, ids[80:81], 80)
    for layer, (old, new, module) in enumerate(zip(before, cache.kept_positions(), reference.attention_modules)):
        candidates = torch.cat([old, torch.tensor([80])])
        dropped = int(module.tova_newest_weights.mean(0).argmin())
        assert new.tolist() == [p for i, p in enumerate(candidates.tolist()) if i != dropped], f"layer {layer}"
        assert len(decisions[layer].keep) == 32


def test_a_shorter_run_is_the_prefix_of_a_longer_one(reference, austen_ids: list[int]) -> None:
    """What lets the engine tests reuse a longer run of the same settings (``prefix``)."""
    from tests.equivalence import prefix

    prompt = austen_ids[900:1000]
    longer, shorter = reference.generate(prompt, 12, 32, 32), reference.generate(prompt, 5, 32, 32)
    cut = prefix(longer, 5)
    for name in ("tokens", "logprobs", "top_logits", "logit_margins", "cut_margins", "prompt_passes"):
        assert getattr(cut, name) == getattr(shorter, name), name
    assert [[k.tolist() for k in p] for p in cut.kept] == [[k.tolist() for k in p] for p in shorter.kept]
