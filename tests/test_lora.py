import json

import pytest
import torch
from peft import PeftModel
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from famflow.familial import ExitAdapterConfig, FamflowError
from famflow.familial.family_io import save_exit_adapters
from famflow.familial.loading import _random_state_dict, load_branch
from famflow.familial.lora import (
    LoraSettings,
    attach_lora,
    load_trainable_state,
    lora_state,
    trainable_state,
)
from famflow.familial.peft_export import load_peft_adapter, save_peft_adapter
from famflow.familial.presets import spec_from_path
from famflow.familial.sizing import DEFAULT_LORA_TARGETS
from tests.conftest import random_spec, truncated
from tests.test_ruyi import ruyi_tensors, write_ruyi_checkpoint

MODULES = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
ADAPTERS = ExitAdapterConfig(norm=True, translator="low-rank", translator_rank=4)


def expected_lora_keys(prefix: str, layers: range) -> set[str]:
    return {
        f"{prefix}.{i}.{MODULES[t]}.{t}.{factor}"
        for i in layers
        for t in DEFAULT_LORA_TARGETS
        for factor in "AB"
    }


def randomize(state: dict[str, torch.Tensor], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in state.values():
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))


def test_canonical_keys_name_every_tensor_of_the_branch():
    spec = random_spec([2, 4], ADAPTERS)
    branch = attach_lora(load_branch(spec, 2), LoraSettings(rank=4))
    state = trainable_state(branch)
    exit_keys = {"exit.2.norm.weight", "exit.2.translator.down.weight"}
    exit_keys |= {"exit.2.translator.up.weight"}
    assert set(state) == expected_lora_keys("trunk", range(2)) | exit_keys
    assert state["trunk.1.mlp.down_proj.A"].shape == (4, 64)
    assert state["trunk.1.mlp.down_proj.B"].shape == (32, 4)
    assert set(trainable_state(branch, exit_adapters=False)) == expected_lora_keys(
        "trunk", range(2)
    )


def test_adapter_state_round_trips_exactly_and_refuses_misfits(tokens):
    spec = random_spec([2, 4], ADAPTERS)
    source = attach_lora(load_branch(spec, 4), LoraSettings(rank=4))
    randomize(trainable_state(source), seed=3)
    sent = {k: v.detach().clone() for k, v in trainable_state(source).items()}
    target = attach_lora(load_branch(spec, 4), LoraSettings(rank=4))
    load_trainable_state(target, sent)
    received = trainable_state(target)
    assert set(received) == set(sent)
    for key, tensor in sent.items():
        assert torch.equal(received[key], tensor), key
    source.eval(), target.eval()
    assert_close(target(tokens, exits=[2, 4]).logits[2], source(tokens, exits=[2, 4]).logits[2])

    with pytest.raises(FamflowError, match=r"missing \['trunk.0.mlp.down_proj.A'\]"):
        load_trainable_state(
            target, {k: v for k, v in sent.items() if k != "trunk.0.mlp.down_proj.A"}
        )
    with pytest.raises(FamflowError, match=r"unexpected \['trunk.9.self_attn.q_proj.A'\]"):
        load_trainable_state(target, {**sent, "trunk.9.self_attn.q_proj.A": torch.zeros(4, 32)})
    with pytest.raises(FamflowError, match="check the LoRA rank"):
        load_trainable_state(target, {**sent, "trunk.0.mlp.up_proj.A": torch.zeros(8, 32)})


def test_shared_keys_start_identical_in_every_branch():
    spec = random_spec([2, 4])
    device = trainable_state(attach_lora(load_branch(spec, 2), LoraSettings(rank=4, seed=7)))
    cloud = trainable_state(attach_lora(load_branch(spec, 4), LoraSettings(rank=4, seed=7)))
    assert set(device) < set(cloud)
    for key in device:
        assert torch.equal(device[key], cloud[key]), key
    other_seed = trainable_state(attach_lora(load_branch(spec, 2), LoraSettings(rank=4, seed=8)))
    assert not torch.equal(
        other_seed["trunk.0.self_attn.q_proj.A"], device["trunk.0.self_attn.q_proj.A"]
    )


def test_ruyi_exit_layers_get_lora_under_exit_names(tmp_path):
    spec = spec_from_path(write_ruyi_checkpoint(tmp_path / "ruyi", ruyi_tensors()))
    branch = attach_lora(load_branch(spec, 4), LoraSettings(rank=2))
    state = trainable_state(branch)
    # Exit 2 runs trunk layer 0 and its own layer; exit 4 runs trunk layers 0..3.
    assert set(state) == expected_lora_keys("trunk", range(4)) | expected_lora_keys(
        "exit", range(2, 3)
    )
    save_exit_adapters(branch, tmp_path / "exits")
    reloaded = load_branch(spec, 2, adapters=tmp_path / "exits")
    assert torch.equal(
        reloaded.exit_head(2).layer.self_attn.q_proj.weight,
        branch.exit_head(2).layer.self_attn.q_proj.base_layer.weight,
    )


def test_bad_lora_settings_are_one_sentence():
    with pytest.raises(FamflowError, match="rank must be at least 1"):
        LoraSettings(rank=0)
    with pytest.raises(FamflowError, match="match no linear layer"):
        attach_lora(load_branch(random_spec([2, 4]), 2), LoraSettings(targets=("qkv_fused",)))
    branch = attach_lora(load_branch(random_spec([2, 4]), 2), LoraSettings())
    with pytest.raises(FamflowError, match="already has LoRA"):
        attach_lora(branch, LoraSettings())


def test_exported_adapter_loads_into_peft_on_the_truncated_hf_model(model_type, tokens, tmp_path):
    spec = random_spec([2, 4], model_type=model_type)
    branch = attach_lora(load_branch(spec, 2, exits=[2]), LoraSettings(rank=4, alpha=8))
    randomize(trainable_state(branch), seed=5)
    save_peft_adapter(branch, tmp_path / "adapter", base_model="tiny")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"

    hf = AutoModelForCausalLM.from_config(spec.base_config())
    hf.load_state_dict(_random_state_dict(spec))
    short = truncated(hf, 2)
    plain = short(tokens).logits
    peft_model = PeftModel.from_pretrained(short, tmp_path / "adapter").eval()
    expected = branch.eval()(tokens).logits[2]
    assert_close(peft_model(tokens).logits, expected)
    assert not torch.allclose(plain, expected, atol=1e-3)


def test_peft_adapter_reloads_only_onto_its_branch(tokens, tmp_path):
    spec = random_spec([2, 4])
    branch = attach_lora(load_branch(spec, 2), LoraSettings(rank=4))
    randomize(trainable_state(branch), seed=6)
    save_peft_adapter(branch, tmp_path / "adapter")
    again = attach_lora(load_branch(spec, 2), LoraSettings(rank=4))
    load_peft_adapter(again, tmp_path / "adapter")
    assert_close(again.eval()(tokens).logits[2], branch.eval()(tokens).logits[2])
    deeper = attach_lora(load_branch(spec, 4), LoraSettings(rank=4))
    with pytest.raises(FamflowError, match="does not fit this branch"):
        load_peft_adapter(deeper, tmp_path / "adapter")
    with pytest.raises(FamflowError, match="has rank 4, this branch rank 8"):
        load_peft_adapter(
            attach_lora(load_branch(spec, 2), LoraSettings(rank=8)), tmp_path / "adapter"
        )


def test_shared_seed_a_of_a_lower_rank_is_the_leading_rows_of_a_higher_rank():
    # What makes heterogeneous-rank FFA exact: rank-r clients hold the first r rows of A.
    spec = random_spec([2, 4])
    low = lora_state(attach_lora(load_branch(spec, 2), LoraSettings(rank=4, freeze_a=True)))
    high = lora_state(attach_lora(load_branch(spec, 4), LoraSettings(rank=16, freeze_a=True)))
    for key, value in low.items():
        if key.endswith(".A"):
            assert_close(value, high[key][:4], rtol=0, atol=0)
