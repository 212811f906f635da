"""Tensor parallelism on the CPU engine: SmolLM2 (9 query heads, 3 KV heads) over 3 ranks.

Each rank holds 3 of the 9 query heads; exact TOVA needs the head average over all 9, so the
ranks all-reduce their scores. Checked here, per prompt (both run in one batch; the logs are
read by sequence): every rank logs the same eviction decisions at every layer and step, and
those decisions and the tokens follow the single-process HF reference strictly (see
tests/equivalence.py). The first prompt and K, C are those of a TP=1 case of
tests/engine/test_reference_equivalence.py, which holds TP=1 to the same reference.
The Ray executor is GPU-only in vLLM; benchmarks/tensor_parallel.py runs it on GPUs.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from benchmarks.tensor_parallel import cpu_binding, environment
from tests.equivalence import ReferenceRuns, check_against_reference, generate_logged, replay_log
from vllm_tova.config import additional_config

RANKS = 3
BUDGET, CHUNK = 64, 128
SPANS = [(2_000, 310), (20_000, 700)]  # (offset, length) in Emma's tokens
GENERATED = 80


@pytest.fixture(scope="module")
def tp_run(engines, austen_ids: list[int]):
    with environment(**cpu_binding(RANKS)):
        llm = engines.get(
            additional_config=additional_config("tova", BUDGET, CHUNK),
            tensor_parallel_size=RANKS,
            distributed_executor_backend="mp",
            kv_cache_memory_bytes=64 << 20,
        )
    prompts = [austen_ids[start : start + length] for start, length in SPANS]
    params = SamplingParams(max_tokens=GENERATED, temperature=0, logprobs=1, ignore_eos=True)
    runs = generate_logged(llm, prompts, params)
    engines.close()  # three worker processes: give the machine back to the next module
    return prompts, runs


def test_every_rank_evicts_the_same_entries_at_every_step(tp_run) -> None:
    prompts, runs = tp_run
    for prompt, (_, logs) in zip(prompts, runs):
        assert len(logs) == RANKS
        # What the logs hold (every pass, every layer) is replayed against the reference in
        # the next test; here the ranks must agree entry for entry.
        assert logs[0], "rank 0 logged no eviction decision"
        for rank, log in enumerate(logs[1:], start=1):
            assert log == logs[0], f"prompt {len(prompt)}: rank {rank} disagrees with rank 0"


def test_tensor_parallel_follows_reference(tp_run, reference: ReferenceRuns) -> None:
    prompts, runs = tp_run
    layers = reference.model.config.num_hidden_layers
    for prompt, (out, logs) in zip(prompts, runs):
        expected = reference.generate(prompt, GENERATED, BUDGET, CHUNK)
        for rank, log in enumerate(logs):
            kept = replay_log(log, len(prompt), CHUNK, BUDGET, GENERATED, layers)
            report = check_against_reference(f"TP={RANKS} rank {rank} K={BUDGET} prompt={len(prompt)}", out, expected, kept)
            print(report)
