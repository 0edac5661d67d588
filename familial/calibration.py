"""Closed-form calibration of exit translators (a least-squares tuned lens).

A shallow exit of a dense checkpoint reads hidden states the shared head was never trained on.
Its full translator ``x -> T x`` (on the exit's normed hidden state) is fitted so that what the
head reads from the exit matches what it reads from the deepest exit on the same tokens. The
fit needs only the sums ``X^T X`` and ``X^T Y`` (``X`` = the exit's normed hidden states, ``Y``
the deepest exit's head input), so statistics from several holders add up exactly before one
solve. The map has no bias, so it folds into the exit's head (``familial.standalone``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from famflow.familial.errors import FamflowError
from famflow.familial.exits import FullTranslator
from famflow.familial.model import FamilialLM


@dataclass
class LensStatistics:
    """Sums over tokens for one exit: ``gram`` = X^T X (d, d), ``cross`` = X^T Y (d, d)."""

    gram: np.ndarray
    cross: np.ndarray
    tokens: int

    def __add__(self, other: LensStatistics) -> LensStatistics:
        if self.gram.shape != other.gram.shape or self.cross.shape != other.cross.shape:
            raise FamflowError("Lens statistics of different hidden sizes cannot be added.")
        return LensStatistics(
            self.gram + other.gram, self.cross + other.cross, self.tokens + other.tokens
        )

    def check(self, hidden_size: int) -> None:
        """Refuse statistics of the wrong shape, non-finite or over no tokens."""
        d = hidden_size
        if self.gram.shape != (d, d) or self.cross.shape != (d, d):
            raise FamflowError(
                f"lens statistics have shapes {self.gram.shape} and {self.cross.shape}, "
                f"expected {(d, d)} and {(d, d)}"
            )
        if self.tokens < 1:
            raise FamflowError(f"lens statistics over {self.tokens} tokens")
        if not (np.isfinite(self.gram).all() and np.isfinite(self.cross).all()):
            raise FamflowError("lens statistics hold NaN or inf")


def calibratable_exits(model: FamilialLM) -> list[int]:
    """The held exits shallower than the branch's deepest whose translator is full."""
    deepest = max(model.held_exits)
    return [
        depth
        for depth in model.held_exits
        if depth < deepest and isinstance(model.exit_head(depth).translator, FullTranslator)
    ]


@torch.no_grad()
def lens_statistics(
    model: FamilialLM, blocks: torch.Tensor, batch_size: int = 8
) -> dict[int, LensStatistics]:
    """Statistics for every calibratable exit, the target being the deepest held exit."""
    exits = calibratable_exits(model)
    if not exits:
        return {}
    deepest = max(model.held_exits)
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        model.exit_head(depth).translator.register_forward_pre_hook(
            lambda _module, args, depth=depth: inputs.__setitem__(depth, args[0])
        )
        for depth in exits
    ]
    d = model.config.hidden_size
    stats = {depth: LensStatistics(np.zeros((d, d)), np.zeros((d, d)), 0) for depth in exits}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size].to(device)
            out = model(batch, exits=[*exits, deepest], output_hidden_states=True)
            target = out.hidden_states[deepest].reshape(-1, d).double().cpu()
            for depth in exits:
                x = inputs[depth].reshape(-1, d).double().cpu()
                stats[depth] = stats[depth] + LensStatistics(
                    (x.T @ x).numpy(), (x.T @ target).numpy(), len(x)
                )
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return stats


def solve_translator(stats: LensStatistics, ridge: float = 1e-4) -> np.ndarray:
    """The least-squares weight of a full translator, ``nn.Linear`` layout.

    ``ridge`` is relative to the mean diagonal of X^T X, which keeps the solve well posed when
    there are fewer tokens than hidden dimensions.
    """
    gram = stats.gram + ridge * np.mean(np.diag(stats.gram)) * np.eye(len(stats.gram))
    return np.linalg.solve(gram, stats.cross).T.astype(np.float32)


def calibrate(model: FamilialLM, blocks: torch.Tensor, batch_size: int = 8) -> list[int]:
    """Fit every calibratable exit's translator on ``blocks`` in place; returns the exits."""
    fitted = lens_statistics(model, blocks, batch_size)
    for depth, stats in fitted.items():
        proj = model.exit_head(depth).translator.proj
        with torch.no_grad():
            proj.weight.copy_(torch.from_numpy(solve_translator(stats)))
    return sorted(fitted)
