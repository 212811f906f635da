"""The benchmark workloads (fixed prompt and generation lengths) and their token-id prompts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    prompt_len: int
    gen_len: int

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.gen_len


#: The issue's three workloads; ``scaled`` shrinks them for CPU runs.
WORKLOADS: dict[str, Workload] = {
    "paper": Workload("paper", 512, 3584),  # 4,096-token sequences, as in the TOVA paper
    "long-prompt": Workload("long-prompt", 8192, 512),
    "short": Workload("short", 512, 512),
}


def scaled(workload: Workload, divisor: int) -> Workload:
    """The same shape at 1/divisor of the lengths (for CPU smoke runs)."""
    prompt_len, gen_len = max(1, workload.prompt_len // divisor), max(1, workload.gen_len // divisor)
    return Workload(workload.name, prompt_len, gen_len)


def random_prompts(n: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Fixed-seed random token ids (dummy weights make the content irrelevant; ids below 1000
    are left out so no special token shows up). numpy: a prompt is made while the clock runs."""
    rng = np.random.default_rng(seed)
    low = min(1000, vocab_size // 2)
    return rng.integers(low, vocab_size, size=(n, length)).tolist()
