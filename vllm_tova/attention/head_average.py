"""The layer-wide head average that every policy scores from, exact under tensor parallelism.

TOVA averages the newest query's softmax weights over *all* query heads of the layer. With
``--tensor-parallel-size N`` each rank holds 1/N of the heads, so a rank-local mean would let
ranks evict different tokens and their KV caches would drift apart. Each rank therefore
all-reduces its local per-entry mean across the tensor-parallel group (small: rows x entries
floats per layer) and divides by N; every rank holds the same heads count, so this is the
global mean, and every rank receives the same all-reduced values, so every rank
evicts the same entry.
"""

from __future__ import annotations

import torch


class HeadAverage:
    """Callable: (…, heads, entries) weights -> (…, entries) mean over every head of the layer."""

    def __init__(self, tensor_parallel_size: int) -> None:
        self.world = tensor_parallel_size

    def __call__(self, weights: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return self.combine(weights.mean(dim=dim))

    def combine(self, local_mean: torch.Tensor) -> torch.Tensor:
        """Rank-local head means -> the mean over all ranks' heads (identity without TP)."""
        if self.world == 1:
            return local_mean
        from vllm.distributed import tensor_model_parallel_all_reduce

        return tensor_model_parallel_all_reduce(local_mean.contiguous()) / self.world
