"""Tiny Ruyi-format checkpoints, written here from raw tensors, load natively and match a plain
transformers model built from the same tensors: Ruyi-7B's layout on Qwen2 layers (ruyi_qwen2),
Ruyi2's on Qwen3 layers (ruyi_qwen3 in its code, ee_qwen3 in its published config)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from famflow.familial.loading import build_meta_branch, load_branch
from famflow.familial.presets import spec_from_path
from tests.conftest import TINY_SHAPE, tiny_config, tiny_hf_model

EXIT_POINTS = [1, 3]  # Ruyi's numbering: 0-based index of the last layer run
DEPTHS = [2, 4]


RUYI_TYPES = {"ruyi_qwen2": "qwen2", "ruyi_qwen3": "qwen3", "ee_qwen3": "qwen3"}


def ruyi_tensors(base: str = "qwen2", vocab_size: int = TINY_SHAPE["vocab_size"]):
    trunk = tiny_hf_model(tiny_config(base, vocab_size=vocab_size), seed=0)
    extra = tiny_hf_model(tiny_config(base, vocab_size=vocab_size), seed=1)
    tensors = {
        name: tensor.clone()
        for name, tensor in trunk.state_dict().items()
        if name.startswith(("model.embed_tokens", "model.layers"))
    }
    for name, tensor in extra.model.layers[EXIT_POINTS[0]].state_dict().items():
        tensors[f"model.eelayers.0.{name}"] = tensor.clone()
    generator = torch.Generator().manual_seed(2)
    for j in range(len(EXIT_POINTS)):
        tensors[f"model.norms.{j}.weight"] = (
            torch.rand(TINY_SHAPE["hidden_size"], generator=generator) + 0.5
        )
        tensors[f"lm_head.{j}.weight"] = torch.randn(
            vocab_size, TINY_SHAPE["hidden_size"], generator=generator
        )
    return tensors


def write_ruyi_checkpoint(directory, tensors, shards: int = 1, model_type: str = "ruyi_qwen2"):
    vocab_size = tensors["model.embed_tokens.weight"].shape[0]
    config = tiny_config(RUYI_TYPES[model_type], vocab_size=vocab_size).to_dict()
    config.update(
        model_type=model_type,
        early_exit_points=EXIT_POINTS,
        shared_heads=False,
        tie_word_embeddings=False,
        architectures=["RuyiQwen2ForCausalLM"],
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"))
        return directory
    names = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[shard::shards]}
        save_file(part, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


def reference_logits(
    tensors, exit_index: int, input_ids: torch.Tensor, base: str = "qwen2"
) -> torch.Tensor:
    """Ruyi's exit j, computed from the raw tensors with a plain Qwen2 or Qwen3 model."""
    point = EXIT_POINTS[exit_index]
    last = point == TINY_SHAPE["num_hidden_layers"] - 1
    config = tiny_config(base, num_hidden_layers=point + 1)
    model = AutoModelForCausalLM.from_config(config).eval()
    state = {k: v for k, v in tensors.items() if k.startswith("model.embed_tokens")}
    for i in range(point + 1):
        source = f"model.layers.{i}" if (i < point or last) else f"model.eelayers.{exit_index}"
        prefix = f"{source}."
        state.update(
            {
                f"model.layers.{i}.{k[len(prefix) :]}": v
                for k, v in tensors.items()
                if k.startswith(prefix)
            }
        )
    state["model.norm.weight"] = tensors[f"model.norms.{exit_index}.weight"]
    state["lm_head.weight"] = tensors[f"lm_head.{exit_index}.weight"]
    model.load_state_dict(state, strict=True)
    return model(input_ids).logits


@pytest.mark.parametrize(
    ("model_type", "shards"),
    [("ruyi_qwen2", 1), ("ruyi_qwen2", 2), ("ruyi_qwen3", 1), ("ee_qwen3", 2)],
)
def test_ruyi_checkpoint_exits_match_raw_tensors(tmp_path, tokens, model_type, shards):
    base = RUYI_TYPES[model_type]
    tensors = ruyi_tensors(base)
    if base == "qwen3":  # Qwen3 layers normalise queries and keys: their own tensors
        assert any(".self_attn.q_norm." in name for name in tensors)
    directory = write_ruyi_checkpoint(tmp_path / "ruyi", tensors, shards, model_type)
    spec = spec_from_path(directory)
    assert spec.family.exits == DEPTHS and spec.family.exit_style == "ruyi"
    assert spec.exit_label(2) == "2 (exit point 1)"
    assert spec.base_config().model_type == base
    for j, depth in enumerate(DEPTHS):
        branch = load_branch(spec, depth, exits=[depth]).eval()
        assert_close(branch(tokens).logits[depth], reference_logits(tensors, j, tokens, base))
    family = load_branch(spec).eval()
    together = family(tokens, exits=DEPTHS)
    for j, depth in enumerate(DEPTHS):
        assert_close(together.logits[depth], reference_logits(tensors, j, tokens, base))


def test_branch_only_loading_allocates_only_the_branch(tmp_path):
    spec = spec_from_path(write_ruyi_checkpoint(tmp_path / "ruyi", ruyi_tensors()))
    device_branch = load_branch(spec, 2, exits=[2])
    full = load_branch(spec, 4, exits=[4])

    def parameter_bytes(model):
        return sum(p.numel() * p.element_size() for p in model.parameters())

    meta = build_meta_branch(spec, 2, exits=[2])
    expected = sum(p.numel() for p in meta.parameters()) * 4
    assert parameter_bytes(device_branch) == expected
    assert len(device_branch.model.layers) == 1 and device_branch.exit_head(2).layer is not None
    assert parameter_bytes(device_branch) < parameter_bytes(full)
    assert not any(p.is_meta for p in device_branch.parameters())
