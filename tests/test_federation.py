import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from safetensors.numpy import load_file

from famflow.__main__ import main
from famflow.clients.task import get_data
from famflow.familial.calibration import lens_statistics, solve_translator
from famflow.familial.inference import generate
from famflow.familial.loading import load_branch
from famflow.familial.local_training import load_trained_branch
from famflow.familial.presets import resolve_model
from famflow.federation.config import FederationConfig
from famflow.server.records import read_rows
from tests.federation_setup import run_config, simulate

pytestmark = pytest.mark.slow


def test_three_branch_sizes_train_in_one_federation(root):
    config = run_config(root, rule="flexlora", **{"export-formats": "hf,gguf,peft"})
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

    # Every exit's standalone exports reproduce the refreshed branch outside famflow.
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    prompt = tokens[:1, :6]
    for depth in spec.family.exits:
        exported = root / "run" / "export" / f"exit-{depth}"
        branch = load_trained_branch(spec, depth, exported, exits=[depth])
        with torch.no_grad():
            expected = branch(tokens, exits=[depth]).logits[depth]
        greedy = generate(branch, prompt, depth, max_new_tokens=8)[0].tolist()
        seen = outside_famflow(exported, tokens, prompt, root / f"outside-{depth}.pt")
        torch.testing.assert_close(seen["hf_logits"], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(seen["peft_logits"], expected, atol=1e-4, rtol=1e-4)
        assert seen["hf_greedy"] == seen["gguf_greedy"] == greedy
        origin = json.loads((exported / "hf" / "export.json").read_text())
        run_id = rows[-1]["run_id"]
        assert (origin["run_id"], origin["round"], origin["exit"]) == (run_id, 2, depth)

    # famflow export writes the same branch from the run's latest checkpoint.
    assert main(["export", str(root / "run"), "--exit", "2", "--out", str(root / "again")]) == 0
    again = load_file(root / "again" / "exit-2" / "hf" / "model.safetensors")
    served = load_file(root / "run" / "export" / "exit-2" / "hf" / "model.safetensors")
    assert sorted(again) == sorted(served)
    for name, tensor in served.items():
        np.testing.assert_allclose(again[name], tensor, atol=1e-6)


OUTSIDE = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

exported, out = sys.argv[1], sys.argv[2]
tokens = torch.tensor(json.loads(sys.argv[3]))
prompt = torch.tensor(json.loads(sys.argv[4]))
hf = AutoModelForCausalLM.from_pretrained(exported + "/hf").eval()
gguf_dir = exported + "/gguf"
name = json.load(open(gguf_dir + "/export.json"))["files"][0]
gguf = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name).eval()
adapter = json.load(open(exported + "/peft/adapter_config.json"))
base = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"])
peft = PeftModel.from_pretrained(base, exported + "/peft").eval()
greedy = dict(max_new_tokens=8, do_sample=False, eos_token_id=None)
with torch.no_grad():
    seen = {
        "hf_logits": hf(tokens).logits,
        "peft_logits": peft(tokens).logits,
        "hf_greedy": hf.generate(prompt, **greedy)[0].tolist(),
        "gguf_greedy": gguf.generate(prompt, **greedy)[0].tolist(),
    }
assert not [m for m in sys.modules if m.split(".")[0] == "famflow"], "famflow was imported"
torch.save(seen, out)
"""


def outside_famflow(exported, tokens, prompt, out) -> dict:
    """The hf, gguf and peft exports in a process that never imports famflow."""
    arguments = [str(exported), str(out), json.dumps(tokens.tolist()), json.dumps(prompt.tolist())]
    done = subprocess.run(
        [sys.executable, "-c", OUTSIDE, *arguments], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


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
        weight = solve_translator(first[depth] + second[depth])
        key = f"exit.{depth}.translator.proj"
        np.testing.assert_allclose(checkpoint[f"{key}.weight"], weight, atol=1e-5)
        assert f"{key}.bias" not in checkpoint
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
