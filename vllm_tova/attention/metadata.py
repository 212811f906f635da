"""Per-step metadata shared by every TOVA layer: slot arithmetic computed once per step.

Invariant kept by the backends: after each step, a sequence's retained tokens occupy its
logical slots ``[0, min(tokens_seen, K))``, K being the row's own budget (``row_budgets``);
logical slot j lives at physical slot ``block_table[j // block_size] * block_size + j %
block_size``. So everything here follows from ``seq_lens``, the query lengths and each row's
K; no other per-request state, no request ids.
Never written through vLLM's ``slot_mapping``: past the cap it points outside the
sequence's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.attention.backend import (
    AttentionCGSupport,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

from vllm_tova.attention.row_budgets import STEP
from vllm_tova.config import TovaConfig


@dataclass
class DecodeRows:
    """Rows with one new token, handled together.

    tokens: (D,) index of each row's token in the step's flat token batch.
    slots: (D, R) physical slots of logical slots [0, R) (R = longest retained; padded).
    valid: (D, R + 1) which entries exist; the last column is the new token.
    full: (D,) the row already keeps K tokens, so one entry must go.
    append_slot: (D,) physical slot of logical slot ``retained`` (used when not full).
    position: (D,) token position of the new token (``seq_len - 1``).
    budget: (D,) each row's K.
    sequence: (D,) each row's first KV block id, naming its sequence in the eviction log.
    """

    tokens: torch.Tensor
    slots: torch.Tensor
    valid: torch.Tensor
    full: torch.Tensor
    append_slot: torch.Tensor
    position: torch.Tensor
    budget: torch.Tensor
    sequence: torch.Tensor


@dataclass
class ChunkRow:
    """One row absorbing several tokens (a prompt chunk).

    first_token, num_tokens: the row's slice of the flat token batch.
    retained: tokens already cached, in logical slots [0, retained).
    slots: physical slots of logical slots [0, min(retained + num_tokens, K)).
    first_position: token position of the chunk's first token (tokens seen before it).
    budget: the row's K.
    sequence: the row's first KV block id, naming its sequence in the eviction log.
    """

    first_token: int
    num_tokens: int
    retained: int
    slots: torch.Tensor
    first_position: int
    budget: int
    sequence: int


@dataclass
class TovaMetadata:
    num_actual_tokens: int
    decode: DecodeRows | None
    chunks: list[ChunkRow]


def logical_to_physical(
    block_table: torch.Tensor, logical: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Physical slots of logical slots; block_table (rows, max_blocks), logical (rows, n)."""
    blocks = torch.gather(block_table, 1, torch.div(logical, block_size, rounding_mode="floor"))
    return blocks.long() * block_size + logical % block_size


def host_lengths(cm: CommonAttentionMetadata) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per request, on the host: query starts (num_reqs + 1), query lengths and tokens seen
    before this step. Both model runners fill ``seq_lens_cpu_upper_bound``, exact without
    speculative decoding (refused); reading it never waits on the device."""
    n = cm.num_reqs
    starts = cm.query_start_loc_cpu[: n + 1].long()
    query_lens = starts[1:] - starts[:-1]
    lens = cm.seq_lens_cpu_upper_bound if cm.seq_lens_cpu_upper_bound is not None else cm.seq_lens_cpu
    return starts, query_lens, lens[:n].long() - query_lens


class TovaMetadataBuilder(AttentionMetadataBuilder[TovaMetadata]):
    # Attention runs eagerly between CUDA-graph pieces: any Python is allowed here.
    _cudagraph_support = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.budget = TovaConfig.from_additional_config(vllm_config.additional_config).budget
        self.block_size = kv_cache_spec.block_size

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> TovaMetadata:
        cm = common_attn_metadata
        starts, query_lens, seen = host_lengths(cm)
        budgets = STEP.host(cm.num_reqs, self.budget)
        retained = torch.minimum(seen, budgets)
        block_table = cm.block_table_tensor[: cm.num_reqs].cpu()

        is_decode = query_lens == 1
        decode = None
        if bool(is_decode.any()):
            decode = self._decode_rows(
                block_table[is_decode],
                starts[:-1][is_decode],
                retained[is_decode],
                seen[is_decode],
                budgets[is_decode],
            )
        chunks = [
            self._chunk_row(
                block_table[i],
                int(starts[i]),
                int(query_lens[i]),
                int(retained[i]),
                int(seen[i]),
                int(budgets[i]),
            )
            for i in torch.nonzero(~is_decode & (query_lens > 0)).flatten().tolist()
        ]
        return TovaMetadata(cm.num_actual_tokens, decode, chunks)

    def _decode_rows(
        self,
        block_table: torch.Tensor,
        tokens: torch.Tensor,
        retained: torch.Tensor,
        position: torch.Tensor,
        budget: torch.Tensor,
    ) -> DecodeRows:
        longest = int(retained.max())
        logical = torch.arange(longest + 1).expand(len(retained), -1)
        # Padding columns may name blocks the row does not own; they are masked, never written.
        inside = torch.minimum(logical, (budget - 1)[:, None])
        physical = logical_to_physical(block_table, inside, self.block_size)
        valid = logical < retained[:, None]
        valid[:, -1] = True  # the last column is the new token
        append = torch.gather(physical, 1, retained[:, None])[:, 0]
        return DecodeRows(
            tokens=tokens.to(self.device),
            slots=physical[:, :-1].contiguous().to(self.device),
            valid=valid.to(self.device),
            full=(retained >= budget).to(self.device),
            append_slot=append.to(self.device),
            position=position.to(self.device),
            budget=budget.to(self.device),
            sequence=block_table[:, 0].to(self.device),
        )

    def _chunk_row(
        self, block_table: torch.Tensor, first: int, count: int, retained: int, seen: int, budget: int
    ) -> ChunkRow:
        logical = torch.arange(min(retained + count, budget))[None]
        slots = logical_to_physical(block_table[None], logical, self.block_size)[0]
        return ChunkRow(first, count, retained, slots.to(self.device), seen, budget, int(block_table[0]))
