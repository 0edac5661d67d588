"""Hidden states on the wire: fp32 (lossless), fp16, int8 with one scale per row (position).

``encode_rows`` returns exactly the bytes that travel; ``payload_size`` says how many that is
for a given shape, so byte counts are what was serialized, never an estimate. int8 is
symmetric: per row a float32 scale ``max |row| / 127`` (0 for a zero row), then one signed
byte per value. Everything is little-endian.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from famflow.familial.errors import FamflowError

if TYPE_CHECKING:
    import torch

HIDDEN_CODECS = ("fp32", "fp16", "int8")
CODEC_IDS = {name: index for index, name in enumerate(HIDDEN_CODECS)}
INT8_MAX = 127
FP16_MAX = float(np.finfo(np.float16).max)
SCALE_BYTES = 4
VALUE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


class ProtocolError(FamflowError):
    """A payload a peer sent that cannot be read; its message is one sentence for the peer."""


def check_codec(codec: str) -> None:
    if codec not in CODEC_IDS:
        raise FamflowError(
            f"Unknown hidden-state codec {codec!r}: use one of {', '.join(HIDDEN_CODECS)}."
        )


def payload_size(codec: str, rows: int, cols: int) -> int:
    """Bytes ``encode_rows`` writes for a ``rows x cols`` hidden state."""
    check_codec(codec)
    scales = rows * SCALE_BYTES if codec == "int8" else 0
    return scales + rows * cols * VALUE_BYTES[codec]


def encode_rows(hidden: torch.Tensor, codec: str) -> bytes:
    """A ``rows x cols`` hidden state (one row per position) as the codec's bytes."""
    check_codec(codec)
    if hidden.ndim != 2:
        raise FamflowError(f"Hidden states travel as rows x cols, got shape {tuple(hidden.shape)}.")
    import torch  # lazily: the command line reads HIDDEN_CODECS without importing torch

    values = hidden.detach().to("cpu", torch.float32).numpy()
    if codec == "fp32":
        return values.astype("<f4").tobytes()
    if codec == "fp16":
        if values.size and float(np.abs(values).max()) > FP16_MAX:
            raise FamflowError(
                "A hidden state exceeds the fp16 range: send it with --codec int8 or fp32."
            )
        return values.astype("<f2").tobytes()
    peak = np.abs(values).max(axis=1) if values.size else np.zeros(len(values))
    scales = (peak / INT8_MAX).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)[:, None]
    quantized = np.clip(np.rint(values / safe), -INT8_MAX, INT8_MAX).astype(np.int8)
    return scales.astype("<f4").tobytes() + quantized.tobytes()


def decode_rows(payload: bytes | memoryview, codec: str, rows: int, cols: int) -> torch.Tensor:
    """The float32 ``rows x cols`` hidden state in ``payload``; a malformed one is refused."""
    check_codec(codec)
    expected = payload_size(codec, rows, cols)
    if len(payload) != expected:
        raise ProtocolError(
            f"A {codec} hidden state of {rows} x {cols} takes {expected} bytes, got "
            f"{len(payload)}: send the payload exactly as encode_rows wrote it."
        )
    if codec == "int8":
        scales = np.frombuffer(payload, dtype="<f4", count=rows)
        values = np.frombuffer(payload, dtype=np.int8, offset=rows * SCALE_BYTES)
        array = values.reshape(rows, cols).astype(np.float32) * scales[:, None]
    else:
        dtype = "<f4" if codec == "fp32" else "<f2"
        array = np.frombuffer(payload, dtype=dtype).reshape(rows, cols).astype(np.float32)
    if not np.isfinite(array).all():
        raise ProtocolError("The hidden state holds NaN or infinite values: send finite values.")
    import torch

    return torch.from_numpy(array)
