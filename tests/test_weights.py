"""Quantized frozen trunks (familial.weights): bitsandbytes int8 / nf4 under PEFT LoRA."""

from __future__ import annotations

import dataclasses

import bitsandbytes as bnb
import pytest
import torch
from flwr.app import Context, RecordDict
from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
from peft.tuners.lora.bnb import Linear8bitLt as LoraLinear8bit

from famflow.clients.task import get_branch, node_profile, reply_arrays, train_round
from famflow.familial.config import ExitAdapterConfig, FamilyConfig
from famflow.familial.errors import FamflowError
from famflow.familial.hardware import GIB, Tier, load_tiers, parse_weights
from famflow.familial.loading import build_meta_branch, load_branch
from famflow.familial.lora import LoraSettings, attach_lora, lora_state
from famflow.familial.presets import resolve_model
from famflow.familial.sizing import (
    BranchFit,
    largest_fitting_branch,
    training_memory_bytes,
    weight_bytes,
)
from famflow.familial.training import TrainConfig, train
from famflow.familial.weights import frozen_linears
from famflow.federation.config import FederationConfig
from famflow.federation.contract import exchanged
from tests.conftest import random_spec

QUANTIZED = {
    "int8": (bnb.nn.Linear8bitLt, LoraLinear8bit),
    "nf4": (bnb.nn.Linear4bit, LoraLinear4bit),
}
# Largest logit error against the fp32 branch on the tiny model: int8 keeps a scale per row,
# nf4 one per 64 weights with 16 levels.
TOLERANCE = {"int8": 0.05, "nf4": 0.5}


def _ids(n: int = 16, length: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("weights", sorted(QUANTIZED))
def test_a_quantized_branch_trains_exact_fp32_lora_like_a_dense_one(weights):
    base_class, lora_class = QUANTIZED[weights]
    dense = load_branch("tiny")
    branch = load_branch("tiny", weights=weights)
    assert branch.weight_precision == weights
    linears = [m for m in branch.modules() if isinstance(m, base_class)]
    assert len(linears) == 4 * 7  # every projection of every trunk layer
    ids = _ids()
    with torch.no_grad():
        error = (branch(ids[:2]).logits[4] - dense(ids[:2]).logits[4]).abs().max()
    assert 0 < error < TOLERANCE[weights]

    branch, dense = attach_lora(branch, LoraSettings(rank=4)), attach_lora(dense, LoraSettings(4))
    assert sum(isinstance(m, lora_class) for m in branch.modules()) == 4 * 7
    state, reference = lora_state(branch), lora_state(dense)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    assert all(v.dtype == torch.float32 for v in state.values())
    # FFA's shared A comes from the seed and the name, so it matches the dense branch's
    assert torch.equal(state["trunk.0.self_attn.q_proj.A"], reference["trunk.0.self_attn.q_proj.A"])

    result = train(branch, ids, TrainConfig(steps=8, batch_size=4, lr=1e-2))
    assert result.losses[-1] < result.losses[0]
    frozen = [p for m in linears for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_a_ruyi_branch_quantizes_its_exit_layers_and_an_extra_layer_stays_dense():
    ruyi = dataclasses.replace(
        random_spec([2, 4], model_type="qwen3"),
        family=FamilyConfig(exits=[2, 4], exit_style="ruyi", shared_heads=False),
    )
    names = [name for name, _ in frozen_linears(build_meta_branch(ruyi), "ruyi")]
    assert "exits.2.layer.mlp.up_proj" in names and "model.layers.0.self_attn.q_proj" in names

    extra = random_spec([2, 4], ExitAdapterConfig(extra_layer=True))
    branch = load_branch(extra, weights="int8")
    assert type(branch.exits["2"].layer.mlp.up_proj) is torch.nn.Linear
    assert isinstance(branch.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8", "nf4"])
def test_sizing_counts_the_bytes_the_loaded_branch_holds(weights):
    spec = resolve_model("tiny")
    branch = load_branch(spec, weights=weights)
    held = sum(t.numel() * t.element_size() for t in [*branch.parameters(), *branch.buffers()])
    held -= sum(b.numel() * b.element_size() for b in branch.buffers())  # rotary, not weights
    quant_states = sum(
        t.numel() * t.element_size()
        for m in branch.modules()
        if isinstance(m, bnb.nn.Linear4bit)
        for t in (m.weight.quant_state.absmax, m.weight.quant_state.state2.absmax)
    )
    counted = weight_bytes(build_meta_branch(spec), weights, spec.torch_dtype)
    assert counted == pytest.approx(held + quant_states, rel=0.02)


def test_a_tier_holds_the_deepest_exit_at_the_most_precise_weights_that_fit():
    spec = resolve_model("smollm2-135m")
    needed = {w: training_memory_bytes(spec, 20, 4, 4, 64, weights=w) for w in ("fp32", "nf4")}
    assert needed["nf4"] < needed["fp32"]
    assert largest_fitting_branch(spec, 0.75 * GIB, 4, 4, 64) == BranchFit(10, "fp32")
    # measured on SmolLM2, quantized layers train in more memory than their weights save
    allowed = ("nf4", "fp32", "int8")
    assert largest_fitting_branch(spec, 0.75 * GIB, 4, 4, 64, allowed) == BranchFit(10, "fp32")
    assert largest_fitting_branch(spec, needed["nf4"], 4, 4, 64, ("fp32", "nf4")) == BranchFit(
        20, "nf4"
    )
    assert largest_fitting_branch(spec, needed["fp32"], 4, 4, 64, allowed) == BranchFit(20, "fp32")
    assert largest_fitting_branch(spec, 0.1 * GIB, 4, 4, 64, ("nf4",)) is None


def test_tiers_and_nodes_name_their_weights_and_bad_names_get_the_fix(tmp_path):
    path = tmp_path / "tiers.toml"
    path.write_text('[device]\nmemory-gb = 0.75\nrank = 4\nweights = ["fp32", "nf4"]\n')
    assert load_tiers(path)["device"] == Tier("device", 0.75, 4, ("fp32", "nf4"))
    assert parse_weights("int8, nf4") == ("int8", "nf4")
    path.write_text('[device]\nmemory-gb = 0.75\nrank = 4\nweights = "nf3"\n')
    with pytest.raises(FamflowError, match=r"Unknown weight precision 'nf3': use one of"):
        load_tiers(path)


def test_a_node_allowed_quantized_weights_trains_a_deeper_branch_and_replies_the_same_keys():
    config = FederationConfig(model="smollm2-135m")
    node = {"memory-gb": 0.75, "rank": 4}
    assert (node_profile(config, node)["exit"], node_profile(config, node)["weights"]) == (
        10,
        "fp32",
    )
    profile = node_profile(config, {**node, "memory-gb": 1.2, "weights": "int8,nf4"})
    assert (profile["exit"], profile["weights"]) == (20, "nf4")

    tiny = FederationConfig(model="tiny", local_steps=2)
    dense = get_branch(tiny, 4, 4, "cpu")
    quantized = get_branch(tiny, 4, 4, "cpu", "nf4")
    assert quantized is not dense and quantized is get_branch(tiny, 4, 4, "cpu", "nf4")
    received = {k: v.detach().numpy().copy() for k, v in exchanged(tiny, quantized).items()}
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    train_round(tiny, quantized, _ids(), TrainConfig(steps=2, batch_size=4), context)
    reply = reply_arrays(tiny, quantized, received)
    assert set(reply) == set(exchanged(tiny, dense))
    assert all(value.dtype.kind == "f" for value in reply.values())
