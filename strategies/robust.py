"""Robust aggregation: bound or replace each node's change before the rule aggregates.

Every rule averages what the nodes send, so one node can drag a key anywhere. These wrappers
work on each node's change (its update minus the slice it was sent), per key, over exactly the
nodes holding that key, and hand the rule ``sent + robust change``: they compose with every
rule, which then aggregates as it always does.

- ``clip``: each change is scaled down to a Frobenius norm of at most ``clip_norm``; with
  ``clip_norm = 0`` the bound is the median of the holders' changes this round, compared per
  value (RMS), so a rank-16 factor may move as much per value as a rank-4 one. The rule still
  weighs nodes by their examples.
- ``trimmed-mean``: per coordinate, the mean of the holders' changes without the
  ``floor(trim_ratio * n)`` largest and smallest of its n values.
- ``median``: per coordinate, the median of the holders' changes.

Trimmed mean and median count each holder once, whatever its examples (a node could otherwise
claim many examples to pull the centre); every holder then carries the same change, so the
rule's example weights no longer tell them apart. Heterogeneous LoRA ranks: every rule slices
a node's factors as the leading r rows of A and columns of B, so a coordinate is combined over
the holders whose rank reaches it, as if the others' factors were padded with "not held".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from famflow.familial.errors import FamflowError
from famflow.strategies.rules.base import ClientUpdate, State

ROBUST_METHODS: tuple[str, ...] = ("none", "clip", "trimmed-mean", "median")


@dataclass(frozen=True)
class RobustSettings:
    """Which robust wrapper (``ROBUST_METHODS``) and its parameters."""

    method: str = "none"
    clip_norm: float = 0.0
    trim_ratio: float = 0.2

    def __post_init__(self) -> None:
        if self.method not in ROBUST_METHODS:
            raise FamflowError(
                f"Unknown robust aggregation {self.method!r}: use one of "
                f"{', '.join(ROBUST_METHODS)}."
            )
        if not self.clip_norm >= 0:
            raise FamflowError(
                f"clip-norm must be 0 (the holders' median) or positive, got {self.clip_norm}."
            )
        if not 0 <= self.trim_ratio < 0.5:
            raise FamflowError(
                f"trim-ratio must be in [0, 0.5), got {self.trim_ratio}: it is the share "
                "trimmed at each end."
            )


def changes(update: ClientUpdate, sent: State) -> State:
    """What the node changed: its arrays minus the slice it was sent (float64)."""
    return {key: value.astype(np.float64) - sent[key] for key, value in update.arrays.items()}


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if values.size else 0.0


def change_rms(update: ClientUpdate, sent: State) -> dict[str, float]:
    """Per key, the root mean square of the node's change (its norm per value)."""
    return {key: _rms(change) for key, change in changes(update, sent).items()}


def _leading(shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, size) for size in shape)


def _clipped(values: list[np.ndarray], clip_norm: float) -> list[np.ndarray]:
    if clip_norm > 0:
        bounds = [clip_norm] * len(values)
    else:
        median = float(np.median([_rms(value) for value in values]))
        bounds = [median * math.sqrt(value.size) for value in values]
    clipped = []
    for value, bound in zip(values, bounds, strict=True):
        norm = float(np.linalg.norm(value))
        clipped.append(value * (bound / norm) if norm > bound else value)
    return clipped


def coordinate_center(values: list[np.ndarray], method: str, trim_ratio: float) -> np.ndarray:
    """Per coordinate, the trimmed mean or median over the arrays that reach it (arrays of one
    rank, each as large as the coordinates it holds, counted from the start of every axis)."""
    shape = tuple(max(value.shape[axis] for value in values) for axis in range(values[0].ndim))
    stack = np.full((len(values), *shape), np.nan)
    for i, value in enumerate(values):
        stack[(i, *_leading(value.shape))] = value
    if method == "median":
        return np.nanmedian(stack, axis=0)
    count = np.sum(~np.isnan(stack), axis=0)
    trim = np.floor(trim_ratio * count)
    ordered = np.sort(stack, axis=0)  # the coordinates a holder lacks (NaN) sort last
    position = np.arange(len(values)).reshape(-1, *([1] * len(shape)))
    keep = (position >= trim) & (position < count - trim)
    return np.where(keep, ordered, 0.0).sum(axis=0) / keep.sum(axis=0)


def robust_updates(
    updates: list[ClientUpdate], sent: list[State], settings: RobustSettings
) -> list[ClientUpdate]:
    """The updates with every change made robust per key: ``sent + robust change``."""
    if settings.method == "none":
        return updates
    deltas = [changes(update, base) for update, base in zip(updates, sent, strict=True)]
    for key in sorted({key for delta in deltas for key in delta}):
        holders = [delta for delta in deltas if key in delta]
        values = [delta[key] for delta in holders]
        if settings.method == "clip":
            robust = _clipped(values, settings.clip_norm)
        else:
            center = coordinate_center(values, settings.method, settings.trim_ratio)
            robust = [center[_leading(value.shape)] for value in values]
        for delta, value in zip(holders, robust, strict=True):
            delta[key] = value
    return [
        replace(update, arrays={key: (base[key] + delta[key]).astype(np.float32) for key in delta})
        for update, base, delta in zip(updates, sent, deltas, strict=True)
    ]
