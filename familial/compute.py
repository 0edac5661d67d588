"""How a branch computes while it trains: fp32 or bf16 autocast, and whether it recomputes.

bf16 autocast runs the matrix products in bf16 on CPUs with avx512_bf16 and on CUDA GPUs; the
weights and the optimizer state stay in their own dtype. Gradient checkpointing
(``TrainConfig.gradient_checkpointing``) recomputes activations in backward instead of keeping
them; a federation sets it ``off``, ``on``, or ``auto`` (only where a branch needs it to fit).
"""

from __future__ import annotations

import contextlib
from typing import Literal

from famflow.familial.errors import FamflowError

Precision = Literal["bf16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp32")
# each gradient-checkpointing mode: the ways (without, with recompute) a node may train
RECOMPUTE: dict[str, tuple[bool, ...]] = {"off": (False,), "auto": (False, True), "on": (True,)}
CHECKPOINTING: tuple[str, ...] = tuple(RECOMPUTE)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise FamflowError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """The autocast ``precision`` computes under on ``device_type`` (none for fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch  # here, so that configs can name precisions without importing torch

    return torch.autocast(device_type, dtype=torch.bfloat16)
