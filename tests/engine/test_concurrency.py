"""One fixed KV pool: TOVA runs far more 1,024-token sequences at once than stock vLLM.

Concurrency is read from vLLM's own scheduler stats (the ``vllm:num_requests_running``
gauge after every engine step), not computed from block arithmetic.
"""

from __future__ import annotations

from vllm import SamplingParams

from tests.conftest import tova
from vllm_tova.kv_manager import blocks_per_sequence
from vllm_tova.dev.runs import run_batch

BLOCK_SIZE, BUDGET = 32, 128
PROMPT_LEN, NUM_GENERATED = 960, 64  # 1,024-token sequences, long enough to all be admitted
FULL_BLOCKS = (PROMPT_LEN + NUM_GENERATED) // BLOCK_SIZE  # 32
POOL_BLOCKS = 2 * FULL_BLOCKS + 1  # two full sequences (+ vLLM's reserved null block)
NUM_REQUESTS = 20


def _peak(engines, austen_ids: list[int], block_bytes: int, extra: dict):
    prompts = [austen_ids[i * 2000 : i * 2000 + PROMPT_LEN] for i in range(NUM_REQUESTS)]
    params = SamplingParams(max_tokens=NUM_GENERATED, temperature=0, ignore_eos=True)
    llm = engines.get(additional_config=extra, kv_cache_memory_bytes=POOL_BLOCKS * block_bytes)
    stats = run_batch(llm, prompts, params, stop_at_first_finish=True)
    return stats, llm.llm_engine.vllm_config.cache_config.num_gpu_blocks


def test_tova_runs_many_more_sequences_per_pool(
    engines, austen_ids: list[int], block_bytes: int
) -> None:
    stock, stock_blocks = _peak(engines, austen_ids, block_bytes, {})
    capped, tova_blocks = _peak(engines, austen_ids, block_bytes, tova(BUDGET, 256))
    assert stock_blocks == tova_blocks == POOL_BLOCKS
    ratio = capped.peak_running / stock.peak_running
    print(
        f"KV pool {POOL_BLOCKS} blocks: stock ran {stock.peak_running} sequences at once, "
        f"TOVA K={BUDGET} ran {capped.peak_running} ({ratio:.1f}x)"
    )
    assert stock.peak_running <= 2
    assert ratio >= 6
    # Every running TOVA sequence holds at most ceil(K / block_size) blocks.
    cap = blocks_per_sequence(BUDGET, BLOCK_SIZE)
    assert capped.peak_blocks_in_use(tova_blocks) <= cap * capped.peak_running + 1e-6
