"""Updates on the wire: fp32, fp16, bf16 and int8 (per-row scale), in both directions.

``encode`` turns named float arrays into what is sent; ``decode`` turns a received payload back
into float32 and refuses a malformed one (it comes from an untrusted peer) with one sentence.
bf16 travels as the int16 bit pattern (numpy has no bfloat16). int8 is symmetric: a 2-D array
gets one scale per row (max |row| / 127, 1 for a zero row), except a LoRA ``B`` (``out x r``),
which gets one per column, that is per rank component, so that its scales stay r and not
``out``; any other array gets one scale. The scales travel as float32 arrays under
``key + SCALE_SUFFIX``, which no canonical name can hold.

A ``reference`` known to both sides is subtracted before encoding and added back after decoding,
so a lossy codec spends its precision on what changed, not on what both already know. Downlink:
the exit adapters as the checkpoint builds them (identity translators, the final norm). Uplink:
the slice the node was sent, so a reply carries only what local training changed.
"""

from __future__ import annotations

import numpy as np

from famflow.familial.errors import FamflowError

CODECS = ("fp32", "fp16", "bf16", "int8")
SCALE_SUFFIX = "#scale"
INT8_MAX = 127
FP16_MAX = float(np.finfo(np.float16).max)
WIRE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.int16, "int8": np.int8}

Arrays = dict[str, np.ndarray]


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise FamflowError(f"Unknown codec {codec!r}: use one of {', '.join(CODECS)}.")


def _int8_scale_axis(key: str, ndim: int) -> int | None:
    """The axis a matrix's scales run along (None: one scale for the whole array)."""
    if ndim != 2:
        return None
    return 1 if key.endswith(".B") else 0


def int8_scale_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the int8 scales of the array ``key`` of ``shape``."""
    axis = _int8_scale_axis(key, len(shape))
    return (1,) if axis is None else (shape[axis],)


def _shaped_scale(key: str, scale: np.ndarray, ndim: int) -> np.ndarray:
    """Scales shaped to broadcast against their array."""
    axis = _int8_scale_axis(key, ndim)
    if axis is None:
        return scale[0]
    return scale.reshape(-1, 1) if axis == 0 else scale.reshape(1, -1)


def _encode_int8(key: str, values: np.ndarray) -> Arrays:
    axis = _int8_scale_axis(key, values.ndim)
    if axis is None:
        peak = np.array([np.max(np.abs(values), initial=0.0)], dtype=np.float32)
    else:
        peak = np.max(np.abs(values), axis=1 - axis, initial=0.0)
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    shaped = _shaped_scale(key, scale, values.ndim)
    quantized = np.clip(np.rint(values / shaped), -INT8_MAX, INT8_MAX).astype(np.int8)
    return {key: quantized, key + SCALE_SUFFIX: scale}


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) as its int16 bit pattern."""
    import torch  # only bf16 needs it; keeps the run config's import light

    tensor = torch.from_numpy(np.ascontiguousarray(values))
    return tensor.to(torch.bfloat16).view(torch.int16).numpy().copy()


def _bf16_values(bits: np.ndarray) -> np.ndarray:
    """The int16 bit pattern of bfloat16 values -> float32."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(bits))
    return tensor.view(torch.bfloat16).to(torch.float32).numpy().copy()


def _reference_for(key: str, shape: tuple[int, ...], reference: Arrays | None) -> np.ndarray | None:
    if reference is None or key not in reference:
        return None
    if tuple(reference[key].shape) != tuple(shape):
        raise FamflowError(
            f"{key} has shape {tuple(shape)}, its codec reference {tuple(reference[key].shape)}: "
            "both sides must build the reference from the same model."
        )
    return reference[key]


def encode(arrays: Arrays, codec: str, reference: Arrays | None = None) -> Arrays:
    """Named float arrays -> the payload for ``codec`` (inputs untouched)."""
    _check_codec(codec)
    encoded: Arrays = {}
    for key, array in arrays.items():
        if SCALE_SUFFIX in key:
            raise FamflowError(f"{key} holds {SCALE_SUFFIX!r}, reserved for int8 scales.")
        values = np.asarray(array, dtype=np.float32)
        base = _reference_for(key, values.shape, reference)
        if base is not None:
            values = values - base.astype(np.float32)
        if not np.isfinite(values).all():
            raise FamflowError(f"{key} has NaN or inf values: fix training before sending.")
        if codec == "fp32":
            encoded[key] = values.copy()
        elif codec == "fp16":
            if np.max(np.abs(values), initial=0.0) > FP16_MAX:
                raise FamflowError(
                    f"{key} has values beyond the fp16 range (|x| > 65504): use bf16 or fp32."
                )
            encoded[key] = values.astype(np.float16)
        elif codec == "bf16":
            encoded[key] = _bf16_bits(values)
        else:
            encoded.update(_encode_int8(key, values))
    return encoded


def _wire_array(key: str, value: object, codec: str, dtype: type) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype):
        found = getattr(value, "dtype", type(value).__name__)
        raise FamflowError(
            f"Payload for {key} has dtype {found}, the {codec} codec sends "
            f"{np.dtype(dtype).name}: encode with the codec the server asked for."
        )
    return value


def _finite(key: str, values: np.ndarray, codec: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise FamflowError(f"Payload for {key} decodes to NaN or inf under {codec}: drop it.")
    return values


def decode(encoded: Arrays, codec: str, reference: Arrays | None = None) -> Arrays:
    """A received payload -> float32 arrays; a malformed payload raises ``FamflowError``."""
    _check_codec(codec)
    scales = {key for key in encoded if key.endswith(SCALE_SUFFIX)}
    if codec != "int8" and scales:
        raise FamflowError(
            f"Payload holds int8 scales ({sorted(scales)[0]}) under the {codec} codec: "
            "encode with the codec the server asked for."
        )
    data = [key for key in encoded if key not in scales]
    orphans = sorted(scales - {key + SCALE_SUFFIX for key in data})
    if orphans:
        raise FamflowError(f"Payload holds {orphans[0]} without its tensor: resend it whole.")
    decoded: Arrays = {}
    for key in data:
        if SCALE_SUFFIX in key:
            raise FamflowError(f"Payload key {key} is malformed: use canonical names.")
        wire = _wire_array(key, encoded[key], codec, WIRE_DTYPES[codec])
        if codec == "fp32":
            decoded[key] = _finite(key, wire.copy(), codec)
        elif codec == "fp16":
            decoded[key] = _finite(key, wire.astype(np.float32), codec)
        elif codec == "bf16":
            decoded[key] = _finite(key, _bf16_values(wire), codec)
        else:
            decoded[key] = _decode_int8(key, wire, encoded)
        base = _reference_for(key, wire.shape, reference)
        if base is not None:
            decoded[key] = _finite(key, decoded[key] + base.astype(np.float32), codec)
    return decoded


def _decode_int8(key: str, quantized: np.ndarray, encoded: Arrays) -> np.ndarray:
    scale_key = key + SCALE_SUFFIX
    if scale_key not in encoded:
        raise FamflowError(f"Payload for {key} has no {scale_key}: int8 needs its scales.")
    scale = _wire_array(scale_key, encoded[scale_key], "int8", np.float32)
    expected = int8_scale_shape(key, quantized.shape)
    if scale.shape != expected:
        raise FamflowError(
            f"Payload for {key} has shape {quantized.shape} but scales of shape {scale.shape} "
            f"(expected {expected}): resend it whole."
        )
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise FamflowError(f"Payload scales for {key} are not finite and positive: drop it.")
    shaped = _shaped_scale(key, scale, quantized.ndim)
    return (quantized.astype(np.float32) * shaped).astype(np.float32)


def encoded_bytes(encoded: Arrays) -> int:
    """Bytes of the arrays as sent (data and scales)."""
    return sum(int(np.asarray(value).nbytes) for value in encoded.values())
