"""Triton kernels for TOVA decode on GPUs: paged attention that also scores every slot.

A decode step per layer is three launches and no host synchronisation:

1. ``_decode_partial`` (grid rows x KV heads x splits): flash-decoding over the row's
   retained slots (read through the block table) plus the new token (read from the
   activations, never staged in the cache). Each split keeps an online softmax and also
   stores the raw logits of every query head for every slot it visits.
2. ``_decode_score`` (grid rows x (column tiles + head groups)): merges the splits into each
   head's log-sum-exp, turns the stored logits into softmax weights averaged over all query
   heads (the TOVA score) and records each tile's minimum; the head-group programs write the
   output. Tiling keeps small batches from serialising on one program per row.
3. ``_decode_evict`` (grid rows): the argmin over the tiles; writes the new token's K/V into
   the freed slot (or appends it while fewer than K are cached).

Under tensor parallelism each rank holds some of the heads: step 2 then stores every column's
rank-local mean instead of tile minima, the caller all-reduces those (rows x (K + 1) floats),
and ``_column_min`` takes the tile minima from the sums, so every rank evicts the same slot.

The baseline policies (window, sink, h2o; ``POLICY`` is a tl.constexpr, so TOVA's kernels
compile without them) score from per-physical-slot history buffers: step 2 (or
``_column_min`` under TP, after the all-reduce) reads each slot's position and, for h2o, adds
this step's weight to its accumulated attention and writes it back; step 3 writes the new
token's position (and accumulated weight) into the slot it lands in.

Storing logits costs 4 bytes per query head per slot, against 2 * head_size * dtype bytes per
KV head per slot for reading K/V again: a few percent of the traffic instead of half of it.
Logits are kept in base 2 (scaled by log2(e)) so the kernels use exp2 throughout.

FP8 caches (``FP8``, fp8.py's format): step 1 converts e4m3 tiles to the query's dtype
(exact) and applies the layer's scales to the logits and the output instead of to every
element; the new token is round-tripped through e4m3 before it is attended (every entry is
attended as stored), and step 3 stores it quantized. Logits, scores and softmax stay
float32. Prompt-chunk compaction (``copy_slots``) copies e4m3 bytes as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from vllm_tova.attention import fp8
from vllm_tova.policy import CUDA_POLICIES, SINKS

LOG2E = 1.4426950408889634

# Policy switches of the decode kernels (tl.constexpr: TOVA's kernels compile without the rest).
TOVA: tl.constexpr = tl.constexpr(0)
WINDOW: tl.constexpr = tl.constexpr(1)
SINK: tl.constexpr = tl.constexpr(2)
H2O: tl.constexpr = tl.constexpr(3)
POLICY_CODES = {name: code for code, name in enumerate(CUDA_POLICIES)}  # TOVA, WINDOW, SINK, H2O
#: Keys per tile of the decode kernels (the split size is a multiple of it).
BLOCK_N = 64
#: Policies whose decode score reads this step's attention (under TP: summed over ranks).
ATTENTION_POLICIES = ("tova", "h2o")
FP8_MAX: tl.constexpr = tl.constexpr(448.0)


@triton.jit
def _quantize(x, scale_ptr, DTYPE: tl.constexpr):
    """fp8.quantize in a kernel: IEEE division (div_rn) as torch divides, saturation, then
    the conversion's round to nearest even; equal bytes to the torch backend's."""
    scaled = tl.math.div_rn(x.to(tl.float32), tl.load(scale_ptr))
    return tl.clamp(scaled, -FP8_MAX, FP8_MAX).to(DTYPE)


@triton.jit
def _as_stored(x, scale_ptr, DTYPE: tl.constexpr):
    """fp8.as_stored in float32: ``x`` as an FP8 cache of element type DTYPE gives it back."""
    return _quantize(x, scale_ptr, DTYPE).to(tl.float32) * tl.load(scale_ptr)


@triton.jit
def _decode_partial(
    query,  # (tokens, H, D)
    key_new,  # (tokens, KV, D)
    value_new,
    key_cache,  # (blocks, block_size, KV, D)
    value_cache,
    block_table,  # (reqs, max_blocks) int32
    seq_lens,  # (reqs,) int32
    rows,  # (num_rows,) int32: request row of each decode row
    tokens,  # (num_rows,) int32: flat token index of each decode row
    logits,  # (num_rows, H, budget + 1) float32, base-2 logits
    part_out,  # (num_rows, H, splits, D) float32, unnormalised
    part_max,  # (num_rows, H, splits) float32
    part_sum,  # (num_rows, H, splits) float32
    k_scale,  # () float32, if FP8
    v_scale,
    scale_log2,
    budgets,  # (reqs,) int32: each request row's K
    split_size,
    stride_qt, stride_qh,
    stride_kt, stride_kh,
    stride_vt, stride_vh,
    stride_cb, stride_cs, stride_ch,
    stride_vcb, stride_vcs, stride_vch,
    stride_bt,
    stride_lr, stride_lh,
    stride_pr, stride_ph, stride_ps,
    stride_mr, stride_mh,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    IEEE: tl.constexpr,
    FP8: tl.constexpr,
):
    i = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    row = tl.load(rows + i)
    token = tl.load(tokens + i).to(tl.int64)
    budget = tl.load(budgets + row)
    retained = tl.minimum(tl.load(seq_lens + row) - 1, budget)
    i = i.to(tl.int64)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD)
    n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + g
    head_ok = g < GROUP
    q = tl.load(
        query + token * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=head_ok[:, None],
        other=0.0,
    )

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD], tl.float32)
    # FP8: cached tiles are used unscaled (e4m3 converts exactly); K's scale joins the logits'.
    cached_scale = scale_log2 * tl.load(k_scale) if FP8 else scale_log2
    start = split * split_size
    end = tl.minimum(start + split_size, retained)
    for j0 in range(start, end, BLOCK_N):
        j = j0 + n
        ok = j < end
        block = tl.load(block_table + row * stride_bt + j // BLOCK_SIZE, mask=ok, other=0).to(tl.int64)
        offset = j % BLOCK_SIZE
        k = tl.load(
            key_cache + block[:, None] * stride_cb + offset[:, None] * stride_cs
            + kv_head * stride_ch + d[None, :],
            mask=ok[:, None],
            other=0.0,
        )
        if FP8:
            k = k.to(q.dtype)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(ok[None, :], s * cached_scale, float("-inf"))
        tl.store(
            logits + i * stride_lr + heads[:, None] * stride_lh + j[None, :],
            s,
            mask=head_ok[:, None] & ok[None, :],
        )
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            value_cache + block[:, None] * stride_vcb + offset[:, None] * stride_vcs
            + kv_head * stride_vch + d[None, :],
            mask=ok[:, None],
            other=0.0,
        )
        if FP8:
            v = v.to(q.dtype)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
        m_i = m_new
    if FP8:
        acc = acc * tl.load(v_scale)  # V's scale, once for the split's cached entries

    if (split == num_splits - 1) & (retained >= 0):
        # The new token: attended from the activations, its logit stored at column `retained`.
        k_new = tl.load(key_new + token * stride_kt + kv_head * stride_kh + d).to(tl.float32)
        v_new = tl.load(value_new + token * stride_vt + kv_head * stride_vh + d).to(tl.float32)
        if FP8:
            k_new = _as_stored(k_new, k_scale, key_cache.dtype.element_ty)
            v_new = _as_stored(v_new, v_scale, value_cache.dtype.element_ty)
        s_new = tl.sum(q.to(tl.float32) * k_new[None, :], 1) * scale_log2
        tl.store(logits + i * stride_lr + heads * stride_lh + retained, s_new, mask=head_ok)
        m_new = tl.maximum(m_i, s_new)
        alpha = tl.exp2(m_i - m_new)
        p_new = tl.exp2(s_new - m_new)
        l_i = l_i * alpha + p_new
        acc = acc * alpha[:, None] + p_new[:, None] * v_new[None, :]
        m_i = m_new

    tl.store(
        part_out + i * stride_pr + heads[:, None] * stride_ph + split * stride_ps + d[None, :],
        acc,
        mask=head_ok[:, None],
    )
    tl.store(part_max + i * stride_mr + heads * stride_mh + split, m_i, mask=head_ok)
    tl.store(part_sum + i * stride_mr + heads * stride_mh + split, l_i, mask=head_ok)


@triton.jit
def _merged_stats(part_max, part_sum, i, h, h_ok, sp, num_splits, stride_mr, stride_mh):
    """Per head: the largest split maximum and the softmax sum rescaled to it."""
    stats = h_ok[:, None] & (sp < num_splits)[None, :]
    m_s = tl.load(
        part_max + i * stride_mr + h[:, None] * stride_mh + sp[None, :], mask=stats, other=float("-inf")
    )
    l_s = tl.load(part_sum + i * stride_mr + h[:, None] * stride_mh + sp[None, :], mask=stats, other=0.0)
    big_m = tl.where(h_ok, tl.max(m_s, 1), 0.0)
    w = tl.where(m_s > float("-inf"), tl.exp2(m_s - big_m[:, None]), 0.0)
    total = tl.where(h_ok, tl.sum(l_s * w, 1), 1.0)
    return big_m, total


@triton.jit
def _decode_score(
    output,  # (tokens, H, D)
    seq_lens,
    rows,
    tokens,
    logits,
    part_out,
    part_max,
    part_sum,
    tile_best,  # (num_rows, tiles) float32 out: lowest score in each column tile
    tile_index,  # (num_rows, tiles) int32 out: its column
    columns,  # (num_rows, budget + 1) float32 out, if STORE_COLUMNS: every column's score
    block_table,  # (reqs, max_blocks) int32; read by the baseline policies only
    positions,  # (slots,) int64 per physical slot (window, sink, h2o), else unused
    accumulated,  # (slots,) float32 per physical slot (h2o), else unused
    budgets,  # (reqs,) int32: each request row's K
    num_splits,
    num_tiles,
    stride_ot, stride_oh,
    stride_lr, stride_lh,
    stride_pr, stride_ph, stride_ps,
    stride_mr, stride_mh,
    stride_tr,
    stride_cr,
    stride_bt,
    NUM_HEADS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_HO: tl.constexpr,
    SPLIT_CHUNK: tl.constexpr,
    HEAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
    STORE_COLUMNS: tl.constexpr,
    POLICY: tl.constexpr,
    SINKS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """Grid (rows, column tiles + head groups). Every program merges the splits' softmax
    statistics of its heads. Programs below ``num_tiles`` then score their columns and record
    their minimum, or, under tensor parallelism (STORE_COLUMNS), store every column's
    rank-local score to be summed across ranks before ``_column_min`` takes the minimum. The
    rest each merge the output of BLOCK_HO heads (split over programs, so a small batch with
    many splits does not wait on one program)."""
    i = tl.program_id(0)
    tile = tl.program_id(1)
    row = tl.load(rows + i)
    budget = tl.load(budgets + row)
    retained = tl.minimum(tl.load(seq_lens + row) - 1, budget)
    c0 = tile * BLOCK_C
    padding = retained < 0  # seq_len 0: a padding row of a captured batch, nothing to attend
    d = tl.arange(0, HEAD)
    sp = tl.arange(0, BLOCK_S)
    if tile >= num_tiles:
        h = (tile - num_tiles) * BLOCK_HO + tl.arange(0, BLOCK_HO)
        h_ok = h < NUM_HEADS
        out_at = output + tl.load(tokens + i).to(tl.int64) * stride_ot + h[:, None] * stride_oh + d[None, :]
        if padding:
            # Zeros rather than stale memory: later layers still compute on padded tokens.
            zeros = tl.zeros([BLOCK_HO, HEAD], tl.float32).to(output.dtype.element_ty)
            tl.store(out_at, zeros, mask=h_ok[:, None])
            return
        big_m, total = _merged_stats(part_max, part_sum, i, h, h_ok, sp, num_splits, stride_mr, stride_mh)
        out = tl.zeros([BLOCK_HO, HEAD], tl.float32)
        # SPLIT_CHUNK splits per load. One split per iteration made these programs the
        # longest of the step at 33 splits (batch 1, K=2,048 on an H200: 17.7 us per decode
        # against 12.3 us with chunks of 8, FlashAttention 15.5 us; 2026-12-01).
        chunk = tl.arange(0, SPLIT_CHUNK)
        for s0 in range(0, num_splits, SPLIT_CHUNK):
            s = s0 + chunk
            ok = h_ok[:, None] & (s < num_splits)[None, :]
            m_s = tl.load(
                part_max + i * stride_mr + h[:, None] * stride_mh + s[None, :], mask=ok, other=float("-inf")
            )
            weight = tl.where(m_s > float("-inf"), tl.exp2(m_s - big_m[:, None]), 0.0)
            o_s = tl.load(
                part_out + i * stride_pr + h[:, None, None] * stride_ph + s[None, :, None] * stride_ps
                + d[None, None, :],
                mask=ok[:, :, None],
                other=0.0,
            )
            out += tl.sum(o_s * weight[:, :, None], 1)
        tl.store(out_at, (out / total[:, None]).to(output.dtype.element_ty), mask=h_ok[:, None])
        return
    if padding | (c0 > retained):
        return
    h = tl.arange(0, BLOCK_H)
    h_ok = h < NUM_HEADS
    big_m, total = _merged_stats(part_max, part_sum, i, h, h_ok, sp, num_splits, stride_mr, stride_mh)
    lse = big_m + tl.log2(total)

    # TOVA score of each entry (cached slots, then the new token at column `retained`): its
    # softmax weight averaged over all query heads.
    cols = c0 + tl.arange(0, BLOCK_C)
    ok = cols <= retained
    lg = tl.load(
        logits + i * stride_lr + h[:, None] * stride_lh + cols[None, :],
        mask=h_ok[:, None] & ok[None, :],
        other=float("-inf"),
    )
    score = tl.sum(tl.exp2(lg - lse[:, None]), 0) / NUM_HEADS
    if STORE_COLUMNS:
        tl.store(columns + i * stride_cr + cols, score, mask=ok)
    else:
        if POLICY != TOVA:
            score = _baseline_score(
                score, cols, ok, retained, row, tl.load(seq_lens + row) - 1, block_table + row * stride_bt,
                positions, accumulated, columns + i * stride_cr, budget, POLICY, SINKS, BLOCK_SIZE,
            )
        _store_tile_min(tile_best, tile_index, i * stride_tr + tile, tl.where(ok, score, float("inf")), c0)


@triton.jit
def _baseline_score(
    attention,  # (BLOCK_C,) float32: this step's head-averaged weight on each column
    cols,
    ok,
    retained,
    row,
    newest,  # the new token's position (seq_len - 1), at column ``retained``
    row_blocks,  # the row's block-table row
    positions,
    accumulated,
    row_columns,  # columns[i]: h2o stores the new token's accumulated score at ``retained``
    budget,
    POLICY: tl.constexpr,
    SINKS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """The window, sink and h2o scores of policy.py for columns ``cols`` (cached slots, then
    the new token), from the per-slot history. h2o first adds this step's weight to every
    cached slot's accumulated score and writes it back (as the torch backend does, whatever
    is evicted), then protects the ``budget // 2`` most recent positions."""
    cached = ok & (cols < retained)
    block = tl.load(row_blocks + cols // BLOCK_SIZE, mask=cached, other=0).to(tl.int64)
    slot = block * BLOCK_SIZE + cols % BLOCK_SIZE
    position = tl.where(cols == retained, newest, tl.load(positions + slot, mask=cached, other=-1))
    if POLICY == WINDOW:
        score = position.to(tl.float32)
    elif POLICY == SINK:
        score = tl.where((position >= 0) & (position < SINKS), float("inf"), position.to(tl.float32))
    else:
        total = tl.load(accumulated + slot, mask=cached, other=0.0) + attention
        tl.store(accumulated + slot, total, mask=cached)
        tl.store(row_columns + cols, total, mask=ok & (cols == retained))
        score = tl.where(position > newest - budget // 2, float("inf"), total)
    return score


@triton.jit
def _store_tile_min(tile_best, tile_index, at, score, c0):
    tl.store(tile_best + at, tl.min(score, 0))
    tl.store(tile_index + at, tl.argmin(score, 0, tie_break_left=True) + c0)


@triton.jit
def _column_min(
    seq_lens,
    rows,
    columns,  # (num_rows, budget + 1) float32: every column's score, summed over ranks
    tile_best,
    tile_index,
    block_table,
    positions,
    accumulated,
    budgets,  # (reqs,) int32: each request row's K
    stride_cr,
    stride_tr,
    stride_bt,
    BLOCK_C: tl.constexpr,
    POLICY: tl.constexpr,
    SINKS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """Grid (rows, column tiles): ``_decode_score``'s tile minima, from all-reduced scores
    (h2o: from all-reduced weights, which every rank accumulates alike)."""
    i = tl.program_id(0)
    tile = tl.program_id(1)
    row = tl.load(rows + i)
    budget = tl.load(budgets + row)
    retained = tl.minimum(tl.load(seq_lens + row) - 1, budget)
    c0 = tile * BLOCK_C
    if (retained < 0) | (c0 > retained):
        return
    cols = c0 + tl.arange(0, BLOCK_C)
    ok = cols <= retained
    score = tl.load(columns + i * stride_cr + cols, mask=ok, other=float("inf"))
    if POLICY != TOVA:
        score = _baseline_score(
            score, cols, ok, retained, row, tl.load(seq_lens + row) - 1, block_table + row * stride_bt,
            positions, accumulated, columns + i * stride_cr, budget, POLICY, SINKS, BLOCK_SIZE,
        )
        score = tl.where(ok, score, float("inf"))
    _store_tile_min(tile_best, tile_index, i * stride_tr + tile, score, c0)


@triton.jit
def _decode_evict(
    key_new,  # (tokens, KV, D)
    value_new,
    key_cache,  # (blocks, block_size, KV, D)
    value_cache,
    block_table,
    seq_lens,
    rows,
    tokens,
    tile_best,
    tile_index,
    evicted,  # (num_rows,) int32 out: logical slot freed, K = the new token, -1 = none
    columns,  # h2o: the new token's accumulated score at column ``retained``
    positions,
    accumulated,
    k_scale,  # () float32, if FP8
    v_scale,
    budgets,  # (reqs,) int32: each request row's K
    stride_kt, stride_kh,
    stride_vt, stride_vh,
    stride_cb, stride_cs, stride_ch,
    stride_vcb, stride_vcs, stride_vch,
    stride_bt,
    stride_tr,
    stride_cr,
    NUM_KV_HEADS: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    HEAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    POLICY: tl.constexpr,
    FP8: tl.constexpr,
):
    """Grid (rows): full rows drop their weakest entry (the first minimum) and the new token
    takes its slot unless it is the weakest itself; rows below the budget append at
    logical slot ``retained``. The baseline policies also record the new token's position
    (and h2o its accumulated score) in that slot, so a reused slot never shows the history
    of the token it held before."""
    i = tl.program_id(0)
    row = tl.load(rows + i)
    budget = tl.load(budgets + row)
    retained = tl.minimum(tl.load(seq_lens + row) - 1, budget)
    if retained < 0:
        return
    t = tl.arange(0, BLOCK_T)
    tiles_ok = t * BLOCK_C <= retained
    best = tl.load(tile_best + i * stride_tr + t, mask=tiles_ok, other=float("inf"))
    index = tl.load(tile_index + i * stride_tr + t, mask=tiles_ok, other=0)
    weakest = tl.sum(tl.where(t == tl.argmin(best, 0, tie_break_left=True), index, 0), 0)
    # Finite scores give weakest <= retained; the clamp keeps the write in the row's slots even
    # when they are not: warmup runs under CUDA-graph capture all-reduce into unset memory.
    weakest = tl.minimum(weakest, retained)
    full = retained >= budget
    target = tl.where(full, weakest, retained)
    tl.store(evicted + i, tl.where(full, weakest, -1))
    if (~full) | (weakest != retained):
        block = tl.load(block_table + row * stride_bt + target // BLOCK_SIZE).to(tl.int64)
        offset = target % BLOCK_SIZE
        if POLICY != TOVA:
            slot = block * BLOCK_SIZE + offset
            tl.store(positions + slot, (tl.load(seq_lens + row) - 1).to(tl.int64))
            if POLICY == H2O:
                tl.store(accumulated + slot, tl.load(columns + i * stride_cr + retained))
        kv = tl.arange(0, BLOCK_KV)
        d = tl.arange(0, HEAD)
        kv_ok = kv < NUM_KV_HEADS
        token = tl.load(tokens + i).to(tl.int64)
        k_new = tl.load(
            key_new + token * stride_kt + kv[:, None] * stride_kh + d[None, :], mask=kv_ok[:, None]
        )
        v_new = tl.load(
            value_new + token * stride_vt + kv[:, None] * stride_vh + d[None, :], mask=kv_ok[:, None]
        )
        if FP8:
            k_new = _quantize(k_new, k_scale, key_cache.dtype.element_ty)
            v_new = _quantize(v_new, v_scale, value_cache.dtype.element_ty)
        tl.store(
            key_cache + block * stride_cb + offset * stride_cs + kv[:, None] * stride_ch + d[None, :],
            k_new,
            mask=kv_ok[:, None],
        )
        tl.store(
            value_cache + block * stride_vcb + offset * stride_vcs + kv[:, None] * stride_vch
            + d[None, :],
            v_new,
            mask=kv_ok[:, None],
        )


@triton.jit
def _copy_slots(
    source_key,  # (entries, KV, D)
    source_value,
    key_cache,  # (blocks * block_size, KV, D) flattened view
    value_cache,
    source_index,  # (n,) int64
    target_slot,  # (n,) int64 physical slot
    write,  # (n,) bool
    source_positions,  # (entries,) int64, if HISTORY >= 1
    positions,  # (slots,) int64 per physical slot, if HISTORY >= 1
    source_accumulated,  # (entries,) float32, if HISTORY == 2
    accumulated,  # (slots,) float32 per physical slot, if HISTORY == 2
    stride_st, stride_sh,
    stride_svt, stride_svh,
    stride_ct, stride_ch,
    stride_vct, stride_vch,
    NUM_KV_HEADS: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    HEAD: tl.constexpr,
    HISTORY: tl.constexpr,
):
    i = tl.program_id(0)
    if tl.load(write + i):
        src = tl.load(source_index + i)
        dst = tl.load(target_slot + i)
        if HISTORY >= 1:
            tl.store(positions + dst, tl.load(source_positions + src))
        if HISTORY == 2:
            tl.store(accumulated + dst, tl.load(source_accumulated + src))
        kv = tl.arange(0, BLOCK_KV)
        d = tl.arange(0, HEAD)
        ok = (kv < NUM_KV_HEADS)[:, None]
        k = tl.load(source_key + src * stride_st + kv[:, None] * stride_sh + d[None, :], mask=ok)
        v = tl.load(source_value + src * stride_svt + kv[:, None] * stride_svh + d[None, :], mask=ok)
        tl.store(key_cache + dst * stride_ct + kv[:, None] * stride_ch + d[None, :], k, mask=ok)
        tl.store(value_cache + dst * stride_vct + kv[:, None] * stride_vch + d[None, :], v, mask=ok)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


# Launch shape of ``_decode_partial``. Llama-3-8B heads, bf16, one H200, 2026-12-01: a sweep
# of 32/64/128-slot tiles x 2/4/8 warps x 2/3/4 stages at batch 1-1,024, K=1,024 and 2,048,
# then both launches side by side over the kernel grid in one call: 4 warps with 3 stages
# left TOVA 23%, 18% and 15% behind FlashAttention at K=2,048 with batch 16, 64 and 1,024;
# 2 warps with 3 stages 2%, 8% and 9% (4 warps with 2 stages about the same; 8 warps, and
# 32- or 128-slot tiles, slower).
PARTIAL_WARPS = 2
PARTIAL_STAGES = 3

# Cached entries one split program streams at most (the new token's entry comes on top).
# On an H200 at batch 64 x 8 KV heads (512 programs, about 4 per SM), one split per row
# left TOVA 27% and 41% behind FlashAttention at K=1,024 and 2,048; 2-8 splits cut that to
# 12-20% (`kernel_bench --splits`, 2026-11-28): a program that streams a long row alone
# cannot keep enough loads in flight.
SLOTS_PER_SPLIT = 512


def choose_splits(num_rows: int, num_kv_heads: int, longest: int, num_sms: int, block_n: int) -> int:
    """Enough splits to give every SM about two programs and no split more than
    ``SLOTS_PER_SPLIT`` cached entries (``longest`` counts the new token's too), but never an
    empty split."""
    tiles = max(1, math.ceil(longest / block_n))
    occupancy = math.ceil(2 * num_sms / max(1, num_rows * num_kv_heads))
    wanted = max(occupancy, math.ceil((longest - 1) / SLOTS_PER_SPLIT))
    return max(1, min(wanted, tiles, 64))


def max_split_rows(max_rows: int, num_kv_heads: int, longest: int, num_sms: int, block_n: int) -> int:
    """The most rows x splits ``choose_splits`` returns for 1..max_rows rows and any length up
    to ``longest``. It never decreases with the length, so ``longest = budget + 1`` (a full
    row's entries plus its new token) bounds every step, eager or captured."""
    return max(n * choose_splits(n, num_kv_heads, longest, num_sms, block_n) for n in range(1, max_rows + 1))


class DecodeWorkspace:
    """Scratch tensors for the decode kernels, shared by every layer. Allocated once, at the
    largest size a step may ask for, and never reallocated: a captured CUDA graph keeps the
    addresses it recorded. The split buffers are sized by rows x splits, which stays small
    (many splits only ever come with few rows)."""

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        budget: int,
        device: torch.device,
        max_rows: int,
        max_split_rows: int,
        block_c: int | None = None,
    ) -> None:
        self.num_heads, self.head_size, self.budget, self.device = num_heads, head_size, budget, device
        self.rows, self.splits = max_rows, max_split_rows  # capacities: rows, rows x splits
        self.block_c = self.column_tile(num_heads, block_c)
        self.tiles = math.ceil((budget + 1) / self.block_c)
        for name, (shape, dtype) in self.shapes(num_heads, head_size, budget, max_rows, max_split_rows, block_c).items():
            setattr(self, name, torch.empty(shape, dtype=dtype, device=device))

    @staticmethod
    def column_tile(num_heads: int, block_c: int | None = None) -> int:
        """Column tile of the score pass: about 4096 (head, column) pairs per program (tests
        pass a smaller block_c to give a small budget several tiles)."""
        return block_c or max(16, 4096 // _pow2(num_heads))

    @classmethod
    def shapes(
        cls, num_heads: int, head_size: int, budget: int, max_rows: int, max_split_rows: int,
        block_c: int | None = None,
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:  # fmt: skip
        """Every buffer's shape and dtype: what ``__init__`` allocates and ``nbytes`` counts."""
        tiles = math.ceil((budget + 1) / cls.column_tile(num_heads, block_c))
        f32, i32 = torch.float32, torch.int32
        return {
            "logits": ((max_rows, num_heads, budget + 1), f32),
            "evicted": ((max_rows,), i32),
            "tile_best": ((max_rows, tiles), f32),
            "tile_index": ((max_rows, tiles), i32),
            "columns": ((max_rows, budget + 1), f32),
            "part_out": ((max_split_rows * num_heads * head_size,), f32),
            "part_stats": ((2, max_split_rows * num_heads), f32),
        }

    @classmethod
    def nbytes(cls, *args, **kwargs) -> int:
        """Bytes a workspace of these sizes (``shapes``' arguments) allocates, before it exists:
        the worker reserves them before vLLM sizes the KV pool."""
        return sum(math.prod(shape) * dtype.itemsize for shape, dtype in cls.shapes(*args, **kwargs).values())

    def get(self, rows: int, splits: int) -> tuple[torch.Tensor, ...]:
        """Views for ``rows`` rows and ``splits`` splits; raises beyond the capacity (growing
        would move the buffers under a captured graph)."""
        if rows > self.rows or rows * splits > self.splits:
            raise ValueError(
                f"decode workspace holds {self.rows} rows and {self.splits} rows x splits; "
                f"asked for {rows} rows x {splits} splits"
            )
        h = self.num_heads
        stats = self.part_stats[:, : rows * h * splits].view(2, rows, h, splits)
        return (
            self.logits[:rows],
            self.part_out[: rows * h * splits * self.head_size].view(rows, h, splits, self.head_size),
            stats[0],
            stats[1],
            self.evicted[:rows],
            self.tile_best[:rows],
            self.tile_index[:rows],
            self.columns[:rows],
        )


def tova_decode(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    rows: torch.Tensor,
    tokens: torch.Tensor,
    output: torch.Tensor,
    scale: float,
    budget: int | torch.Tensor,
    num_splits: int,
    longest: int,
    workspace: DecodeWorkspace,
    block_n: int = BLOCK_N,
    combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
    policy: str = "tova",
    positions: torch.Tensor | None = None,
    accumulated: torch.Tensor | None = None,
    sinks: int = SINKS,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attend, score, evict and write for ``len(rows)`` decode rows; returns the evicted
    logical slot per row (-1 while the row is below the budget). ``longest`` bounds every
    row's retained count, to size the splits: the scheduler's host-side maximum, or the
    budget itself for a step that a CUDA graph replays (the kernels bound each row's work by
    its seq_len on the device). Rows with seq_len 0 (padding) only get a zero output.
    ``budget``: K, one int for every row or an int32 tensor with one K per request row
    (``block_table``'s rows), each at most the workspace's budget. It is read on the device,
    so a captured graph serves any mix of budgets.
    ``combine`` (tensor parallelism): turns the (rows, K + 1) rank-local head means of every
    column into the mean over all ranks' heads (an all-reduce), before the argmin.
    ``kv_scales`` (FP8 caches, e4m3 or vLLM's uint8): the layer's (k_scale, v_scale), () float32.

    query/output (tokens, H, D); key/value (tokens, KV, D); caches (blocks, bs, KV, D).
    """
    num_rows = rows.numel()
    num_heads, head = query.shape[1], query.shape[2]
    num_kv_heads = key.shape[1]
    group = num_heads // num_kv_heads
    block_size = key_cache.shape[1]
    logits, part_out, part_max, part_sum, evicted, tile_best, tile_index, columns = workspace.get(
        num_rows, num_splits
    )
    if num_rows == 0:
        return evicted
    split_size = math.ceil(math.ceil(max(longest, 1) / num_splits) / block_n) * block_n
    budgets = budget if isinstance(budget, torch.Tensor) else torch.full(
        (block_table.shape[0],), budget, dtype=torch.int32, device=block_table.device
    )
    ieee = query.dtype == torch.float32
    code = POLICY_CODES[policy]
    # TOVA's launches never read the history buffers: any tensor stands in for them.
    positions = logits if positions is None else positions
    accumulated = logits if accumulated is None else accumulated
    use_fp8 = kv_scales is not None
    if use_fp8:
        key_cache, value_cache = fp8.fp8_view(key_cache), fp8.fp8_view(value_cache)
    k_scale, v_scale = kv_scales if use_fp8 else (logits, logits)  # unread without FP8
    _decode_partial[(num_rows, num_kv_heads, num_splits)](
        query, key, value, key_cache, value_cache, block_table, seq_lens, rows, tokens,
        logits, part_out, part_max, part_sum, k_scale, v_scale,
        scale * LOG2E, budgets, split_size,
        query.stride(0), query.stride(1),
        key.stride(0), key.stride(1),
        value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_table.stride(0),
        logits.stride(0), logits.stride(1),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_max.stride(0), part_max.stride(1),
        GROUP=group, BLOCK_G=max(16, _pow2(group)), HEAD=head, BLOCK_N=block_n,
        BLOCK_SIZE=block_size, IEEE=ieee, FP8=use_fp8,
        num_warps=PARTIAL_WARPS, num_stages=PARTIAL_STAGES,
    )
    tensor_parallel = combine is not None and policy in ATTENTION_POLICIES
    heads_per_merge = 4
    merges = math.ceil(num_heads / heads_per_merge)
    _decode_score[(num_rows, workspace.tiles + merges)](
        output, seq_lens, rows, tokens, logits, part_out, part_max, part_sum, tile_best, tile_index,
        columns, block_table, positions, accumulated, budgets, num_splits, workspace.tiles,
        output.stride(0), output.stride(1),
        logits.stride(0), logits.stride(1),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_max.stride(0), part_max.stride(1),
        tile_best.stride(0),
        columns.stride(0),
        block_table.stride(0),
        NUM_HEADS=num_heads, BLOCK_H=_pow2(num_heads), BLOCK_S=_pow2(num_splits),
        BLOCK_HO=heads_per_merge, SPLIT_CHUNK=min(8, max(2, _pow2(num_splits))), HEAD=head,
        BLOCK_C=workspace.block_c, STORE_COLUMNS=tensor_parallel,
        POLICY=code, SINKS=sinks, BLOCK_SIZE=block_size,
        num_warps=4,
    )
    if tensor_parallel:
        columns = combine(columns)
        _column_min[(num_rows, workspace.tiles)](
            seq_lens, rows, columns, tile_best, tile_index, block_table, positions, accumulated, budgets,
            columns.stride(0), tile_best.stride(0), block_table.stride(0),
            BLOCK_C=workspace.block_c, POLICY=code, SINKS=sinks, BLOCK_SIZE=block_size,
            num_warps=4,
        )
    _decode_evict[(num_rows,)](
        key, value, key_cache, value_cache, block_table, seq_lens, rows, tokens,
        tile_best, tile_index, evicted, columns, positions, accumulated, k_scale, v_scale, budgets,
        key.stride(0), key.stride(1),
        value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_table.stride(0),
        tile_best.stride(0),
        columns.stride(0),
        NUM_KV_HEADS=num_kv_heads, BLOCK_KV=_pow2(num_kv_heads), HEAD=head,
        BLOCK_T=_pow2(workspace.tiles), BLOCK_C=workspace.block_c, BLOCK_SIZE=block_size,
        POLICY=code, FP8=use_fp8,
        num_warps=1,
    )
    return evicted


def copy_slots(
    source_key: torch.Tensor,
    source_value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    source_index: torch.Tensor,
    target_slot: torch.Tensor,
    write: torch.Tensor,
    source_positions: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    source_accumulated: torch.Tensor | None = None,
    accumulated: torch.Tensor | None = None,
) -> None:
    """key_cache[target_slot[i]] = source_key[source_index[i]] where write[i] (caches flat;
    FP8 sources and caches are copied as e4m3 bytes); likewise the per-slot history of the baseline policies, where given (positions, then
    accumulated scores too), so a slot never keeps the history of the token it held."""
    n = source_index.numel()
    if n == 0:
        return
    num_kv_heads, head = source_key.shape[1], source_key.shape[2]
    history = 0 if positions is None else (1 if accumulated is None else 2)
    # Without history the kernel never reads these: any tensor stands in for them.
    source_positions = write if source_positions is None else source_positions
    positions = write if positions is None else positions
    source_accumulated = write if source_accumulated is None else source_accumulated
    accumulated = write if accumulated is None else accumulated
    _copy_slots[(n,)](
        source_key, source_value, key_cache, value_cache, source_index, target_slot, write,
        source_positions, positions, source_accumulated, accumulated,
        source_key.stride(0), source_key.stride(1),
        source_value.stride(0), source_value.stride(1),
        key_cache.stride(0), key_cache.stride(1),
        value_cache.stride(0), value_cache.stride(1),
        NUM_KV_HEADS=num_kv_heads, BLOCK_KV=_pow2(num_kv_heads), HEAD=head, HISTORY=history,
        num_warps=1,
    )
