"""Random and adversarial train and evaluate replies: the strategy never raises, drops or
accepts each one, and keeps global adapters it can slice again."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from famflow.familial.codecs import CODECS, SCALE_SUFFIX
from famflow.strategies.records import from_record, to_record
from famflow.strategies.robust import ROBUST_METHODS, RobustSettings
from famflow.strategies.rules import FFA, FlexLoRA, HetLoRA
from famflow.strategies.validation import ReplyLimits
from tests.reply_setup import (
    DEEP,
    SHALLOW,
    branch_keys,
    global_arrays,
    honest_reply,
    honest_wire,
    make_strategy,
    reply,
    send,
)

pytestmark = pytest.mark.usefixtures("server_identity")
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KEYS = [*branch_keys(2), "trunk.9.mlp.up_proj.A", "lm_head.weight", "", "x" * 300]
WIRE_DTYPES = ["float32", "float16", "float64", "int8", "int16", "int32", "bool", "complex64"]
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
SPECIAL_FLOATS = [np.nan, np.inf, -np.inf, 3e38, -1.0, 0.0]
NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-(2**31), 2**31), max_size=3),
    st.lists(st.floats(), max_size=3),
)


def cast(values, dtype):
    with np.errstate(all="ignore"):
        return np.asarray(values).astype(dtype)


@st.composite
def numpy_arrays(draw, shape=None):
    """An array of any of the wire dtypes (and some others), shape and values."""
    dtype = draw(st.sampled_from(WIRE_DTYPES))
    shape = shape or draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=14))
    if dtype.startswith("float"):
        values = hnp.arrays(np.float32, shape, elements=FLOATS).map(lambda a: cast(a, dtype))
    else:
        values = hnp.arrays(dtype, shape)
    return draw(values)


@st.composite
def raw_arrays(draw):
    """An Array built field by field: any dtype name, shape (huge, negative), stype, bytes."""
    dtype = draw(st.sampled_from([*WIRE_DTYPES, "object", "<U3", "not-a-dtype"]))
    shape = tuple(draw(st.lists(st.integers(-3, 10**12), max_size=3)))
    stype = draw(st.sampled_from(["numpy.ndarray", "torch.Tensor", ""]))
    data = draw(
        st.one_of(
            st.binary(max_size=600),
            numpy_arrays().map(lambda a: Array(a).data),
            numpy_arrays().map(lambda a: Array(a).data[: len(Array(a).data) // 2]),
        )
    )
    return Array(dtype, shape, stype, data)


@st.composite
def tampered_wire(draw, honest, actions=("values", "scale", "replace", "add", "drop", "raw")):
    """An honest reply's arrays with one to four ``actions`` done to them (``raw``: maybe one
    array replaced by a raw one at the end)."""
    wire = {key: array.numpy() for key, array in honest.items()}
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from([action for action in actions if action != "raw"]))
        key = draw(st.sampled_from(sorted(wire) or [KEYS[0]]))
        if action == "add":
            extra = draw(st.sampled_from([*KEYS, key + SCALE_SUFFIX, f"{key}{SCALE_SUFFIX}x"]))
            wire[extra] = draw(numpy_arrays())
        elif key not in wire:
            continue
        elif action == "drop":
            wire.pop(key)
        elif action == "replace":
            wire[key] = draw(numpy_arrays(shape=draw(st.sampled_from([wire[key].shape, None]))))
        elif action == "values" and wire[key].size:
            values = wire[key].copy()
            floating = np.issubdtype(values.dtype, np.floating)
            special = draw(st.sampled_from(SPECIAL_FLOATS if floating else [-1, 0, 127]))
            with np.errstate(all="ignore"):
                values.flat[draw(st.integers(0, values.size - 1))] = special
            wire[key] = values
        elif action == "scale":
            factor = draw(st.sampled_from([50.0, -1.0, -50.0, 1e30, 0.0]))
            with np.errstate(all="ignore"):
                wire[key] = cast(wire[key] * factor, wire[key].dtype)
    arrays = {key: Array(value) for key, value in wire.items()}
    if arrays and "raw" in actions and draw(st.integers(0, 3)) == 0:
        arrays[draw(st.sampled_from(sorted(arrays)))] = draw(raw_arrays())
    return arrays


@st.composite
def metrics(draw, weight_key):
    kind = draw(st.sampled_from(["good"] * 6 + ["random", "random", "none", "config"]))
    if kind == "none":
        return None
    if kind == "config":
        return ConfigRecord({weight_key: draw(st.text(max_size=5))})
    if kind == "good":
        return MetricRecord({weight_key: 8, "loss-exit-1": 2.0})
    keys = [weight_key, "loss-exit-1", "loss-exit-2", "loss-exit-7", "loss-exit-", "loss-exit-x"]
    keys += ["accuracy-exit-1", "train-loss"]
    return MetricRecord({key: draw(NUMBERS) for key in draw(st.lists(st.sampled_from(keys)))})


@st.composite
def rounds(draw):
    """A strategy (rule, codec, robust wrapper, outlier check), and its fuzzed node."""
    rule = draw(st.sampled_from([FlexLoRA(), HetLoRA(), FFA()]))
    codec = draw(st.sampled_from(CODECS))
    robust = RobustSettings(draw(st.sampled_from(ROBUST_METHODS)))
    limits = ReplyLimits(outlier_norm_ratio=draw(st.sampled_from([0.0, 10.0])))
    node = draw(st.sampled_from([*SHALLOW, DEEP]))
    return make_strategy(codec, rule, robust=robust, limits=limits), codec, node


@FUZZ
@given(data=st.data())
def test_a_fuzzed_train_reply_never_raises_out_of_the_strategy(data):
    strategy, codec, node = data.draw(rounds())
    frozen_a = isinstance(strategy.rule, FFA)
    sent = send(strategy)
    honest = honest_wire(sent[node], codec, seed=node, frozen_a=frozen_a)
    kinds = ["values"] * 3 + ["tampered"] * 3 + ["random", "missing", "other record"]
    kind = data.draw(st.sampled_from(kinds))
    if kind == "values":
        wire = ArrayRecord(data.draw(tampered_wire(honest, ("values", "scale"))))
    elif kind == "tampered":
        wire = ArrayRecord(data.draw(tampered_wire(honest)))
    elif kind == "random":
        keys = data.draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True))
        wire = ArrayRecord(
            {k: data.draw(st.one_of(raw_arrays(), numpy_arrays().map(Array))) for k in keys}
        )
    else:
        wire = None if kind == "missing" else MetricRecord({"num-examples": 8})
    fuzzed = reply(sent[node], wire, data.draw(metrics("num-examples")))
    replies = [honest_reply(sent[n], codec, n, frozen_a) for n in sent if n != node]

    aggregated, _ = strategy.aggregate_train(1, [*replies, fuzzed])

    traffic = strategy.traffic[(1, "train")]
    event(traffic.reasons.get(node, "accepted"))  # pytest --hypothesis-show-statistics
    event("round aggregated" if aggregated is not None else "global adapters kept")
    assert (node in traffic.dropped) != (node in traffic.up)
    assert set(traffic.dropped) == set(traffic.reasons)
    state = from_record(aggregated) if aggregated is not None else global_arrays()
    assert all(np.isfinite(value).all() for value in state.values())
    strategy.configure_train(2, to_record(state), ConfigRecord(), None)  # still sliceable


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_a_fuzzed_evaluate_reply_never_raises_out_of_the_strategy(data):
    strategy, _, node = data.draw(rounds())
    messages = strategy.configure_evaluate(1, to_record(global_arrays()), ConfigRecord(), None)
    sent = {message.metadata.dst_node_id: message for message in messages}
    good = {"num-tokens": 10, "loss-exit-1": 2.0, "accuracy-exit-1": 0.5}
    replies = [reply(sent[n], None, good) for n in sent if n != node]
    fuzzed = reply(sent[node], None, data.draw(metrics("num-tokens")))
    result = strategy.aggregate_evaluate(1, [*replies, fuzzed])
    assert result is not None and all(np.isfinite(float(v)) for v in dict(result).values())
