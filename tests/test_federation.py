import json

import numpy as np
import pytest
from flwr.app import Context, Message
from safetensors.numpy import load_file

from familial.loading import load_branch
from familial.local_training import load_trained_branch
from familial.presets import resolve_model
from server.records import read_rows
from tests.federation_setup import run_config, simulate, write_federation_files

pytestmark = pytest.mark.slow


@pytest.fixture
def root(tmp_path, monkeypatch):
    for key, value in write_federation_files(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_three_branch_sizes_train_in_one_federation(root):
    config = run_config(root, rule="flexlora", **{"export-merged": True})
    simulate(config)
    rows = read_rows(root / "run")
    assert [row["round"] for row in rows] == [0, 1, 2]
    nodes = rows[1]["nodes"].values()
    assert sorted((n["tier"], n["exit"], n["rank"]) for n in nodes) == [
        ("cloud", 4, 8),
        ("device", 1, 2),
        ("edge", 2, 4),
    ]
    assert not rows[1]["dropped"] and all(n["bytes_up"] > 0 for n in nodes)
    # The device branch sends only trunk layer 0 and exit 1, at rank 2: far fewer bytes.
    by_tier = {n["tier"]: n for n in nodes}
    assert (
        by_tier["device"]["bytes_up"] < by_tier["edge"]["bytes_up"] < by_tier["cloud"]["bytes_up"]
    )
    for depth in ("1", "2", "4"):
        assert rows[-1]["exits"][depth]["perplexity"] < rows[0]["exits"][depth]["perplexity"]

    checkpoint = load_file(root / "run" / "checkpoints" / "round-2.safetensors")
    assert checkpoint["trunk.3.mlp.down_proj.A"].shape == (8, 64)
    assert (root / "run" / "tensorboard").is_dir()
    assert any(
        p.name.startswith("events.out.tfevents") for p in (root / "run" / "tensorboard").iterdir()
    )

    spec = resolve_model("tiny3")
    for depth in spec.family.exits:
        exported = root / "run" / "export" / f"exit-{depth}"
        assert json.loads((exported / "adapter_config.json").read_text())["r"] == 8
        branch = load_trained_branch(spec, depth, exported, exits=[depth])
        assert branch.held_exits == [depth]

    # Merged weights = base + (alpha / r) B A, under the plain model's names.
    exported = root / "run" / "export" / "exit-2"
    lora = load_file(exported / "adapter_model.safetensors")
    merged = load_file(exported / "merged_model.safetensors")
    base = load_branch(spec, 2, exits=[2]).state_dict()
    prefix = "base_model.model.model.layers.1.mlp.up_proj"
    delta = 2.0 * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
    weight = "model.layers.1.mlp.up_proj.weight"
    np.testing.assert_allclose(merged[weight], base[weight].numpy() + delta, atol=1e-5)
    assert np.abs(delta).max() > 1e-4


def fail_device_training(msg: Message, context: Context, call_next):
    if msg.metadata.message_type == "train" and context.node_config["partition-id"] == 0:
        raise RuntimeError("the device ran out of battery")
    return call_next(msg, context)


def poison_edge_update(msg: Message, context: Context, call_next):
    reply = call_next(msg, context)
    if msg.metadata.message_type == "train" and context.node_config["partition-id"] == 1:
        arrays = reply.content["arrays"]
        key = next(iter(arrays))
        arrays[key] = type(arrays[key])(np.full(arrays[key].shape, np.nan, dtype=np.float32))
    return reply


def test_failing_and_malicious_replies_are_dropped_and_the_round_goes_on(root):
    simulate(
        run_config(root, **{"num-server-rounds": 1}),
        mods=[fail_device_training, poison_edge_update],
    )
    row = read_rows(root / "run")[1]
    dropped = {row["nodes"][node]["tier"]: reason for node, reason in row["dropped"].items()}
    assert "out of battery" in dropped["device"]
    assert "NaN" in dropped["edge"] or "inf" in dropped["edge"]
    assert "cloud" not in dropped
    assert row["exits"]["4"]["perplexity"] < read_rows(root / "run")[0]["exits"]["4"]["perplexity"]


def test_resume_continues_at_the_next_round_with_identical_state(root):
    straight_run = {"out-dir": str(root / "straight"), "evaluate-every": 2}
    simulate(run_config(root, **{"num-server-rounds": 3, **straight_run}))
    evaluated = [bool(row["exits"]) for row in read_rows(root / "straight")]
    assert evaluated == [True, False, True, True]  # before, every 2nd round, and the last
    checkpoints = root / "straight" / "checkpoints"
    (checkpoints / "round-3.json").rename(root / "round-3.json")  # as if stopped after round 2
    resumed_run = {"out-dir": str(root / "resumed"), "resume": str(checkpoints)}
    simulate(run_config(root, **{"num-server-rounds": 3, **resumed_run}))
    assert [row["round"] for row in read_rows(root / "resumed")] == [3]
    straight = load_file(checkpoints / "round-3.safetensors")
    resumed = load_file(root / "resumed" / "checkpoints" / "round-3.safetensors")
    assert set(straight) == set(resumed)
    for key in straight:
        np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-5, atol=1e-6, err_msg=key)
