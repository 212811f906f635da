"""Shared fixtures: the real SmolLM2 model, real Austen text, and vLLM engine helpers.

Tests live in one folder per cost, each a marker of the same name (``pytest.ini``):
``unit`` (no engine; ``make test-fast``), ``kernels``, ``engine``, ``serve``, ``gpu``.

Engines without tensor parallelism run inside the test process (``Engines``), so an engine
starts in ~5 s instead of ~20 s, and tests share them through the session-wide ``engines``
fixture: an engine stays up until a test asks for other settings or its tier's folder ends.
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
# Offline engines (here and in the benchmarks the tests run) keep vLLM's engine core in the
# calling process, as ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` does for any vLLM user: no engine
# core process that imports vLLM and torch again, ~15 s of each ~20 s engine start on a
# 2-core CPU. Servers always run their engine core in its own process.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

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


def _key(overrides: dict) -> str:
    return repr(sorted(overrides.items()))


class Engines:
    """At most one engine alive, shared by consecutive tests with the same settings.

    Without tensor parallelism the whole engine runs in the test process: the engine core
    in process, and the ``uni`` executor's worker too.
    """

    def __init__(self, model_path: Path) -> None:
        self.model_path = model_path
        self.key: str | None = None
        self.current: tuple[object, object] | None = None  # (context manager, LLM)

    def get(self, **overrides):
        key = _key(overrides)
        if key != self.key:
            self.close()
            # Read when the engine builds its attention layers, here or in its workers.
            with environment(VLLM_TOVA_RECORD_EVICTIONS="1"):
                manager = open_llm(str(self.model_path), **{**ENGINE_DEFAULTS, **overrides})
                self.current = (manager, manager.__enter__())
            self.key = key
        return self.current[1]

    def close(self) -> None:
        """Shut the engine down, so the next engine or server gets the machine."""
        if self.current is not None:
            self.current[0].__exit__(None, None, None)
            self.current, self.key = None, None


_POOL: list[Engines] = []  # the session's pool, for the teardown hook


@pytest.fixture(scope="session")
def engines(model_path: Path):
    pool = Engines(model_path)
    _POOL.append(pool)
    yield pool
    pool.close()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Close every engine when a tier's folder ends."""
    if _POOL and (nextitem is None or nextitem.path.parent != item.path.parent):
        _POOL[0].close()
