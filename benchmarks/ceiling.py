"""The bytes-and-FLOPs ceiling: how fast a run could have been on this device.

A decode step must read every weight once and every attended K/V entry once, and do the
matmuls. Predicted time = bytes read / measured copy bandwidth + FLOPs / measured matmul
rate, summed over the run's steps. ``measured / predicted`` then says how close a run came to
the device's limits, and the largest term says what binds (weights, K/V or compute) without a
separate profile.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

#: Bytes per stored element for each KV-cache dtype a system may use.
KV_ITEMSIZE = {"auto": None, "float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


@dataclass(frozen=True)
class DeviceRates:
    """What this device sustains, measured here (not a datasheet)."""

    copy_bytes_per_s: float  # read + write bytes per second of a large device copy
    matmul_flops_per_s: float  # dense matmul rate in the model's dtype

    @classmethod
    def measure(cls, dtype: str) -> DeviceRates:
        import torch

        gpu = torch.cuda.is_available()
        device = "cuda" if gpu else "cpu"
        dt = getattr(torch, dtype)
        n_bytes = (1 << 30) if gpu else (64 << 20)
        src = torch.empty(n_bytes // 2, dtype=torch.float16, device=device)
        dst = torch.empty_like(src)
        size = 8192 if gpu else 512
        a = torch.randn(size, size, device=device).to(dt)
        b = torch.randn(size, size, device=device).to(dt)

        def best_of(fn, repeats: int = 5) -> float:
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                if gpu:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if gpu:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            return min(times)

        copy_s = best_of(lambda: dst.copy_(src))
        matmul_s = best_of(lambda: torch.matmul(a, b))
        rates = cls(2 * n_bytes / copy_s, 2 * size**3 / matmul_s)
        del src, dst, a, b
        if gpu:
            torch.cuda.empty_cache()
        return rates


@dataclass(frozen=True)
class ModelCost:
    """Per-token costs of a Llama-style decoder, from its config.json."""

    weight_bytes: int  # every weight a step reads in full (the embedding table is only indexed)
    kv_bytes_per_token: int  # K and V of one cached token, all layers
    flops_per_token: int  # 2 x parameters touched per token (embedding lookup excluded)
    attn_flops_per_context_token: int  # QK^T and PV for one query against one cached token

    @classmethod
    def from_config(cls, model_dir: str, dtype: str, kv_cache_dtype: str = "auto") -> ModelCost:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        hidden, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
        heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        head_dim = cfg.get("head_dim") or hidden // heads
        vocab = cfg["vocab_size"]
        itemsize = 4 if dtype == "float32" else 2
        kv_itemsize = KV_ITEMSIZE[kv_cache_dtype] or itemsize
        per_layer = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden + 3 * hidden * inter
        params = layers * per_layer + vocab * hidden  # + the LM head
        return cls(
            weight_bytes=params * itemsize,
            kv_bytes_per_token=2 * layers * kv_heads * head_dim * kv_itemsize,
            flops_per_token=2 * params,
            attn_flops_per_context_token=4 * layers * heads * head_dim,
        )


@dataclass
class CostTally:
    """Work done by a run, accumulated step by step; ``predict`` turns it into seconds."""

    steps: int = 0
    tokens: int = 0  # query tokens computed (prompt tokens + generated tokens)
    kv_tokens_read: int = 0  # sum over generated tokens of the context each one attended
    prompt_attn_pairs: int = 0  # causal (query, key) pairs inside prompts

    def add_step(self, tokens: int, kv_tokens_read: int, prompt_attn_pairs: int = 0) -> None:
        self.steps += 1
        self.tokens += tokens
        self.kv_tokens_read += kv_tokens_read
        self.prompt_attn_pairs += prompt_attn_pairs

    def terms(self, cost: ModelCost, rates: DeviceRates) -> dict[str, float]:
        """Seconds each term would take alone: weights, K/V reads, FLOPs."""
        attn_pairs = self.kv_tokens_read + self.prompt_attn_pairs
        flops = self.tokens * cost.flops_per_token + attn_pairs * cost.attn_flops_per_context_token
        # A copy's bytes moved per second (read + write) is the memory system's rate; a step's
        # reads stream at about the same rate.
        read_rate = rates.copy_bytes_per_s
        return {
            "weights": self.steps * cost.weight_bytes / read_rate,
            "kv": self.kv_tokens_read * cost.kv_bytes_per_token / read_rate,
            "flops": flops / rates.matmul_flops_per_s,
        }

    def predict(self, cost: ModelCost, rates: DeviceRates) -> float:
        return sum(self.terms(cost, rates).values())


def binding_term(terms: dict[str, float]) -> str:
    return max(terms, key=terms.__getitem__)
