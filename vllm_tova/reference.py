"""Reference TOVA on HF transformers: the oracle every vLLM path is tested against.

Written from the definition (DESIGN.md §2), independent of the vLLM backends:
- a prompt is absorbed in chunks of C tokens; after each chunk a layer holding more than K
  entries keeps the K with the highest softmax weight from the chunk's last query, averaged
  over all query heads;
- each decode step appends the new token, attends over all entries (itself included) and,
  above K entries, drops the lowest-scoring one (possibly the new token);
- keys are cached after RoPE at their true positions.

It runs one sequence at a time in float32 eager attention, and records how close each
decision was (logit and eviction margins) so tests can tell a real bug from an fp32 tie.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, DynamicCache

ATTN_IMPLEMENTATION = "tova_reference"


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention for one sequence whose cache may have lost entries.

    query (1, H, q, d); key/value (1, KV, n, d) with the q new tokens last. The usual causal
    mask is built from positions, which no longer match cache indices after eviction, so
    the mask is built here: old entries are visible to all new queries, new ones causally.
    The newest query's weights are left on the module for the cache to score.
    """
    q_len, n = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).float()
    v = value.repeat_interleave(groups, dim=1).float()
    logits = torch.matmul(query.float(), k.transpose(2, 3)) * scaling
    visible = torch.ones(q_len, n, dtype=torch.bool, device=query.device)
    visible[:, n - q_len :] = torch.ones(q_len, q_len, dtype=torch.bool, device=query.device).tril()
    logits = logits.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    module.tova_newest_weights = weights[0, :, -1, :]  # (H, n)
    out = torch.matmul(weights, v).to(query.dtype)
    return out.transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)


class TovaCache(DynamicCache):
    """DynamicCache that keeps at most ``budget`` entries per layer (None = keep all)."""

    def __init__(self, config, budget: int | None) -> None:
        super().__init__(config=config)
        self.budget = budget

    def evict(self, layer_idx: int, weights: torch.Tensor, num_new: int) -> float:
        """Apply TOVA to one layer after its attention; returns the decision's margin.

        weights: (heads, entries) softmax weights of the newest query.
        """
        layer = self.layers[layer_idx]
        scores = weights.mean(dim=0)
        n = scores.numel()
        if self.budget is None or n <= self.budget:
            return float("inf")
        ordered = scores.sort(descending=True).values
        margin = float(ordered[self.budget - 1] - ordered[self.budget])
        if num_new == 1:  # decode: drop the lowest-scoring entry
            keep = torch.ones(n, dtype=torch.bool, device=scores.device)
            keep[scores.argmin()] = False
            index = torch.nonzero(keep).flatten()
        else:  # prompt chunk: keep the K best
            index = torch.topk(scores, self.budget, sorted=False).indices.sort().values
        layer.keys = layer.keys[:, :, index]
        layer.values = layer.values[:, :, index]
        return margin


@dataclass
class ReferenceResult:
    """Greedy generation with per-step diagnostics.

    logit_margins[t]: top-1 minus top-2 logit at generated step t.
    eviction_margins[t]: smallest eviction margin over layers while computing step t's
        logits (prompt chunks count towards step 0); inf when nothing was evicted.
    """

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    logit_margins: list[float] = field(default_factory=list)
    eviction_margins: list[float] = field(default_factory=list)


class TovaReference:
    """A HF causal LM run with the TOVA cache."""

    def __init__(self, model_path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_path), dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION
        ).eval()
        self.attention_modules = [layer.self_attn for layer in self.model.model.layers]
        # transformers renamed ``past_key_values`` to ``cache`` during 5.x; take what it accepts.
        accepted = inspect.signature(self.model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in accepted else "past_key_values"

    @torch.inference_mode()
    def _step(self, cache: TovaCache, ids: list[int], start: int) -> tuple[torch.Tensor, float]:
        """Run ``ids`` at positions start.. and evict; returns last logits and min margin."""
        input_ids = torch.tensor([ids])
        positions = torch.arange(start, start + len(ids))[None]
        logits = self.model(input_ids=input_ids, position_ids=positions, **{self.cache_kwarg: cache}).logits
        margin = min(
            cache.evict(i, module.tova_newest_weights, len(ids))
            for i, module in enumerate(self.attention_modules)
        )
        return logits[0, -1].float(), margin

    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        budget: int | None,
        prefill_chunk: int,
    ) -> ReferenceResult:
        cache = TovaCache(self.model.config, budget)
        result = ReferenceResult()
        margin = float("inf")
        for start in range(0, len(prompt), prefill_chunk):
            logits, m = self._step(cache, prompt[start : start + prefill_chunk], start)
            margin = min(margin, m)
        position = len(prompt)
        for _ in range(max_new_tokens):
            top2 = logits.topk(2)
            token = int(top2.indices[0])
            result.tokens.append(token)
            result.logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            result.logit_margins.append(float(top2.values[0] - top2.values[1]))
            result.eviction_margins.append(margin)
            if len(result.tokens) == max_new_tokens:
                break
            logits, margin = self._step(cache, [token], position)
            position += 1
        return result
