"""The two messages of collaborative inference, as exact little-endian byte frames.

Request (a lower tier hands hidden states up)::

    magic "FFCH" | version u8 | kind u8 | codec u8 | pad u8 | start u32 | rows u32 | cols u32
    | drafts u32 | threshold f32 | hidden state (codec payload) | drafts x int32

``start`` is the position of the first row; a tier first forgets every position from
``start`` on, so a request also says how far its caches are valid. ``kind`` is ``verify``
(speculative decoding: the last ``drafts`` rows are the draft tokens' hidden states, the row
before them the last accepted token's) or ``confidence`` (early exit: answer with the exit's
token if its top probability reaches ``threshold``, else hand up).

Reply (tokens come back down)::

    magic "FFCR" | version u8 | kind u8 | trace u16 | accepted u32 | tokens u32
    | tokens x int32 | trace x (compute_s f32 | hop request bytes u32 | hop reply bytes u32)

``trace`` holds one entry per tier that took part, lowest first: its compute time and the
bytes of the request it sent further up and of the reply it got (0 for the top tier).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Literal

import torch

from famflow.collab.codec import (
    CODEC_IDS,
    HIDDEN_CODECS,
    ProtocolError,
    decode_rows,
    encode_rows,
    payload_size,
)

VERSION = 1
KINDS = ("verify", "confidence")
RequestKind = Literal["verify", "confidence"]
REQUEST_HEADER = struct.Struct("<4sBBBxIIIIf")
REPLY_HEADER = struct.Struct("<4sBBHII")
TRACE_ENTRY = struct.Struct("<fII")
TOKEN_BYTES = 4
REQUEST_MAGIC = b"FFCH"
REPLY_MAGIC = b"FFCR"
MAX_ROWS = 1 << 20


def _ids(values: bytes | memoryview, count: int) -> list[int]:
    return list(struct.unpack_from(f"<{count}i", values)) if count else []


@dataclass
class HiddenRequest:
    kind: RequestKind
    start: int
    hidden: torch.Tensor  # rows x cols, one row per position
    codec: str
    drafts: list[int] = field(default_factory=list)
    threshold: float = 1.0

    def encode(self) -> bytes:
        rows, cols = self.hidden.shape
        header = REQUEST_HEADER.pack(
            REQUEST_MAGIC,
            VERSION,
            KINDS.index(self.kind),
            CODEC_IDS[self.codec],
            self.start,
            rows,
            cols,
            len(self.drafts),
            self.threshold,
        )
        drafts = struct.pack(f"<{len(self.drafts)}i", *self.drafts)
        return header + encode_rows(self.hidden, self.codec) + drafts

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> HiddenRequest:
        """The request in ``payload``; a malformed one raises ProtocolError (one sentence)."""
        if len(payload) < REQUEST_HEADER.size:
            raise ProtocolError(
                f"The request is {len(payload)} bytes, shorter than its "
                f"{REQUEST_HEADER.size}-byte header: send a frame written by HiddenRequest."
            )
        magic, version, kind, codec_id, start, rows, cols, drafts, threshold = (
            REQUEST_HEADER.unpack_from(payload)
        )
        if magic != REQUEST_MAGIC or version != VERSION:
            raise ProtocolError(
                f"The request is not a version-{VERSION} hidden-state frame: send a frame "
                "written by HiddenRequest."
            )
        if kind >= len(KINDS) or codec_id >= len(HIDDEN_CODECS):
            raise ProtocolError(
                f"The request names kind {kind} and codec {codec_id}: use kinds {KINDS} and "
                f"codecs {HIDDEN_CODECS} by index."
            )
        if not 0 < rows <= MAX_ROWS or cols == 0 or drafts >= rows:
            raise ProtocolError(
                f"The request has {rows} rows of {cols} values and {drafts} drafts: send at "
                "least one row more than drafts."
            )
        codec = HIDDEN_CODECS[codec_id]
        body = REQUEST_HEADER.size + payload_size(codec, rows, cols)
        if len(payload) != body + TOKEN_BYTES * drafts:
            raise ProtocolError(
                f"The request holds {len(payload)} bytes, its header promises "
                f"{body + TOKEN_BYTES * drafts}: send the frame whole."
            )
        view = memoryview(payload)
        hidden = decode_rows(view[REQUEST_HEADER.size : body], codec, rows, cols)
        return cls(
            kind=KINDS[kind],  # type: ignore[arg-type]
            start=start,
            hidden=hidden,
            codec=codec,
            drafts=_ids(view[body:], drafts),
            threshold=threshold,
        )


@dataclass
class TraceEntry:
    """What one tier did for a request: compute seconds and the bytes of its hop upward."""

    compute_s: float
    request_bytes: int = 0
    reply_bytes: int = 0


@dataclass
class TierReply:
    kind: RequestKind
    tokens: list[int]
    accepted: int = 0
    trace: list[TraceEntry] = field(default_factory=list)

    def encode(self) -> bytes:
        header = REPLY_HEADER.pack(
            REPLY_MAGIC,
            VERSION,
            KINDS.index(self.kind),
            len(self.trace),
            self.accepted,
            len(self.tokens),
        )
        tokens = struct.pack(f"<{len(self.tokens)}i", *self.tokens)
        trace = b"".join(
            TRACE_ENTRY.pack(e.compute_s, e.request_bytes, e.reply_bytes) for e in self.trace
        )
        return header + tokens + trace

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> TierReply:
        if len(payload) < REPLY_HEADER.size:
            raise ProtocolError(f"The reply is {len(payload)} bytes, shorter than its header.")
        magic, version, kind, entries, accepted, count = REPLY_HEADER.unpack_from(payload)
        expected = REPLY_HEADER.size + TOKEN_BYTES * count + TRACE_ENTRY.size * entries
        if magic != REPLY_MAGIC or version != VERSION or kind >= len(KINDS):
            raise ProtocolError(f"The reply is not a version-{VERSION} tier reply frame.")
        if len(payload) != expected:
            raise ProtocolError(
                f"The reply holds {len(payload)} bytes, its header promises {expected}."
            )
        offset = REPLY_HEADER.size + TOKEN_BYTES * count
        trace = [
            TraceEntry(*TRACE_ENTRY.unpack_from(payload, offset + i * TRACE_ENTRY.size))
            for i in range(entries)
        ]
        return cls(
            kind=KINDS[kind],  # type: ignore[arg-type]
            tokens=_ids(memoryview(payload)[REPLY_HEADER.size :], count),
            accepted=accepted,
            trace=trace,
        )
