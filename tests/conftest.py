"""Shared fixtures: the real SmolLM2 model, real Austen text, and vLLM engine helpers.

Engines start in ~30 s on CPU, so each test module builds its engines once (module scope)
and shuts them down before the next module starts.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vllm_tova import assets

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
)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return assets.smollm2_path()


@pytest.fixture(scope="session")
def austen_ids(model_path: Path) -> list[int]:
    """Token ids of Emma (the first ~60k tokens are plenty for every test)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    return tokenizer(assets.austen_text("emma")[:300_000]).input_ids


def tova(budget: int, chunk: int, policy: str = "tova") -> dict:
    return {"kv_policy": policy, "kv_budget": budget, "kv_prefill_chunk": chunk}


@contextmanager
def engine(model_path: Path, **overrides) -> Iterator["object"]:
    """A vLLM LLM with the test defaults; shut down on exit so the next one has the CPUs."""
    from vllm import LLM

    llm = LLM(str(model_path), **{**ENGINE_DEFAULTS, **overrides})
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
