import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

from famflow.familial.codecs import CODECS, SCALE_SUFFIX, decode, encode, encoded_bytes
from famflow.familial.errors import FamflowError

A, B, NORM = "trunk.3.self_attn.q_proj.A", "trunk.3.self_attn.q_proj.B", "exit.2.norm.weight"


def update(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        A: rng.standard_normal((8, 64)).astype(np.float32),
        B: (1e-3 * rng.standard_normal((48, 8))).astype(np.float32),
        NORM: (1 + 0.1 * rng.standard_normal(64)).astype(np.float32),
    }
    arrays[B][:, 5] = 0.0  # a zero rank component (scale 1 under int8)
    arrays[A][2] *= 100  # rows of very different magnitudes
    return arrays


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_within_the_codec_error(codec):
    arrays = update()
    before = {k: v.copy() for k, v in arrays.items()}
    decoded = decode(encode(arrays, codec), codec)
    assert set(decoded) == set(arrays)
    for key, value in arrays.items():
        assert_array_equal(value, before[key])  # inputs untouched
        got = decoded[key]
        assert got.dtype == np.float32 and got.shape == value.shape
        error = np.abs(got - value)
        if codec == "fp32":
            assert_array_equal(got, value)
        elif codec == "fp16":
            assert (error <= 1e-3 * np.abs(value) + 2.0**-25).all()  # + half a subnormal
        elif codec == "bf16":
            assert (error <= 1e-2 * np.abs(value)).all()
            assert (error > 0).any()
        else:
            # Scales per row of A, per column (rank component) of B, one for a vector.
            rows = {A: value, B: value.T}.get(key, value.reshape(1, -1))
            scale = np.abs(rows).max(axis=1) / 127
            scale[scale == 0] = 1.0
            bound = (scale / 2 * (1 + 1e-6))[:, None]
            got_rows = got.T if key == B else got.reshape(rows.shape)
            assert (np.abs(got_rows - rows) <= bound).all(), key
    if codec == "int8":
        assert_array_equal(decoded[B][:, 5], 0.0)
        # Per row: the small rows of A keep their precision despite the large row 2.
        assert np.abs(decoded[A][0] - arrays[A][0]).max() < np.abs(arrays[A][2]).max() / 254 / 10


def test_bf16_matches_torch_rounding():
    arrays = update()
    decoded = decode(encode(arrays, "bf16"), "bf16")
    expected = torch.from_numpy(arrays[A]).to(torch.bfloat16).float().numpy()
    assert_array_equal(decoded[A], expected)
    assert encode(arrays, "bf16")[A].dtype == np.int16


def test_bytes_on_the_wire():
    arrays = update()
    full = encoded_bytes(encode(arrays, "fp32"))
    assert full == sum(v.size for v in arrays.values()) * 4
    assert encoded_bytes(encode(arrays, "fp16")) * 2 == full
    assert encoded_bytes(encode(arrays, "bf16")) * 2 == full
    int8 = encode(arrays, "int8")
    scales = 4 * (8 + 8 + 1)  # one float32 per rank component of A and of B, one for the norm
    assert encoded_bytes(int8) == full // 4 + scales
    assert int8[A + SCALE_SUFFIX].shape == int8[B + SCALE_SUFFIX].shape == (8,)
    assert int8[NORM + SCALE_SUFFIX].shape == (1,)


def test_unknown_codec_and_unsendable_values_are_refused():
    with pytest.raises(
        FamflowError, match=r"^Unknown codec 'fp8': use one of fp32, fp16, bf16, int8\.$"
    ):
        encode(update(), "fp8")
    with pytest.raises(FamflowError, match="Unknown codec"):
        decode({}, "int4")
    with pytest.raises(FamflowError, match="beyond the fp16 range"):
        encode({NORM: np.full(3, 1e6, dtype=np.float32)}, "fp16")
    with pytest.raises(FamflowError, match="NaN or inf"):
        encode({NORM: np.array([1.0, np.inf], dtype=np.float32)}, "int8")


def malformed(codec, payload):
    with pytest.raises(FamflowError) as error:
        decode(payload, codec)
    message = str(error.value)
    assert message.endswith(".") and message.count(": ") <= 1, message
    return message


def test_malformed_payloads_are_refused_with_one_sentence():
    good = encode(update(), "int8")
    scale = A + SCALE_SUFFIX
    missing = {k: v for k, v in good.items() if k != scale}
    assert "has no trunk.3.self_attn.q_proj.A#scale" in malformed("int8", missing)
    orphan = {k: v for k, v in good.items() if k != A}
    assert "without its tensor" in malformed("int8", orphan)
    assert "dtype int16" in malformed("int8", {**good, A: good[A].astype(np.int16)})
    assert "dtype float64" in malformed("int8", {**good, scale: good[scale].astype(np.float64)})
    assert "shape (8, 64) but scales of shape (7,)" in malformed(
        "int8", {**good, scale: good[scale][:7]}
    )
    nan_scale = good[scale].copy()
    nan_scale[3] = np.nan
    assert "not finite and positive" in malformed("int8", {**good, scale: nan_scale})
    assert "not finite and positive" in malformed("int8", {**good, scale: -good[scale]})

    half = encode(update(), "fp16")
    assert "dtype float32" in malformed("fp16", {**half, A: half[A].astype(np.float32)})
    inf = half[NORM].copy()
    inf[0] = np.inf
    assert "NaN or inf" in malformed("fp16", {**half, NORM: inf})
    assert "int8 scales" in malformed("fp16", {**half, scale: good[scale]})
    nan_bits = np.full(4, 0x7FC0, dtype=np.int16)  # a bfloat16 NaN
    assert "NaN or inf" in malformed("bf16", {NORM: nan_bits})
    assert "dtype" in malformed("fp32", {NORM: [1.0, 2.0]})
    assert_array_equal(decode({NORM: np.ones(2, np.float32)}, "fp32")[NORM], np.ones(2))


def test_a_reference_known_to_both_sides_keeps_small_changes_of_a_translator():
    # An identity translator nudged by training: per-row int8 of the values themselves rounds
    # the small off-diagonal changes to zero; relative to the identity they survive.
    key = "exit.10.translator.proj.weight"
    identity = np.eye(64, dtype=np.float32)
    change = 1e-3 * np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    trained = {key: identity + change}
    plain = decode(encode(trained, "int8"), "int8")[key] - identity
    relative = decode(encode(trained, "int8", {key: identity}), "int8", {key: identity})[key]
    assert np.abs(plain - change).max() > 0.5 * np.abs(change).max()
    assert np.abs(relative - identity - change).max() < np.abs(change).max() / 100
    with pytest.raises(FamflowError, match="codec reference"):
        encode(trained, "int8", {key: np.eye(3, dtype=np.float32)})
