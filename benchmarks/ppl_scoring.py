"""Log-probabilities of text windows under one KV policy, through vLLM or the HF reference.

Each window is scored as a prompt whose prompt log-probabilities vLLM returns. With a
policy, prompts go in chunks of one token (``kv_prefill_chunk=1``), so every token is
predicted from the cache as already evicted, one step per token, as in the paper. The
full cache runs stock vLLM (no plugin settings): nothing is evicted, so chunking does not
change the result.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from vllm import SamplingParams

from vllm_tova.config import additional_config
from vllm_tova.kv_manager import blocks_per_sequence
from vllm_tova.reference import TovaReference
from vllm_tova.dev.runs import kv_block_bytes, open_llm

FULL = "full"
BLOCK_SIZE = 32


@dataclass(frozen=True)
class Window:
    text: str
    index: int
    ids: list[int]


@dataclass(frozen=True)
class Scored:
    """Summed negative log-likelihood of one window's tokens 1..n-1, and each token's
    log-probability (kept to compare two runs token by token)."""

    window: Window
    nll: float
    tokens: int
    logprobs: tuple[float, ...] = ()

    @classmethod
    def from_logprobs(cls, window: Window, logprobs: list[float]) -> "Scored":
        return cls(window, -sum(logprobs), len(logprobs), tuple(logprobs))


def perplexity(scored: list[Scored]) -> float:
    return math.exp(sum(s.nll for s in scored) / sum(s.tokens for s in scored))


def make_windows(text: str, ids: list[int], seq_len: int, count: int) -> list[Window]:
    """``count`` non-overlapping windows spread evenly over the text (fewer if it is short)."""
    fit = len(ids) // seq_len
    count = min(count, fit)
    if count <= 0:
        return []
    stride = fit // count
    return [Window(text, i, ids[i * stride * seq_len : (i * stride + 1) * seq_len]) for i in range(count)]


def vllm_engine_kwargs(
    model: str,
    policy: str,
    budget: int | None,
    seq_len: int,
    num_windows: int,
    gpu_memory_utilization: float | None = None,
    dtype: str = "float32",
    kv_cache_dtype: str = "auto",
) -> dict:
    """Engine settings: ``dtype`` (fp32 unless asked), ``kv_cache_dtype`` (vLLM's), all
    windows in one batch, a KV pool sized for them.

    The pool is sized in bytes, so ``gpu_memory_utilization`` only sets how much free GPU
    memory vLLM demands at start; lowering it lets several configurations share one GPU.
    """
    per_block = kv_block_bytes(model, dtype if kv_cache_dtype == "auto" else kv_cache_dtype, BLOCK_SIZE)
    if policy == FULL:
        blocks, extra = -(-(seq_len + 1) // BLOCK_SIZE), {}
        batched = 1024  # prompt-logprob logits of a chunk: tokens x vocab floats
    else:
        assert budget is not None
        blocks = blocks_per_sequence(budget, BLOCK_SIZE)
        extra = {"additional_config": additional_config(policy, budget, 1)}
        batched = max(num_windows, 256)
    return dict(
        dtype=dtype,
        block_size=BLOCK_SIZE,
        max_model_len=seq_len + 1,
        enforce_eager=True,
        seed=0,
        kv_cache_memory_bytes=(num_windows + 2) * (blocks + 1) * per_block,
        max_num_batched_tokens=batched,
        max_num_seqs=max(num_windows, 1),
        **extra,
        **({} if kv_cache_dtype == "auto" else {"kv_cache_dtype": kv_cache_dtype}),
        **({} if gpu_memory_utilization is None else {"gpu_memory_utilization": gpu_memory_utilization}),
    )


def score_vllm(
    model: str,
    policy: str,
    budget: int | None,
    windows: list[Window],
    gpu_memory_utilization: float | None = None,
    dtype: str = "float32",
    kv_cache_dtype: str = "auto",
) -> tuple[list[Scored], float]:
    """All windows of one (policy, budget) in one engine run; returns scores and seconds."""
    seq_len = max(len(w.ids) for w in windows)
    kwargs = vllm_engine_kwargs(
        model, policy, budget, seq_len, len(windows), gpu_memory_utilization, dtype, kv_cache_dtype
    )
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
    with open_llm(model, **kwargs) as llm:
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": w.ids} for w in windows], params, use_tqdm=False)
        seconds = time.perf_counter() - start
    scored = []
    for window, out in zip(windows, outputs, strict=True):
        # prompt_logprobs[0] is None (nothing predicts the first token); 0 = the actual token.
        logprobs = [step[token].logprob for step, token in zip(out.prompt_logprobs[1:], window.ids[1:])]
        scored.append(Scored.from_logprobs(window, logprobs))
    return scored, seconds


def score_reference(
    reference: TovaReference, policy: str, budget: int | None, window: Window
) -> Scored:
    """The same window through the HF reference (one token per step, or one pass if full)."""
    if policy == FULL:
        logprobs = reference.score_text(window.ids, None, "tova", prefill_chunk=512)
    else:
        logprobs = reference.score_text(window.ids, budget, policy, prefill_chunk=1)
    return Scored.from_logprobs(window, logprobs)
