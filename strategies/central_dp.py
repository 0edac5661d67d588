"""User-level central DP: clip each node's whole change, add Gaussian noise per aggregated key.

Like ``strategies.robust``, this works on each node's change (its update minus the slice it
was sent) and hands the rule ``sent + private change``:

1. every node's change, all its keys together, is scaled to a Frobenius norm of at most
   ``clip`` (C): one user moves the aggregate by a bounded amount;
2. every node gets the same example count, so the rule's weighted mean is the plain mean
   over the holders (example weights would let one user weigh more than 1/n);
3. per key, one Gaussian draw is added to every holder's change: the holders' mean then carries
   noise of std ``noise * clip / n``, where ``n`` is the number of nodes holding that
   coordinate this round (not the number sampled). With heterogeneous LoRA ranks a
   coordinate is held by the nodes whose rank reaches it (the leading rows/columns), so
   ``n`` is counted per coordinate.

The mean is exact for rules that average the exchanged tensors (``ffa``, ``fedit``,
``hetlora``); ``flexlora`` multiplies B x A before aggregating, which mixes and amplifies
the noise, so ``ffa`` is recommended with DP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from famflow.familial.errors import FamflowError
from famflow.strategies.robust import _leading, changes
from famflow.strategies.rules.base import AggregationRule, ClientUpdate, State


@dataclass(frozen=True)
class CentralDPSettings:
    """Noise multiplier z (0: off) and clipping bound C of user-level central DP."""

    noise: float = 0.0
    clip: float = 0.0

    def __post_init__(self) -> None:
        if self.noise < 0 or self.clip < 0:
            raise FamflowError("central-dp-noise and central-dp-clip must be >= 0.")
        if self.noise > 0 and self.clip == 0:
            raise FamflowError("central-dp-noise > 0 needs a clipping bound: set central-dp-clip.")

    @property
    def enabled(self) -> bool:
        return self.noise > 0


def unstated_guarantee(rule: AggregationRule, robust: str) -> str | None:
    """Why central DP's epsilon does not hold for this setup, or None when it does."""
    if rule.on_products:
        return (
            f"{rule.name} averages each node's noised B x A product, not the noised mean; "
            "use rule='ffa' (or fedit, hetlora)"
        )
    if robust != "none":
        return f"robust={robust!r} lets one node's change alter the others'; use robust='none'"
    return None


def holder_counts(values: list[np.ndarray]) -> np.ndarray:
    """Per coordinate of the largest shape, how many of ``values`` reach it."""
    shape = tuple(max(value.shape[axis] for value in values) for axis in range(values[0].ndim))
    counts = np.zeros(shape)
    for value in values:
        counts[_leading(value.shape)] += 1
    return counts


def central_dp_updates(
    updates: list[ClientUpdate],
    sent: list[State],
    settings: CentralDPSettings,
    rng: np.random.Generator,
) -> list[ClientUpdate]:
    """The updates with clipped changes, equal weights and per-key Gaussian noise."""
    if not settings.enabled or not updates:
        return updates
    deltas = [changes(update, base) for update, base in zip(updates, sent, strict=True)]
    for delta in deltas:
        norm = math.sqrt(sum(float(np.sum(np.square(value))) for value in delta.values()))
        if norm > settings.clip:
            for key in delta:
                delta[key] = delta[key] * (settings.clip / norm)
    for key in sorted({key for delta in deltas for key in delta}):
        holders = [delta for delta in deltas if key in delta]
        counts = holder_counts([delta[key] for delta in holders])
        noise = rng.normal(size=counts.shape) * settings.noise * settings.clip / counts
        for delta in holders:
            delta[key] = delta[key] + noise[_leading(delta[key].shape)]
    return [
        replace(
            update,
            num_examples=1,
            arrays={key: (base[key] + delta[key]).astype(np.float32) for key in delta},
        )
        for update, base, delta in zip(updates, sent, deltas, strict=True)
    ]


def central_epsilon(noise: float, rounds: int, delta: float) -> float:
    """User-level epsilon after ``rounds`` rounds of central DP at noise multiplier ``noise``.

    Each round releases every key's sum of clipped changes (norm <= C per node, all keys
    together) plus Gaussian noise of std ``noise * C``: the Gaussian mechanism, composed over
    rounds by Opacus' RDP accountant. No sampling amplification is credited, since a node may
    be chosen every round.
    """
    from famflow.familial.privacy import epsilon  # Opacus' accountant: imported when asked

    return epsilon([(noise, 1.0, rounds)], delta)
