"""FFA-LoRA: every A frozen from a shared seed, only B (and dense keys) averaged.

Exact: with one A and one scale s, sum_k p_k s B_k A = s (sum_k p_k B_k) A. Clients need not
send A (half the bytes); if they do, it must match the global A, which is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from familial.errors import FamflowError
from strategies.rules.base import (
    ClientUpdate,
    State,
    check_update,
    copy_state,
    require_one_rank,
    weighted_mean_per_key,
)
from strategies.rules.fedit import slice_same_rank

# A sent back may have been through a lossy codec (int8: 1/254 of the row's largest value).
A_TOLERANCE = 1e-2


@dataclass(frozen=True)
class FFA:
    """Average B and dense keys per key; keep the frozen global A."""

    name: str = "ffa"
    a_tolerance: float = A_TOLERANCE

    def validate(self, global_arrays: State, update: ClientUpdate) -> None:
        check_update(global_arrays, update, self.name, same_rank=True, pairs=False)
        for key, value in update.arrays.items():
            if not key.endswith(".A"):
                continue
            frozen = global_arrays[key].astype(np.float64)
            drift = float(np.max(np.abs(value.astype(np.float64) - frozen), initial=0.0))
            bound = self.a_tolerance * max(float(np.max(np.abs(frozen), initial=0.0)), 1e-12)
            if drift > bound:
                raise FamflowError(
                    f"Client update for {key} differs from the frozen global A (max "
                    f"difference {drift:.3g}): ffa needs A frozen from the shared seed "
                    "(LoRA freeze_a and the same seed on every client)."
                )

    def aggregate(self, global_arrays: State, updates: list[ClientUpdate]) -> State:
        require_one_rank(self.name, updates)
        for update in updates:
            self.validate(global_arrays, update)
        state = copy_state(global_arrays)
        trained = [key for key in global_arrays if not key.endswith(".A")]
        state.update(weighted_mean_per_key(updates, trained))
        return state

    def slice_for(
        self, global_arrays: State, keys: Iterable[str], rank: int, scale: float
    ) -> State:
        return slice_same_rank(self.name, global_arrays, keys, rank)
