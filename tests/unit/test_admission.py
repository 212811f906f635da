"""The TOVA block manager reserves a request's whole cap when it is admitted (no engine).

The engine-level check (an overloaded pool runs with 0 preemptions and exact outputs) is
``tests/engine/test_isolation.py``; the measured overload is in ``benchmarks/results/reliability``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from vllm.v1.core.block_pool import BlockPool

from vllm_tova.config import TovaConfig
from vllm_tova.kv_manager import TovaAttentionSpec, TovaKVCacheManager

BLOCK, BUDGET, MAX_LEN = 32, 128, 1024  # cap: 4 blocks
SETTINGS = TovaConfig(policy="tova", budget=BUDGET)


def _request(prompt: int, max_tokens: int, extra_args: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        num_prompt_tokens=prompt, max_tokens=max_tokens, sampling_params=SimpleNamespace(extra_args=extra_args)
    )


def _manager(pool_blocks: int = 13, kv_budget: int = BUDGET) -> TovaKVCacheManager:
    spec = TovaAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=8, dtype=torch.float32, kv_budget=kv_budget)
    pool = BlockPool(pool_blocks, enable_caching=False, hash_block_size=BLOCK)
    return TovaKVCacheManager(spec, pool, enable_caching=False, kv_cache_group_id=0, scheduler_block_size=BLOCK)


def _admit(manager: TovaKVCacheManager, request_id: str, num_tokens: int) -> int:
    """What the scheduler does for a step: check the count, then allocate; returns blocks held."""
    needed = manager.get_num_blocks_to_allocate(request_id, num_tokens, [], 0, 0, num_tokens)
    assert needed <= manager.block_pool.get_num_free_blocks()
    assert len(manager.allocate_new_blocks(request_id, num_tokens, num_tokens)) == needed
    return len(manager.req_to_blocks[request_id])


def test_admission_reserves_the_cap_and_running_requests_ask_for_nothing() -> None:
    manager = _manager()
    manager.attach_requests(
        {
            "long": _request(40, 2000),  # grows past K
            "short": _request(10, 20),  # ends inside one block
            "huge": _request(10, 10_000),  # max_model_len bounds it
        },
        MAX_LEN,
        SETTINGS,
    )
    assert _admit(manager, "long", 40) == 4  # whole cap at once, though 40 tokens need 2 blocks
    assert _admit(manager, "short", 10) == 1  # never more than it can reach
    for seen in (41, 128, 129, 700, MAX_LEN):  # decode steps past K: no block is ever added
        assert manager.get_num_blocks_to_allocate("long", seen, [], 0, 0, seen) == 0
        assert manager.allocate_new_blocks("long", seen, seen) == []
    assert manager.get_num_blocks_to_allocate("huge", 10, [], 0, 0, 10) == 4


def test_max_model_len_bounds_a_reservation_below_the_cap() -> None:
    manager = _manager()
    manager.attach_requests({"r": _request(10, 10_000)}, max_model_len=64, settings=SETTINGS)
    assert _admit(manager, "r", 10) == 2


def test_without_the_scheduler_blocks_follow_the_tokens_up_to_the_cap() -> None:
    manager = _manager()
    assert _admit(manager, "r", 40) == 2
    assert _admit(manager, "r", 700) == 4


def test_each_request_is_capped_at_its_own_budget() -> None:
    """Per-request K (the spec holds the largest allowed): each request reserves
    ceil(K_request / block_size) at admission and never grows past it; a `none` request
    reserves nothing ahead and grows block by block, as in stock vLLM."""
    settings = TovaConfig(policy="tova", budget=BUDGET, budget_max=MAX_LEN)
    manager = _manager(pool_blocks=64, kv_budget=MAX_LEN)
    manager.attach_requests(
        {
            "k32": _request(40, 2000, {"kv_budget": 32}),
            "k96": _request(40, 2000, {"kv_budget": 96}),
            "default": _request(40, 2000),
            "exact": _request(40, 2000, {"kv_policy": "none"}),
        },
        MAX_LEN,
        settings,
    )
    assert [_admit(manager, r, 40) for r in ("k32", "k96", "default")] == [1, 3, 4]
    assert _admit(manager, "exact", 40) == 2  # what 40 tokens need, no more
    for seen in (97, 129, 700):
        assert _admit(manager, "k32", seen) == 1
        assert _admit(manager, "k96", seen) == 3
        assert _admit(manager, "default", seen) == 4
    assert [_admit(manager, "exact", seen) for seen in (64, 65, 700)] == [2, 3, 22]
