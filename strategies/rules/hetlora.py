"""HetLoRA (Cho et al. 2024): zero-pad every client's factors to the global rank and average.

A client at rank r sends A (r x in) and B (out x r); they are zero-padded to the global rank
R (A rows, B columns) and averaged per module over its holders. Weights are the clients'
examples by default; ``norm_weighted`` uses the paper's sparsity weighting instead,
p_k proportional to ||s_k B_k A_k||_F (falling back to examples while every norm is zero).
Rows (A) and columns (B) beyond every holder's rank keep their global values. A client gets
the first r rows of A and columns of B and applies its own scale: factors, not products, are
averaged, so clients at different alphas see different deltas (the paper's convention).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from famflow.strategies.rules.base import (
    ClientUpdate,
    State,
    check_global_pairs,
    check_slice_keys,
    check_slice_rank,
    check_update,
    copy_state,
    dense_keys,
    holder_weights,
    is_lora_key,
    logger,
    lora_modules,
    weighted_mean_per_key,
)


def product_norm(update: ClientUpdate, module: str) -> float:
    """||s B A||_F without forming the product: sqrt(trace((B^T B)(A A^T)))."""
    a = update.arrays[f"{module}.A"].astype(np.float64)
    b = update.arrays[f"{module}.B"].astype(np.float64)
    return update.scale * float(np.sqrt(max(np.sum((b.T @ b) * (a @ a.T)), 0.0)))


@dataclass(frozen=True)
class HetLoRA:
    """Zero-padded per-module average at the global rank, truncated per client."""

    name: str = "hetlora"
    on_products: bool = False
    exchanges_a: bool = True
    mixed_ranks: bool = True
    norm_weighted: bool = False

    def validate(self, global_arrays: State, update: ClientUpdate) -> None:
        check_update(global_arrays, update, self.name, same_rank=False, pairs=True)

    def module_weights(self, updates: list[ClientUpdate], module: str) -> np.ndarray:
        """Weights (summing to 1) of the holders of ``module``, in update order."""
        holders, weights = holder_weights(updates, f"{module}.A")
        if not self.norm_weighted:
            return weights
        norms = np.array([product_norm(updates[i], module) for i in holders])
        if norms.sum() <= 0:
            logger.debug("hetlora: every update of %s is zero, weighting by examples", module)
            return weights
        return norms / norms.sum()

    def aggregate(self, global_arrays: State, updates: list[ClientUpdate]) -> State:
        check_global_pairs(global_arrays)
        for update in updates:
            self.validate(global_arrays, update)
        state = copy_state(global_arrays)
        state.update(weighted_mean_per_key(updates, dense_keys(global_arrays)))
        for module in lora_modules(global_arrays):
            holders = [update for update in updates if f"{module}.A" in update.arrays]
            if not holders:
                continue
            weights = self.module_weights(holders, module)
            covered = max(update.rank for update in holders)
            a = np.zeros(global_arrays[f"{module}.A"].shape)
            b = np.zeros(global_arrays[f"{module}.B"].shape)
            for weight, update in zip(weights, holders, strict=True):
                a[: update.rank] += weight * update.arrays[f"{module}.A"]
                b[:, : update.rank] += weight * update.arrays[f"{module}.B"]
            state[f"{module}.A"][:covered] = a[:covered]
            state[f"{module}.B"][:, :covered] = b[:, :covered]
        return state

    def slice_for(
        self, global_arrays: State, keys: Iterable[str], rank: int, scale: float
    ) -> State:
        check_global_pairs(global_arrays)
        return slice_leading_ranks(global_arrays, keys, rank)


def slice_leading_ranks(global_arrays: State, keys: Iterable[str], rank: int) -> State:
    """The keys with LoRA factors cut to their first ``rank`` rows (A) or columns (B)."""
    keys = check_slice_keys(global_arrays, keys, rank)
    for module in lora_modules(keys):
        check_slice_rank(global_arrays, module, rank)
    sliced: State = {}
    for key in keys:
        value = global_arrays[key]
        if is_lora_key(key):
            value = value[:rank] if key.endswith(".A") else value[:, :rank]
        sliced[key] = value
    return copy_state(sliced)
