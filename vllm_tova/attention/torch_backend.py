"""TOVA attention in plain torch: the correctness baseline, and the CPU backend.

Per layer and step: attend each new query over the sequence's retained entries plus the
step's own new tokens (taken from activations, not from the cache), score the entries by
the policy, drop the weakest, and write the surviving new tokens into the freed slots
(with their position and accumulated attention, for policies that use them).
The cache layout is our own, (2, num_blocks, block_size, num_kv_heads, head_size), so it
does not depend on the CPU kernels' instruction-set-specific packing. With
``--kv-cache-dtype fp8`` entries are stored in e4m3 with the layer's scales (fp8.py);
attention and scores stay float32.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from vllm.v1.attention.backend import AttentionBackend, AttentionLayer, AttentionType, MultipleOf

from vllm_tova.attention import eviction_log, fp8
from vllm_tova.attention.common import TovaImplBase
from vllm_tova.attention.metadata import ChunkRow, DecodeRows, TovaMetadata, TovaMetadataBuilder


class TovaTorchBackend(AttentionBackend):
    forward_includes_kv_cache_update: bool = True
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = list(fp8.SUPPORTED_KV_CACHE_DTYPES)

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_supported_kernel_block_sizes() -> list[int | MultipleOf]:
        return [MultipleOf(16)]

    @staticmethod
    def get_impl_cls() -> type["TovaTorchImpl"]:
        return TovaTorchImpl

    @staticmethod
    def get_builder_cls() -> type[TovaMetadataBuilder]:
        return TovaMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_size: int,
        cache_dtype_str: str = "auto",
    ) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER

    @staticmethod
    def use_cascade_attention(*args, **kwargs) -> bool:
        return False


class TovaTorchImpl(TovaImplBase):
    """Attention, scoring and eviction in torch ops, one row at a time."""

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: TovaMetadata | None,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (tokens, heads, d); key/value (tokens, kv_heads, d); output (tokens, heads, d)."""
        if attn_metadata is None:
            return self.profiling_output(output)
        if self.fp8:
            kv_cache = fp8.byte_view(kv_cache)
        key_cache, value_cache = (c.flatten(0, 1) for c in kv_cache.unbind(0))
        self.state.ensure(key_cache.shape[0], key_cache.device)
        scales = None
        if self.fp8:
            # Every entry is attended as the cache holds it, the step's new tokens included.
            scales = layer._k_scale, layer._v_scale
            key, value = fp8.as_stored(key, scales[0]), fp8.as_stored(value, scales[1])
        if attn_metadata.decode is not None:
            self._decode(attn_metadata.decode, query, key, value, key_cache, value_cache, output, scales)
        for row in attn_metadata.chunks:
            self._chunk(row, query, key, value, key_cache, value_cache, output, scales)
        return output

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched GQA attention in float32.

        q (B, Q, H, d); k, v (B, N, KV, d); mask (B, Q, N) True = visible.
        Returns output (B, Q, H, d) in q's dtype and weights (B, Q, H, N) float32.
        """
        b, nq = q.shape[:2]
        qf = q.float().view(b, nq, self.num_kv_heads, self.group, self.head_size)
        logits = torch.einsum("bqkgd,bnkd->bqkgn", qf, k.float()) * self.scale
        logits = logits.masked_fill(~mask[:, :, None, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        out = torch.einsum("bqkgn,bnkd->bqkgd", weights, v.float())
        return (
            out.reshape(b, nq, self.num_heads, self.head_size).to(q.dtype),
            weights.reshape(b, nq, self.num_heads, -1),
        )

    def _decode(
        self, rows: DecodeRows, query, key, value, key_cache, value_cache, output, scales=None
    ) -> None:
        """``scales``: (k_scale, v_scale) of an FP8 cache, else None."""
        k_scale, v_scale = scales or (None, None)
        new_k, new_v = key[rows.tokens], value[rows.tokens]
        k = torch.cat([fp8.read(key_cache, rows.slots, k_scale, key.dtype), new_k[:, None]], dim=1)
        v = torch.cat([fp8.read(value_cache, rows.slots, v_scale, value.dtype), new_v[:, None]], dim=1)
        out, weights = self._attend(query[rows.tokens][:, None], k, v, rows.valid[:, None])
        output[rows.tokens] = out[:, 0]

        # Policy inputs per entry; the last column is the new token.
        attention = self.head_average(weights[:, 0])
        positions = self.state.read_positions(rows.slots)
        if positions is not None:
            positions = torch.cat([positions, rows.position[:, None]], 1).masked_fill(~rows.valid, -1)
        accumulated = self.state.read_accumulated(rows.slots)
        if accumulated is not None:
            accumulated = torch.cat([accumulated, accumulated.new_zeros(len(accumulated), 1)], 1)
            accumulated = accumulated.masked_fill(~rows.valid, 0) + attention
            cached = rows.valid[:, :-1]
            self.state.write(rows.slots[cached], None, accumulated[:, :-1][cached])

        # Full rows lose their weakest entry; the new token takes its slot (unless it is the
        # weakest itself). Other rows append at logical slot `retained`.
        scores = self.policy.with_budget(rows.budget[:, None]).score(attention, positions, accumulated)
        evicted = self.policy.evict_one(scores, rows.valid)
        eviction_log.record(evicted, rows.sequence, made=rows.full)
        num_cached = rows.slots.shape[1]
        target = rows.append_slot
        write = torch.ones_like(rows.full)
        if num_cached > 0:
            freed = torch.gather(rows.slots, 1, evicted.clamp(max=num_cached - 1)[:, None])[:, 0]
            target = torch.where(rows.full, freed, target)
            write = ~rows.full | (evicted != num_cached)
        fp8.write(key_cache, target[write], new_k[write], k_scale)
        fp8.write(value_cache, target[write], new_v[write], v_scale)
        self.state.write(
            target[write],
            rows.position[write],
            None if accumulated is None else accumulated[:, -1][write],
        )

    def _chunk(
        self, row: ChunkRow, query, key, value, key_cache, value_cache, output, scales=None
    ) -> None:
        k_scale, v_scale = scales or (None, None)
        tokens = slice(row.first_token, row.first_token + row.num_tokens)
        old = row.slots[: row.retained]
        k = torch.cat([fp8.read(key_cache, old, k_scale, key.dtype), key[tokens]])
        v = torch.cat([fp8.read(value_cache, old, v_scale, value.dtype), value[tokens]])
        # Retained entries are visible to every query of the chunk; the chunk is causal.
        n = row.retained + row.num_tokens
        mask = torch.ones(row.num_tokens, n, dtype=torch.bool, device=k.device)
        mask[:, row.retained :] = torch.ones(
            row.num_tokens, row.num_tokens, dtype=torch.bool, device=k.device
        ).tril()
        out, weights = self._attend(query[tokens][None], k[None], v[None], mask[None])
        output[tokens] = out[0]

        # Policy inputs per entry: retained ones from the slot history, then the chunk's.
        positions = self.state.read_positions(old)
        if positions is not None:
            new_positions = torch.arange(row.num_tokens, device=k.device) + row.first_position
            positions = torch.cat([positions, new_positions])
        accumulated = self.state.read_accumulated(old)
        if accumulated is not None:
            # Every query of the chunk adds its head-averaged weights (0 where masked).
            accumulated = torch.cat([accumulated, accumulated.new_zeros(row.num_tokens)])
            accumulated = accumulated + self.head_average(weights[0]).sum(dim=0)

        # Keep the K best entries by the policy; new survivors fill the freed slots, lowest
        # first, so retained entries stay packed into logical [0, kept).
        scores = self.policy.with_budget(row.budget).score(
            self.head_average(weights[:, -1]),
            None if positions is None else positions[None],
            None if accumulated is None else accumulated[None],
        )[0]
        keep = self.policy.keep_top(scores, row.budget)
        eviction_log.record(keep, row.sequence)
        kept_old = torch.zeros(row.retained, dtype=torch.bool, device=k.device)
        kept_old[keep[keep < row.retained]] = True
        new_kept = keep[keep >= row.retained]
        free = torch.cat(
            [
                torch.nonzero(~kept_old).flatten(),
                torch.arange(row.retained, len(keep), device=k.device),
            ]
        )
        target = row.slots[free]
        fp8.write(key_cache, target, k[new_kept], k_scale)
        fp8.write(value_cache, target, v[new_kept], v_scale)
        if accumulated is not None:
            self.state.write(old[kept_old], None, accumulated[: row.retained][kept_old])
        self.state.write(
            target,
            None if positions is None else positions[new_kept],
            None if accumulated is None else accumulated[new_kept],
        )

