"""FFA-LoRA: every A frozen from a shared seed, only B (and dense keys) averaged.

Ranks may differ. A shared-seed A of rank r is the first r rows of the rank-R one (the seeded
draw fills rows in order), so a client at rank r holds ``A[:r]`` and ``B[:, :r]``. Zero-padding
its B to rank R is then exact: with one scale s, sum_k p_k s B_k A[:r_k] =
s (sum_k p_k pad(B_k)) A. Columns beyond every holder's rank keep their global values.
Clients need not send A (half the bytes); if they do, it must match the global A.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from famflow.familial.errors import FamflowError
from famflow.strategies.rules.base import (
    ClientUpdate,
    State,
    check_update,
    copy_state,
    dense_keys,
    holder_weights,
    lora_modules,
    require_one_scale,
    weighted_mean_per_key,
)
from famflow.strategies.rules.hetlora import slice_leading_ranks

# A sent back may have been through a lossy codec (int8: 1/254 of the row's largest value).
A_TOLERANCE = 1e-2


@dataclass(frozen=True)
class FFA:
    """Average zero-padded B and dense keys per key; keep the frozen global A."""

    name: str = "ffa"
    on_products: bool = False
    exchanges_a: bool = False
    mixed_ranks: bool = True
    a_tolerance: float = A_TOLERANCE

    def validate(self, global_arrays: State, update: ClientUpdate) -> None:
        check_update(global_arrays, update, self.name, same_rank=False, pairs=False)
        for key, value in update.arrays.items():
            if not key.endswith(".A"):
                continue
            frozen = global_arrays[key][: update.rank].astype(np.float64)
            drift = float(np.max(np.abs(value.astype(np.float64) - frozen), initial=0.0))
            bound = self.a_tolerance * max(float(np.max(np.abs(frozen), initial=0.0)), 1e-12)
            if drift > bound:
                raise FamflowError(
                    f"Client update for {key} differs from the frozen global A (max "
                    f"difference {drift:.3g}): ffa needs A frozen from the shared seed "
                    "(LoRA freeze_a and the same seed on every client)."
                )

    def aggregate(self, global_arrays: State, updates: list[ClientUpdate]) -> State:
        require_one_scale(self.name, updates)
        for update in updates:
            self.validate(global_arrays, update)
        state = copy_state(global_arrays)
        state.update(weighted_mean_per_key(updates, dense_keys(global_arrays)))
        for module in lora_modules(global_arrays):
            key = f"{module}.B"
            holders, weights = holder_weights(updates, key)
            if not holders:
                continue
            covered = max(updates[i].rank for i in holders)
            b = np.zeros(global_arrays[key].shape)
            for weight, i in zip(weights, holders, strict=True):
                b[:, : updates[i].rank] += weight * updates[i].arrays[key]
            state[key][:, :covered] = b[:, :covered]
        return state

    def slice_for(
        self, global_arrays: State, keys: Iterable[str], rank: int, scale: float
    ) -> State:
        return slice_leading_ranks(global_arrays, keys, rank)
