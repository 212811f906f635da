"""Per-slot history a policy may need: each cached entry's token position and accumulated
attention, kept per layer in buffers indexed by physical KV slot.

Indexing by physical slot (like the KV cache itself) needs no request ids and stays valid
under slot reuse: whenever a token's K/V is written into a slot, its position and
accumulated score are written there too, so a slot never shows a stale token's history.
Buffers are allocated lazily on the first step, sized like the layer's KV cache, and only
for what the policy declares it needs.
"""

from __future__ import annotations

import torch

from vllm_tova.policy import EvictionPolicy


class SlotState:
    def __init__(self, policy: EvictionPolicy) -> None:
        self.track_positions = policy.needs_positions
        self.track_accumulated = policy.needs_accumulated
        self.positions: torch.Tensor | None = None
        self.accumulated: torch.Tensor | None = None

    def ensure(self, num_slots: int, device: torch.device) -> None:
        """Allocate (once per KV-cache size) the buffers the policy needs."""
        if self.track_positions and (self.positions is None or len(self.positions) != num_slots):
            self.positions = torch.full((num_slots,), -1, dtype=torch.long, device=device)
        if self.track_accumulated and (
            self.accumulated is None or len(self.accumulated) != num_slots
        ):
            self.accumulated = torch.zeros(num_slots, dtype=torch.float32, device=device)

    def read_positions(self, slots: torch.Tensor) -> torch.Tensor | None:
        return None if self.positions is None else self.positions[slots]

    def read_accumulated(self, slots: torch.Tensor) -> torch.Tensor | None:
        return None if self.accumulated is None else self.accumulated[slots]

    def write(
        self, slots: torch.Tensor, positions: torch.Tensor | None, accumulated: torch.Tensor | None
    ) -> None:
        """Record tokens written into ``slots`` (pass None for what is not tracked)."""
        if self.positions is not None and positions is not None:
            self.positions[slots] = positions
        if self.accumulated is not None and accumulated is not None:
            self.accumulated[slots] = accumulated
