"""Each batch row's K on the worker, for the metadata builders.

vLLM's attention metadata carries no request ids, so a per-request budget cannot be read
from it. The model runner knows which request sits in which row; its hook
(``patches/row_budgets.py``) records, before each step's metadata is built, the K of every
row in the order the builders see them. Rows it did not record (the padding of a captured
batch, dummy and profiling runs) get the server's default budget: they attend nothing.
"""

from __future__ import annotations

import torch


class StepBudgets:
    """The current step's per-row budgets (one per worker process; builders read it)."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def set_rows(self, budgets: list[int]) -> None:
        self.rows = list(budgets)

    def host(self, num_reqs: int, default: int) -> torch.Tensor:
        """(num_reqs,) int64 on the host: each row's K."""
        known = self.rows[:num_reqs]
        return torch.tensor(known + [default] * (num_reqs - len(known)), dtype=torch.long)


STEP = StepBudgets()
