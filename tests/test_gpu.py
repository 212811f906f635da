"""The CUDA backend end to end on a GPU (skipped without CUDA).

Real SmolLM2 weights, both model runners (V2, vLLM 0.26's default, and V1), vLLM's default
compilation (FULL_AND_PIECEWISE: pure-decode steps replay full CUDA graphs, steps with prompt
chunks run piecewise graphs with attention between the pieces). Run them all with
``python -m benchmarks.gpu_correctness``, which records the outcome under benchmarks/results/correctness/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from vllm import SamplingParams

from benchmarks.tensor_parallel import environment
from tests.conftest import tova
from tests.equivalence import check_against_reference, first_difference, generate_logged, prefix_agreement, replay_log
from tests.preemption import run_preempting_once
from vllm_tova.attention import eviction_log
from vllm_tova.reference import TovaReference
from vllm_tova.stats import open_llm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_DEFAULTS = dict(
    dtype="float32",
    max_model_len=4096,
    seed=0,
    gpu_memory_utilization=0.25,
    max_num_seqs=64,
    max_num_batched_tokens=2048,
)
BUDGET, CHUNK = 128, 256
REFERENCE_PROMPTS = [(2_000, 310), (20_000, 1_500)]  # (offset, length) in Emma's tokens
MIXED_LENGTHS = [40, 1500, 75, 300, 130, 700, 60, 900]
NUM_GENERATED = 200
#: K >= length: stock's top-2 logprob gap below which fp32 rounding may flip a greedy choice
#: (absolute: vLLM returns logprobs, not logits).
STOCK_TIE = 1e-3


@contextmanager
def model_runner(version: str) -> Iterator[None]:
    """VLLM_USE_V2_MODEL_RUNNER is read when the engine starts."""
    before = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if version == "v2" else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)
        else:
            os.environ["VLLM_USE_V2_MODEL_RUNNER"] = before


def _ids(prompts: list[list[int]]) -> list[dict]:
    return [{"prompt_token_ids": p} for p in prompts]


@pytest.fixture(scope="module")
def reference(model_path: Path) -> TovaReference:
    return TovaReference(model_path)


@pytest.fixture(scope="module")
def reference_prompts(austen_ids: list[int]) -> list[list[int]]:
    return [austen_ids[start : start + n] for start, n in REFERENCE_PROMPTS]


def test_large_budget_equals_stock(model_path: Path, austen_ids: list[int]) -> None:
    """K >= every length: nothing is evicted, so tokens equal stock vLLM's default backend."""
    prompts = [austen_ids[4_000 * i : 4_000 * i + n] for i, n in enumerate([300, 1200, 64, 2500])]
    params = SamplingParams(max_tokens=64, temperature=0, logprobs=2, ignore_eos=True)
    runs = {}
    for name, extra in (("stock", {}), ("tova", {"additional_config": tova(4096, CHUNK)})):
        with model_runner("v2"), open_llm(str(model_path), **GPU_DEFAULTS, **extra) as llm:
            runs[name] = [o.outputs[0] for o in llm.generate(_ids(prompts), params)]
    for i, (stock, ours) in enumerate(zip(runs["stock"], runs["tova"])):
        diff = first_difference(list(stock.token_ids), list(ours.token_ids))
        if diff is None:
            continue
        top2 = sorted((lp.logprob for lp in stock.logprobs[diff].values()), reverse=True)[:2]
        margin = top2[0] - top2[1]
        print(f"[gpu] prompt {i}: first difference at token {diff}, stock top-2 logprob margin {margin:.2e}")
        assert margin < STOCK_TIE, f"prompt {i} differs from stock at token {diff} without a tie"
    print(f"[gpu] K >= length: {len(prompts)} prompts x 64 tokens compared with stock vLLM (float32)")


@pytest.mark.parametrize("runner", ["v2", "v1"])
def test_evictions_match_reference(runner: str, model_path: Path, reference_prompts, reference) -> None:
    """Every layer's retained positions after every forward pass, read from the workers'
    eviction log, equal the reference's, and the tokens too (tests/equivalence.py). Each
    prompt runs alone so its log reads as one sequence's. Recording turns full decode graphs
    off (a replayed graph would skip the host-side log): this engine runs piecewise."""
    params = SamplingParams(max_tokens=NUM_GENERATED, temperature=0, logprobs=1, ignore_eos=True)
    config = dict(
        GPU_DEFAULTS, additional_config=tova(BUDGET, CHUNK), worker_extension_cls=eviction_log.WORKER_EXTENSION
    )
    # Engine processes read the switch when they start; spawned, they do not inherit this
    # process's already-imported eviction_log.
    switch = dict(VLLM_TOVA_RECORD_EVICTIONS="1", VLLM_WORKER_MULTIPROC_METHOD="spawn")
    with model_runner(runner), environment(**switch), open_llm(str(model_path), **config) as llm:
        runs = [generate_logged(llm, p, params) for p in reference_prompts]
    layers = reference.model.config.num_hidden_layers
    for prompt, (out, (log,)) in zip(reference_prompts, runs):
        expected = reference.generate(prompt, NUM_GENERATED, BUDGET, CHUNK)
        kept = replay_log(log, len(prompt), CHUNK, BUDGET, NUM_GENERATED, layers)
        label = f"{runner} evictions K={BUDGET} C={CHUNK} prompt {len(prompt)}"
        print("[gpu]", check_against_reference(label, out, expected, kept))


@pytest.mark.parametrize("runner", ["v2", "v1"])
def test_matches_reference_and_isolation(
    runner: str, model_path: Path, austen_ids: list[int], reference_prompts, reference
) -> None:
    """K < length, default compilation (full decode graphs): greedy tokens equal the HF
    reference (a difference only at the reference's own logit near-tie); a mixed batch
    equals each alone, also when every running request is preempted mid-run (replayed on
    the runner's default scheduling: async on CUDA)."""
    params = SamplingParams(max_tokens=NUM_GENERATED, temperature=0, logprobs=1, ignore_eos=True)
    mixed = [austen_ids[3_500 * i : 3_500 * i + n] for i, n in enumerate(MIXED_LENGTHS)]
    short = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    config = dict(GPU_DEFAULTS, additional_config=tova(BUDGET, CHUNK))
    with model_runner(runner), open_llm(str(model_path), **config) as llm:
        outputs = [o.outputs[0] for o in llm.generate(_ids(reference_prompts), params)]
        start = time.perf_counter()
        batched = [list(o.outputs[0].token_ids) for o in llm.generate(_ids(mixed), short)]
        batched_s = time.perf_counter() - start
        alone = [list(llm.generate(_ids([p]), short)[0].outputs[0].token_ids) for p in mixed]
        start = time.perf_counter()
        preempted, running = run_preempting_once(llm, mixed, short)
        preempted_s = time.perf_counter() - start
        async_scheduling = llm.llm_engine.vllm_config.scheduler_config.async_scheduling
    for prompt, out in zip(reference_prompts, outputs):
        expected = reference.generate(prompt, NUM_GENERATED, BUDGET, CHUNK)
        label = f"{runner} K={BUDGET} C={CHUNK} prompt {len(prompt)}"
        print("[gpu]", check_against_reference(label, out, expected))
    for n, a, b, c in zip(MIXED_LENGTHS, alone, batched, preempted):
        assert a == b, f"{runner}: the {n}-token request changed inside the mixed batch"
        assert a == c, f"{runner}: the {n}-token request changed after preemption"
    assert running >= 2, f"{runner}: meant to preempt several running requests ({running})"
    print(f"[gpu] {runner}: {len(mixed)} mixed-length requests identical alone and batched")
    print(
        f"[gpu] {runner} (async scheduling {async_scheduling}): {running} running requests preempted "
        f"mid-run replay exactly; the batch took {preempted_s:.2f} s against {batched_s:.2f} s unpreempted"
    )


#: Half-precision bounds: logprob drift on the prefix shared with the float32 reference, and
#: the reference's top-2 logit margin below which rounding may flip a greedy choice.
HALF_LOGPROB_TOLERANCE = 0.1
HALF_LOGIT_TIE = 0.25


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_agreement(dtype: str, model_path: Path, reference_prompts, reference) -> None:
    """bf16 / fp16 kernels against the float32 reference. Identical tokens are not expected:
    the reference's eviction scores are near-ties (the weakest entries differ by ~1e-6) and
    some greedy choices are too (margins of 0.04 logits on the 310-token prompt), which
    rounding flips. What must hold: logprobs on the shared prefix within the tolerance, and
    the first departure at a near-tie of the reference. The agreement is stated beside the
    reference's own, run in the same dtype, as the precision baseline."""
    params = SamplingParams(max_tokens=NUM_GENERATED, temperature=0, logprobs=1, ignore_eos=True)
    config = dict(GPU_DEFAULTS, dtype=dtype, additional_config=tova(BUDGET, CHUNK))
    with model_runner("v2"), open_llm(str(model_path), **config) as llm:
        outputs = [o.outputs[0] for o in llm.generate(_ids(reference_prompts), params)]
    reference_half = TovaReference(model_path, dtype=getattr(torch, dtype))
    for prompt, out in zip(reference_prompts, outputs):
        expected = reference.generate(prompt, NUM_GENERATED, BUDGET, CHUNK)
        baseline = reference_half.generate(prompt, NUM_GENERATED, BUDGET, CHUNK)
        diff, agreed, drift = prefix_agreement(out, expected)
        baseline_diff = first_difference(baseline.tokens, expected.tokens)
        baseline_agreed = NUM_GENERATED if baseline_diff is None else baseline_diff
        margin = "none" if diff is None else f"{expected.logit_margins[diff]:.3f}"
        print(
            f"[gpu] {dtype} K={BUDGET} prompt {len(prompt)}: identical prefix {agreed}/{NUM_GENERATED} "
            f"(the reference in {dtype}: {baseline_agreed}/{NUM_GENERATED}), max |logprob diff| on "
            f"the prefix {drift:.3f}, reference top-2 margin at the departure {margin}"
        )
        assert drift <= HALF_LOGPROB_TOLERANCE, f"prompt {len(prompt)}: logprobs drift {drift:.3f}"
        if diff is not None:
            assert expected.logit_margins[diff] < HALF_LOGIT_TIE, (
                f"prompt {len(prompt)}: departs at step {diff}, where the reference's margin is {margin}"
            )


#: K >= max_model_len: TOVA's GPU memory beside the KV pool, less the decode workspace it
#: reserves before the pool is sized, may exceed stock's by at most this. What else differs
#: at the peak: the builders' persistent buffers (an int32 arange of max_num_seqs against
#: FlashAttention's metadata: KiB), the pool's rounding to whole blocks (one block here is
#: 16 x 30 layers x 2 x 3 x 64 x 4 B = 0.7 MiB), and prompt-chunk transients, which stay under
#: the MLP peak of vLLM's profile run. The workspace here is ~89 MiB (256 rows x 9 heads x
#: 8,193 fp32 logits and the columns), so an unreserved one fails by ten times the bound.
MEMORY_BOUND_MIB = 8.0


def _peak_beside_pool(model_path: Path, prompts: list[list[int]], extra: dict) -> dict[str, float]:
    """One engine in this process (so torch's own counters see it): peak allocated bytes less
    the KV pool, the pool, and what the TOVA worker reserved for its workspace (MiB)."""
    from vllm_tova.attention.triton_backend import multiprocessor_count
    from vllm_tova.patches.worker_memory import reserved_bytes
    from vllm_tova.stats import kv_block_bytes

    config = dict(GPU_DEFAULTS, max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=8192,
                  enforce_eager=True, **extra)  # fmt: skip
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with environment(VLLM_ENABLE_V1_MULTIPROCESSING="0"), model_runner("v2"):
        with open_llm(str(model_path), **config) as llm:
            llm.generate(_ids(prompts), params, use_tqdm=False)
            torch.cuda.synchronize()
            vllm_config = llm.llm_engine.vllm_config
            cache = vllm_config.cache_config
            pool = cache.num_gpu_blocks * kv_block_bytes(str(model_path), config["dtype"], cache.block_size)
            reserved = reserved_bytes(vllm_config, multiprocessor_count(torch.device("cuda")))
            peak = torch.cuda.max_memory_allocated() - base
    mib = 2**20
    return {"beside": (peak - pool) / mib, "pool": pool / mib, "reserved": reserved / mib, "total": peak / mib}


def test_workspace_counted_before_the_pool(model_path: Path, austen_ids: list[int]) -> None:
    """K >= max_model_len on the default path (V2 runner): the decode workspace is the only
    memory TOVA adds beside the pool, and the pool gives it up, so the engine stays within
    the memory vLLM budgeted for stock."""
    lengths = [100 + (i * 37) % 1400 for i in range(256)]  # 256 decode rows, chunked prompts
    prompts = [austen_ids[(211 * i) % 50_000 :][:n] for i, n in enumerate(lengths)]
    stock = _peak_beside_pool(model_path, prompts, {})
    ours = _peak_beside_pool(model_path, prompts, {"additional_config": tova(16_384, CHUNK)})
    print(f"[gpu] memory MiB, stock {stock}, TOVA K=16384 {ours}")
    assert stock["reserved"] == 0 and ours["reserved"] > 4 * MEMORY_BOUND_MIB, ours
    assert ours["beside"] - ours["reserved"] <= stock["beside"] + MEMORY_BOUND_MIB, (stock, ours)
    assert ours["total"] <= stock["total"] + MEMORY_BOUND_MIB, (stock, ours)
