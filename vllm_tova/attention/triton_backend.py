"""TOVA attention on CUDA: Triton decode kernels, FlashAttention for prompt chunks.

Same cache layout, slot arithmetic and semantics as the torch backend (see metadata.py for
the packed-slot invariant), but nothing in a layer's forward waits on the GPU:

- decode rows (one new token): ``triton_kernels.tova_decode`` reads each row's slots
  through vLLM's block table and writes the new token into the freed slot on the GPU;
- prompt-chunk rows: the retained entries and the chunk are gathered into one packed K/V,
  attended with FlashAttention's varlen kernel (causal, aligned bottom-right, so every
  query sees all retained entries), scored by the chunk's last query, and the top K are
  compacted into the row's slots by a Triton copy. Sizes come from the scheduler's
  host-side lengths, so no index needs a device-to-host copy.

The baseline policies (window, sink, h2o) score from the per-slot history of slot_state.py,
kept by the same kernels (and the chunk copy) exactly as the torch backend keeps it.

FP8 caches (fp8.py): the decode kernels read and write e4m3 with the layer's scales; prompt
chunks gather retained entries dequantized, attend new tokens as they will be stored, and
compaction copies the new tokens' e4m3 bytes, quantized once, into their slots.

CUDA graphs: a pure-decode step (one new token per row; vLLM pads such a batch with empty
rows of seq_len 0) can be replayed as one full graph. Its rows and tokens are slices of a
persistent arange, seq_lens and the block table are the model runner's persistent buffers,
the scratch buffers are allocated once, and the launch parameters depend on the batch size
alone (the largest budget bounds every row; the kernels stop at each row's seq_len). Each
row's own K (per-request budgets) is data too: a persistent int32 tensor the builder refills
every step, so one captured graph serves any mix of budgets. Steps with
prompt chunks run attention eagerly between piecewise graph pieces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from vllm.config import CUDAGraphMode
from vllm.v1.attention.backend import (
    AttentionCGSupport,
    AttentionLayer,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

from vllm_tova.attention import eviction_log, fp8, triton_kernels
from vllm_tova.attention.metadata import host_lengths
from vllm_tova.attention.row_budgets import STEP
from vllm_tova.attention.common import TovaImplBase
from vllm_tova.attention.torch_backend import TovaTorchBackend
from vllm_tova.config import TovaConfig
from vllm_tova.policy import SINKS


class TovaTritonBackend(TovaTorchBackend):
    """Registered as CUSTOM on CUDA: the torch backend's layout with GPU kernels."""

    @staticmethod
    def get_impl_cls() -> type[TovaTritonImpl]:
        return TovaTritonImpl

    @staticmethod
    def get_builder_cls() -> type[TovaTritonMetadataBuilder]:
        return TovaTritonMetadataBuilder


@dataclass
class DecodeBatch:
    rows: torch.Tensor  # (D,) int32 request rows
    tokens: torch.Tensor  # (D,) int32 flat token indices
    longest: int  # max retained entries over the rows (host-side bound)
    num_splits: int


@dataclass
class ChunkBatch:
    """Prompt-chunk rows packed for one varlen attention call.

    Packed K/V holds, per row, its retained entries then its chunk tokens.
    """

    query_tokens: torch.Tensor  # (Tq,) flat token indices of every chunk token
    chunk_dst: torch.Tensor  # (Tq,) their positions in the packed K/V
    chunk_positions: torch.Tensor  # (Tq,) int64 their token positions in the text
    old_slots: torch.Tensor  # (To,) physical slots of retained entries
    old_dst: torch.Tensor  # (To,) their positions in the packed K/V
    cu_q: torch.Tensor  # (R+1,) int32
    cu_k: torch.Tensor  # (R+1,) int32
    max_q: int
    max_k: int
    packed: int  # total packed entries
    sizes: list[tuple[int, int]]  # per row (retained, chunk tokens), host-side
    last_tokens: torch.Tensor  # (R,) the last query of each row
    padded: torch.Tensor  # (R, Nmax) packed index of each row's entries (clamped)
    valid: torch.Tensor  # (R, Nmax) bool
    retained: torch.Tensor  # (R,) int64
    counts: torch.Tensor  # (R,) int64 retained + chunk tokens
    block_table: torch.Tensor  # (R, max_blocks) the rows' block tables
    budgets: torch.Tensor  # (R,) int64 each row's K
    most: int  # the largest of them, host-side


@dataclass
class TovaTritonMetadata:
    num_actual_tokens: int
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    budgets: torch.Tensor  # (reqs,) int32 each request row's K (a persistent buffer's view)
    decode: DecodeBatch | None
    chunks: ChunkBatch | None
    workspace: triton_kernels.DecodeWorkspace


def workspace_budget(budget: int, max_model_len: int) -> int:
    """Most entries a decode row can retain: K, or fewer than max_model_len when K exceeds it."""
    return min(budget, max_model_len)


@dataclass(frozen=True)
class WorkspaceSize:
    """The decode workspace's dimensions (``DecodeWorkspace``'s arguments)."""

    num_heads: int
    head_size: int
    budget: int
    max_rows: int
    max_split_rows: int


def workspace_size(vllm_config, num_sms: int) -> WorkspaceSize:
    """What a step can really hold: a row never retains max_model_len entries or more (a
    budget above that evicts nothing and sizes nothing), and a decode step has at most one
    row per sequence and per token of the step's budget."""
    model, parallel, sched = vllm_config.model_config, vllm_config.parallel_config, vllm_config.scheduler_config
    budget = workspace_budget(
        TovaConfig.from_additional_config(vllm_config.additional_config).budget_max, model.max_model_len
    )
    max_rows = min(sched.max_num_seqs, sched.max_num_batched_tokens)
    split_rows = triton_kernels.max_split_rows(
        max_rows, model.get_num_kv_heads(parallel), budget + 1, num_sms, TovaTritonMetadataBuilder.block_n
    )
    return WorkspaceSize(model.get_num_attention_heads(parallel), model.get_head_size(), budget, max_rows, split_rows)


def workspace_bytes(vllm_config, num_sms: int) -> int:
    """Bytes of one builder's decode workspace, known before any builder exists."""
    return triton_kernels.DecodeWorkspace.nbytes(**asdict(workspace_size(vllm_config, num_sms)))


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device, which choose_splits spreads the work over."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def is_pure_decode(query_lens: torch.Tensor) -> bool:
    """One token in every row, then only empty padding rows: the shape of a batch that vLLM
    replays as a full CUDA graph (it pads uniform-decode batches with query length 0)."""
    real = int((query_lens > 0).sum())
    return real > 0 and bool((query_lens[:real] == 1).all()) and not bool(query_lens[real:].any())


class TovaTritonMetadataBuilder(AttentionMetadataBuilder[TovaTritonMetadata]):
    """Pure-decode steps can be captured as one full CUDA graph: their metadata holds only
    persistent tensors and launch parameters that depend on the batch size alone. Steps with
    prompt chunks run attention eagerly between piecewise graph pieces."""

    _cudagraph_support = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    block_n = triton_kernels.BLOCK_N

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        """NEVER while evictions are recorded: recording appends to a host-side list, which a
        replayed graph would skip."""
        if eviction_log.ENABLED:
            return AttentionCGSupport.NEVER
        return cls._cudagraph_support

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.num_sms = multiprocessor_count(device)
        size = workspace_size(vllm_config, self.num_sms)
        self.budget, self.max_rows = size.budget, size.max_rows
        self.block_size = kv_cache_spec.block_size
        self.num_kv_heads = vllm_config.model_config.get_num_kv_heads(vllm_config.parallel_config)
        # Row and flat-token indices of a pure-decode batch (row i holds token i): slices of
        # one buffer, so a captured graph finds them at the same address on every replay.
        self.arange = torch.arange(self.max_rows, dtype=torch.int32, device=device)
        # Each request row's K, refilled every step (a graph reads it at the same address).
        self.default_budget = TovaConfig.from_additional_config(vllm_config.additional_config).budget
        sched = vllm_config.scheduler_config
        self.row_budgets = torch.full(
            (max(sched.max_num_seqs, self.max_rows),), self.default_budget, dtype=torch.int32, device=device
        )
        self.workspace = triton_kernels.DecodeWorkspace(**asdict(size), device=device)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> TovaTritonMetadata:
        cm = common_attn_metadata
        n = cm.num_reqs
        starts, query_lens, seen = host_lengths(cm)
        block_table = cm.block_table_tensor[:n]
        if n > len(self.row_budgets):
            raise ValueError(f"{n} request rows exceed the {len(self.row_budgets)} the builder holds")
        budgets = STEP.host(n, self.default_budget)
        self.row_budgets[:n].copy_(budgets.to(torch.int32), non_blocking=True)
        if self.full_graphs() and n <= cm.num_actual_tokens and is_pure_decode(query_lens):
            decode, chunks = self._graph_decode(n), None
        else:
            decode, chunks = self._eager_batches(block_table, starts, query_lens, seen, budgets)
        return TovaTritonMetadata(
            cm.num_actual_tokens, cm.seq_lens[:n], block_table, self.row_budgets[:n], decode, chunks,
            self.workspace,
        )

    def full_graphs(self) -> bool:
        """Whether pure-decode steps may replay a full CUDA graph. Read at each step: the model
        runners resolve the CUDA-graph mode after creating the builders."""
        mode = self.vllm_config.compilation_config.cudagraph_mode
        support = self.get_cudagraph_support(self.vllm_config, self.kv_cache_spec)
        return support != AttentionCGSupport.NEVER and mode is not None and (
            mode.decode_mode() == CUDAGraphMode.FULL
        )

    def _graph_decode(self, n: int) -> DecodeBatch:
        """All n rows, padding included (seq_len 0: the kernels only zero their output), with
        launch parameters that depend on n alone, so the step a graph replays is exact for
        any lengths: the budget bounds every row, the kernels stop at each row's seq_len."""
        if n > self.max_rows:
            raise ValueError(
                f"{n} decode rows exceed min(max_num_seqs, max_num_batched_tokens)={self.max_rows}"
            )
        rows = self.arange[:n]
        splits = triton_kernels.choose_splits(
            n, self.num_kv_heads, self.budget + 1, self.num_sms, self.block_n
        )
        return DecodeBatch(rows=rows, tokens=rows, longest=self.budget, num_splits=splits)

    def _eager_batches(
        self,
        block_table: torch.Tensor,
        starts: torch.Tensor,
        query_lens: torch.Tensor,
        seen: torch.Tensor,
        budgets: torch.Tensor,
    ) -> tuple[DecodeBatch | None, ChunkBatch | None]:
        """Decode rows and prompt chunks of a step that runs attention eagerly, sized by the
        scheduler's host-side lengths and each row's K."""
        retained = torch.minimum(seen.clamp(min=0), budgets)
        decode = None
        is_decode = query_lens == 1
        if bool(is_decode.any()):
            rows = torch.nonzero(is_decode).flatten()
            longest = int(retained[rows].max())
            decode = DecodeBatch(
                rows=rows.to(torch.int32).to(self.device, non_blocking=True),
                tokens=starts[rows].to(torch.int32).to(self.device, non_blocking=True),
                longest=longest,
                num_splits=triton_kernels.choose_splits(
                    len(rows), self.num_kv_heads, longest + 1, self.num_sms, self.block_n
                ),
            )
        chunk_rows = torch.nonzero(query_lens > 1).flatten()
        chunks = None
        if len(chunk_rows):
            chunks = pack_chunks(
                block_table, chunk_rows, starts, query_lens, retained, seen, self.block_size, self.device,
                budgets,
            )
        return decode, chunks


def pack_chunks(
    block_table: torch.Tensor,
    rows: torch.Tensor,
    starts: torch.Tensor,
    query_lens: torch.Tensor,
    retained: torch.Tensor,
    seen: torch.Tensor,
    block_size: int,
    device: torch.device,
    budgets: torch.Tensor,
) -> ChunkBatch:
    """Index arrays for the chunk rows ``rows``; host tensors in, device tensors out.

    block_table lives on the device; everything else (starts, query_lens, retained, seen:
    tokens before the chunk, budgets: each row's K; one entry per request row) is host-side,
    so the slots are gathered without a sync.
    """
    old = retained[rows]
    new = query_lens[rows]
    counts = old + new
    cu_k = torch.zeros(len(rows) + 1, dtype=torch.long)
    cu_k[1:] = counts.cumsum(0)
    cu_q = torch.zeros(len(rows) + 1, dtype=torch.long)
    cu_q[1:] = new.cumsum(0)

    # Retained entries: (row, logical slot) -> packed position; chunk tokens likewise.
    old_row = torch.repeat_interleave(torch.arange(len(rows)), old)
    old_logical = torch.arange(int(old.sum())) - torch.repeat_interleave(old.cumsum(0) - old, old)
    old_dst = cu_k[:-1][old_row] + old_logical
    new_row = torch.repeat_interleave(torch.arange(len(rows)), new)
    within = torch.arange(int(new.sum())) - cu_q[:-1][new_row]
    query_tokens = starts[rows][new_row] + within
    chunk_dst = cu_k[:-1][new_row] + old[new_row] + within
    chunk_positions = seen[rows][new_row] + within

    widest = int(counts.max())
    column = torch.arange(widest)[None]
    valid = column < counts[:, None]
    padded = (cu_k[:-1, None] + column).clamp(max=int(cu_k[-1]) - 1)

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=True)

    rows_table = block_table[dev(rows)]
    old_blocks = rows_table[dev(old_row), dev(old_logical // block_size)]
    return ChunkBatch(
        query_tokens=dev(query_tokens),
        chunk_dst=dev(chunk_dst),
        chunk_positions=dev(chunk_positions),
        old_slots=old_blocks.long() * block_size + dev(old_logical % block_size),
        old_dst=dev(old_dst),
        cu_q=dev(cu_q.to(torch.int32)),
        cu_k=dev(cu_k.to(torch.int32)),
        max_q=int(new.max()),
        max_k=widest,
        packed=int(cu_k[-1]),
        sizes=list(zip(old.tolist(), new.tolist())),
        last_tokens=dev(starts[rows] + new - 1),
        padded=dev(padded),
        valid=dev(valid),
        retained=dev(old),
        counts=dev(counts),
        block_table=rows_table,
        budgets=dev(budgets[rows]),
        most=int(budgets[rows].max()),
    )


def _flash_attn():
    """vLLM's own FlashAttention varlen entry point, or None where it is not built."""
    try:
        from vllm.v1.attention.backends.fa_utils import flash_attn_varlen_func, get_flash_attn_version
    except ImportError:
        return None, None
    return flash_attn_varlen_func, get_flash_attn_version()


class TovaTritonImpl(TovaImplBase):
    """Refuses the same configurations as the torch backend (TovaImplBase). The decode
    kernels serve ``triton_kernels.POLICY_CODES``; other policies are refused at start-up
    (patches/engine_args.py)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert self.policy.name in triton_kernels.POLICY_CODES, f"no CUDA kernel for {self.policy.name}"
        self.flash_attn, self.fa_version = _flash_attn()

    def _ensure_state(self, key_cache: torch.Tensor) -> None:
        """Allocate the per-slot history (window, sink, h2o) before any graph is captured: a
        buffer allocated under capture would be refilled by every replay."""
        num_slots = key_cache.shape[0] * key_cache.shape[1]
        missing = (self.state.track_positions and self.state.positions is None) or (
            self.state.positions is not None and len(self.state.positions) != num_slots
        )
        if missing and key_cache.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"vllm-tova: the {self.policy.name} policy's per-slot history was first needed "
                "while capturing a CUDA graph (no eager warm-up ran before it); run with "
                "--enforce-eager or report this."
            )
        self.state.ensure(num_slots, key_cache.device)

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: TovaTritonMetadata | None,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn_metadata is None:
            return self.profiling_output(output)
        if self.fp8:
            kv_cache = fp8.byte_view(kv_cache)
        key_cache, value_cache = kv_cache.unbind(0)
        self._ensure_state(key_cache)
        md = attn_metadata
        scales = (layer._k_scale, layer._v_scale) if self.fp8 else None
        if md.decode is not None:
            evicted = triton_kernels.tova_decode(
                query, key, value, key_cache, value_cache, md.block_table, md.seq_lens,
                md.decode.rows, md.decode.tokens, output, self.scale, md.budgets,
                md.decode.num_splits, md.decode.longest, md.workspace,
                block_n=TovaTritonMetadataBuilder.block_n,
                combine=self.head_average.combine if self.head_average.world > 1 else None,
                policy=self.policy.name,
                positions=self.state.positions,
                accumulated=self.state.accumulated,
                sinks=getattr(self.policy, "sinks", SINKS),
                kv_scales=scales,
            )
            if eviction_log.ENABLED:  # the key's gather stays out of captured graphs
                eviction_log.record(evicted, md.block_table[md.decode.rows.long(), 0])
        if md.chunks is not None:
            self._absorb(md.chunks, query, key, value, key_cache, value_cache, output, scales)
        return output

    def _absorb(
        self, c: ChunkBatch, query, key, value, key_cache, value_cache, output, scales=None
    ) -> None:
        """``scales``: (k_scale, v_scale) of an FP8 cache, else None."""
        flat_k, flat_v = key_cache.flatten(0, 1), value_cache.flatten(0, 1)
        shape = (c.packed, self.num_kv_heads, self.head_size)
        packed_k = torch.empty(shape, dtype=key.dtype, device=key.device)
        packed_v = torch.empty(shape, dtype=value.dtype, device=value.device)
        k_scale, v_scale = scales or (None, None)
        packed_k[c.old_dst] = fp8.read(flat_k, c.old_slots, k_scale, key.dtype)
        packed_v[c.old_dst] = fp8.read(flat_v, c.old_slots, v_scale, value.dtype)
        chunk_k, chunk_v = key[c.query_tokens], value[c.query_tokens]
        if scales is None:
            packed_k[c.chunk_dst] = chunk_k
            packed_v[c.chunk_dst] = chunk_v
            source_k, source_v = packed_k, packed_v
        else:
            # Compaction copies kept chunk tokens only: their e4m3 bytes (uint8, as the cache),
            # at their packed index.
            source_k = torch.empty(shape, dtype=torch.uint8, device=key.device)
            source_v = torch.empty(shape, dtype=torch.uint8, device=value.device)
            stored_k, stored_v = fp8.quantize(chunk_k, scales[0]), fp8.quantize(chunk_v, scales[1])
            source_k[c.chunk_dst], source_v[c.chunk_dst] = stored_k, stored_v
            packed_k[c.chunk_dst] = fp8.dequantize(stored_k, scales[0], key.dtype)
            packed_v[c.chunk_dst] = fp8.dequantize(stored_v, scales[1], value.dtype)
        chunk_query = query[c.query_tokens]
        output[c.query_tokens] = self._chunk_attention(c, chunk_query, packed_k, packed_v)

        # Scores of every entry by each row's last query (and the policy's history); keep the top K.
        rows, width = c.padded.shape
        q_last = query[c.last_tokens].float().view(rows, self.num_kv_heads, self.group, -1)
        logits = torch.einsum("rkgd,rnkd->rkgn", q_last, packed_k[c.padded].float()) * self.scale
        logits = logits.masked_fill(~c.valid[:, None, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1).reshape(rows, self.num_heads, width)
        positions, accumulated = self._chunk_history(c, chunk_query, packed_k)
        scores = self.policy.with_budget(c.budgets[:, None]).score(
            self.head_average(weights),
            None if positions is None else positions[c.padded].masked_fill(~c.valid, -1),
            None if accumulated is None else accumulated[c.padded].masked_fill(~c.valid, 0),
        ).masked_fill(~c.valid, float("-inf"))
        # Each row keeps its own K best: ranks past a row's K become the sentinel ``width``,
        # which sorts last and is never written.
        kept = min(c.most, width)
        best = torch.topk(scores, kept, dim=1, sorted=True).indices
        beyond = torch.arange(kept, device=best.device)[None] >= c.budgets[:, None]
        keep = best.masked_fill(beyond, width).sort(dim=1).values
        if eviction_log.ENABLED:
            eviction_log.record(keep, c.block_table[:, 0])

        # Kept retained entries stay where they are; kept chunk tokens fill, in order, the
        # logical slots in [0, K) that no kept retained entry occupies (packed-slot invariant).
        is_old = keep < c.retained[:, None]
        num_old = is_old.sum(dim=1, keepdim=True)
        occupied = torch.zeros(rows, width + 1, dtype=torch.bool, device=keep.device)
        occupied.scatter_(1, torch.where(is_old, keep, width), True)
        occupied = occupied[:, :kept]
        free = torch.sort(occupied.to(torch.int8), dim=1, stable=True).indices
        order = (torch.arange(kept, device=keep.device)[None] - num_old).clamp(min=0)
        target = torch.gather(free, 1, order)
        block_size = key_cache.shape[1]
        blocks = torch.gather(c.block_table, 1, target // block_size).long()
        write = ~is_old & (keep < c.counts[:, None])
        if accumulated is not None:
            # Every retained entry's sum, kept or not: a freed slot gets its new token's below.
            self.state.accumulated[c.old_slots] = accumulated[c.old_dst]
        triton_kernels.copy_slots(
            source_k, source_v, flat_k, flat_v,
            (c.cu_k[:-1, None].long() + keep).flatten(),
            (blocks * block_size + target % block_size).flatten(),
            write.flatten(),
            source_positions=positions, positions=self.state.positions,
            source_accumulated=accumulated, accumulated=self.state.accumulated,
        )

    def _chunk_history(
        self, c: ChunkBatch, chunk_query: torch.Tensor, packed_k: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per packed entry, what the policy reads besides attention: token positions
        (retained entries from the slot history, chunk tokens from the scheduler) and
        accumulated attention (the history plus every chunk query's weight on the entry),
        each None where the policy does not use it."""
        positions = accumulated = None
        if self.state.positions is not None:
            positions = torch.empty(c.packed, dtype=torch.long, device=packed_k.device)
            positions[c.old_dst] = self.state.positions[c.old_slots]
            positions[c.chunk_dst] = c.chunk_positions
        if self.state.accumulated is not None:
            accumulated = torch.zeros(c.packed, dtype=torch.float32, device=packed_k.device)
            accumulated[c.old_dst] = self.state.accumulated[c.old_slots]
            accumulated += self.head_average.combine(self._chunk_weight_sums(c, chunk_query, packed_k))
        return positions, accumulated

    #: float32 logits per slice of chunk queries in ``_chunk_weight_sums`` (128 MiB), so a
    #: long chunk over a large budget does not need memory that vLLM's profiling never saw.
    sums_slice_elements = 1 << 25

    def _chunk_weight_sums(self, c: ChunkBatch, chunk_query: torch.Tensor, packed_k: torch.Tensor):
        """(packed,) float32: per entry, the sum over its row's chunk queries of their
        rank-local head-mean softmax weight on it (causal; as the torch backend's h2o).
        FlashAttention returns no weights, so they are recomputed here in float32, one row
        and a slice of queries at a time; sizes are host-side, so nothing waits on the GPU."""
        sums = torch.zeros(c.packed, dtype=torch.float32, device=packed_k.device)
        q_start = k_start = 0
        for old, new in c.sizes:
            n = old + new
            keys = packed_k[k_start : k_start + n].float()
            step = max(1, self.sums_slice_elements // (self.num_heads * n))
            for first in range(0, new, step):
                last = min(first + step, new)
                q = chunk_query[q_start + first : q_start + last].float()
                q = q.view(last - first, self.num_kv_heads, self.group, self.head_size)
                logits = torch.einsum("qkgd,nkd->qkgn", q, keys) * self.scale
                visible = torch.arange(n, device=q.device)[None] <= (
                    torch.arange(first, last, device=q.device)[:, None] + old
                )
                logits = logits.masked_fill(~visible[:, None, None, :], float("-inf"))
                weights = torch.softmax(logits, dim=-1).reshape(last - first, self.num_heads, n)
                sums[k_start : k_start + n] += weights.mean(dim=1).sum(dim=0)
            q_start, k_start = q_start + new, k_start + n
        return sums

    def _chunk_attention(self, c: ChunkBatch, q, packed_k, packed_v) -> torch.Tensor:
        """Each chunk query sees the row's retained entries and the chunk causally."""
        if self.flash_attn is not None and self.fa_version is not None and q.dtype in (
            torch.float16,
            torch.bfloat16,
        ):
            return self.flash_attn(
                q=q, k=packed_k, v=packed_v,
                max_seqlen_q=c.max_q, cu_seqlens_q=c.cu_q,
                max_seqlen_k=c.max_k, cu_seqlens_k=c.cu_k,
                softmax_scale=self.scale, causal=True, fa_version=self.fa_version,
            )
        out = torch.empty_like(q)
        q_start = k_start = 0
        for old, new in c.sizes:  # float32: one SDPA call per row
            mask = torch.ones(new, old + new, dtype=torch.bool, device=q.device).tril(diagonal=old)
            rows_q = q[q_start : q_start + new].transpose(0, 1)[None]
            keys = packed_k[k_start : k_start + old + new].transpose(0, 1)[None]
            vals = packed_v[k_start : k_start + old + new].transpose(0, 1)[None]
            attended = F.scaled_dot_product_attention(
                rows_q, keys, vals, attn_mask=mask, scale=self.scale, enable_gqa=True
            )
            out[q_start : q_start + new] = attended[0].transpose(0, 1)
            q_start, k_start = q_start + new, k_start + old + new
        return out
