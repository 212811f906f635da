"""Shared fixtures: the real SmolLM2 model, real Austen text, and vLLM engine helpers.

Tests live in one folder per cost, each a marker of the same name (``pytest.ini``):
``unit`` (no engine; ``make test-fast``), ``kernels``, ``engine``, ``serve``, ``gpu``.

Engines start in ~60 s on this CPU, so tests share them through the session-wide
``engines`` fixture, which keeps one alive at a time (an idle engine takes no CPU).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.tensor_parallel import environment
from vllm_tova.dev import assets
from vllm_tova.attention import eviction_log
from vllm_tova.config import additional_config
from vllm_tova.dev.runs import kv_block_bytes, open_llm

# vLLM's CPU sampler is torch.compile'd; inductor's per-process probe compiling test programs
# for each vector ISA costs ~15 s of every engine start. cpuinfo flags still pick the ISA.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")

# float32 wherever outputs are compared exactly; block_size 32 suits the CPU build.
ENGINE_DEFAULTS = dict(
    dtype="float32",
    block_size=32,
    max_model_len=2048,
    enforce_eager=True,
    seed=0,
    disable_log_stats=False,
    kv_cache_memory_bytes=256 << 20,
    max_num_batched_tokens=1024,  # smaller warm-up batches start the engine faster on CPU
    max_num_seqs=32,
    # Every engine records its eviction decisions (cheap on CPU), so tests can compare them
    # with the reference's and still share engines: see tests/equivalence.py.
    worker_extension_cls=eviction_log.WORKER_EXTENSION,
)


TIERS = ("unit", "kernels", "engine", "serve", "gpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier, so ``-m`` selects by cost."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return assets.smollm2_path()


@pytest.fixture(scope="session")
def austen_ids(model_path: Path) -> list[int]:
    """Token ids of Emma (the first ~60k tokens are plenty for every test)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    return tokenizer(assets.austen_text("emma")[:300_000]).input_ids


@pytest.fixture(scope="session")
def block_bytes(model_path: Path) -> int:
    """Bytes per KV block with the test defaults, to size KV pools in blocks."""
    return kv_block_bytes(str(model_path), ENGINE_DEFAULTS["dtype"], ENGINE_DEFAULTS["block_size"])


def tova(budget: int, chunk: int) -> dict:
    return additional_config("tova", budget, chunk)


class Engines:
    """Keeps at most one engine alive; consecutive users of the same settings share it.

    Starting an engine is the slowest part of these tests, so modules that use the same
    settings one after the other (isolation, then the K=128 reference case) reuse one.
    """

    def __init__(self, model_path: Path) -> None:
        self.model_path = model_path
        self.key: str | None = None
        self.current = None
        self.llm = None

    def get(self, **overrides):
        key = repr(sorted(overrides.items()))
        if key != self.key:
            self.close()
            self.current = open_llm(str(self.model_path), **{**ENGINE_DEFAULTS, **overrides})
            # Engine processes read the switch when they start (the CPU build spawns them).
            with environment(VLLM_TOVA_RECORD_EVICTIONS="1"):
                self.llm, self.key = self.current.__enter__(), key
        return self.llm

    def close(self) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
        self.current = self.llm = self.key = None


@pytest.fixture(scope="session")
def engines(model_path: Path):
    pool = Engines(model_path)
    yield pool
    pool.close()
