"""Unit tests on small tensors: policy, eviction selection, block arithmetic, chunking, config."""

from __future__ import annotations

import pytest
import torch

from vllm_tova.attention.head_average import HeadAverage
from vllm_tova.config import TovaConfig
from vllm_tova.kv_manager import TovaAttentionSpec, blocks_per_sequence
from vllm_tova.policy import EvictionPolicy, TovaPolicy, get_policy
from vllm_tova.scheduler import aligned_chunk


def test_tova_score_is_mean_over_query_heads() -> None:
    weights = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.4, 0.4, 0.2]]])  # (1, 3, 3)
    scores = TovaPolicy().score(HeadAverage(tensor_parallel_size=1)(weights))
    assert torch.allclose(scores, torch.tensor([[0.4, 0.2666667, 0.3333333]]))


def test_keep_top_returns_best_in_index_order() -> None:
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7])
    assert EvictionPolicy.keep_top(scores, 3).tolist() == [1, 3, 4]
    assert EvictionPolicy.keep_top(scores, 9).tolist() == [0, 1, 2, 3, 4]


def test_evict_one_ignores_invalid_entries() -> None:
    scores = torch.tensor([[0.5, 0.0, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4]])
    valid = torch.tensor([[True, False, True, True], [True, True, True, True]])
    assert EvictionPolicy.evict_one(scores, valid).tolist() == [2, 0]


def test_get_policy_knows_tova() -> None:
    assert isinstance(get_policy("tova"), TovaPolicy)


@pytest.mark.parametrize(
    ("budget", "block_size", "blocks"), [(64, 32, 2), (65, 32, 3), (128, 32, 4), (512, 16, 32)]
)
def test_blocks_per_sequence(budget: int, block_size: int, blocks: int) -> None:
    assert blocks_per_sequence(budget, block_size) == blocks


def test_spec_reports_capped_memory_and_merges() -> None:
    spec = TovaAttentionSpec(
        block_size=32, num_kv_heads=3, head_size=64, dtype=torch.float32, kv_budget=100
    )
    assert spec.max_blocks_per_sequence == 4

    class _Model:
        max_model_len = 4096

    class _Config:
        model_config = _Model()

    assert spec.max_memory_usage_bytes(_Config()) == 4 * spec.page_size_bytes
    assert TovaAttentionSpec.merge([spec, spec]) == spec
    other = TovaAttentionSpec(
        block_size=32, num_kv_heads=3, head_size=64, dtype=torch.float32, kv_budget=64
    )
    with pytest.raises(ValueError, match="one budget"):
        TovaAttentionSpec.merge([spec, other])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_profiling_pass_returns_zeros(backend: str) -> None:
    """vLLM's profiling pass (no metadata) must not hand garbage to later layers: the FP8
    scale calibration (--calculate-kv-scales) reads their K/V in that pass."""
    from vllm.config import VllmConfig, set_current_vllm_config

    from vllm_tova.attention.torch_backend import TovaTorchImpl
    from vllm_tova.attention.triton_backend import TovaTritonImpl
    from vllm_tova.config import additional_config

    with set_current_vllm_config(VllmConfig(additional_config=additional_config("tova", 64, 64))):
        impl = (TovaTorchImpl if backend == "torch" else TovaTritonImpl)(4, 16, 0.25, 2, None, None, "fp8")
    output = torch.full((3, 4, 16), float("nan"))
    kv = torch.zeros(2, 2, 16, 2, 16, dtype=torch.uint8)
    q, k = torch.randn(3, 4, 16), torch.randn(3, 2, 16)
    assert impl.forward(None, q, k, k, kv, None, output) is output and bool((output == 0).all())


def test_spec_page_follows_the_cache_dtype() -> None:
    """vLLM stores FP8 K/V as uint8 (``STR_DTYPE_TO_TORCH_DTYPE``): the worker's spec patch
    keeps that dtype and the quantization mode, so a page and the capped per-sequence memory
    the scheduler admits by are half of bf16's."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVQuantMode

    from vllm_tova.patches.worker import _get_kv_cache_spec

    def spec(dtype, mode=KVQuantMode.NONE):
        stock = FullAttentionSpec(block_size=16, num_kv_heads=8, head_size=128, dtype=dtype, kv_quant_mode=mode)
        config = type("Config", (), {"additional_config": {"kv_policy": "tova", "kv_budget": 512}})()
        return _get_kv_cache_spec(lambda *_: stock, None, config)

    bf16, fp8 = spec(torch.bfloat16), spec(torch.uint8, KVQuantMode.FP8_PER_TENSOR)
    assert isinstance(fp8, TovaAttentionSpec) and fp8.kv_quant_mode == KVQuantMode.FP8_PER_TENSOR
    assert fp8.page_size_bytes == 2 * 16 * 8 * 128 == bf16.page_size_bytes // 2

    class _Model:
        max_model_len = 4096

    class _Config:
        model_config = _Model()

    assert fp8.max_memory_usage_bytes(_Config()) == 32 * fp8.page_size_bytes  # 512 / 16 blocks


@pytest.mark.parametrize(
    ("start", "offered", "prompt_len", "expected"),
    [
        (0, 2048, 1000, 256),  # first chunk
        (256, 100, 1000, 0),  # budget cannot reach the chunk end: skip this step
        (768, 2048, 1000, 232),  # last, partial chunk ends at the prompt end
        (1000, 1, 1000, 1),  # decode
        (1003, 5, 1000, 1),  # replayed output after preemption: one token per step
    ],
)
def test_aligned_chunk(start: int, offered: int, prompt_len: int, expected: int) -> None:
    assert aligned_chunk(start, offered, prompt_len, 256) == expected


def test_config_defaults_and_errors() -> None:
    assert not TovaConfig.from_additional_config({}).enabled
    cfg = TovaConfig.from_additional_config({"kv_policy": "tova", "kv_budget": 128})
    assert (cfg.policy, cfg.budget, cfg.prefill_chunk) == ("tova", 128, 512)
    with pytest.raises(ValueError, match="kv_policy='lru' is not supported"):
        TovaConfig.from_additional_config({"kv_policy": "lru", "kv_budget": 8})
    with pytest.raises(ValueError, match="kv_budget is required"):
        TovaConfig.from_additional_config({"kv_policy": "tova"})
    for bad in (0, -3, 1.5, "64", True):
        with pytest.raises(ValueError, match="kv_budget=.* must be an integer >= 1"):
            TovaConfig.from_additional_config({"kv_policy": "tova", "kv_budget": bad})
    with pytest.raises(ValueError, match="smaller than the KV block size 32"):
        TovaConfig(policy="tova", budget=16).validate_against(32, 2048, 32, 4096)
    with pytest.raises(ValueError, match="kv_prefill_chunk=4096 exceeds max_num_batched_tokens"):
        TovaConfig(policy="tova", budget=64, prefill_chunk=4096).validate_against(32, 2048, 32, 4096)


def test_additional_config_refuses_a_plugin_vllm_would_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importable but not pip-installed (no entry point), or left out by VLLM_PLUGINS: vLLM
    would ignore kv_policy and serve stock attention, so the helper raises instead."""
    import vllm.envs

    from vllm_tova import install_check
    from vllm_tova.config import additional_config

    assert additional_config("tova", 64)["kv_policy"] == "tova"  # this venv has the entry point
    monkeypatch.setattr(vllm.envs, "VLLM_PLUGINS", ["other"], raising=False)
    with pytest.raises(RuntimeError, match="VLLM_PLUGINS='other' leaves out the 'tova' plugin"):
        additional_config("tova", 64)
    monkeypatch.setattr(vllm.envs, "VLLM_PLUGINS", ["other", "tova"], raising=False)
    assert additional_config("tova", 64)["kv_budget"] == 64
    monkeypatch.setattr(install_check, "entry_points", lambda group: [])
    with pytest.raises(RuntimeError, match="not installed as a vLLM plugin .* pip install -e"):
        additional_config("tova", 64)


def test_warns_when_batches_exceed_the_cuda_graph_capture_size() -> None:
    from vllm_tova.patches.engine_args import uncaptured_batch_warning

    message = uncaptured_batch_warning(1024, 512, graphs_on=True)
    assert "max_num_seqs=1024" in message and "at most 512" in message
    assert '"max_cudagraph_capture_size": 1024' in message
    assert uncaptured_batch_warning(256, 512, graphs_on=True) is None
    assert uncaptured_batch_warning(1024, 512, graphs_on=False) is None
    assert uncaptured_batch_warning(1024, 0, graphs_on=True) is None


def test_raises_the_cuda_graph_capture_size_to_max_num_seqs_unless_chosen() -> None:
    from types import SimpleNamespace

    from vllm.config import CompilationConfig, CUDAGraphMode
    from vllm.engine.arg_utils import EngineArgs

    from vllm_tova.patches.engine_args import (
        _raise_capture_size,
        _user_chose_capture_sizes,
        raised_capture_size,
    )

    assert raised_capture_size(1024, 512, graphs_on=True) == 1024
    assert raised_capture_size(256, 512, graphs_on=True) is None
    assert raised_capture_size(1024, 512, graphs_on=False) is None

    def built(max_num_seqs: int, capture: int, mode=CUDAGraphMode.FULL_AND_PIECEWISE) -> SimpleNamespace:
        compilation = SimpleNamespace(cudagraph_mode=mode, max_cudagraph_capture_size=capture)
        scheduler = SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=8192)
        return SimpleNamespace(compilation_config=compilation, scheduler_config=scheduler)

    args = EngineArgs(model="m")
    assert not _user_chose_capture_sizes(args)
    original = args.compilation_config
    assert _raise_capture_size(args, built(1024, 512))
    assert args.compilation_config.max_cudagraph_capture_size == 1024
    assert original.max_cudagraph_capture_size is None  # the caller's object is not modified
    assert _user_chose_capture_sizes(args)  # the second pass keeps it
    assert not _raise_capture_size(EngineArgs(model="m"), built(1024, 512, CUDAGraphMode.NONE))
    assert not _raise_capture_size(EngineArgs(model="m"), built(256, 512))
    chosen = EngineArgs(model="m", compilation_config=CompilationConfig(max_cudagraph_capture_size=512))
    assert _user_chose_capture_sizes(chosen)
