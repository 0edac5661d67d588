import json

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from famflow.clients.task import get_data
from famflow.familial.calibration import lens_statistics, solve_translator
from famflow.familial.loading import _random_state_dict, load_branch
from famflow.familial.local_training import load_trained_branch
from famflow.familial.presets import resolve_model
from famflow.federation.config import FederationConfig
from famflow.server.records import read_rows
from tests.conftest import truncated
from tests.federation_setup import run_config, simulate

pytestmark = pytest.mark.slow


def test_three_branch_sizes_train_in_one_federation(root):
    config = run_config(root, rule="flexlora", **{"export-merged": True})
    config["tier-local-steps"] = "cloud:5"
    simulate(config)
    rows = read_rows(root / "run")
    assert [row["round"] for row in rows] == [0, 1, 2]
    nodes = rows[1]["nodes"].values()
    assert sorted((n["tier"], n["exit"], n["rank"], n["local_steps"]) for n in nodes) == [
        ("cloud", 4, 8, 5),
        ("device", 1, 2, 3),
        ("edge", 2, 4, 3),
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

    # PEFT loads the export onto the plain HF model cut to the branch: the merged weights agree.
    hf = AutoModelForCausalLM.from_config(spec.base_config())
    hf.load_state_dict(_random_state_dict(spec))
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    plain = truncated(hf, 2)
    peft_logits = PeftModel.from_pretrained(truncated(hf, 2), exported).eval()(tokens).logits
    assert not torch.allclose(peft_logits, plain(tokens).logits, atol=1e-4)
    plain.load_state_dict({k: torch.from_numpy(v) for k, v in merged.items()}, strict=False)
    torch.testing.assert_close(peft_logits, plain(tokens).logits, atol=1e-4, rtol=1e-4)


def test_calibration_solves_the_summed_statistics_of_the_deepest_branch_holders(root):
    # lr so small that round 1 leaves the calibrated translators as they were.
    mix = {"tier-mix": "device:1,edge:1,cloud:2", "min-nodes": 4, "num-server-rounds": 1}
    config = run_config(root, lr=1e-12, **mix)
    simulate(config, nodes=4)
    setup = read_rows(root / "run")[0]
    uploads = {n["tier"]: n["bytes_up"] for n in setup["nodes"].values() if n["bytes_up"]}
    assert set(uploads) == {"cloud"}

    federation = FederationConfig.from_run_config(config)
    family = load_branch("tiny3")
    blocks = [
        get_data(federation, cloud).train[: federation.calibration_blocks] for cloud in (2, 3)
    ]
    first, second = (lens_statistics(family, b) for b in blocks)
    checkpoint = load_file(root / "run" / "checkpoints" / "round-1.safetensors")
    for depth in (1, 2):
        weight, bias = solve_translator(first[depth] + second[depth])
        key = f"exit.{depth}.translator.proj"
        np.testing.assert_allclose(checkpoint[f"{key}.weight"], weight, atol=1e-5)
        np.testing.assert_allclose(checkpoint[f"{key}.bias"], bias, atol=1e-5)
        assert np.abs(weight - np.eye(32)).max() > 1e-2
    np.testing.assert_allclose(checkpoint["exit.4.translator.proj.weight"], np.eye(32), atol=1e-6)


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
