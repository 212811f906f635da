"""The CUDA backend's metadata builder, on CPU: what a full CUDA graph of a decode step relies on.

A replayed graph reads the addresses recorded at capture and reruns the recorded launches, so
for pure-decode steps the builder must hand out persistent tensors only and launch parameters
that depend on the batch size alone. Only ``build`` runs here (no kernel); the device
properties and the vLLM config are stubbed with the few fields the builder reads.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.config import CUDAGraphMode
from vllm.v1.attention.backend import AttentionCGSupport, CommonAttentionMetadata

from vllm_tova.attention import eviction_log, triton_backend, triton_kernels
from vllm_tova.attention.triton_backend import TovaTritonMetadataBuilder, is_pure_decode
from vllm_tova.config import additional_config

BUDGET, BLOCK_SIZE, MAX_ROWS, KV_HEADS, SMS = 64, 16, 8, 2, 132
BLOCKS_PER_ROW = BUDGET // BLOCK_SIZE


def _builder(
    monkeypatch,
    mode: CUDAGraphMode = CUDAGraphMode.FULL_AND_PIECEWISE,
    budget: int = BUDGET,
    max_model_len: int = 4096,
    max_num_seqs: int = MAX_ROWS,
    max_num_batched_tokens: int = 2048,
    device: str = "cpu",
):
    monkeypatch.setattr(triton_backend, "multiprocessor_count", lambda device: SMS)
    # Full graphs need the eviction log off; an engine run earlier in this process may have
    # left it on (its switch holds until the next engine builds its layers).
    monkeypatch.setattr(eviction_log, "ENABLED", False)
    model = SimpleNamespace(
        get_num_kv_heads=lambda parallel: KV_HEADS,
        get_num_attention_heads=lambda parallel: 8,
        get_head_size=lambda: 32,
        max_model_len=max_model_len,
    )
    config = SimpleNamespace(
        additional_config=additional_config("tova", budget, 32),
        model_config=model,
        parallel_config=None,
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        compilation_config=SimpleNamespace(cudagraph_mode=mode),
    )
    spec = SimpleNamespace(block_size=BLOCK_SIZE)
    return TovaTritonMetadataBuilder(spec, ["layer"], config, torch.device(device))


def test_workspace_is_sized_by_max_model_len_and_the_real_decode_batch(monkeypatch):
    """K = 131,072 on an 8,192-token model with 1,024 seats but 512 tokens a step: the score
    buffer holds 512 rows x 8 heads x 8,193 columns (134 MB in fp32), not 1,024 x 131,073 (4.3 GB).
    On the meta device: nothing is allocated."""
    builder = _builder(
        monkeypatch, budget=131_072, max_model_len=8192, max_num_seqs=1024, max_num_batched_tokens=512, device="meta"
    )
    workspace = builder.workspace
    assert tuple(workspace.logits.shape) == (512, 8, 8193)
    assert tuple(workspace.columns.shape) == (512, 8193)
    assert builder.max_rows == 512 and builder.budget == 8192
    assert sum(t.numel() * t.element_size() for t in _workspace_tensors(workspace)) < 160e6
    # A budget below max_model_len sizes the buffers itself, and max_num_seqs binds when smaller.
    small = _builder(
        monkeypatch, budget=512, max_model_len=8192, max_num_seqs=64, max_num_batched_tokens=8192, device="meta"
    )
    assert tuple(small.workspace.logits.shape) == (64, 8, 513)


class Runner:
    """The model runner's persistent seq_lens and block table; each step pads its rows as
    both runners do for a full graph (query length 0, seq_len 0, null block 0)."""

    def __init__(self) -> None:
        self.seq_lens = torch.zeros(MAX_ROWS, dtype=torch.int32)
        self.block_table = torch.zeros(MAX_ROWS, BLOCKS_PER_ROW, dtype=torch.int32)

    def step(self, query_lens: list[int], seen: list[int], padded: int) -> CommonAttentionMetadata:
        real = len(query_lens)
        lens = torch.tensor(query_lens + [0] * (padded - real))
        starts = torch.zeros(padded + 1, dtype=torch.int32)
        starts[1:] = lens.cumsum(0)
        seq = torch.tensor(seen + [0] * (padded - real)) + lens
        self.seq_lens.zero_()
        self.seq_lens[:padded] = seq
        self.block_table[:real] = torch.arange(real * BLOCKS_PER_ROW).view(real, -1) + 1
        self.block_table[real:] = 0
        num_tokens = max(int(starts[-1]), padded)
        return CommonAttentionMetadata(
            query_start_loc=starts,
            query_start_loc_cpu=starts,
            seq_lens=self.seq_lens[:padded],
            num_reqs=padded,
            num_actual_tokens=num_tokens,
            max_query_len=max(query_lens),
            max_seq_len=int(seq.max()),
            block_table_tensor=self.block_table[:padded],
            slot_mapping=torch.full((num_tokens,), -1, dtype=torch.long),
            seq_lens_cpu_upper_bound=seq.to(torch.int32),
        )


def test_pure_decode_steps_use_persistent_tensors_and_size_only_launches(monkeypatch):
    builder, runner = _builder(monkeypatch), Runner()
    buffers = [t.data_ptr() for t in _workspace_tensors(builder.workspace)]
    steps = [([1, 1, 1], [0, 30, 200], 4), ([1, 1, 1, 1], [5, 6, 7, 80], 4), ([1] * 8, [3] * 8, 8)]
    for query_lens, seen, padded in steps:
        md = builder.build(0, runner.step(query_lens, seen, padded))
        assert md.chunks is None
        assert md.decode.rows.data_ptr() == md.decode.tokens.data_ptr() == builder.arange.data_ptr()
        assert md.decode.rows.tolist() == list(range(padded))  # padding rows included
        assert md.decode.longest == BUDGET
        assert md.decode.num_splits == triton_kernels.choose_splits(padded, KV_HEADS, BUDGET + 1, SMS, 64)
        assert md.seq_lens.data_ptr() == runner.seq_lens.data_ptr()
        assert md.block_table.data_ptr() == runner.block_table.data_ptr()
        assert md.workspace is builder.workspace
        md.workspace.get(padded, md.decode.num_splits)
    assert [t.data_ptr() for t in _workspace_tensors(builder.workspace)] == buffers


def test_workspace_holds_every_step_and_refuses_more(monkeypatch):
    builder = _builder(monkeypatch)
    buffers = [t.data_ptr() for t in _workspace_tensors(builder.workspace)]
    for rows in range(1, MAX_ROWS + 1):
        for longest in (0, 1, 17, BUDGET):  # eager steps: the longest retained row + 1
            builder.workspace.get(rows, triton_kernels.choose_splits(rows, KV_HEADS, longest + 1, SMS, 64))
    assert [t.data_ptr() for t in _workspace_tensors(builder.workspace)] == buffers
    with pytest.raises(ValueError):
        builder.workspace.get(MAX_ROWS + 1, 1)
    with pytest.raises(ValueError):
        builder.workspace.get(1, builder.workspace.splits + 1)
    with pytest.raises(ValueError):
        builder._graph_decode(MAX_ROWS + 1)


def test_mixed_steps_keep_the_eager_path(monkeypatch):
    """Prompt chunks beside decode rows: host-sized decode rows, as before full graphs."""
    builder, runner = _builder(monkeypatch), Runner()
    md = builder.build(0, runner.step([1, 20, 1], [10, 0, 90], 3))
    assert md.decode.rows.tolist() == [0, 2]
    assert md.decode.tokens.tolist() == [0, 21]
    assert md.decode.longest == BUDGET  # 90 seen, capped
    assert md.decode.num_splits == triton_kernels.choose_splits(2, KV_HEADS, BUDGET + 1, SMS, 64)
    assert md.chunks is not None and md.chunks.sizes == [(0, 20)]
    md = builder.build(0, runner.step([1, 20], [10, 0], 2))
    assert md.decode.longest == 10


@pytest.mark.parametrize("mode", [CUDAGraphMode.NONE, CUDAGraphMode.PIECEWISE])
def test_without_full_graphs_decode_stays_eager(monkeypatch, mode):
    builder, runner = _builder(monkeypatch, mode), Runner()
    md = builder.build(0, runner.step([1, 1], [10, 20], 2))
    assert md.decode.longest == 20
    assert md.decode.rows.data_ptr() != builder.arange.data_ptr()


def test_recording_evictions_turns_full_graphs_off(monkeypatch):
    builder, runner = _builder(monkeypatch), Runner()
    support = TovaTritonMetadataBuilder.get_cudagraph_support
    assert support(builder.vllm_config, None) == AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    monkeypatch.setattr(eviction_log, "ENABLED", True)
    assert support(builder.vllm_config, None) == AttentionCGSupport.NEVER
    assert builder.build(0, runner.step([1, 1], [10, 20], 2)).decode.longest == 20


@pytest.mark.parametrize(
    "query_lens,pure",
    [([1, 1, 1], True), ([1, 1, 0, 0], True), ([1, 0, 1], False), ([2, 1], False), ([0, 0], False)],
)
def test_pure_decode_shape(query_lens, pure):
    assert is_pure_decode(torch.tensor(query_lens)) == pure


def _workspace_tensors(workspace: triton_kernels.DecodeWorkspace) -> list[torch.Tensor]:
    names = ("logits", "evicted", "tile_best", "tile_index", "columns", "part_out", "part_stats")
    return [getattr(workspace, name) for name in names]


@pytest.mark.parametrize(
    "rows,budget,splits",
    [
        (64, 512, 1),  # 512 programs cover 132 SMs; one split streams the budget's 512 entries
        (64, 1024, 2),  # split for length: no program streams more than 512 cached entries
        (64, 2048, 4),
        (1024, 2048, 4),
        (1, 2048, 33),  # split for occupancy: 2 programs x 132 SMs / 8 KV heads
        (1, 8, 1),  # never an empty split
    ],
)
def test_splits_cover_the_sms_and_bound_each_split(rows, budget, splits):
    """The split rule ``kernel_bench --splits`` chose on an H200 (8 KV heads, 132 SMs)."""
    assert triton_kernels.choose_splits(rows, 8, budget + 1, 132, 64) == splits
