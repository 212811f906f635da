"""Shared fixtures: the real SmolLM2 model, real Austen text, and vLLM engine helpers.

Tests live in one folder per cost, each a marker of the same name (``pytest.ini``):
``unit`` (no engine; ``make test-fast``), ``kernels``, ``engine``, ``serve``, ``gpu``.

Engines start in ~30 s on this CPU, so tests share them through the session-wide
``engines`` fixture: the suite's most used settings (``RESIDENT``) stay up until the tier's
folder ends, every other engine is closed when the next one opens (an idle engine takes
little CPU, ~5% of a core, but the tiers without engines should not pay even that).
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
# vLLM's CPU worker keeps one core out of its OpenMP pool for the scheduler process; on a
# 2-core machine that halves every engine's compute while the test process mostly waits.
# Engines started here (and the servers, which inherit it) compute on every core: ~1.6x
# faster batched decoding on a 2-core EPYC. Tensor-parallel runs bind their ranks themselves.
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

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
def reference(model_path: Path):
    """The HF reference, shared by the modules that check vLLM against it; each run is
    computed once (``tests.equivalence.ReferenceRuns``)."""
    from tests.equivalence import ReferenceRuns

    return ReferenceRuns(model_path)


@pytest.fixture(scope="session")
def block_bytes(model_path: Path) -> int:
    """Bytes per KV block with the test defaults, to size KV pools in blocks."""
    return kv_block_bytes(str(model_path), ENGINE_DEFAULTS["dtype"], ENGINE_DEFAULTS["block_size"])


def tova(budget: int, chunk: int) -> dict:
    return additional_config("tova", budget, chunk)


#: The settings four modules run on: isolation and the K=128 reference case in the engine
#: tier, the offline runs of test_serve and the soak's references in the serve tier.
RESIDENT = dict(additional_config=tova(128, 256))


def _key(overrides: dict) -> str:
    return repr(sorted(overrides.items()))


class Engines:
    """Keeps the ``RESIDENT`` engine, once opened, and at most one other engine alive.

    Starting an engine is the slowest part of these tests, so every user of the same
    settings shares one: the resident engine across a tier, any other engine across
    consecutive users (the cases of one module).
    """

    def __init__(self, model_path: Path) -> None:
        self.model_path = model_path
        self.open: dict[str, tuple[object, object]] = {}  # key -> (context manager, LLM)

    def get(self, **overrides):
        key = _key(overrides)
        if key not in self.open:
            self.close()
            current = open_llm(str(self.model_path), **{**ENGINE_DEFAULTS, **overrides})
            # Engine processes read the switch when they start (the CPU build spawns them).
            with environment(VLLM_TOVA_RECORD_EVICTIONS="1"):
                self.open[key] = (current, current.__enter__())
        return self.open[key][1]

    def close(self, resident: bool = False) -> None:
        """Close the engines other than the resident one (all of them with ``resident``),
        so the next engine or server gets the machine (the resident one, idle, keeps its
        memory and ~5% of a core)."""
        for key in [k for k in self.open if resident or k != _key(RESIDENT)]:
            self.open.pop(key)[0].__exit__(None, None, None)


_POOL: list[Engines] = []  # the session's pool, for the teardown hook


@pytest.fixture(scope="session")
def engines(model_path: Path):
    pool = Engines(model_path)
    _POOL.append(pool)
    yield pool
    pool.close(resident=True)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Close every engine when a tier's folder ends."""
    if _POOL and (nextitem is None or nextitem.path.parent != item.path.parent):
        _POOL[0].close(resident=True)
