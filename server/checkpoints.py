"""A checkpoint of the global adapters after every round, and resuming from one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from famflow.familial.errors import FamflowError
from famflow.familial.exits import refuse_pre_norm_translators

logger = logging.getLogger("famflow.server")


def save_checkpoint(
    directory: Path, server_round: int, arrays: dict[str, np.ndarray], state: dict[str, Any]
) -> Path:
    """``round-N.safetensors`` (the global adapters) and ``round-N.json`` (the run's state),
    each written to a temporary file and renamed into place, so that neither is ever seen
    half-written."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"round-{server_round}"
    partial = directory / f".round-{server_round}.partial"
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(partial))
    os.replace(partial, f"{stem}.safetensors")
    # Written last: a checkpoint counts only once its state file exists.
    partial.write_text(json.dumps({"round": server_round, **state}, indent=2))
    os.replace(partial, f"{stem}.json")
    return stem


def checkpoint_states(directory: Path) -> list[Path]:
    """The ``round-N.json`` state files in ``directory``, oldest round first."""
    return sorted(directory.glob("round-*.json"), key=lambda p: int(p.stem.split("-")[1]))


def read_checkpoint(path: Path) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    """``(round, arrays, state)`` of the checkpoint ``round-N`` (a path without suffix)."""
    state_file, arrays_file = Path(f"{path}.json"), Path(f"{path}.safetensors")
    if not (state_file.is_file() and arrays_file.is_file()):
        raise FamflowError(
            f"No checkpoint at {path} (.json + .safetensors): pass runs/<name>/checkpoints."
        )
    try:
        state = json.loads(state_file.read_text())
        arrays = load_file(str(arrays_file))
        server_round = int(state.pop("round"))
    except Exception as error:  # json and safetensors raise several types for a corrupt file
        raise FamflowError(
            f"The checkpoint {path} is corrupt ({error}): resume from an earlier one."
        ) from None
    return server_round, arrays, state


def load_checkpoint(path: Path) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    """``(round, arrays, state)`` of a checkpoint (``round-N``), or of a directory's latest
    readable one: a corrupt latest falls back to the round before it, with a warning."""
    loaded = _latest_readable(Path(path))
    refuse_pre_norm_translators(loaded[1], f"The checkpoint {path}")
    return loaded


def _latest_readable(path: Path) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    if not path.is_dir():
        return read_checkpoint(path)
    rounds = checkpoint_states(path)
    if not rounds:
        raise FamflowError(f"{path} holds no round-N checkpoint: pass a checkpoints directory.")
    for state_file in reversed(rounds):
        try:
            return read_checkpoint(state_file.with_suffix(""))
        except FamflowError as error:
            logger.warning("falling back to the round before it: %s", error)
    raise FamflowError(f"Every checkpoint in {path} is corrupt: start a fresh run.")
