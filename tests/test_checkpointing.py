"""Gradient checkpointing (TrainConfig.gradient_checkpointing, familial.chunked_loss): the same
loss and gradients as keeping every activation, and the memory it buys a tier."""

from __future__ import annotations

import pytest
import torch

from famflow.clients.task import node_profile
from famflow.familial.config import ExitAdapterConfig
from famflow.familial.errors import FamflowError
from famflow.familial.hardware import GIB
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora
from famflow.familial.presets import resolve_model
from famflow.familial.sizing import BranchFit, largest_fitting_branch, training_memory_bytes
from famflow.familial.training import TrainConfig, step_loss_of, train, trainable_setup
from famflow.federation.config import FederationConfig
from tests.conftest import random_spec

SPECS = {
    "shared-head": random_spec([2, 4]),
    # exit 2 with its own norm, translator and decoder layer (Kangaroo-style)
    "adapted": random_spec([2, 4], ExitAdapterConfig(translator="full", extra_layer=True)),
}


def _ids() -> torch.Tensor:
    return torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("distill_weight", [0.0, 0.5])
@pytest.mark.parametrize("family", sorted(SPECS))
def test_checkpointed_chunks_give_the_loss_and_gradients_of_the_whole_batch(
    family, distill_weight, monkeypatch
):
    monkeypatch.setattr(
        "famflow.familial.chunked_loss.CHUNK_ELEMENTS", 7 * 128
    )  # 7 positions a chunk
    branch = attach_lora(load_branch(SPECS[family]), LoraSettings(rank=4))
    results = []
    for checkpointed in (False, True):
        config = TrainConfig(
            gradient_checkpointing=checkpointed, distill_weight=distill_weight, seed=1
        )
        weights, exits, parameters = trainable_setup(branch, config)
        branch.train()
        branch.gradient_checkpointing = checkpointed
        loss, per_exit = step_loss_of(branch, _ids(), exits, weights, config)
        loss.backward()
        results.append((loss.detach(), per_exit, [p.grad.clone() for p in parameters]))
        branch.zero_grad(set_to_none=True)
    (loss, per_exit, grads), (chunked, chunked_per_exit, chunked_grads) = results
    torch.testing.assert_close(chunked, loss)
    assert chunked_per_exit.keys() == per_exit.keys() == {2, 4}
    for depth in per_exit:
        torch.testing.assert_close(chunked_per_exit[depth].detach(), per_exit[depth].detach())
    assert any(g.abs().sum() > 0 for g in grads)
    for mine, theirs in zip(chunked_grads, grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_training_with_checkpointing_follows_the_same_trajectory():
    spec = SPECS["shared-head"]
    blocks = torch.randint(0, 128, (16, 24), generator=torch.Generator().manual_seed(2))
    losses = []
    for checkpointed in (False, True):
        branch = attach_lora(load_branch(spec), LoraSettings(rank=4))
        config = TrainConfig(steps=3, batch_size=4, gradient_checkpointing=checkpointed)
        losses.append(train(branch, blocks, config).losses)
        assert branch.gradient_checkpointing is False and not branch.training
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_checkpointing_lets_a_tier_hold_a_deeper_branch_only_when_asked():
    spec = resolve_model("smollm2-135m")
    kept, recomputed = (
        training_memory_bytes(spec, 20, 4, 4, 64, gradient_checkpointing=flag)
        for flag in (False, True)
    )
    assert recomputed < 0.75 * GIB < kept
    allowed = ("fp32", "int8", "nf4")
    memory = 0.75 * GIB
    assert largest_fitting_branch(spec, memory, 4, 4, 64, allowed, "off") == BranchFit(10, "fp32")
    deeper = largest_fitting_branch(spec, memory, 4, 4, 64, allowed, "auto")
    assert deeper is not None and deeper.exit > 10 and deeper.gradient_checkpointing
    # with room to spare, auto keeps every activation (the faster way)
    roomy = largest_fitting_branch(spec, 32 * GIB, 4, 4, 64, allowed, "auto")
    assert roomy == BranchFit(30, "fp32", gradient_checkpointing=False)
    assert largest_fitting_branch(spec, 32 * GIB, 4, 4, 64, allowed, "on") == BranchFit(
        30, "fp32", gradient_checkpointing=True
    )
    config = FederationConfig(model="smollm2-135m", gradient_checkpointing="auto")
    profile = node_profile(config, {"memory-gb": 0.75, "rank": 4, "weights": "fp32,int8,nf4"})
    assert (profile["exit"], profile["weights"], profile["gradient-checkpointing"]) == (
        deeper.exit,
        deeper.weights,
        True,
    )


def test_checkpointing_is_set_for_every_tier_or_per_tier_and_bad_settings_name_the_fix():
    assert FederationConfig(gradient_checkpointing="on").checkpointing_of("edge") == "on"
    per_tier = FederationConfig(gradient_checkpointing="device:auto, cloud:on")
    assert [per_tier.checkpointing_of(t) for t in ("device", "edge", "cloud", None)] == [
        "auto",
        "off",
        "on",
        "off",
    ]
    for wrong in ("yes", "device:maybe"):
        with pytest.raises(FamflowError, match=f"Unknown gradient-checkpointing '{wrong}': use"):
            FederationConfig(gradient_checkpointing=wrong)
    with pytest.raises(FamflowError, match="set gradient-checkpointing = off or dp = false"):
        FederationConfig(gradient_checkpointing="auto", dp=True, dp_noise_multiplier=1.0)
