"""Reference KV eviction on HF transformers: the oracle every vLLM path is tested against.

Written from the definitions (README "How it works"; TOVA, arXiv 2401.06104 §3.3), independent of the
vLLM backends and of ``vllm_tova.policy``: a mistake in the backends' shared policy code must
not be repeated here. It simply concatenates and slices tensors, one sequence at a time, in
float32 eager attention:
- a prompt is absorbed in chunks of C tokens; after each chunk a layer holding more than K
  entries keeps K of them by the policy (TOVA: the chunk's last query's softmax weights,
  averaged over all query heads);
- each decode step appends the new token, attends over all entries (itself included) and,
  above K entries, keeps K (so drops one; possibly the new token);
- keys are cached after RoPE at their true positions.
Each decision is recorded with how close it was (the relative gap at the cut), so tests can
tell a wrong eviction from an fp32 tie.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, DynamicCache

ATTN_IMPLEMENTATION = "tova_reference"
POLICIES = ("tova", "window", "sink", "h2o")
#: StreamingLLM's attention sinks: the first tokens of the text ("Window+4" in the paper).
SINKS = 4


def attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 attention of the q newest tokens over a cache that may have lost entries.

    query (1, H, q, d); key/value (1, KV, n, d) with the q new tokens last. Positions no
    longer match cache indices after eviction, so the mask is built here: old entries are
    visible to every new query, the new ones causally.
    Returns output (1, H, q, d) float32 and weights (1, H, q, n).
    """
    q_len, n = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).float()
    v = value.repeat_interleave(groups, dim=1).float()
    logits = torch.matmul(query.float(), k.transpose(2, 3)) * scaling
    visible = torch.ones(q_len, n, dtype=torch.bool, device=query.device)
    visible[:, n - q_len :] = torch.ones(q_len, q_len, dtype=torch.bool, device=query.device).tril()
    weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.matmul(weights, v), weights


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF attention interface: ``attend``, leaving the weights on the module for the cache:
    the newest query's per head, and every query's head-averaged weights summed (for H2O)."""
    out, weights = attend(query, key, value, scaling)
    module.tova_newest_weights = weights[0, :, -1, :]  # (H, n)
    module.tova_weight_sums = weights[0].mean(dim=0).sum(dim=0)  # (n,)
    return out.to(query.dtype).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)


@dataclass(frozen=True)
class Decision:
    """Which entries one layer keeps after a step.

    keep: (kept,) indices into the step's entries (old entries, then the new), ascending.
    margin: relative gap at the cut, (worst kept - best dropped) / |worst kept|; inf when
        nothing was dropped or the ranking is by integer positions (no rounding tie).
    """

    keep: torch.Tensor
    margin: float


def relative_gap(kept: float, dropped: float) -> float:
    return (kept - dropped) / max(abs(kept), 1e-30)


def _keep(protected: torch.Tensor, rank: torch.Tensor, budget: int, exact: bool) -> Decision:
    """Keep every protected entry, and fill the rest of the budget with the highest ``rank``."""
    candidates = torch.nonzero(~protected).flatten()
    free = budget - int(protected.sum())
    if free < 0:
        raise ValueError(f"{int(protected.sum())} protected entries exceed the budget {budget}")
    order = candidates[torch.argsort(rank[candidates], descending=True, stable=True)]
    keep = torch.cat([torch.nonzero(protected).flatten(), order[:free]]).sort().values
    margin = math.inf
    if not exact and 0 < free < len(order):
        margin = relative_gap(float(rank[order[free - 1]]), float(rank[order[free]]))
    return Decision(keep, margin)


def select(
    policy: str,
    budget: int | None,
    newest_weights: torch.Tensor,
    positions: torch.Tensor,
    accumulated: torch.Tensor,
) -> Decision:
    """The entries one layer keeps, by each policy's definition.

    newest_weights: (H, n) softmax weights of the newest query, per query head.
    positions: (n,) token position of each entry.
    accumulated: (n,) each entry's accumulated attention: every query that has seen it
        (this step's included), its weight averaged over query heads, summed.
    """
    n = positions.numel()
    if budget is None or n <= budget:
        return Decision(torch.arange(n, device=positions.device), math.inf)
    none = torch.zeros(n, dtype=torch.bool, device=positions.device)
    if policy == "tova":  # the highest attention from the newest query, averaged over heads
        return _keep(none, newest_weights.float().mean(dim=0), budget, exact=False)
    if policy == "window":  # the K most recent
        return _keep(none, positions, budget, exact=True)
    if policy == "sink":  # the first SINKS tokens of the text, then the most recent
        return _keep(positions < SINKS, positions, budget, exact=True)
    if policy == "h2o":  # the K // 2 most recent, then the heaviest accumulated attention
        recent = positions > positions.max() - budget // 2
        return _keep(recent, accumulated.float(), budget, exact=False)
    raise ValueError(f"policy={policy!r}: the reference knows {', '.join(POLICIES)}")


class ReferenceLayer:
    """One layer's retained entries: positions and accumulated attention beside the K/V
    (kept by the HF cache layer, or by a test), sliced together."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.positions = torch.zeros(0, dtype=torch.long, device=device)
        self.accumulated = torch.zeros(0, dtype=torch.float32, device=device)

    def absorb(
        self,
        policy: str,
        budget: int | None,
        newest_weights: torch.Tensor,
        new_positions: torch.Tensor,
        weight_sums: torch.Tensor,
    ) -> Decision:
        """Add the step's new entries, then decide what stays; the caller slices its K/V by
        the returned ``keep``. weight_sums: (n,) this step's queries' head-averaged weights."""
        self.append(new_positions, weight_sums)
        decision = select(policy, budget, newest_weights, self.positions, self.accumulated)
        self.retain(decision.keep)
        return decision

    def append(self, new_positions: torch.Tensor, weight_sums: torch.Tensor) -> None:
        """New entries join; every entry gains this step's head-averaged weights."""
        self.positions = torch.cat([self.positions, new_positions.to(self.positions)])
        accumulated = torch.cat([self.accumulated, self.accumulated.new_zeros(len(new_positions))])
        self.accumulated = accumulated + weight_sums.float()

    def retain(self, keep: torch.Tensor) -> None:
        self.positions, self.accumulated = self.positions[keep], self.accumulated[keep]


class TovaCache(DynamicCache):
    """DynamicCache that keeps at most ``budget`` entries per layer (None = keep all)."""

    def __init__(self, config, budget: int | None, policy: str = "tova") -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r}: the reference knows {', '.join(POLICIES)}")
        super().__init__(config=config)
        self.budget = budget
        self.policy = policy
        self.history: list[ReferenceLayer] = []

    def evict(
        self, layer_idx: int, newest_weights: torch.Tensor, new_positions: torch.Tensor, weight_sums: torch.Tensor
    ) -> Decision:
        """Apply the policy to one layer after its attention (see ``ReferenceLayer.absorb``)."""
        while len(self.history) <= layer_idx:
            self.history.append(ReferenceLayer(newest_weights.device))
        decision = self.history[layer_idx].absorb(
            self.policy, self.budget, newest_weights, new_positions, weight_sums
        )
        layer = self.layers[layer_idx]
        if len(decision.keep) < layer.keys.shape[2]:
            layer.keys = layer.keys[:, :, decision.keep]
            layer.values = layer.values[:, :, decision.keep]
        return decision

    def kept_positions(self) -> list[torch.Tensor]:
        """Per layer, the positions of the retained entries, ascending."""
        return [h.positions.sort().values.cpu() for h in self.history]


@dataclass
class ReferenceResult:
    """Greedy generation with every decision and how close it was.

    tokens, logprobs, top_logits, logit_margins: per generated token t; logit_margins[t] is
        the top-1 minus the top-2 logit.
    kept[s][l], cut_margins[s][l]: after forward pass s (the prompt's chunks, then one pass
        per generated token but the last), layer l's retained positions (ascending) and its
        decision's relative margin (inf when nothing was dropped). Pass ``chunks - 1 + t``
        computes token t's logits; its evictions first act on token t + 1.
    """

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logits: list[float] = field(default_factory=list)
    logit_margins: list[float] = field(default_factory=list)
    kept: list[list[torch.Tensor]] = field(default_factory=list)
    cut_margins: list[list[float]] = field(default_factory=list)
    prompt_passes: int = 0


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
    def _step(self, cache: TovaCache, ids: list[int], start: int) -> tuple[torch.Tensor, list[Decision]]:
        """Run ``ids`` at positions start.. and evict; returns their logits and each layer's
        decision."""
        input_ids = torch.tensor([ids], device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device)
        logits = self.model(
            input_ids=input_ids, position_ids=positions[None], **{self.cache_kwarg: cache}
        ).logits
        decisions = [
            cache.evict(i, module.tova_newest_weights, positions, module.tova_weight_sums)
            for i, module in enumerate(self.attention_modules)
        ]
        return logits[0].float(), decisions

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

        def step(ids: list[int], start: int) -> torch.Tensor:
            logits, decisions = self._step(cache, ids, start)
            result.kept.append(cache.kept_positions())
            result.cut_margins.append([d.margin for d in decisions])
            return logits[-1]

        for start in range(0, len(prompt), prefill_chunk):
            logits = step(prompt[start : start + prefill_chunk], start)
        result.prompt_passes = len(result.kept)
        position = len(prompt)
        for _ in range(max_new_tokens):
            top2 = logits.topk(2)
            token = int(top2.indices[0])
            result.tokens.append(token)
            result.logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            result.top_logits.append(float(top2.values[0]))
            result.logit_margins.append(float(top2.values[0] - top2.values[1]))
            if len(result.tokens) == max_new_tokens:
                break
            logits = step([token], position)
            position += 1
        return result
