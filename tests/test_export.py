"""Standalone exports of an exit (hf, gguf, peft) reproduce famflow's branch, on tiny families of
both exit styles: shared-head with exit adapters (translator, own norm, extra layer) and Ruyi."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer

from famflow.__main__ import main
from famflow.familial.branch_export import export_exit, gguf_file_name
from famflow.familial.config import ExitAdapterConfig, FamilyConfig
from famflow.familial.errors import FamflowError
from famflow.familial.export_origin import ExportOrigin
from famflow.familial.inference import generate
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora, lora_modules
from famflow.familial.model import FamilialLM
from famflow.familial.peft_export import save_peft_adapter
from famflow.familial.presets import ModelSpec, resolve_model, spec_from_path
from famflow.familial.tokenizer import byte_tokenizer
from famflow.server.checkpoints import load_checkpoint, save_checkpoint
from tests.conftest import tiny_config
from tests.test_ruyi import RUYI_TYPES, ruyi_tensors, write_ruyi_checkpoint

VOCAB = 256  # the byte tokenizer's
PROMPT = torch.tensor([[72, 101, 108, 108, 111, 32, 119]])
STYLES = {
    "shared-head": ExitAdapterConfig(norm=True, translator="full"),
    "low-rank+layer": ExitAdapterConfig(norm=True, translator="low-rank", extra_layer=True),
    "plain": None,
}


def shared_head_spec(adapters: ExitAdapterConfig | None) -> ModelSpec:
    return ModelSpec(
        name="tiny-llama",
        config_dict=tiny_config("llama", vocab_size=VOCAB, tie_word_embeddings=True).to_dict(),
        family=FamilyConfig(exits=[2, 4], adapters=adapters),
        source="random",
    )


def ruyi_spec(directory: Path, model_type: str) -> ModelSpec:
    written = write_ruyi_checkpoint(
        directory, ruyi_tensors(RUYI_TYPES[model_type], vocab_size=VOCAB), model_type=model_type
    )
    byte_tokenizer().save_pretrained(str(written))
    return spec_from_path(written)


def family_spec(tmp_path: Path, family: str) -> ModelSpec:
    """``shared-head`` (low-rank translator, extra layer) or a Ruyi model type."""
    if family == "shared-head":
        return shared_head_spec(STYLES["low-rank+layer"])
    return ruyi_spec(tmp_path / "ruyi", family)


def trained(spec: ModelSpec, depth: int, rank: int = 4) -> FamilialLM:
    """Branch ``depth`` whose LoRA, translators and norms are all away from their start."""
    branch = attach_lora(load_branch(spec, depth), LoraSettings(rank=rank))
    generator = torch.Generator().manual_seed(depth)
    with torch.no_grad():
        for module in lora_modules(branch).values():
            weight = module.lora_B["default"].weight
            weight.copy_(0.1 * torch.randn(weight.shape, generator=generator))
        for name, param in branch.named_parameters():
            if name.startswith("exits.") and ".lora_" not in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return branch.eval()


def origin(depth: int) -> ExportOrigin:
    return ExportOrigin(model="tiny", exit=depth, run_id="run-x", round=3)


def check_hf_equals_branch(branch: FamilialLM, depth: int, directory: Path) -> None:
    export_exit(branch, depth, ["hf"], directory, byte_tokenizer(), origin(depth))
    plain = AutoModelForCausalLM.from_pretrained(str(directory / "hf")).eval()
    tokens = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = branch(tokens, exits=[depth]).logits[depth]
        assert_close(plain(tokens).logits, expected, rtol=1e-4, atol=1e-4)
    ours = generate(branch, PROMPT, depth, max_new_tokens=10)
    theirs = plain.generate(PROMPT, max_new_tokens=10, do_sample=False, eos_token_id=None)
    assert theirs.tolist() == ours.tolist()
    recorded = json.loads((directory / "hf" / "export.json").read_text())
    assert recorded == {
        "model": "tiny",
        "exit": depth,
        "run_id": "run-x",
        "round": 3,
        "source": "",
        "format": "hf",
        "dtype": "float32",
    }


@pytest.mark.parametrize("style", sorted(STYLES))
def test_hf_export_of_a_shared_head_exit_equals_the_branch(tmp_path, style):
    spec = shared_head_spec(STYLES[style])
    branch = trained(spec, 4)
    for depth in spec.family.exits:
        check_hf_equals_branch(branch, depth, tmp_path / f"exit-{depth}")
    config = json.loads((tmp_path / "exit-2" / "hf" / "config.json").read_text())
    extra = STYLES[style] is not None and STYLES[style].extra_layer
    assert config["num_hidden_layers"] == (3 if extra else 2)
    # Only the exit that reads through the tied shared head unchanged keeps it tied.
    assert config["tie_word_embeddings"] is (style == "plain")


@pytest.mark.parametrize("model_type", ["ruyi_qwen2", "ruyi_qwen3"])
def test_hf_export_of_a_ruyi_exit_equals_the_branch(tmp_path, model_type):
    spec = ruyi_spec(tmp_path / "ruyi", model_type)
    branch = trained(spec, 4)
    for depth in spec.family.exits:
        check_hf_equals_branch(branch, depth, tmp_path / f"exit-{depth}")
    config = json.loads((tmp_path / "exit-2" / "hf" / "config.json").read_text())
    assert config["model_type"] == RUYI_TYPES[model_type] and config["num_hidden_layers"] == 2


# Not Qwen3: transformers' GGUF reader leaves head_dim at Qwen3's default, 128 (the tiny one's
# is 8); llama.cpp reads it from attention.key_length, which the export writes.
@pytest.mark.parametrize("family", ["shared-head", "ruyi_qwen2"])
def test_gguf_export_reads_back_in_transformers_with_the_same_greedy_text(tmp_path, family):
    spec = family_spec(tmp_path, family)
    branch = trained(spec, 4)
    tokenizer = byte_tokenizer()
    prompt = tokenizer("To be, or not", return_tensors="pt").input_ids
    for depth in spec.family.exits:
        directory = tmp_path / f"exit-{depth}"
        export_exit(branch, depth, ["gguf"], directory, tokenizer, origin(depth))
        expected = generate(branch, prompt, depth, max_new_tokens=12)
        for gguf_type in ("f16", "q8_0"):
            name = gguf_file_name(origin(depth), gguf_type)
            plain = AutoModelForCausalLM.from_pretrained(
                str(directory / "gguf"), gguf_file=name
            ).eval()
            got = plain.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
            if gguf_type == "f16":
                assert got.tolist() == expected.tolist()
            else:  # 8-bit weights: the first tokens agree
                assert (
                    got[0, : prompt.shape[1] + 2].tolist()
                    == expected[0, : prompt.shape[1] + 2].tolist()
                )
        read_tokenizer = AutoTokenizer.from_pretrained(
            str(directory / "gguf"), gguf_file=gguf_file_name(origin(depth), "f16")
        )
        text = tokenizer.decode(expected[0])
        assert read_tokenizer.decode(read_tokenizer(text).input_ids) == text


@pytest.mark.parametrize("family", ["shared-head", "ruyi_qwen2"])
def test_peft_export_reproduces_the_branch_on_its_base(tmp_path, family):
    spec = family_spec(tmp_path, family)  # Ruyi: LoRA on the exits' own layers too
    branch = trained(spec, 4)
    tokens = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    for depth in spec.family.exits:
        directory = tmp_path / f"exit-{depth}"
        export_exit(branch, depth, ["peft"], directory, byte_tokenizer(), origin(depth))
        config = json.loads((directory / "peft" / "adapter_config.json").read_text())
        base_dir = Path(config["base_model_name_or_path"])
        assert base_dir == (directory / "peft" / "base").resolve()
        base = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
        with torch.no_grad():
            without = base(tokens).logits
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                adapted = PeftModel.from_pretrained(base, str(directory / "peft")).eval()
            assert not [w for w in caught if "missing adapter keys" in str(w.message)]
            expected = branch(tokens, exits=[depth]).logits[depth]
            assert_close(adapted(tokens).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(without, expected, atol=1e-3)


def test_export_refuses_what_it_cannot_write(tmp_path):
    spec = shared_head_spec(STYLES["shared-head"])
    no_lora = load_branch(spec, 4).eval()
    with pytest.raises(FamflowError, match="no LoRA adapters: export it as hf or gguf"):
        export_exit(no_lora, 4, ["peft"], tmp_path, byte_tokenizer(), origin(4))
    with pytest.raises(FamflowError, match=r"Unknown export format\(s\) \['onnx'\]"):
        export_exit(no_lora, 4, ["onnx"], tmp_path, byte_tokenizer(), origin(4))
    with pytest.raises(FamflowError, match="Exit 3 is not one of this family's exits"):
        export_exit(no_lora, 3, ["hf"], tmp_path, byte_tokenizer(), origin(3))


def test_famflow_export_writes_a_train_local_output_and_refuses_bad_sources(tmp_path, capsys):
    spec = resolve_model("tiny")
    branch = trained(spec, 4)
    save_peft_adapter(branch, tmp_path / "local", base_model="tiny")
    (tmp_path / "local" / "metrics.json").write_text(json.dumps({"branch": 4}))

    assert main(["export", str(tmp_path / "local"), "--exit", "2"]) == 1
    assert "does not record its model (no export.json): pass --model" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's usage error
        main(["export", str(tmp_path / "local"), "--format", "onnx"])
    assert "Unknown export format(s) ['onnx']" in capsys.readouterr().err

    argv = ["export", str(tmp_path / "local"), "--model", "tiny", "--exit", "2"]
    assert main(argv) == 0
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "local" / "hf")).eval()
    tokens = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = branch(tokens, exits=[2]).logits[2]
        assert_close(plain(tokens).logits, expected, rtol=1e-4, atol=1e-4)


def test_adapters_of_the_earlier_translator_placement_are_refused(tmp_path):
    old = {"exit.2.translator.proj.weight": np.eye(4), "exit.2.translator.proj.bias": np.zeros(4)}
    save_checkpoint(tmp_path / "checkpoints", 1, old, {"config": {}, "rank": 4})
    with pytest.raises(FamflowError, match="ran them before the norm: train or federate again"):
        load_checkpoint(tmp_path / "checkpoints")
