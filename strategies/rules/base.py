"""What every aggregation rule shares: the update type, the rule protocol, per-key averaging.

A state is a ``dict[str, np.ndarray]`` under canonical names (``familial.naming``). Keys ending
in ``.A`` (r x in) and ``.B`` (out x r) are LoRA factors of the module named by the prefix; any
other key is dense. A key is averaged only over the clients that sent it (DepthFL rule),
weighted by their examples; a key nobody sent keeps its value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from famflow.familial.errors import FamflowError

logger = logging.getLogger("famflow.strategies")

State = dict[str, np.ndarray]
LORA_FACTORS = ("A", "B")


@dataclass(frozen=True)
class ClientUpdate:
    """One client's reply: its branch's keys only, its example count and LoRA rank/scale.

    ``start``: the slice the client was sent and trained from, where known (the strategy
    knows it); a rule may aggregate the change from it instead of the reply itself.
    """

    arrays: State
    num_examples: int
    rank: int
    scale: float
    start: State | None = None

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise FamflowError(
                f"A client update needs at least one example, got {self.num_examples}: "
                "drop replies from clients that did not train."
            )
        if self.rank < 1:
            raise FamflowError(f"A client's LoRA rank must be at least 1, got {self.rank}.")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise FamflowError(
                f"A client's LoRA scale (alpha / rank) must be positive, got {self.scale}."
            )


class AggregationRule(Protocol):
    """A pure aggregation rule over named arrays (one file per rule)."""

    name: str
    # True where the rule averages each node's B x A product instead of the exchanged factors.
    on_products: bool
    # False where A is frozen from the shared seed and never exchanged (only B travels).
    exchanges_a: bool
    # True where nodes may train different LoRA ranks (False: every node at the largest rank).
    mixed_ranks: bool

    def validate(self, global_arrays: State, update: ClientUpdate) -> None:
        """Raise ``FamflowError`` if this update cannot be aggregated into ``global_arrays``."""
        ...

    def aggregate(self, global_arrays: State, updates: list[ClientUpdate]) -> State:
        """The new global state: every key of ``global_arrays``, float32, inputs untouched."""
        ...

    def slice_for(
        self, global_arrays: State, keys: Iterable[str], rank: int, scale: float
    ) -> State:
        """What a client holding ``keys`` at LoRA ``rank`` gets: exactly those keys."""
        ...


def is_lora_key(key: str) -> bool:
    """``trunk.7.self_attn.q_proj.A`` and ``.B`` are LoRA factors; anything else is dense."""
    return key.rsplit(".", 1)[-1] in LORA_FACTORS


def module_of(key: str) -> str:
    """``trunk.7.self_attn.q_proj.A`` -> ``trunk.7.self_attn.q_proj``."""
    return key.rsplit(".", 1)[0]


def lora_modules(keys: Iterable[str]) -> list[str]:
    """The LoRA modules named by some factor among ``keys``, sorted."""
    return sorted({module_of(key) for key in keys if is_lora_key(key)})


def copy_state(arrays: State) -> State:
    """Float32 copies (never views) of every array."""
    return {key: np.array(value, dtype=np.float32, copy=True) for key, value in arrays.items()}


def lora_rank(global_arrays: State, module: str) -> int:
    """The rank at which the global state holds a LoRA module."""
    for factor, axis in (("A", 0), ("B", 1)):
        key = f"{module}.{factor}"
        if key in global_arrays:
            return int(global_arrays[key].shape[axis])
    raise FamflowError(f"The global state holds no LoRA factor of {module}.")


def expected_shape(global_shape: tuple[int, ...], key: str, rank: int) -> tuple[int, ...]:
    """The shape a tensor stored globally with ``global_shape`` has at a client's ``rank``."""
    if not is_lora_key(key):
        return tuple(global_shape)
    if len(global_shape) != 2:
        raise FamflowError(f"The global LoRA factor {key} is not a matrix: {global_shape}.")
    out_or_rank, in_or_rank = global_shape
    return (rank, in_or_rank) if key.endswith(".A") else (out_or_rank, rank)


def check_update(
    global_arrays: State, update: ClientUpdate, rule: str, same_rank: bool, pairs: bool
) -> None:
    """Known keys, float and finite values, shapes that fit the client's rank.

    ``same_rank``: the client's rank must equal the global rank of each module it sends
    (fedit); otherwise it may be at most that rank (ffa, flexlora, hetlora).
    ``pairs``: a LoRA module must come with both its factors.
    """
    unknown = sorted(set(update.arrays) - set(global_arrays))
    if unknown:
        raise FamflowError(
            f"Client update has keys the global state does not hold ({unknown[:3]}): "
            "send only the keys of the client's branch."
        )
    for key, value in update.arrays.items():
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            raise FamflowError(
                f"Client update for {key} is not a float array "
                f"({getattr(value, 'dtype', type(value).__name__)}): decode it first."
            )
        expected = expected_shape(global_arrays[key].shape, key, update.rank)
        if tuple(value.shape) != expected:
            raise FamflowError(
                f"Client update for {key} has shape {tuple(value.shape)}, the global state has "
                f"{tuple(global_arrays[key].shape)} (expected {expected} at rank {update.rank}): "
                "send tensors of the branch's own shape and LoRA rank."
            )
        if not np.isfinite(value).all():
            raise FamflowError(f"Client update for {key} has NaN or inf values: drop it.")
    for module in lora_modules(update.arrays):
        global_rank = lora_rank(global_arrays, module)
        if same_rank and update.rank != global_rank:
            raise FamflowError(
                f"Client LoRA rank {update.rank} differs from the global rank {global_rank} of "
                f"{module}: {rule} needs one LoRA rank; use ffa, flexlora or hetlora otherwise."
            )
        if update.rank > global_rank:
            raise FamflowError(
                f"Client LoRA rank {update.rank} exceeds the global rank {global_rank} of "
                f"{module}: build the global state at the largest tier's rank."
            )
        if pairs and not all(f"{module}.{f}" in update.arrays for f in LORA_FACTORS):
            raise FamflowError(
                f"Client update holds only one LoRA factor of {module}: send both A and B."
            )


def require_one_rank(rule: str, updates: list[ClientUpdate]) -> None:
    """Refuse updates at different LoRA ranks or scales (fedit)."""
    ranks = sorted({update.rank for update in updates})
    if len(ranks) > 1:
        raise FamflowError(
            f"{rule} needs one LoRA rank for all clients, got ranks {ranks}: "
            "use ffa, flexlora or hetlora for heterogeneous ranks."
        )
    require_one_scale(rule, updates)


def require_one_scale(rule: str, updates: list[ClientUpdate]) -> None:
    """Refuse updates at different LoRA scales (alpha / rank)."""
    scales = sorted({float(update.scale) for update in updates})
    if len(scales) > 1:
        raise FamflowError(
            f"{rule} needs one LoRA scale (alpha / rank) for all clients, got {scales}: "
            "give every client the same alpha."
        )


def holder_weights(updates: list[ClientUpdate], key: str) -> tuple[list[int], np.ndarray]:
    """Indices of the updates holding ``key`` and their example weights (summing to 1)."""
    holders = [i for i, update in enumerate(updates) if key in update.arrays]
    examples = np.array([updates[i].num_examples for i in holders], dtype=np.float64)
    return holders, examples / examples.sum() if holders else examples


def weighted_mean_per_key(updates: list[ClientUpdate], keys: Iterable[str]) -> State:
    """Per key, the example-weighted mean over the updates holding it (float32).

    Keys nobody holds are left out of the result; holders must agree on the shape.
    """
    result: State = {}
    for key in keys:
        holders, weights = holder_weights(updates, key)
        if not holders:
            continue
        shapes = {tuple(updates[i].arrays[key].shape) for i in holders}
        if len(shapes) > 1:
            raise FamflowError(
                f"Client updates for {key} have different shapes {sorted(shapes)}: "
                "every client must send the same shape for the same key."
            )
        total = np.zeros(shapes.pop(), dtype=np.float64)
        for i, weight in zip(holders, weights, strict=True):
            total += weight * updates[i].arrays[key].astype(np.float64)
        result[key] = total.astype(np.float32)
    return result


def dense_keys(arrays: Iterable[str]) -> list[str]:
    """The keys that are not LoRA factors."""
    return [key for key in arrays if not is_lora_key(key)]


def check_slice_keys(global_arrays: State, keys: Iterable[str], rank: int) -> list[str]:
    """The requested keys, all held by the global state, at a rank the state can serve."""
    keys = list(keys)
    unknown = sorted(set(keys) - set(global_arrays))
    if unknown:
        raise FamflowError(
            f"The global state holds no {unknown[:3]}: ask only for keys of the client's branch."
        )
    if rank < 1:
        raise FamflowError(f"A client's LoRA rank must be at least 1, got {rank}.")
    return keys


def check_global_pairs(global_arrays: State) -> None:
    """Every LoRA module of the global state holds both factors at one rank."""
    for module in lora_modules(global_arrays):
        a, b = global_arrays.get(f"{module}.A"), global_arrays.get(f"{module}.B")
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise FamflowError(
                f"The global state holds {module} without a matching A (r x in) and B "
                "(out x r): build it from a fresh branch's LoRA state."
            )


def check_slice_rank(global_arrays: State, module: str, rank: int) -> None:
    """A client's rank may not exceed the rank the global state holds a module at."""
    global_rank = lora_rank(global_arrays, module)
    if rank > global_rank:
        raise FamflowError(
            f"LoRA rank {rank} exceeds the global rank {global_rank} of {module}: "
            "build the global state at the largest tier's rank."
        )
