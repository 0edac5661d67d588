"""Reply validation: what a node's reply must be before the server aggregates it.

A reply comes from an untrusted peer. Its checks run cheapest first, and its bytes are read
only after their size, keys, wire dtypes and shapes fit the slice the node was sent:

1. metrics: a ``MetricRecord`` whose example (or token) count is a positive whole number and
   whose per-exit values are finite numbers of exits the node holds;
2. size: at most ``max_payload_ratio`` times what the slice encodes to;
3. keys: exactly the slice's wire keys (its keys, and their scales under int8);
4. each array: numpy-serialised at the codec's wire dtype and the slice's shape, in Flower's
   metadata and in the array's own .npy header;
5. values: ``familial.codecs.decode`` (finite values, finite positive int8 scales);
6. the rule's own check (``AggregationRule.validate``, e.g. ffa's frozen A).

Then across the round's replies (``norm_outliers``): a change far beyond the cohort's.
Each error is a ``ReplyError``: a reason code from ``REASONS`` (counted per round in the
records) and one sentence (logged).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Collection
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from flwr.app import Array, ArrayRecord, MessageType, MetricRecord, RecordDict
from numpy.lib import format as npy

from famflow.familial.codecs import SCALE_SUFFIX, WIRE_DTYPES, decode, int8_scale_shape
from famflow.familial.errors import FamflowError
from famflow.strategies.records import ACCURACY_EXIT, LOSS_EXIT, NUM_EXAMPLES, NUM_TOKENS
from famflow.strategies.robust import change_rms
from famflow.strategies.rules import AggregationRule, ClientUpdate
from famflow.strategies.rules.base import State

REASONS: dict[str, str] = {
    "client-error": "the node's ClientApp failed (Flower error reply)",
    "not-profiled": "a reply from a node that did not answer the profile query",
    "not-sent": "a reply from a node that was not sent anything this round",
    "bad-statistics": "a calibration reply whose lens statistics are missing or unusable",
    "no-reply": "no reply before the round timeout (the node stopped, disconnected or is slow)",
    "bad-metrics": "no MetricRecord, or a per-exit metric that is not a finite number",
    "bad-examples": "the example (token) count is missing, not whole or not positive",
    "malformed": "no ArrayRecord, or arrays whose bytes are not the .npy they claim",
    "oversized": "more bytes than max_payload_ratio (2) times what the slice encodes to",
    "unknown-keys": "keys the family does not have",
    "outside-branch": "keys of the family outside the node's branch",
    "missing-keys": "keys (or int8 scales) of the node's branch left out",
    "bad-dtype": "arrays not at the codec's wire dtype",
    "bad-shape": "arrays not at the shape (LoRA rank) of the slice sent",
    "bad-values": "NaN or inf values, or int8 scales that are not finite and positive",
    "rule": "refused by the rule (e.g. ffa: an A that is not the frozen one)",
    "norm-outlier": "a change far beyond the median change of the key's holders",
}
# np.save writes a 128-byte header for arrays of a few dimensions.
NPY_HEADER_BYTES = 128
NPY_HEADER_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
# Per message type: the count a reply is weighted by, and the prefixes of its per-exit metrics.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    MessageType.TRAIN: (NUM_EXAMPLES, (LOSS_EXIT,)),
    MessageType.EVALUATE: (NUM_TOKENS, (LOSS_EXIT, ACCURACY_EXIT)),
}


class ReplyError(FamflowError):
    """Why a reply is dropped: a reason code (``REASONS``) and one sentence."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReplyLimits:
    """How far a reply may stray before it is dropped.

    ``max_payload_ratio``: bytes allowed over the encoded size of the slice the node was sent.
    ``outlier_norm_ratio``: a reply whose change of some key has an RMS above this many times
    the median RMS of that key's holders is dropped (0 turns the check off); only keys held
    by at least ``min_cohort`` replies are compared.
    """

    max_payload_ratio: float = 2.0
    outlier_norm_ratio: float = 10.0
    min_cohort: int = 3

    def __post_init__(self) -> None:
        if not self.max_payload_ratio >= 1:
            raise FamflowError(
                f"max_payload_ratio must be at least 1, got {self.max_payload_ratio}: "
                "a correct reply is as large as its slice."
            )
        if not (self.outlier_norm_ratio == 0 or self.outlier_norm_ratio > 1):
            raise FamflowError(
                f"outlier-norm-ratio must be 0 (off) or above 1, got {self.outlier_norm_ratio}."
            )
        if self.min_cohort < 3:
            raise FamflowError(
                f"min_cohort must be at least 3, got {self.min_cohort}: with two holders "
                "neither is ever far from their median."
            )


def _short(value: object) -> str:
    return reprlib.repr(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_metrics(content: RecordDict, kind: str, deepest: int) -> MetricRecord:
    """The metrics of a reply to a ``kind`` message (``METRICS``): its count a positive whole
    number, each per-exit metric a finite number for an exit up to ``deepest``."""
    weight_key, prefixes = METRICS[kind]
    metrics = content.get("metrics")
    if not isinstance(metrics, MetricRecord):
        raise ReplyError("bad-metrics", "the reply carries no metrics record")
    weight = metrics.get(weight_key)
    if not (_is_number(weight) and float(weight).is_integer() and weight >= 1):  # type: ignore[arg-type]
        raise ReplyError(
            "bad-examples", f"{weight_key} is {_short(weight)}, not a positive whole number"
        )
    for key, value in metrics.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            continue
        depth = key[len(prefix) :]
        if not (depth.isdigit() and 1 <= int(depth) <= deepest):
            raise ReplyError("bad-metrics", f"metric {key} names no exit of the node's branch")
        if not _is_number(value):
            raise ReplyError("bad-metrics", f"metric {key} is {_short(value)}, not a finite number")
    return metrics


def wire_spec(sent: State, codec: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array a reply to ``sent`` carries under ``codec``."""
    dtype = np.dtype(WIRE_DTYPES[codec])
    spec = {}
    for key, value in sent.items():
        spec[key] = (tuple(value.shape), dtype)
        if codec == "int8":
            spec[key + SCALE_SUFFIX] = (int8_scale_shape(key, value.shape), np.dtype(np.float32))
    return spec


def encoded_size(spec: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """Bytes of such a reply as ``ArrayRecord.count_bytes`` counts them (data, header, key)."""
    return sum(
        math.prod(shape) * dtype.itemsize + NPY_HEADER_BYTES + len(key)
        for key, (shape, dtype) in spec.items()
    )


def read_payload(
    content: RecordDict, sent: State, codec: str, known: Collection[str], limits: ReplyLimits
) -> dict[str, np.ndarray]:
    """The reply's wire arrays, read only once they fit the slice ``sent`` (``known``: every
    key of the family)."""
    record = content.get("arrays")
    if not isinstance(record, ArrayRecord):
        raise ReplyError("malformed", "the reply carries no arrays record")
    spec = wire_spec(sent, codec)
    expected = encoded_size(spec)
    if record.count_bytes() > limits.max_payload_ratio * expected:
        raise ReplyError(
            "oversized",
            f"the payload has {record.count_bytes():,} bytes, over {limits.max_payload_ratio:g} "
            f"x the {expected:,} its slice encodes to",
        )
    extra = sorted(set(record) - set(spec))
    if extra:
        scales = {key + SCALE_SUFFIX for key in known} if codec == "int8" else set()
        unknown = [key for key in extra if key not in known and key not in scales]
        if unknown:
            raise ReplyError("unknown-keys", f"it holds keys the family lacks {unknown[:3]}")
        raise ReplyError("outside-branch", f"it holds keys outside the node's branch {extra[:3]}")
    missing = sorted(set(spec) - set(record))
    if missing:
        raise ReplyError("missing-keys", f"it lacks keys of the node's branch {missing[:3]}")
    return {key: _wire_array(key, record[key], *spec[key], codec) for key in spec}


def _wire_array(
    key: str, array: Array, shape: tuple[int, ...], dtype: np.dtype, codec: str
) -> np.ndarray:
    if array.dtype != dtype.name:
        raise ReplyError(
            "bad-dtype", f"{key} travels as {_short(array.dtype)}, {codec} sends {dtype.name}"
        )
    if tuple(array.shape) != shape:
        raise ReplyError(
            "bad-shape",
            f"{key} has shape {_short(tuple(array.shape))}, expected {shape} from the slice "
            "the node was sent (its branch at its LoRA rank)",
        )
    # Read the .npy header before the data: numpy allocates what the header claims.
    stream = BytesIO(array.data)
    try:
        header_shape, _, header_dtype = NPY_HEADER_READERS[npy.read_magic(stream)](stream)
        fits = (
            array.stype == "numpy.ndarray"
            and tuple(header_shape) == shape
            and header_dtype == dtype
            and len(array.data) - stream.tell() == math.prod(shape) * dtype.itemsize
        )
        values = array.numpy() if fits else None
    except (ValueError, KeyError, TypeError, EOFError, OSError):
        values = None
    if values is None or values.shape != shape or values.dtype != dtype:
        raise ReplyError(
            "malformed", f"the bytes of {key} are not the .npy array its metadata declares"
        )
    return values


def decode_payload(wire: dict[str, np.ndarray], codec: str, sent: State) -> State:
    """The float32 arrays of a reply whose structure fits: the change it carries added to
    the slice the node was sent (``familial.codecs``)."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return decode(wire, codec, sent)
    except FamflowError as error:
        raise ReplyError("bad-values", str(error)) from None


def check_rule(rule: AggregationRule, global_arrays: State, update: ClientUpdate) -> None:
    try:
        rule.validate(global_arrays, update)
    except FamflowError as error:
        raise ReplyError("rule", str(error)) from None


def norm_outliers(
    updates: list[ClientUpdate], sent: list[State], limits: ReplyLimits
) -> dict[int, str]:
    """Index -> sentence of each update whose change of some key has an RMS beyond
    ``outlier_norm_ratio`` times the median RMS of that key's holders.

    RMS (norm per value), so that holders at different LoRA ranks compare; keys held by
    fewer than ``min_cohort`` updates, or that the median holder left unchanged, are skipped.
    """
    if limits.outlier_norm_ratio == 0:
        return {}
    rms = [change_rms(update, base) for update, base in zip(updates, sent, strict=True)]
    found: dict[int, str] = {}
    for key in sorted({key for update in updates for key in update.arrays}):
        holders = [i for i, update in enumerate(updates) if key in update.arrays]
        if len(holders) < limits.min_cohort:
            continue
        median = float(np.median([rms[i][key] for i in holders]))
        for i in holders:
            if i not in found and rms[i][key] > limits.outlier_norm_ratio * median > 0:
                found[i] = (
                    f"its change of {key} has RMS {rms[i][key]:.3g}, "
                    f"{rms[i][key] / median:,.0f} x the median {median:.3g} of its "
                    f"{len(holders)} holders"
                )
    return found
