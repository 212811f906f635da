"""The benchmark workloads (fixed prompt and generation lengths) and their token-id prompts."""

from __future__ import annotations

import random
from dataclasses import dataclass


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
    """Fixed-seed random token ids (dummy weights make the content irrelevant; ids 0..999
    are left out so no special token shows up)."""
    rng = random.Random(seed)
    low = min(1000, vocab_size // 2)
    return [[rng.randrange(low, vocab_size) for _ in range(length)] for _ in range(n)]
