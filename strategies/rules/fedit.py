"""FedIT: average every key separately, LoRA A and B included (FlowerTune, OpenFedLLM).

Inexact for LoRA: the mean of the products B_k A_k is not the product of the means. Every
client must use the global state's rank (and one alpha); the server sends keys as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from famflow.familial.errors import FamflowError
from famflow.strategies.rules.base import (
    ClientUpdate,
    State,
    check_slice_keys,
    check_update,
    copy_state,
    expected_shape,
    require_one_rank,
    weighted_mean_per_key,
)


@dataclass(frozen=True)
class FedIT:
    """Per-key example-weighted mean of every tensor, LoRA factors included."""

    name: str = "fedit"
    on_products: bool = False
    exchanges_a: bool = True
    mixed_ranks: bool = False

    def validate(self, global_arrays: State, update: ClientUpdate) -> None:
        check_update(global_arrays, update, self.name, same_rank=True, pairs=True)

    def aggregate(self, global_arrays: State, updates: list[ClientUpdate]) -> State:
        require_one_rank(self.name, updates)
        for update in updates:
            self.validate(global_arrays, update)
        state = copy_state(global_arrays)
        state.update(weighted_mean_per_key(updates, global_arrays))
        return state

    def slice_for(
        self, global_arrays: State, keys: Iterable[str], rank: int, scale: float
    ) -> State:
        return slice_same_rank(self.name, global_arrays, keys, rank)


def slice_same_rank(rule: str, global_arrays: State, keys: Iterable[str], rank: int) -> State:
    """The keys as they are; refuse a client whose rank differs from the global one."""
    keys = check_slice_keys(global_arrays, keys, rank)
    for key in keys:
        shape = global_arrays[key].shape
        if expected_shape(shape, key, rank) != tuple(shape):
            raise FamflowError(
                f"{rule} holds {key} at shape {tuple(shape)}, which does not fit LoRA rank "
                f"{rank}: give every client the global rank or use flexlora or hetlora."
            )
    return copy_state({key: global_arrays[key] for key in keys})
