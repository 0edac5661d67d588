"""A checkpoint of the global adapters after every round, and resuming from one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from famflow.familial.errors import FamflowError


def save_checkpoint(
    directory: Path, server_round: int, arrays: dict[str, np.ndarray], state: dict[str, Any]
) -> Path:
    """``round-N.safetensors`` (the global adapters) and ``round-N.json`` (the run's state)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"round-{server_round}"
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, f"{stem}.safetensors")
    # Written last: a checkpoint counts only once its state file exists.
    (stem.with_suffix(".json")).write_text(json.dumps({"round": server_round, **state}, indent=2))
    return stem


def load_checkpoint(path: Path) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    """``(round, arrays, state)`` of a checkpoint (``round-N``) or a directory's latest."""
    path = Path(path)
    if path.is_dir():
        rounds = sorted(path.glob("round-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        if not rounds:
            raise FamflowError(f"{path} holds no round-N checkpoint: pass a checkpoints directory.")
        path = rounds[-1].with_suffix("")
    state_file, arrays_file = Path(f"{path}.json"), Path(f"{path}.safetensors")
    if not (state_file.is_file() and arrays_file.is_file()):
        raise FamflowError(
            f"No checkpoint at {path} (.json + .safetensors): pass runs/<name>/checkpoints."
        )
    try:
        state = json.loads(state_file.read_text())
        arrays = load_file(str(arrays_file))
    except Exception as error:  # json and safetensors raise several types for a corrupt file
        raise FamflowError(
            f"The checkpoint {path} is corrupt ({error}): resume from an earlier one."
        ) from None
    return int(state.pop("round")), arrays, state
