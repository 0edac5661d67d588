import logging
import re
from io import BytesIO, StringIO

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Context, Error, Message, RecordDict
from numpy.lib import format as npy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from famflow.familial.errors import FamflowError
from famflow.federation.config import FederationConfig
from famflow.server.profiles import usable_profiles
from famflow.server.records import RoundRecorder
from famflow.server.rows import round_row
from famflow.server.server_app import (
    DropRunStoppedTraceback,
    RunStopped,
    log_progress,
    make_server_app,
)
from famflow.strategies.familial_strategy import RoundTraffic
from famflow.strategies.records import to_record
from famflow.strategies.rules import FFA
from famflow.strategies.validation import REASONS, ReplyLimits
from tests.federation_setup import TIERS, run_config
from tests.reply_setup import (
    DEEP,
    IN,
    SHALLOW,
    global_arrays,
    honest_reply,
    honest_wire,
    make_strategy,
    reply,
    send,
)

pytestmark = pytest.mark.usefixtures("server_identity")
A, B, NORM = "trunk.0.mlp.up_proj.A", "trunk.0.mlp.up_proj.B", "exit.1.norm.weight"
BAD = SHALLOW[0]  # the node whose reply is tampered with; its slice is at rank 2
ZEROS = np.zeros((2, IN), np.float32)


def npy_bytes(array):
    return Array(array).data


def huge_header():
    """A .npy header claiming 10**12 float32 values, followed by 96 bytes."""
    stream = BytesIO()
    npy.write_array_header_1_0(stream, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    return stream.getvalue() + bytes(96)


def put(key, array):
    def tamper(wire, metrics):
        wire[key] = array if isinstance(array, Array) else Array(array)
        return wire, metrics

    return tamper


def drop_key(key):
    def tamper(wire, metrics):
        del wire[key]
        return wire, metrics

    return tamper


def set_metrics(values):
    return lambda wire, metrics: (wire, values)


def with_value(key, index, value):
    def tamper(wire, metrics):
        array = wire[key].numpy().copy()
        array.flat[index] = value
        wire[key] = Array(array)
        return wire, metrics

    return tamper


def raw(dtype="float32", shape=(2, IN), stype="numpy.ndarray", data=None):
    """An Array built field by field (its bytes, by default, those of a correct slice)."""
    return Array(dtype, shape, stype, npy_bytes(ZEROS) if data is None else data)


CASES = {
    "a key of a deeper branch": ("fp32", put("trunk.1.mlp.up_proj.A", ZEROS), "outside-branch"),
    "a key no branch has": ("fp32", put("trunk.9.mlp.up_proj.A", ZEROS), "unknown-keys"),
    "int8 scales under fp32": ("fp32", put(f"{A}#scale", np.ones(2, np.float32)), "unknown-keys"),
    "a key left out": ("fp32", drop_key(NORM), "missing-keys"),
    "the global rank, not the node's": ("fp32", put(A, np.zeros((4, IN), np.float32)), "bad-shape"),
    "a matrix for a vector": ("fp32", put(NORM, np.zeros((6, 1), np.float32)), "bad-shape"),
    "float64 under fp32": ("fp32", put(A, np.zeros((2, IN))), "bad-dtype"),
    "fp16 under fp32": ("fp32", put(A, np.zeros((2, IN), np.float16)), "bad-dtype"),
    "a NaN": ("fp32", with_value(A, 3, np.nan), "bad-values"),
    "an inf": ("fp32", with_value(B, 0, np.inf), "bad-values"),
    "fp16 overflowing to inf": ("fp16", with_value(B, 0, np.inf), "bad-values"),
    "bytes padded to 10 kB": (
        "fp32",
        put(A, raw(data=npy_bytes(ZEROS) + bytes(10_000))),
        "oversized",
    ),
    "a huge declared shape": ("fp32", put(A, raw(shape=(10**6, 10**6))), "bad-shape"),
    "a huge shape in the .npy header": ("fp32", put(A, raw(data=huge_header())), "malformed"),
    "bytes of another shape": (
        "fp32",
        put(A, raw(data=npy_bytes(np.zeros((3, 8), np.float32)))),
        "malformed",
    ),
    "bytes that are no .npy": ("fp32", put(A, raw(data=bytes(range(96)) * 2)), "malformed"),
    "a torch serialisation": ("fp32", put(A, raw(stype="torch.Tensor")), "malformed"),
    "int8 without a scale": ("int8", drop_key(f"{A}#scale"), "missing-keys"),
    "int8 with a negative scale": ("int8", with_value(f"{B}#scale", 0, -1.0), "bad-values"),
    "int8 with a zero scale": ("int8", with_value(f"{A}#scale", 1, 0.0), "bad-values"),
    "int8 with a NaN scale": ("int8", with_value(f"{NORM}#scale", 0, np.nan), "bad-values"),
    "int8 with scales per column of A": (
        "int8",
        put(f"{A}#scale", np.ones(IN, np.float32)),
        "bad-shape",
    ),
    "int8 data as float32": ("int8", put(A, ZEROS), "bad-dtype"),
    "no metrics": ("fp32", set_metrics(None), "bad-metrics"),
    "metrics as a config record": (
        "fp32",
        set_metrics(ConfigRecord({"num-examples": "8"})),
        "bad-metrics",
    ),
    "no example count": ("fp32", set_metrics({"loss-exit-1": 2.0}), "bad-examples"),
    "zero examples": ("fp32", set_metrics({"num-examples": 0}), "bad-examples"),
    "negative examples": ("fp32", set_metrics({"num-examples": -3}), "bad-examples"),
    "2.5 examples": ("fp32", set_metrics({"num-examples": 2.5}), "bad-examples"),
    "inf examples": ("fp32", set_metrics({"num-examples": float("inf")}), "bad-examples"),
    "a list of examples": ("fp32", set_metrics({"num-examples": [4, 4]}), "bad-examples"),
    "a NaN loss": (
        "fp32",
        set_metrics({"num-examples": 8, "loss-exit-1": float("nan")}),
        "bad-metrics",
    ),
    "a list as loss": (
        "fp32",
        set_metrics({"num-examples": 8, "loss-exit-1": [1.0, 2.0]}),
        "bad-metrics",
    ),
    "a loss of an exit not held": (
        "fp32",
        set_metrics({"num-examples": 8, "loss-exit-2": 1.0}),
        "bad-metrics",
    ),
    "a loss of exit 'x'": (
        "fp32",
        set_metrics({"num-examples": 8, "loss-exit-x": 1.0}),
        "bad-metrics",
    ),
}


@pytest.mark.parametrize(("codec", "tamper", "reason"), CASES.values(), ids=CASES.keys())
def test_a_bad_reply_is_dropped_with_its_reason_and_the_round_aggregates_the_rest(
    codec, tamper, reason
):
    strategy = make_strategy(codec)
    sent = send(strategy)
    replies = [honest_reply(sent[node], codec, seed=node) for node in sent if node != BAD]
    wire, metrics = tamper(honest_wire(sent[BAD], codec, seed=0), {"num-examples": 8})
    replies.append(reply(sent[BAD], wire, metrics))
    aggregated, _ = strategy.aggregate_train(1, replies)
    traffic = strategy.traffic[(1, "train")]
    assert aggregated is not None
    assert traffic.reasons == {BAD: reason} and reason in REASONS
    assert traffic.reason_counts() == {reason: 1}
    assert sorted(traffic.up) == sorted(set(sent) - {BAD})
    assert len(traffic.dropped[BAD]) < 300


def test_replies_without_arrays_error_replies_and_unplanned_nodes_are_dropped():
    strategy = make_strategy()
    sent = send(strategy)
    stray = Message(sent[DEEP].content, dst_node_id=99, message_type="train")
    replies = [
        honest_reply(sent[SHALLOW[0]], "fp32", seed=1),
        reply(sent[SHALLOW[1]], None, {"num-examples": 8}),
        reply(sent[SHALLOW[2]], ConfigRecord({"a": 1}), {"num-examples": 8}),
        Message(Error(code=0, reason="the device ran out of battery"), reply_to=sent[DEEP]),
        honest_reply(stray, "fp32", seed=2),
    ]
    aggregated, _ = strategy.aggregate_train(1, replies)
    traffic = strategy.traffic[(1, "train")]
    assert aggregated is not None
    assert traffic.reasons == {
        SHALLOW[1]: "malformed",
        SHALLOW[2]: "malformed",
        DEEP: "client-error",
        99: "not-profiled",
    }
    assert "out of battery" in traffic.dropped[DEEP]


def test_ffa_refuses_a_changed_frozen_a_as_the_rule():
    strategy = make_strategy(rule=FFA())
    sent = send(strategy)
    replies = []
    for node in sent:
        wire = honest_wire(sent[node], "fp32", seed=node)
        for key in [key for key in wire if key.endswith(".A")]:  # A stays frozen...
            wire[key] = Array(np.zeros(wire[key].shape, np.float32))
        if node == BAD:  # ...except on this node
            wire[A] = Array(np.ones((2, IN), np.float32))
        replies.append(reply(sent[node], wire, {"num-examples": 8}))
    assert strategy.aggregate_train(1, replies)[0] is not None
    traffic = strategy.traffic[(1, "train")]
    assert traffic.reasons == {BAD: "rule"} and "frozen" in traffic.dropped[BAD]


def outlier_round(ratio, size):
    strategy = make_strategy(limits=ReplyLimits(outlier_norm_ratio=ratio))
    sent = send(strategy)
    replies = [honest_reply(sent[node], "fp32", seed=node) for node in sent if node != BAD]
    replies.append(reply(sent[BAD], honest_wire(sent[BAD], "fp32", 0, size), {"num-examples": 8}))
    strategy.aggregate_train(1, replies)
    return strategy.traffic[(1, "train")]


def test_a_change_far_beyond_the_cohorts_is_dropped_unless_the_check_is_off():
    traffic = outlier_round(ratio=10.0, size=0.5)  # 50 x the others' changes
    assert traffic.reasons == {BAD: "norm-outlier"}
    assert "x the median" in traffic.dropped[BAD]
    assert not outlier_round(ratio=10.0, size=0.05).dropped  # 5 x: within the cohort
    assert not outlier_round(ratio=0.0, size=0.5).dropped


def test_holders_at_a_higher_rank_are_not_outliers_for_their_larger_factors():
    # Node 14 holds trunk.0 at rank 4, the others at rank 2: twice the values, same RMS.
    strategy = make_strategy(limits=ReplyLimits(outlier_norm_ratio=1.5))
    sent = send(strategy)
    strategy.aggregate_train(1, [honest_reply(sent[node], "fp32", seed=node) for node in sent])
    assert not strategy.traffic[(1, "train")].dropped


def test_bad_evaluation_replies_are_dropped_and_the_rest_averaged():
    strategy = make_strategy()
    messages = strategy.configure_evaluate(1, to_record(global_arrays()), ConfigRecord(), None)
    sent = {message.metadata.dst_node_id: message for message in messages}
    good = {"num-tokens": 10, "loss-exit-1": 2.0, "accuracy-exit-1": 0.5}
    replies = [
        reply(sent[SHALLOW[0]], None, good),
        reply(sent[SHALLOW[1]], None, {**good, "loss-exit-1": float("inf")}),
        reply(sent[SHALLOW[2]], None, {**good, "num-tokens": 0}),
        reply(sent[DEEP], None, {**good, "accuracy-exit-3": 1.0}),
    ]
    result = strategy.aggregate_evaluate(1, replies)
    assert dict(result) == pytest.approx(
        {"loss-exit-1": 2.0, "accuracy-exit-1": 0.5, "perplexity-exit-1": np.exp(2.0)}
    )
    assert strategy.traffic[(1, "evaluate")].reasons == {
        SHALLOW[1]: "bad-metrics",
        SHALLOW[2]: "bad-examples",
        DEEP: "bad-metrics",
    }


def test_drops_are_counted_per_reason_in_the_row_and_in_tensorboard(tmp_path):
    traffic = RoundTraffic()
    traffic.drop(1, "norm-outlier", "far out")
    traffic.drop(2, "bad-values", "NaN")
    traffic.drop(3, "bad-values", "inf")
    row = round_row(4, {}, traffic, None, [], 1.0)
    assert row["dropped_reasons"] == {"bad-values": 2, "norm-outlier": 1}
    recorder = RoundRecorder(tmp_path)
    recorder.record(row)
    recorder.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    assert scalars["round/dropped"] == 3
    assert scalars["dropped/bad-values"] == 2 and scalars["dropped/norm-outlier"] == 1


# ---- the setup: checked before any node is asked, one sentence each ----


def tiers_with(root, device):
    (root / "tiers.toml").write_text(
        TIERS.replace("[device]\nmemory-gb = 0.0008\nrank = 2", device)
    )


SETUPS = {
    "unknown model": ({"model": "tiny9"}, "No model preset or path named 'tiny9'"),
    "missing checkpoint": ({"model": "/nowhere/model"}, "/nowhere/model does not exist"),
    "impossible exits": ({"model": "bad-exits"}, "Exit 9 is beyond the model's 4 layers"),
    "unknown rule": ({"rule": "fedprox"}, "Unknown rule 'fedprox'"),
    "unknown codec": ({"codec": "int4"}, "Unknown codec 'int4'"),
    "unknown robust": ({"robust": "krum"}, "Unknown robust 'krum'"),
    "trim ratio 0.5": ({"trim-ratio": 0.5}, r"trim-ratio must be in \[0, 0.5\)"),
    "negative clip norm": ({"clip-norm": -1.0}, "clip-norm must be 0"),
    "outlier ratio 0.5": ({"outlier-norm-ratio": 0.5}, "outlier-norm-ratio must be 0"),
    "unknown tier": ({"tier-mix": "device:1,phone:2"}, "Unknown tier 'phone'"),
    "tier mix short of min-nodes": (
        {"tier-mix": "device:1,edge:1"},
        r"tier-mix 'device:1,edge:1' has fewer nodes \(2\) than min-nodes \(3\)",
    ),
    "tier mix of zeros": ({"tier-mix": "device:0"}, r"has fewer nodes \(0\) than min-nodes \(3\)"),
    "tier mix not pairs": ({"tier-mix": "device=3"}, "is not a list of tier:count pairs"),
    "missing data": ({"dataset": "/nowhere/plays.txt"}, "is neither shakespeare nor chatterbot"),
    "missing checkpoints to resume": ({"resume": "/nowhere/checkpoints"}, "No checkpoint at"),
}


@pytest.fixture
def bad_exits_preset(root):
    preset = (root / "presets" / "tiny3.toml").read_text()
    (root / "presets" / "bad-exits.toml").write_text(preset.replace("[1, 2, 4]", "[2, 9]"))
    return root


@pytest.mark.parametrize(("overrides", "message"), SETUPS.values(), ids=SETUPS.keys())
def test_a_bad_setup_stops_the_server_app_with_one_sentence(
    bad_exits_preset, caplog, overrides, message
):
    app = make_server_app(run_config(bad_exits_preset, **overrides))
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with caplog.at_level(logging.ERROR, logger="famflow"), pytest.raises(RunStopped) as stopped:
        app(grid=None, context=context)
    assert stopped.value.exit_code >= 100  # Flower's error exit codes: the run fails
    errors = [r for r in caplog.records if r.name == "famflow" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    sentence = errors[0].getMessage().removeprefix("error: ")
    assert sentence == str(stopped.value) and "\n" not in sentence
    assert re.search(message, sentence)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("[device]\nmemory-gb = 0.0008\nrank = 0", "needs memory-gb > 0 and rank >= 1"),
        ("[device]\nmemory-gb = 1e-6\nrank = 2", "Tier device .* holds no branch of tiny3"),
        ("[device]\nrank = 2", "is not a valid tiers file"),
    ],
)
def test_a_bad_tier_is_one_sentence(root, device, message):
    tiers_with(root, device)
    with pytest.raises(FamflowError, match=message):
        FederationConfig.from_run_config(run_config(root)).check_setup()


def test_nodes_with_unusable_profiles_are_left_out(root, caplog):
    config = FederationConfig.from_run_config(run_config(root, **{"min-nodes": 1}))
    good = {"tier": "edge", "device": "cpu", "exit": 2, "rank": 4, "memory-gb": 1.0}
    profiles = {
        1: good,
        2: {**good, "exit": 3},
        3: {**good, "rank": 0},
        4: {**good, "exit": "abc"},
        5: {**good, "device": "tpu"},
        6: {"tier": "edge"},
    }
    with caplog.at_level(logging.WARNING, logger="famflow.server"):
        assert usable_profiles(config, profiles) == {1: good}
    assert "node 2 left out: its exit 3 is not one of the family's exits [1, 2, 4]" in caplog.text
    assert "node 3 left out: its LoRA rank 0 is not a whole number >= 1" in caplog.text
    config = FederationConfig.from_run_config(run_config(root))
    with pytest.raises(FamflowError, match=r"Only 1 of 6 nodes sent a usable profile"):
        usable_profiles(config, profiles)


def test_flower_logs_a_stopped_run_without_its_traceback():
    log_progress()
    assert any(isinstance(f, DropRunStoppedTraceback) for f in logging.getLogger("flwr").filters)
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    flower = logging.getLogger("flwr.test")  # Flower's own "flwr" logger carries the filter
    flower.addHandler(handler)
    flower.addFilter(DropRunStoppedTraceback())
    try:
        raise RunStopped("tier-mix has fewer nodes (1) than min-nodes (2): fix it.")
    except RunStopped as error:
        flower.error("ServerApp raised an exception", exc_info=error)
    try:
        raise ValueError("a bug")
    except ValueError as error:
        flower.error("ServerApp raised an exception", exc_info=error)
    flower.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "ServerApp raised an exception"
    assert lines[1] == "ServerApp raised an exception" and "Traceback" in lines[2]
