"""Hidden-state codecs and frames: exact bytes, bounded error, malformed frames refused."""

import struct

import pytest
import torch

from famflow.collab.codec import ProtocolError, decode_rows, encode_rows, payload_size
from famflow.collab.protocol import (
    REPLY_HEADER,
    REQUEST_HEADER,
    HiddenRequest,
    TierReply,
    TraceEntry,
)
from famflow.familial import FamflowError

ROWS, COLS = 7, 48


def hidden(rows: int = ROWS, cols: int = COLS, seed: int = 0) -> torch.Tensor:
    values = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 3
    values[2] = 0.0  # a zero row: scale 0, decodes to zeros
    return values


def test_int8_bytes_are_exact():
    x = hidden()
    assert len(encode_rows(x, "int8")) == ROWS * 4 + ROWS * COLS == payload_size("int8", ROWS, COLS)
    drafts = [5, 9, 11]
    frame = HiddenRequest("verify", 13, x, "int8", drafts).encode()
    assert REQUEST_HEADER.size == 28
    assert len(frame) == 28 + ROWS * 4 + ROWS * COLS + 4 * len(drafts)


@pytest.mark.parametrize(("codec", "value_bytes"), [("fp32", 4), ("fp16", 2)])
def test_float_codec_bytes(codec, value_bytes):
    assert len(encode_rows(hidden(), codec)) == ROWS * COLS * value_bytes


def test_round_trip_error_per_codec():
    x = hidden()
    assert torch.equal(decode_rows(encode_rows(x, "fp32"), "fp32", ROWS, COLS), x)
    fp16 = decode_rows(encode_rows(x, "fp16"), "fp16", ROWS, COLS)
    torch.testing.assert_close(fp16, x, rtol=1e-3, atol=1e-3)
    int8 = decode_rows(encode_rows(x, "int8"), "int8", ROWS, COLS)
    step = x.abs().amax(dim=1, keepdim=True) / 127
    assert ((int8 - x).abs() <= step / 2 + 1e-6).all()  # half a step per row, at most
    assert torch.equal(int8[2], torch.zeros(COLS))
    assert not torch.equal(int8, x)


def test_int8_scale_is_per_row():
    """A large row does not cost a small row its precision."""
    x = hidden()
    x[0] *= 1000
    int8 = decode_rows(encode_rows(x, "int8"), "int8", ROWS, COLS)
    small = x[1].abs().max() / 127
    assert (int8[1] - x[1]).abs().max() <= small / 2 + 1e-6


def test_request_and_reply_frames_round_trip():
    x = hidden()
    request = HiddenRequest.decode(
        HiddenRequest("confidence", 4, x, "fp32", [], threshold=0.75).encode()
    )
    assert (request.kind, request.start, request.codec, request.threshold) == (
        "confidence",
        4,
        "fp32",
        0.75,
    )
    assert torch.equal(request.hidden, x) and request.drafts == []
    reply = TierReply("verify", [3, 1, 4], 2, [TraceEntry(0.5, 100, 20), TraceEntry(0.25)])
    frame = reply.encode()
    assert len(frame) == REPLY_HEADER.size + 3 * 4 + 2 * 12
    decoded = TierReply.decode(frame)
    assert decoded.tokens == [3, 1, 4] and decoded.accepted == 2
    assert decoded.trace == reply.trace


def _frame(**changes) -> bytes:
    fields = {"magic": b"FFCH", "version": 1, "kind": 0, "codec": 2, "start": 0, "rows": 2}
    fields.update({"cols": 4, "drafts": 1, "threshold": 1.0, **changes})
    header = REQUEST_HEADER.pack(*fields.values())
    body = payload_size("int8", fields["rows"], fields["cols"]) if fields["codec"] == 2 else 0
    return header + bytes(body) + struct.pack("<i", 7)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"FFCH", "shorter than its 28-byte header"),
        (_frame(magic=b"JUNK"), "not a version-1 hidden-state frame"),
        (_frame(codec=9), "codecs"),
        (_frame(rows=1), "at least one row more than drafts"),
        (_frame()[:-1], "send the frame whole"),
        (_frame() + b"\0", "send the frame whole"),
    ],
)
def test_malformed_requests_are_one_sentence(frame, message):
    with pytest.raises(ProtocolError, match=message):
        HiddenRequest.decode(frame)


def test_non_finite_hidden_state_is_refused():
    x = hidden()
    x[1, 1] = float("nan")
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        HiddenRequest.decode(HiddenRequest("verify", 0, x, "fp16").encode())


def test_fp16_overflow_is_a_clear_error():
    with pytest.raises(FamflowError, match="fp16 range: send it with --codec int8 or fp32"):
        encode_rows(torch.full((1, 4), 1e6), "fp16")
