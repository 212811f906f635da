"""The Triton decode kernels against a plain-torch decode step.

On a machine without CUDA the kernels run in Triton's interpreter. TRITON_INTERPRET must be
set before Triton is first imported (vLLM imports it), so there the cases run in a child
Python started by the test; on a GPU they run in-process on the compiled kernels. The
interpreter's float32 -> e4m3 conversion is wrong, so the child replaces it with a correct
one (tests/triton_interpreter.py): the FP8 kernels' own code runs unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from xml.etree import ElementTree

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETED:
    from tests.triton_interpreter import correct_fp8_conversion

    correct_fp8_conversion()

E4M3_MAX = 448.0


def emulated_fp8(values: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's per-tensor FP8 KV format, written here independently of vllm_tova: the cache
    bytes of ``values`` (value / scale in e4m3, saturated, round to nearest even) and the
    float32 values those bytes stand for (stored * scale)."""
    stored = (values.float().cpu() / scale.cpu()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return stored.view(torch.uint8), stored.float() * scale.cpu()


def torch_decode_step(query, key, value, key_cache, value_cache, block_table, seq_lens, budgets, scale):
    """One TOVA decode step per row in float32, written as plainly as possible; ``budgets``
    is one K for every row or a list with each row's."""
    num_heads, num_kv = query.shape[1], key.shape[1]
    group = num_heads // num_kv
    bs = key_cache.shape[1]
    out = torch.empty_like(query)
    evicted = []
    flat_k, flat_v = key_cache.flatten(0, 1), value_cache.flatten(0, 1)
    new_k, new_v = flat_k.clone(), flat_v.clone()
    for r in range(query.shape[0]):
        budget = budgets[r] if isinstance(budgets, list) else budgets
        retained = min(int(seq_lens[r]) - 1, budget)
        logical = torch.arange(min(retained + 1, budget))  # cached slots, plus the append slot
        slots = block_table[r, logical // bs].long() * bs + logical % bs
        k = torch.cat([flat_k[slots[:retained]], key[r : r + 1]]).float()
        v = torch.cat([flat_v[slots[:retained]], value[r : r + 1]]).float()
        q = query[r].float().view(num_kv, group, -1)
        w = torch.softmax(torch.einsum("kgd,nkd->kgn", q, k) * scale, dim=-1)
        out[r] = torch.einsum("kgn,nkd->kgd", w, v).reshape(num_heads, -1).to(query.dtype)
        scores = w.reshape(num_heads, -1).mean(0)
        if retained < budget:
            target, gone = retained, -1
        else:
            gone = int(scores.argmin())
            target = gone
        evicted.append(gone)
        if target != retained or retained < budget:
            new_k[slots[target]] = key[r]
            new_v[slots[target]] = value[r]
    return out, torch.tensor(evicted), new_k.view_as(key_cache), new_v.view_as(value_cache)


@pytest.mark.parametrize(
    "dtype,heads,kv_heads,head,budget,block_size,splits",
    [
        (torch.float32, 9, 3, 64, 40, 16, 1),
        (torch.float32, 8, 2, 32, 70, 16, 3),
        (torch.float16, 8, 2, 32, 64, 32, 2),
        (torch.bfloat16, 32, 8, 128, 256, 16, 4),  # Llama-3-8B heads; not in the interpreter
    ],
)
def test_decode_matches_torch(dtype, heads, kv_heads, head, budget, block_size, splits):
    kernels = _kernels(dtype)
    case = _decode_case(dtype, heads, kv_heads, head, budget, block_size)
    want_out, want_evicted, want_k, want_v = _expected(case, budget)
    output = torch.empty_like(case.query)
    workspace = _workspace(kernels, heads, head, budget, len(case.rows), len(case.rows) * splits)
    evicted = kernels.tova_decode(
        *case.inputs, case.rows, case.rows, output, case.scale, budget, splits, case.longest, workspace,
        block_n=16,
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(output.cpu().float(), want_out.float(), atol=tol, rtol=tol)
    assert evicted.cpu().tolist() == want_evicted.tolist()
    torch.testing.assert_close(case.key_cache.cpu(), want_k, atol=0, rtol=0)
    torch.testing.assert_close(case.value_cache.cpu(), want_v, atol=0, rtol=0)


@pytest.mark.parametrize(
    "dtype,heads,kv_heads,head,budget,block_size,splits",
    [
        (torch.float32, 8, 2, 32, 70, 16, 3),
        (torch.float16, 9, 3, 64, 40, 16, 1),
        (torch.bfloat16, 32, 8, 128, 256, 16, 4),  # Llama-3-8B heads; not in the interpreter
    ],
)
def test_fp8_decode_matches_torch_emulation(dtype, heads, kv_heads, head, budget, block_size, splits):
    """An FP8 cache (vLLM's uint8 bytes: e4m3 with one scale for K, another for V): output,
    evictions and every cache byte equal a float32 step on the dequantized cache with the
    new tokens as they will be stored, its cache then quantized. Some new K/V values
    saturate e4m3 and some fall in its subnormal range."""
    kernels = _kernels(dtype)
    case = _decode_case(dtype, heads, kv_heads, head, budget, block_size)
    query, key, value, key_cache, value_cache, block_table, seq_lens = case.inputs
    k_scale = torch.tensor(0.03, device=DEVICE)
    v_scale = torch.tensor(0.011, device=DEVICE)
    extremes = torch.tensor([30.0, -30.0, 1e-4, -2e-5], dtype=dtype, device=DEVICE)
    key, value = key.clone(), value.clone()
    key[:, 0, :4] = extremes
    value[:, -1, -4:] = extremes / 3
    k_bytes, k_cached = emulated_fp8(key_cache, k_scale)
    v_bytes, v_cached = emulated_fp8(value_cache, v_scale)
    want_out, want_evicted, want_k, want_v = torch_decode_step(
        query.cpu(), emulated_fp8(key, k_scale)[1], emulated_fp8(value, v_scale)[1], k_cached, v_cached,
        block_table.cpu(), seq_lens.cpu(), budget, case.scale,
    )
    k_bytes, v_bytes = k_bytes.to(DEVICE), v_bytes.to(DEVICE)
    output = torch.empty_like(query)
    workspace = _workspace(kernels, heads, head, budget, len(case.rows), len(case.rows) * splits)
    evicted = kernels.tova_decode(
        query, key, value, k_bytes, v_bytes, block_table, seq_lens, case.rows, case.rows, output,
        case.scale, budget, splits, case.longest, workspace, block_n=16, kv_scales=(k_scale, v_scale),
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(output.cpu().float(), want_out.float(), atol=tol, rtol=tol)
    assert evicted.cpu().tolist() == want_evicted.tolist()
    assert torch.equal(k_bytes.cpu(), emulated_fp8(want_k, k_scale)[0])
    assert torch.equal(v_bytes.cpu(), emulated_fp8(want_v, v_scale)[0])


def _emulated_all_reduce(run, ranks: int) -> torch.Tensor:
    """Run each rank once, recording the column means its all-reduce would send, and return
    what the all-reduce would hand back (their mean), for a second pass with it."""
    local = [None] * ranks

    def recorder(rank):
        def keep(columns):
            local[rank] = columns.clone()
            return columns
        return keep

    for rank in range(ranks):
        run(rank, recorder(rank))
    return sum(local) / ranks


def test_decode_across_tensor_parallel_ranks_matches_torch():
    """Two ranks, each with half the heads and an emulated all-reduce of the column scores,
    evict what one process with all heads evicts, and each writes its half of the cache."""
    heads, kv_heads, head, budget, block_size, ranks = 8, 2, 32, 70, 16, 2
    kernels = _kernels(torch.float32)
    case = _decode_case(torch.float32, heads, kv_heads, head, budget, block_size)
    want_out, want_evicted, want_k, want_v = _expected(case, budget)

    def shard(rank: int):
        q_part = slice(rank * heads // ranks, (rank + 1) * heads // ranks)
        kv_part = slice(rank * kv_heads // ranks, (rank + 1) * kv_heads // ranks)
        query, key, value, key_cache, value_cache, block_table, seq_lens = case.inputs
        return (
            query[:, q_part].contiguous(), key[:, kv_part].contiguous(), value[:, kv_part].contiguous(),
            key_cache[:, :, kv_part].clone(), value_cache[:, :, kv_part].clone(), block_table, seq_lens,
        ), q_part, kv_part

    def run(rank: int, combine):
        inputs, q_part, kv_part = shard(rank)
        output = torch.empty_like(inputs[0])
        workspace = _workspace(kernels, heads // ranks, head, budget, len(case.rows), len(case.rows) * 3)
        evicted = kernels.tova_decode(
            *inputs, case.rows, case.rows, output, case.scale, budget, 3, case.longest, workspace,
            block_n=16, combine=combine,
        )
        return evicted.cpu(), output.cpu(), inputs[3].cpu(), inputs[4].cpu(), q_part, kv_part

    summed = _emulated_all_reduce(run, ranks)
    for rank in range(ranks):
        evicted, output, key_cache, value_cache, q_part, kv_part = run(rank, lambda columns: summed)
        assert evicted.tolist() == want_evicted.tolist(), f"rank {rank}"
        torch.testing.assert_close(output, want_out[:, q_part], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(key_cache, want_k[:, :, kv_part], atol=0, rtol=0)
        torch.testing.assert_close(value_cache, want_v[:, :, kv_part], atol=0, rtol=0)


def test_h2o_decode_across_tensor_parallel_ranks_matches_torch_backend():
    """h2o under tensor parallelism: two ranks, each with half the heads, all-reduce their
    column weights (emulated), accumulate them alike and evict what the torch backend evicts
    with all heads; each rank's per-slot history matches the torch backend's."""
    from types import SimpleNamespace

    from vllm.config import VllmConfig, set_current_vllm_config

    from vllm_tova.attention.metadata import TovaMetadataBuilder
    from vllm_tova.attention.torch_backend import TovaTorchImpl
    from vllm_tova.config import additional_config

    heads, kv_heads, head, budget, block_size, ranks = 8, 2, 32, 70, 16, 2
    kernels = _kernels(torch.float32)
    case = _decode_case(torch.float32, heads, kv_heads, head, budget, block_size)
    query, key, value, key_cache, value_cache, block_table, seq_lens = case.inputs
    num_slots = key_cache.shape[0] * block_size
    seen = seq_lens.cpu().long() - 1
    # Each row's cached tokens: distinct earlier positions, in no order; other slots garbage.
    positions = torch.randint(10**6, 2 * 10**6, (num_slots,), device=DEVICE)
    for r, n in enumerate(seen.tolist()):
        logical = torch.arange(min(n, budget), device=DEVICE)
        slots = block_table[r].long()[logical // block_size] * block_size + logical % block_size
        positions[slots] = torch.randperm(n, device=DEVICE)[: len(logical)]
    accumulated = torch.rand(num_slots, device=DEVICE) * 3

    with set_current_vllm_config(VllmConfig(additional_config=additional_config("h2o", budget, 64))):
        reference = TovaTorchImpl(heads, head, case.scale, kv_heads, None, None, "auto")
    reference.state.ensure(num_slots, torch.device(DEVICE))
    reference.state.positions.copy_(positions)
    reference.state.accumulated.copy_(accumulated)
    stub = SimpleNamespace(budget=budget, block_size=block_size, device=torch.device(DEVICE))
    rows = TovaMetadataBuilder._decode_rows(
        stub, block_table.cpu(), torch.arange(len(seen)), seen.clamp(max=budget), seen,
        torch.full((len(seen),), budget),
    )
    want_out = torch.empty_like(query)
    want_k, want_v = key_cache.flatten(0, 1).clone(), value_cache.flatten(0, 1).clone()
    reference._decode(rows, query, key, value, want_k, want_v, want_out)

    def run(rank: int, combine):
        q_part = slice(rank * heads // ranks, (rank + 1) * heads // ranks)
        kv_part = slice(rank * kv_heads // ranks, (rank + 1) * kv_heads // ranks)
        caches = key_cache[:, :, kv_part].clone(), value_cache[:, :, kv_part].clone()
        history = positions.clone(), accumulated.clone()
        output = torch.empty_like(query[:, q_part])
        workspace = _workspace(  # 16-column tiles: the minimum spans tiles
            kernels, heads // ranks, head, budget, len(case.rows), len(case.rows) * 3, block_c=16
        )
        kernels.tova_decode(
            query[:, q_part].contiguous(), key[:, kv_part].contiguous(), value[:, kv_part].contiguous(),
            *caches, block_table, seq_lens, case.rows, case.rows, output, case.scale, budget, 3,
            case.longest, workspace, block_n=16, combine=combine, policy="h2o",
            positions=history[0], accumulated=history[1],
        )
        return output, caches, history, q_part, kv_part

    summed = _emulated_all_reduce(run, ranks)
    want_k, want_v = want_k.view_as(key_cache), want_v.view_as(value_cache)
    for rank in range(ranks):
        output, (k, v), (got_positions, got_accumulated), q_part, kv_part = run(rank, lambda c: summed)
        torch.testing.assert_close(output, want_out[:, q_part], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(k, want_k[:, :, kv_part], atol=0, rtol=0)
        torch.testing.assert_close(v, want_v[:, :, kv_part], atol=0, rtol=0)
        assert torch.equal(got_positions, reference.state.positions), f"rank {rank}"
        torch.testing.assert_close(got_accumulated, reference.state.accumulated, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "dtype,budget,block_size,num_sms,splits",
    [
        (torch.float32, 70, 16, 16, 2),
        (torch.float16, 64, 32, 132, 5),  # more splits than a short row fills: empty splits
    ],
)
def test_graph_decode_with_padding_matches_torch(dtype, budget, block_size, num_sms, splits):
    """The launch a full CUDA graph replays: every row of a padded batch, longest = budget and
    splits from the batch size alone. Real rows (1 to budget + 7 tokens) match the torch step;
    padding rows, as vLLM pads them (seq_len 0, null block 0 in the block table), change no
    cache slot, not even the null block's, and get a zero output."""
    heads, kv_heads, head, block_n = 8, 2, 32, 16
    kernels = _kernels(dtype)
    case = _decode_case(dtype, heads, kv_heads, head, budget, block_size)
    want_out, want_evicted, want_k, want_v = _expected(case, budget)
    inputs = _with_padding_rows(case.inputs, 3)
    n, real = inputs[0].shape[0], len(case.rows)
    assert kernels.choose_splits(n, kv_heads, budget + 1, num_sms, block_n) == splits
    capacity = kernels.max_split_rows(n, kv_heads, budget + 1, num_sms, block_n)
    workspace = _workspace(kernels, heads, head, budget, n, capacity)
    rows = torch.arange(n, dtype=torch.int32, device=DEVICE)
    output = torch.full_like(inputs[0], float("nan"))
    evicted = kernels.tova_decode(
        *inputs, rows, rows, output, case.scale, budget, splits, budget, workspace, block_n=block_n,
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(output[:real].cpu().float(), want_out.float(), atol=tol, rtol=tol)
    assert bool((output[real:] == 0).all())
    assert evicted[:real].cpu().tolist() == want_evicted.tolist()
    torch.testing.assert_close(case.key_cache.cpu(), want_k, atol=0, rtol=0)
    torch.testing.assert_close(case.value_cache.cpu(), want_v, atol=0, rtol=0)


PER_ROW_LENS = [1, 20, 33, 17, 70, 49, 64]
PER_ROW_MIXES = [
    [16, 48, 32, 16, 64, 48, 64],  # rows at, below and past their own K
    [64, 16, 16, 32, 48, 64, 32],  # the same rows, another mix: the launch must not change
]


@pytest.mark.parametrize("mix", PER_ROW_MIXES, ids=["mix-a", "mix-b"])
def test_decode_per_row_budgets_match_torch(mix):
    """One K per request row, read on the device: each row is evicted at its own K. The
    launch (rows, splits, longest = the workspace's K) is the one a captured graph replays,
    the same for every mix, as CUDA graphs need: only the budget tensor's contents differ."""
    heads, kv_heads, head, block_size, most, splits = 8, 2, 32, 16, 64, 2
    kernels = _kernels(torch.float32)
    case = _decode_case(torch.float32, heads, kv_heads, head, most, block_size, lens=PER_ROW_LENS)
    want_out, want_evicted, want_k, want_v = _expected(case, mix)
    assert want_evicted.tolist() != _expected(case, most)[1].tolist()  # the mix matters here
    workspace = _workspace(kernels, heads, head, most, len(case.rows), len(case.rows) * splits)
    budgets = torch.tensor(mix, dtype=torch.int32, device=DEVICE)
    output = torch.empty_like(case.query)
    evicted = kernels.tova_decode(
        *case.inputs, case.rows, case.rows, output, case.scale, budgets, splits, most, workspace, block_n=16,
    )
    torch.testing.assert_close(output.cpu(), want_out, atol=1e-5, rtol=1e-5)
    assert evicted.cpu().tolist() == want_evicted.tolist()
    torch.testing.assert_close(case.key_cache.cpu(), want_k, atol=0, rtol=0)
    torch.testing.assert_close(case.value_cache.cpu(), want_v, atol=0, rtol=0)


def _with_padding_rows(inputs: tuple, count: int) -> tuple:
    """The inputs plus ``count`` padding rows as vLLM pads a captured decode batch: a token
    each, seq_len 0 and an all-zero (null block) block-table row. The caches are shared."""
    query, key, value, key_cache, value_cache, block_table, seq_lens = inputs

    def more(t: torch.Tensor, fill: float | None = None) -> torch.Tensor:
        extra = torch.randn if fill is None else (lambda *shape, **f: torch.full(shape, fill, **f))
        return torch.cat([t, extra(count, *t.shape[1:], dtype=t.dtype, device=t.device)])

    return (
        more(query), more(key), more(value), key_cache, value_cache, more(block_table, 0), more(seq_lens, 0)
    )


def _workspace(kernels, heads: int, head: int, budget: int, rows: int, split_rows: int, block_c=None):
    return kernels.DecodeWorkspace(
        heads, head, budget, torch.device(DEVICE), max_rows=rows, max_split_rows=split_rows, block_c=block_c
    )


def _kernels(dtype: torch.dtype):
    if DEVICE == "cpu" and not INTERPRETED:
        pytest.skip("runs in the interpreter child: test_kernels_in_interpreter")
    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes bfloat16 dots wrongly (numpy has no bfloat16)")
    from vllm_tova.attention import triton_kernels

    return triton_kernels


def _expected(case: "DecodeCase", budget: int):
    return torch_decode_step(*(t.cpu() for t in case.inputs), budget, case.scale)


@dataclass
class DecodeCase:
    inputs: tuple  # query, key, value, key_cache, value_cache, block_table, seq_lens
    rows: torch.Tensor
    scale: float
    longest: int

    @property
    def query(self) -> torch.Tensor:
        return self.inputs[0]

    @property
    def key_cache(self) -> torch.Tensor:
        return self.inputs[3]

    @property
    def value_cache(self) -> torch.Tensor:
        return self.inputs[4]


def _decode_case(dtype, heads, kv_heads, head, budget, block_size, lens=None) -> DecodeCase:
    """Random rows that are empty, below, at and past the budget (or of lengths ``lens``),
    in shuffled blocks."""
    torch.manual_seed(0)
    lens = lens or [1, 5, budget, budget + 1, budget + 7]
    rows_n = len(lens)
    blocks_per_row = -(-budget // block_size)
    num_blocks = rows_n * blocks_per_row + 3
    f = dict(dtype=dtype, device=DEVICE)
    key_cache = torch.randn(num_blocks, block_size, kv_heads, head, **f)
    value_cache = torch.randn(num_blocks, block_size, kv_heads, head, **f)
    perm = torch.randperm(num_blocks - 1)[: rows_n * blocks_per_row] + 1  # block 0 is vLLM's null block
    block_table = perm.view(rows_n, blocks_per_row).to(torch.int32).to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    query = torch.randn(rows_n, heads, head, **f)
    key = torch.randn(rows_n, kv_heads, head, **f)
    value = torch.randn(rows_n, kv_heads, head, **f)
    return DecodeCase(
        (query, key, value, key_cache, value_cache, block_table, seq_lens),
        torch.arange(rows_n, dtype=torch.int32, device=DEVICE),
        head**-0.5,
        min(max(lens) - 1, budget),
    )


@pytest.mark.skipif(DEVICE != "cpu" or INTERPRETED, reason="the GPU runs the cases directly")
def test_kernels_in_interpreter(tmp_path):
    """Every case of this module runs in the child, except those skipped for a reason stated
    here (interpreter limits, GPU-only paths); every test function passes at least once."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    report = tmp_path / "interpreted.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", __file__],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    allowed_skips = (
        "the GPU runs the cases directly",  # this test itself
        "Triton's interpreter computes bfloat16 dots wrongly",
        "half-precision chunks use FlashAttention: GPU only",
    )
    passed: set[str] = set()
    for case in ElementTree.parse(report).iter("testcase"):
        function = case.get("name").split("[")[0]
        skipped = case.find("skipped")
        if skipped is None:
            passed.add(function)
        else:
            reason = skipped.get("message", "")
            assert any(r in reason for r in allowed_skips), f"{case.get('name')} skipped: {reason}"
    functions = {name for name in globals() if name.startswith("test_")} - {"test_kernels_in_interpreter"}
    assert passed == functions, f"never passed in the interpreter: {sorted(functions - passed)}"


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunk_absorption_matches_torch_backend(dtype, kv_cache_dtype):
    """Prompt chunks through the CUDA backend's path equal the torch backend's, slot by slot.
    FP8: the torch backend runs unquantized on what the cache holds (the dequantized
    entries, the chunk as it will be stored; emulated_fp8), and every cache byte of the CUDA
    path must equal that result quantized."""
    if DEVICE == "cpu" and not INTERPRETED:
        pytest.skip("runs in the interpreter child: test_kernels_in_interpreter")
    if DEVICE == "cpu" and dtype != torch.float32:
        pytest.skip("half-precision chunks use FlashAttention: GPU only")
    from vllm.config import VllmConfig, set_current_vllm_config

    from vllm_tova.attention.metadata import ChunkRow, logical_to_physical
    from vllm_tova.attention.torch_backend import TovaTorchImpl
    from vllm_tova.attention.triton_backend import TovaTritonImpl, pack_chunks
    from vllm_tova.config import additional_config

    torch.manual_seed(1)
    heads, kv_heads, head, budget, block_size = 8, 2, 32, 48, 16
    # (retained, chunk tokens): fits without eviction, fills exactly, evicts, evicts from full.
    rows = [(0, 20), (20, 28), (30, 40), (48, 33)]
    blocks_per_row = -(-budget // block_size)
    num_blocks = len(rows) * blocks_per_row + 1
    f = dict(dtype=dtype, device=DEVICE)
    key_cache = torch.randn(num_blocks, block_size, kv_heads, head, **f)
    value_cache = torch.randn(num_blocks, block_size, kv_heads, head, **f)
    block_table = (torch.randperm(num_blocks - 1) + 1)[: len(rows) * blocks_per_row]
    block_table = block_table.view(len(rows), blocks_per_row).to(torch.int32).to(DEVICE)
    query_lens = torch.tensor([n for _, n in rows])
    starts = torch.zeros(len(rows) + 1, dtype=torch.long)
    starts[1:] = query_lens.cumsum(0)
    tokens = int(starts[-1])
    query = torch.randn(tokens, heads, head, **f)
    key = torch.randn(tokens, kv_heads, head, **f)
    value = torch.randn(tokens, kv_heads, head, **f)

    with set_current_vllm_config(VllmConfig(additional_config=additional_config("tova", budget, 64))):
        args = (heads, head, head**-0.5, kv_heads, None, None)
        gpu_impl, torch_impl = TovaTritonImpl(*args, kv_cache_dtype), TovaTorchImpl(*args, "auto")

    fp8 = kv_cache_dtype == "fp8"
    scales = (torch.tensor(0.02, device=DEVICE), torch.tensor(0.013, device=DEVICE)) if fp8 else None
    want_key, want_value = key, value
    if fp8:  # the torch backend sees floats; the CUDA path gets the bytes
        key[:, 0, :2] = torch.tensor([30.0, -30.0], dtype=dtype)  # beyond e4m3's range: saturate
        k_bytes, k_held = emulated_fp8(key_cache, scales[0])
        v_bytes, v_held = emulated_fp8(value_cache, scales[1])
        want_k, want_v = k_held.to(DEVICE, dtype), v_held.to(DEVICE, dtype)
        key_cache, value_cache = k_bytes.to(DEVICE), v_bytes.to(DEVICE)
        want_key = emulated_fp8(key, scales[0])[1].to(DEVICE, dtype)
        want_value = emulated_fp8(value, scales[1])[1].to(DEVICE, dtype)
    else:
        want_k, want_v = key_cache.clone(), value_cache.clone()
    want_out = torch.zeros_like(query)
    for i, (old, new) in enumerate(rows):
        logical = torch.arange(min(old + new, budget), device=DEVICE)[None]
        slots = logical_to_physical(block_table[i : i + 1], logical, block_size)[0]
        row = ChunkRow(int(starts[i]), new, old, slots, old, budget, sequence=int(block_table[i, 0]))
        torch_impl._chunk(
            row, query, want_key, want_value, want_k.flatten(0, 1), want_v.flatten(0, 1), want_out
        )
    if fp8:
        want_k, want_v = (emulated_fp8(c, s)[0].to(DEVICE) for c, s in ((want_k, scales[0]), (want_v, scales[1])))

    retained = torch.tensor([old for old, _ in rows])
    batch = pack_chunks(
        block_table, torch.arange(len(rows)), starts, query_lens, retained, retained, block_size,
        torch.device(DEVICE), torch.full((len(rows),), budget),
    )
    output = torch.zeros_like(query)
    gpu_impl._absorb(batch, query, key, value, key_cache, value_cache, output, scales)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(output, want_out, atol=tol, rtol=tol)
    # Retained entries are a set in logical [0, K): compare each row's slots as sets of rows.
    for i, (old, new) in enumerate(rows):
        logical = torch.arange(min(old + new, budget), device=DEVICE)[None]
        slots = logical_to_physical(block_table[i : i + 1], logical, block_size)[0]
        for got, want in ((key_cache, want_k), (value_cache, want_v)):
            torch.testing.assert_close(
                got.flatten(0, 1)[slots].cpu(), want.flatten(0, 1)[slots].cpu(), atol=0, rtol=0
            )


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
@pytest.mark.parametrize("policy", ["window", "sink", "h2o"])
def test_baseline_policy_steps_match_torch_backend(policy, kv_cache_dtype):
    """Two prompt chunks then decode steps, through the CUDA backend's forward and the torch
    backend's, for the baseline policies: outputs, the whole KV cache (so every eviction and
    every slot reuse), and each live slot's position (and h2o's accumulated attention) must
    agree after every step. Decode steps launch as a captured graph would (two padding rows,
    longest = budget), and the CUDA side's history buffers start as garbage, so a slot read
    before this run wrote it would show. FP8: both backends on e4m3 caches with the same
    scales, compared byte for byte."""
    if DEVICE == "cpu" and not INTERPRETED:
        pytest.skip("runs in the interpreter child: test_kernels_in_interpreter")
    torch.manual_seed(2)
    run = _BaselineRun(
        policy, heads=4, kv_heads=2, head=16, budget=20, block_size=16, rows=3, kv_cache_dtype=kv_cache_dtype
    )
    # Row 0 evicts in its second chunk, row 1 fills then evicts, row 2 reaches K while decoding.
    for lens in ([14, 20, 6], [13, 5, 8]):
        run.chunk_step(lens)
    for _ in range(8):
        run.decode_step(padding=2)


@pytest.mark.parametrize("policy", ["tova", "h2o"])
def test_per_row_budgets_steps_match_torch_backend(policy):
    """Rows of one batch at K = 8, 20 and 12 (the server's largest 20), through both backends'
    forward: prompt chunks (each row keeps its own K best), then graph-style decode steps
    (each row evicts at its own K; h2o protects its own K // 2 most recent)."""
    if DEVICE == "cpu" and not INTERPRETED:
        pytest.skip("runs in the interpreter child: test_kernels_in_interpreter")
    torch.manual_seed(3)
    run = _BaselineRun(policy, heads=4, kv_heads=2, head=16, budget=20, block_size=16, rows=3, budgets=[8, 20, 12])
    for lens in ([14, 20, 6], [13, 5, 8]):
        run.chunk_step(lens)
    for _ in range(6):
        run.decode_step(padding=2)


class _BaselineRun:
    """The same batch of rows driven through ``TovaTritonImpl.forward`` and
    ``TovaTorchImpl.forward``, step by step, comparing everything after each step."""

    def __init__(
        self, policy, heads, kv_heads, head, budget, block_size, rows, kv_cache_dtype="auto", budgets=None
    ) -> None:
        """``budget``: the server's largest K; ``budgets``: each row's (default: ``budget``)."""
        from types import SimpleNamespace

        from vllm.config import VllmConfig, set_current_vllm_config

        from vllm_tova.attention.torch_backend import TovaTorchImpl
        from vllm_tova.attention.triton_backend import TovaTritonImpl
        from vllm_tova.config import additional_config

        self.heads, self.kv_heads, self.head, self.budget = heads, kv_heads, head, budget
        self.block_size, self.rows = block_size, rows
        self.budgets = torch.tensor(budgets or [budget] * rows)
        config = VllmConfig(additional_config=additional_config(policy, budget, 64))
        with set_current_vllm_config(config):
            args = (heads, head, head**-0.5, kv_heads, None, None, kv_cache_dtype)
            self.gpu, self.cpu = TovaTritonImpl(*args), TovaTorchImpl(*args)
        blocks_per_row = -(-budget // block_size)
        num_blocks = rows * blocks_per_row + 1  # block 0: vLLM's null block, the padding rows'
        self.kv_gpu = torch.randn(2, num_blocks, block_size, kv_heads, head, device=DEVICE)
        # The attention layer as the backends read it: only its FP8 scales.
        scales = torch.tensor(0.03, device=DEVICE), torch.tensor(0.011, device=DEVICE)
        self.layer = SimpleNamespace(_k_scale=scales[0], _v_scale=scales[1])
        if kv_cache_dtype == "fp8":
            self.kv_gpu = torch.stack([emulated_fp8(c, s)[0] for c, s in zip(self.kv_gpu, scales)]).to(DEVICE)
        self.kv_cpu = self.kv_gpu.clone()
        table = (torch.randperm(num_blocks - 1) + 1).view(rows, blocks_per_row).to(torch.int32)
        self.block_table = table.to(DEVICE)
        self.seen = torch.zeros(rows, dtype=torch.long)
        num_slots = num_blocks * block_size
        self.gpu.state.ensure(num_slots, torch.device(DEVICE))
        if self.gpu.state.positions is not None:
            self.gpu.state.positions.random_(1000, 2000)
        if self.gpu.state.accumulated is not None:
            self.gpu.state.accumulated.uniform_(5, 10)
        self.null_history = self._history(self.gpu, torch.arange(block_size, device=DEVICE))
        self.builder = SimpleNamespace(budget=budget, block_size=block_size, device=torch.device(DEVICE))
        self.workspace = _workspace(  # 16-column tiles: the new token's column in the second
            _kernels(torch.float32), heads, head, budget, rows + 2, (rows + 2) * 2, block_c=16
        )

    def chunk_step(self, lens: list[int]) -> None:
        from vllm_tova.attention.metadata import TovaMetadata, TovaMetadataBuilder
        from vllm_tova.attention.triton_backend import TovaTritonMetadata, pack_chunks

        query_lens = torch.tensor(lens)
        starts = torch.zeros(self.rows + 1, dtype=torch.long)
        starts[1:] = query_lens.cumsum(0)
        retained = torch.minimum(self.seen, self.budgets)
        chunk_rows = [
            TovaMetadataBuilder._chunk_row(
                self.builder, self.block_table.cpu()[i], int(starts[i]), lens[i], int(retained[i]),
                int(self.seen[i]), int(self.budgets[i]),
            )
            for i in range(self.rows)
        ]
        batch = pack_chunks(
            self.block_table, torch.arange(self.rows), starts, query_lens, retained, self.seen,
            self.block_size, torch.device(DEVICE), self.budgets,
        )
        tokens = int(starts[-1])
        seq_lens = (self.seen + query_lens).to(torch.int32).to(DEVICE)
        self._step(
            tokens,
            TovaTritonMetadata(
                tokens, seq_lens, self.block_table, self.device_budgets(self.rows), None, batch, self.workspace
            ),
            TovaMetadata(tokens, None, chunk_rows),
            seen_after=self.seen + query_lens,
        )

    def decode_step(self, padding: int) -> None:
        """One token per row, launched like a captured graph: ``padding`` extra rows with
        seq_len 0 and null-block tables, longest = budget."""
        from vllm_tova.attention.metadata import TovaMetadata, TovaMetadataBuilder
        from vllm_tova.attention.triton_backend import DecodeBatch, TovaTritonMetadata

        retained = torch.minimum(self.seen, self.budgets)
        rows = TovaMetadataBuilder._decode_rows(
            self.builder, self.block_table.cpu(), torch.arange(self.rows), retained, self.seen, self.budgets
        )
        n = self.rows + padding
        seq_lens = torch.cat([self.seen + 1, torch.zeros(padding, dtype=torch.long)]).to(torch.int32)
        table = torch.cat([self.block_table, self.block_table.new_zeros(padding, self.block_table.shape[1])])
        everyone = torch.arange(n, dtype=torch.int32, device=DEVICE)
        decode = DecodeBatch(rows=everyone, tokens=everyone, longest=self.budget, num_splits=2)
        self._step(
            n,
            TovaTritonMetadata(n, seq_lens.to(DEVICE), table, self.device_budgets(n), decode, None, self.workspace),
            TovaMetadata(self.rows, rows, []),
            seen_after=self.seen + 1,
            real=self.rows,
        )

    def device_budgets(self, n: int) -> torch.Tensor:
        """Each request row's K on the device; padding rows past the real ones get ``budget``."""
        padded = torch.cat([self.budgets, torch.full((n - self.rows,), self.budget)])
        return padded.to(torch.int32).to(DEVICE)

    def _step(self, tokens: int, gpu_md, cpu_md, seen_after: torch.Tensor, real: int | None = None) -> None:
        """Random activations through both backends, then compare (``real``: tokens that are
        not padding rows)."""
        real = tokens if real is None else real
        f = dict(device=DEVICE)
        query = torch.randn(tokens, self.heads, self.head, **f)
        key = torch.randn(tokens, self.kv_heads, self.head, **f)
        value = torch.randn(tokens, self.kv_heads, self.head, **f)
        out_gpu, out_cpu = torch.zeros_like(query), torch.zeros_like(query[:real])
        self.gpu.forward(self.layer, query, key, value, self.kv_gpu, gpu_md, out_gpu)
        self.cpu.forward(self.layer, query[:real], key[:real], value[:real], self.kv_cpu, cpu_md, out_cpu)
        torch.testing.assert_close(out_gpu[:real], out_cpu, atol=1e-5, rtol=1e-5)
        assert bool((out_gpu[real:] == 0).all())
        torch.testing.assert_close(self.kv_gpu, self.kv_cpu, atol=0, rtol=0)
        self.seen = seen_after
        for row in range(self.rows):
            logical = torch.arange(min(int(self.seen[row]), int(self.budgets[row])), device=DEVICE)
            slots = self.block_table[row].long()[logical // self.block_size] * self.block_size
            slots = slots + logical % self.block_size
            got, want = self._history(self.gpu, slots), self._history(self.cpu, slots)
            assert got[0].tolist() == want[0].tolist(), f"positions of row {row}"
            if want[1] is not None:
                torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
        null = self._history(self.gpu, torch.arange(self.block_size, device=DEVICE))
        assert null[0].tolist() == self.null_history[0].tolist(), "padding rows wrote positions"
        if null[1] is not None:
            assert torch.equal(null[1], self.null_history[1]), "padding rows wrote accumulated scores"

    @staticmethod
    def _history(impl, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        positions = impl.state.read_positions(slots)  # None for tova, which keeps no history
        return torch.empty(0) if positions is None else positions.clone(), (
            None if impl.state.accumulated is None else impl.state.read_accumulated(slots).clone()
        )
