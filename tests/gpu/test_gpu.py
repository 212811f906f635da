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
from vllm_tova.config import additional_config
from vllm_tova.reference import TovaReference
from vllm_tova.dev.runs import open_llm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_DEFAULTS = dict(
    dtype="float32",
    max_model_len=4096,
    seed=0,
    gpu_memory_utilization=0.25,
    max_num_seqs=64,
    max_num_batched_tokens=2048,
    disable_log_stats=False,  # the preemption helper reads the running-requests gauge
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
        runs = [generate_logged(llm, [p], params)[0] for p in reference_prompts]
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


#: (prompt length, the request's extra_args, K of its reference: None = no eviction). The
#: engine's default K is 128 and its maximum max_model_len, so `none` is allowed.
MIXED_BUDGETS = [
    (310, {"kv_budget": 64}, 64),
    (1500, {}, BUDGET),
    (900, {"kv_budget": 512}, 512),
    (700, {"kv_policy": "none"}, None),
    (2000, {"kv_budget": 512}, 512),
    (130, {"kv_budget": 64}, 64),
    (1200, {"kv_policy": "none"}, None),
]


@pytest.mark.parametrize("runner", ["v2", "v1"])
def test_mixed_budgets_match_each_reference(runner: str, model_path: Path, austen_ids: list[int], reference) -> None:
    """One engine, default compilation (full decode graphs captured once, replayed for any mix
    of budgets): a batch mixing K=64, 128 (default), 512 and `none` follows each request's own
    reference token for token; alone on the same engine and after every running request is
    preempted mid-run, each gives the batch's tokens."""
    prompts = [austen_ids[5_000 * i : 5_000 * i + n] for i, (n, _, _) in enumerate(MIXED_BUDGETS)]
    params = [
        SamplingParams(max_tokens=NUM_GENERATED, temperature=0, logprobs=1, ignore_eos=True, extra_args=extra or None)
        for _, extra, _ in MIXED_BUDGETS
    ]
    config = dict(GPU_DEFAULTS, additional_config=additional_config("tova", BUDGET, CHUNK, budget_max=4096))
    with model_runner(runner), open_llm(str(model_path), **config) as llm:
        batched = [o.outputs[0] for o in llm.generate(_ids(prompts), params)]
        alone = [list(llm.generate(_ids([p]), q)[0].outputs[0].token_ids) for p, q in zip(prompts, params)]
        preempted, running = run_preempting_once(llm, prompts, params)
    for (n, extra, budget), prompt, out in zip(MIXED_BUDGETS, prompts, batched):
        expected = reference.generate(prompt, NUM_GENERATED, budget, CHUNK)
        print("[gpu]", check_against_reference(f"{runner} mixed {extra or 'default'} prompt {n}", out, expected))
    for (n, extra, _), out, a, c in zip(MIXED_BUDGETS, batched, alone, preempted):
        assert list(out.token_ids) == a, f"{runner}: {extra} prompt {n} changed inside the mixed batch"
        assert list(out.token_ids) == c, f"{runner}: {extra} prompt {n} changed after preemption"
    assert running >= 2, f"{runner}: meant to preempt several running requests ({running})"


#: Half-precision bounds: logprob drift on the prefix shared with the float32 reference, and
#: the reference's top-2 logit margin below which rounding may flip a greedy choice.
HALF_LOGPROB_TOLERANCE = 0.1
HALF_LOGIT_TIE = 0.25
#: Ours must hold the float32 reference's tokens at least as long as the reference itself run
#: in the same dtype, less this many tokens. Two runs of one dtype round differently (vLLM's
#: fused kernels and the Triton attention against HF's eager ops), so at a near-tie of the
#: float32 reference either may flip first, and from a flip on the texts differ. 8 tokens (4%
#: of the 200) lets ours depart at a near-tie a few tokens before the reference's own
#: departure (the 310-token bf16 prompt's records: 1 against 2), while a kernel that loses
#: precision, departing tens of tokens early where the reference in the same dtype holds all
#: 200 (the 1,500-token prompt), fails.
HALF_AGREEMENT_SLACK = 8


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_agreement(dtype: str, model_path: Path, reference_prompts, reference) -> None:
    """bf16 / fp16 kernels against the float32 reference. Identical tokens are not expected:
    the reference's eviction scores are near-ties (the weakest entries differ by ~1e-6) and
    some greedy choices are too (margins of 0.04 logits on the 310-token prompt), which
    rounding flips. What must hold: logprobs on the shared prefix within the tolerance, and
    the first departure at a near-tie of the reference, and no earlier (beyond
    HALF_AGREEMENT_SLACK tokens) than the reference's own departure when it runs in the same
    dtype: the precision baseline."""
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
            f"(the reference in {dtype}: {baseline_agreed}/{NUM_GENERATED}; ours must reach "
            f"{baseline_agreed} - {HALF_AGREEMENT_SLACK}), max |logprob diff| on the prefix "
            f"{drift:.3f}, reference top-2 margin at the departure {margin}"
        )
        assert drift <= HALF_LOGPROB_TOLERANCE, f"prompt {len(prompt)}: logprobs drift {drift:.3f}"
        assert agreed >= baseline_agreed - HALF_AGREEMENT_SLACK, (
            f"prompt {len(prompt)}: {agreed} tokens agree with the float32 reference, fewer than the "
            f"reference's own {dtype} run ({baseline_agreed}) less {HALF_AGREEMENT_SLACK}"
        )
        if diff is not None:
            assert expected.logit_margins[diff] < HALF_LOGIT_TIE, (
                f"prompt {len(prompt)}: departs at step {diff}, where the reference's margin is {margin}"
            )


#: FP8 against bf16, teacher-forced (bounds stated before any run). bf16 SmolLM2; every
#: system scores the same Austen windows through ``prompt_logprobs`` (every position's
#: true-token logprob and top-1 token). TOVA absorbs them one token per step
#: (``--kv-prefill-chunk 1``), so each position goes through the decode kernels exactly as
#: generation would, full CUDA graphs included. The FP8 engines keep vLLM's default scales
#: (1.0, as the throughput tables run): ``--calculate-kv-scales`` calibrates on the profiling
#: pass's dummy tokens, which on the CPU engine saturated real K/V (TOVA K=64: agreement
#: 0.835 with those scales against 0.927 with 1.0), a property of vLLM's calibration that
#: stock shares. Scales far from 1.0 are the kernel tests' job (tests/kernels/test_triton_kernels.py).
FP8_WINDOWS = [(4_000 + 7_000 * i, 1_024) for i in range(8)]  # (offset, length) in Emma's tokens
FP8_BUDGET = 128  # 1/8 of the window: most positions attend a context TOVA has evicted from
#: Per entry, e4m3 noise is the same for stock and TOVA (same format, same scales); TOVA adds
#: eviction choices that the noise flips where scores nearly tie (the weakest entries differ
#: by ~1e-6). A flip swaps a retained token, and later evictions then follow another path, so
#: TOVA's FP8 noise (agreement, drift) may well exceed stock's; flips do not bias the loss.
#: Hence the issue's rule on the loss (NLL) with a small slack, and wider noise bounds:
FP8_NLL_SLACK = 0.02  # lose no more NLL than stock FP8 does, + 0.02 nats (2% perplexity)
FP8_AGREEMENT_SLACK = 0.05  # top-1 agreement with bf16 at most 5 points below stock's
FP8_DRIFT_FACTOR, FP8_DRIFT_SLACK = 2.0, 0.05  # mean |logprob diff| <= 2 x stock's + 0.05
#: Floors that catch a broken FP8 path (wrong bytes read or written move the top-1 token at
#: most positions). Set from the only FP8 engine run before the GPU's: the CPU engine, TOVA
#: K=64 C=1, float32 against FP8 with scales 1.0, 2 x 191 positions: agreement 0.927, mean
#: drift 0.091, NLL change +0.010 (2026-12-07); these floors leave room for that.
FP8_MIN_AGREEMENT, FP8_MAX_MEAN_DRIFT = 0.8, 0.25


def _teacher_forced(llm, prompts: list[list[int]]) -> tuple[list[int], list[float]]:
    """Per scored position of every prompt: the top-1 token and the true token's logprob."""
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1)
    top1, logprobs = [], []
    for prompt, out in zip(prompts, llm.generate(_ids(prompts), params)):
        for token, step in zip(prompt[1:], out.prompt_logprobs[1:]):
            top1.append(next(t for t, lp in step.items() if lp.rank == 1))
            logprobs.append(step[token].logprob)
    return top1, logprobs


def _fp8_loss(fp8: tuple[list[int], list[float]], bf16: tuple[list[int], list[float]]) -> tuple[float, float, float]:
    """(top-1 agreement, mean |logprob diff|, mean NLL increase) of an FP8 run against bf16."""
    agreement = sum(a == b for a, b in zip(fp8[0], bf16[0])) / len(bf16[0])
    drift = sum(abs(a - b) for a, b in zip(fp8[1], bf16[1])) / len(bf16[1])
    nll = (sum(bf16[1]) - sum(fp8[1])) / len(bf16[1])
    return agreement, drift, nll


def test_fp8_against_bf16_beside_stock(model_path: Path, austen_ids: list[int]) -> None:
    """TOVA with an FP8 cache against TOVA in bf16, beside stock FP8 against stock bf16, on
    the same windows (V2 model runner, vLLM's default)."""
    prompts = [austen_ids[start : start + n] for start, n in FP8_WINDOWS]
    assert [len(p) for p in prompts] == [n for _, n in FP8_WINDOWS], "the windows run past the text"
    config = dict(GPU_DEFAULTS, dtype="bfloat16")
    systems = {"stock": {}, "tova": {"additional_config": tova(FP8_BUDGET, 1)}}
    runs = {}
    for name, extra in systems.items():
        for kv in ("auto", "fp8"):
            fp8_args = dict(kv_cache_dtype="fp8") if kv == "fp8" else {}
            with model_runner("v2"), open_llm(str(model_path), **config, **extra, **fp8_args) as llm:
                runs[name, kv] = _teacher_forced(llm, prompts)
    stock = _fp8_loss(runs["stock", "fp8"], runs["stock", "auto"])
    ours = _fp8_loss(runs["tova", "fp8"], runs["tova", "auto"])
    positions = len(runs["stock", "auto"][0])
    for name, (agreement, drift, nll) in (("stock", stock), (f"TOVA K={FP8_BUDGET}", ours)):
        print(
            f"[gpu] fp8 vs bf16, {name}, {positions} teacher-forced positions: top-1 agreement "
            f"{agreement:.4f}, mean |logprob diff| {drift:.4f}, mean NLL change {nll:+.4f}"
        )
    assert ours[0] >= stock[0] - FP8_AGREEMENT_SLACK, f"agreement {ours[0]:.4f} vs stock {stock[0]:.4f}"
    assert ours[1] <= FP8_DRIFT_FACTOR * stock[1] + FP8_DRIFT_SLACK, f"drift {ours[1]:.4f} vs stock {stock[1]:.4f}"
    assert ours[2] <= abs(stock[2]) + FP8_NLL_SLACK, f"NLL change {ours[2]:+.4f} vs stock {stock[2]:+.4f}"
    assert ours[0] >= FP8_MIN_AGREEMENT and ours[1] <= FP8_MAX_MEAN_DRIFT, ours


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
    from vllm_tova.dev.runs import kv_block_bytes

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
