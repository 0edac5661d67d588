"""The bytes one message carries: the tensors a branch exchanges, encoded by a codec.

Shapes come from the clients' own code path, sized on the meta device: ``attach_lora`` on the
branch a node holds (every exit up to its own, or its own path with ``branch-exits = own``), then
``trainable_state``. Each branch is built once at rank 1; LoRA A (r x in) and B (out x r)
scale with the rank. Bytes are split the way ``ArrayRecord.count_bytes()`` adds them up: the
payload (the encoded arrays, int8 scales included) and the framing (per array the .npy header
``flwr.app.Array`` writes with ``np.save``, plus the length of its key).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np

from famflow.familial.codecs import SCALE_SUFFIX, WIRE_DTYPES, int8_scale_shape
from famflow.familial.loading import build_meta_branch
from famflow.familial.lora import LoraSettings, attach_lora, lora_state, trainable_state
from famflow.familial.presets import ModelSpec

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Wire:
    """One message as ``ArrayRecord.count_bytes()`` counts it: payload plus framing."""

    payload: int
    framing: int

    @property
    def total(self) -> int:
        return self.payload + self.framing


@cache
def npy_header_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of the .npy header ``np.save`` writes before a C-ordered array's data."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return len(buffer.getvalue())


def wire_arrays(shapes: Shapes, codec: str) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Key -> (dtype, shape) of every array ``familial.codecs.encode`` puts on the wire."""
    dtype = np.dtype(WIRE_DTYPES[codec])
    arrays: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        arrays[key] = (dtype, shape)
        if codec == "int8":
            arrays[key + SCALE_SUFFIX] = (np.dtype(np.float32), int8_scale_shape(key, shape))
    return arrays


def message_bytes(shapes: Shapes, codec: str) -> Wire:
    """Payload and framing of one message holding ``shapes`` encoded with ``codec``."""
    payload = framing = 0
    for key, (dtype, shape) in wire_arrays(shapes, codec).items():
        payload += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        framing += npy_header_bytes(dtype.str, shape) + len(key)
    return Wire(payload, framing)


def _at_rank(shapes: Shapes, rank: int) -> Shapes:
    """Rank-1 LoRA shapes -> rank ``rank``: A is (r, in), B is (out, r)."""
    return {
        key: (rank, shape[1]) if key.endswith(".A") else (shape[0], rank)
        for key, shape in shapes.items()
    }


class FamilyShapes:
    """What each branch of a family exchanges, at any LoRA rank (one meta build per branch)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._built: dict[tuple[int, bool], tuple[Shapes, Shapes]] = {}

    def _build(self, exit_depth: int, own_path: bool) -> tuple[Shapes, Shapes]:
        """(LoRA shapes at rank 1, exit adapter shapes) of the branch ending at ``exit_depth``."""
        key = (exit_depth, own_path)
        if key not in self._built:
            exits = [exit_depth] if own_path else None
            branch = build_meta_branch(self.spec, exit_depth, exits=exits)
            attach_lora(branch, LoraSettings(rank=1))
            lora = {k: tuple(v.shape) for k, v in lora_state(branch).items()}
            adapters = {k: tuple(v.shape) for k, v in trainable_state(branch, lora=False).items()}
            self._built[key] = (lora, adapters)
        return self._built[key]

    def exchanged(
        self,
        exit_depth: int,
        rank: int,
        lora_a: bool = True,
        exit_adapters: bool = True,
        own_exit: bool = False,
    ) -> Shapes:
        """Keys and shapes a node holding ``exit_depth`` at ``rank`` sends (and receives).

        ``lora_a`` False is FFA (A frozen from the shared seed, never sent); exit adapters
        travel when the federation trains them (``train-exit-adapters``); ``own_exit`` is
        ``branch-exits = own`` (the node trains its own exit's path only).
        """
        lora, adapters = self._build(exit_depth, own_path=own_exit)
        shapes = _at_rank({k: s for k, s in lora.items() if lora_a or not k.endswith(".A")}, rank)
        return {**shapes, **adapters} if exit_adapters else shapes

    def dense_model_lora(self, rank: int) -> Shapes:
        """LoRA A and B on every layer of the dense model (the deepest exit's own path)."""
        lora, _ = self._build(self.spec.family.exits[-1], own_path=True)
        return _at_rank(lora, rank)
