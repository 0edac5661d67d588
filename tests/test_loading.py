from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from famflow.__main__ import main
from famflow.familial import ExitAdapterConfig, FamflowError
from famflow.familial.family_io import save_exit_adapters
from famflow.familial.loading import load_branch
from famflow.familial.presets import resolve_model, spec_from_path
from tests.conftest import spec_for, tiny_config, tiny_hf_model, truncated

ADAPTERS = {"norm": True, "translator": "low-rank", "translator_rank": 4}


@pytest.fixture
def dense_dir(tmp_path):
    hf = tiny_hf_model(tiny_config("llama", tie_word_embeddings=True))
    hf.save_pretrained(tmp_path / "dense")
    return tmp_path / "dense", hf


def test_dense_branch_loads_from_local_directory(dense_dir, tokens):
    directory, hf = dense_dir
    spec = spec_from_path(directory, family={"exits": [2, 4]})
    branch = load_branch(spec, 2).eval()
    assert len(branch.model.layers) == 2
    assert branch.lm_head.weight is branch.model.embed_tokens.weight
    assert_close(branch(tokens).logits[2], truncated(hf, 2)(tokens).logits)
    assert_close(load_branch(spec).eval()(tokens).logits[4], hf(tokens).logits)


def test_exit_adapters_round_trip_through_save_and_load(dense_dir, tokens, tmp_path):
    directory, _ = dense_dir
    spec = spec_from_path(directory, family={"exits": [2, 4], "adapters": ADAPTERS})
    family = load_branch(spec)
    with torch.no_grad():
        for name, param in family.named_parameters():
            if name.startswith("exits."):
                param.add_(0.1 * torch.randn_like(param))
    save_exit_adapters(family, tmp_path / "family")
    reloaded = load_branch(spec, adapters=tmp_path / "family").eval()
    fresh = load_branch(spec).eval()
    family.eval()
    expected = family(tokens, exits=[2, 4]).logits
    for depth in (2, 4):
        assert_close(reloaded(tokens, exits=[2, 4]).logits[depth], expected[depth])
        assert not torch.allclose(fresh(tokens, exits=[depth]).logits[depth], expected[depth])
    device = load_branch(spec, 2, adapters=tmp_path / "family").eval()
    assert_close(device(tokens).logits[2], expected[2])


def test_wrong_path_is_one_clear_sentence(tmp_path):
    with pytest.raises(
        FamflowError, match=r"does not exist: pass an existing checkpoint directory\."
    ):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(FamflowError, match="No model preset or path named 'no-such-model'"):
        resolve_model("no-such-model")


def test_exit_beyond_layer_count_is_one_clear_sentence(dense_dir):
    spec = spec_from_path(dense_dir[0], family={"exits": [2, 4]})
    with pytest.raises(FamflowError, match=r"Exit 9 is beyond test's|Exit 9 is beyond .* 4 layers"):
        load_branch(spec, 9)
    with pytest.raises(FamflowError, match=r"Exit 3 is not one of this family's exits \[2, 4\]"):
        load_branch(spec, 3)


def test_corrupt_safetensors_is_one_clear_sentence(dense_dir):
    directory, _ = dense_dir
    spec = spec_from_path(directory, family={"exits": [2, 4]})
    (directory / "model.safetensors").write_bytes(b"\x00\x01 not safetensors at all")
    with pytest.raises(
        FamflowError, match=r"is not a readable safetensors file .*: re-download or re-convert it\."
    ):
        load_branch(spec, 2)


def test_truncated_safetensors_is_one_clear_sentence(dense_dir):
    directory, _ = dense_dir
    file = directory / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(FamflowError, match="re-download or re-convert it"):
        load_branch(spec_from_path(directory, family={"exits": [2, 4]}), 4)


def test_checkpoint_missing_a_tensor_names_it(dense_dir):
    from safetensors.torch import load_file, save_file

    directory, _ = dense_dir
    tensors = load_file(str(directory / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(FamflowError, match=r"has no tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_branch(spec_from_path(directory, family={"exits": [2, 4]}), 2)


def test_cli_reports_user_errors_in_one_line(capsys, tmp_path):
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("famflow: error:") and err.endswith(".")


def test_tiny_preset_loads_random_weights_deterministically(tokens):
    first = load_branch("tiny").eval()
    second = load_branch("tiny", 2).eval()
    assert_close(first(tokens, exits=[2]).logits[2], second(tokens).logits[2])


def test_adapters_of_another_family_are_refused_in_one_sentence(dense_dir, tmp_path):
    directory, _ = dense_dir
    trained = spec_from_path(directory, family={"exits": [2, 4], "adapters": ADAPTERS})
    save_exit_adapters(load_branch(trained), tmp_path / "family")
    other = spec_from_path(directory, family={"exits": [2, 4], "adapters": {"translator": "full"}})
    with pytest.raises(FamflowError, match="load them with the model settings they were trained"):
        load_branch(other, adapters=tmp_path / "family")


def test_random_weights_take_saved_exit_adapters(tmp_path, tokens):
    spec = replace(spec_for(tiny_config(), [2, 4], ExitAdapterConfig(**ADAPTERS)), source="random")
    family = load_branch(spec)
    with torch.no_grad():
        family.exit_head(2).norm.weight.mul_(1.5)
    save_exit_adapters(family, tmp_path / "family")
    reloaded = load_branch(spec, 2, adapters=tmp_path / "family").eval()
    family.eval()
    assert_close(reloaded(tokens).logits[2], family(tokens, exits=[2]).logits[2])
    assert not torch.allclose(
        load_branch(spec, 2).eval()(tokens).logits[2], reloaded(tokens).logits[2]
    )
