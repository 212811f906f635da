"""Reference KV eviction on HF transformers: the oracle every vLLM path is tested against.

Written from the definition (DESIGN.md §2), independent of the vLLM backends' slot
bookkeeping (it simply concatenates and slices tensors):
- a prompt is absorbed in chunks of C tokens; after each chunk a layer holding more than K
  entries keeps the K best by the policy (TOVA: softmax weight from the chunk's last query,
  averaged over all query heads);
- each decode step appends the new token, attends over all entries (itself included) and,
  above K entries, drops the lowest-scoring one (possibly the new token);
- keys are cached after RoPE at their true positions.
The policies' ``score`` functions (``vllm_tova.policy``) are the shared definition; the cache
here keeps each entry's position and accumulated attention next to it, as plain tensors.

It runs one sequence at a time in float32 eager attention, and records how close each
decision was (logit and eviction margins) so tests can tell a real bug from an fp32 tie.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, DynamicCache

from vllm_tova.policy import EvictionPolicy, get_policy

ATTN_IMPLEMENTATION = "tova_reference"


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention for one sequence whose cache may have lost entries.

    query (1, H, q, d); key/value (1, KV, n, d) with the q new tokens last. The usual causal
    mask is built from positions, which no longer match cache indices after eviction, so
    the mask is built here: old entries are visible to all new queries, new ones causally.
    The newest query's weights, and every query's head-averaged weights summed over the
    queries, are left on the module for the cache to score.
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
    module.tova_weight_sums = weights[0].mean(dim=0).sum(dim=0)  # (n,)
    out = torch.matmul(weights, v).to(query.dtype)
    return out.transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)


class TovaCache(DynamicCache):
    """DynamicCache that keeps at most ``budget`` entries per layer (None = keep all).

    Beside each layer's keys/values it keeps the entries' token positions and accumulated
    attention (sum over queries of head-averaged weights), sliced with them.
    """

    def __init__(self, config, budget: int | None, policy: str | EvictionPolicy = "tova") -> None:
        super().__init__(config=config)
        self.budget = budget
        self.policy = get_policy(policy, budget) if isinstance(policy, str) else policy
        self.positions: list[torch.Tensor] = []
        self.accumulated: list[torch.Tensor] = []

    def evict(
        self,
        layer_idx: int,
        weights: torch.Tensor,
        num_new: int,
        new_positions: torch.Tensor | None = None,
        weight_sums: torch.Tensor | None = None,
    ) -> float:
        """Apply the policy to one layer after its attention; returns the decision's margin.

        weights: (heads, entries) softmax weights of the newest query.
        new_positions: (num_new,) positions of the new entries (default: continuing on).
        weight_sums: (entries,) this step's queries' head-averaged weights, summed.
        """
        layer = self.layers[layer_idx]
        while len(self.positions) <= layer_idx:
            self.positions.append(torch.zeros(0, dtype=torch.long, device=weights.device))
            self.accumulated.append(torch.zeros(0, device=weights.device))
        old_positions = self.positions[layer_idx]
        if new_positions is None:
            first = int(old_positions.max()) + 1 if old_positions.numel() else 0
            new_positions = torch.arange(first, first + num_new, device=weights.device)
        positions = torch.cat([old_positions, new_positions])
        accumulated = torch.cat([self.accumulated[layer_idx], weights.new_zeros(num_new)])
        if weight_sums is not None:
            accumulated = accumulated + weight_sums.float()
        self.positions[layer_idx], self.accumulated[layer_idx] = positions, accumulated
        attention = weights.float().mean(dim=0)
        scores = self.policy.score(attention[None], positions[None], accumulated[None])[0]
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
        self.positions[layer_idx] = positions[index]
        self.accumulated[layer_idx] = accumulated[index]
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

    def __init__(
        self, model_path: str | Path, dtype: torch.dtype = torch.float32, device: str | None = None
    ) -> None:
        # On a GPU host the reference runs on the GPU: on its CPU, beside busy engines, a
        # 1,500-token prompt took minutes.
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                str(model_path), dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION
            )
            .to(self.device)
            .eval()
        )
        self.attention_modules = [layer.self_attn for layer in self.model.model.layers]
        # transformers renamed ``past_key_values`` to ``cache`` during 5.x; take what it accepts.
        accepted = inspect.signature(self.model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in accepted else "past_key_values"

    @torch.inference_mode()
    def _step(self, cache: TovaCache, ids: list[int], start: int) -> tuple[torch.Tensor, float]:
        """Run ``ids`` at positions start.. and evict; returns their logits and min margin."""
        input_ids = torch.tensor([ids], device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device)
        logits = self.model(
            input_ids=input_ids, position_ids=positions[None], **{self.cache_kwarg: cache}
        ).logits
        margin = min(
            cache.evict(i, module.tova_newest_weights, len(ids), positions, module.tova_weight_sums)
            for i, module in enumerate(self.attention_modules)
        )
        return logits[0].float(), margin

    @torch.inference_mode()
    def score_text(
        self, ids: list[int], budget: int | None, policy: str = "tova", prefill_chunk: int = 1
    ) -> list[float]:
        """Log-probability of each of ids[1:], each predicted from the already-evicted cache.

        With ``prefill_chunk=1`` every token is one step, as in the paper's perplexity runs.
        """
        cache = TovaCache(self.model.config, budget, policy)
        logprobs: list[float] = []
        for start in range(0, len(ids), prefill_chunk):
            chunk = ids[start : start + prefill_chunk]
            logits, _ = self._step(cache, chunk, start)
            targets = torch.tensor(ids[start + 1 : start + 1 + len(chunk)], device=self.device)
            picked = torch.log_softmax(logits[: len(targets)], -1).gather(1, targets[:, None])
            logprobs.extend(picked[:, 0].tolist())
        return logprobs

    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        budget: int | None,
        prefill_chunk: int,
        policy: str = "tova",
    ) -> ReferenceResult:
        cache = TovaCache(self.model.config, budget, policy)
        result = ReferenceResult()
        margin = float("inf")
        for start in range(0, len(prompt), prefill_chunk):
            logits, m = self._step(cache, prompt[start : start + prefill_chunk], start)
            logits, margin = logits[-1], min(margin, m)
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
            logits = logits[-1]
            position += 1
        return result
