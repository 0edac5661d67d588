import json

import pytest
import torch
from safetensors.torch import load_file

from famflow.__main__ import main
from famflow.familial.family_io import read_draft_vocabulary
from famflow.familial.loading import load_branch
from famflow.familial.presets import load_preset

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York.\n" * 40
TINY_WITH_ADAPTERS = """
name = "tiny-adapters"
seed = 0
[source]
kind = "random"
[family]
exits = [2, 4]
[family.adapters]
norm = true
translator = "low-rank"
translator_rank = 4
[config]
model_type = "llama"
vocab_size = 256
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 4
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 128
tie_word_embeddings = true
"""


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "richard.txt"
    path.write_text(TEXT)
    return path


def test_train_local_writes_peft_adapters_and_metrics_per_branch(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train-local", "tiny", "--data", str(corpus), "--seq-len", "16", "--steps", "3"]
    assert main([*args, "--lr", "1e-2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "branch 2: 3 steps" in printed and "exit    4: perplexity" in printed
    for depth in (2, 4):
        branch_dir = out / f"branch-{depth}"
        config = json.loads((branch_dir / "adapter_config.json").read_text())
        assert config["r"] == 8 and config["task_type"] == "CAUSAL_LM"
        weights = load_file(branch_dir / "adapter_model.safetensors")
        layers = {int(k.split(".")[4]) for k in weights}
        assert layers == set(range(depth))
        metrics = json.loads((branch_dir / "metrics.json").read_text())
        assert sorted(metrics["after"]) == [str(e) for e in (2, 4) if e <= depth]
        assert metrics["train"]["tokens"] == 3 * 4 * 16
    summary = json.loads((out / "metrics.json").read_text())
    assert sorted(summary) == ["2", "4"]


def test_familialize_distills_lower_exits_with_their_own_layers(corpus, tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "tiny-adapters.toml").write_text(TINY_WITH_ADAPTERS)
    monkeypatch.setenv("FAMFLOW_PRESETS", str(presets))
    monkeypatch.setenv("FAMFLOW_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "family"
    args = ["familialize", "tiny-adapters", "--prompt-data", str(corpus), "--data", str(corpus)]
    args += ["--prompts", "12", "--held-out-prompts", "3", "--new-tokens", "8", "--seq-len", "16"]
    args += ["--corpus-blocks", "4", "--eval-blocks", "2", "--steps", "30", "--batch-size", "4"]
    assert main([*args, "--lr", "1e-2", "--draft-vocab", "64", "--out", str(out)]) == 0
    assert not (out / "adapter_model.safetensors").exists()
    saved = load_file(out / "exit_adapters.safetensors")
    assert any(k.startswith("exits.2.layer.") for k in saved)
    assert not any(k.startswith("exits.4.layer.") for k in saved)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distillation"]["last_loss"] < metrics["distillation"]["first_loss"]
    assert 0 <= metrics["after"]["own_continuations"]["2"] <= 1
    assert len(list((tmp_path / "cache" / "continuations").glob("*.safetensors"))) == 2
    assert len(read_draft_vocabulary(out, 256)) == metrics["distillation"]["draft_vocabulary"]

    spec = load_preset("tiny-adapters")
    trained = load_branch(spec, adapters=out)  # takes the exit layers from family.json
    assert trained.has_exit_layer(2)
    fresh = load_branch(spec)
    trained_parameters = dict(trained.named_parameters())
    for name, param in fresh.named_parameters():
        if not name.startswith("exits.2."):
            assert param.equal(trained_parameters[name]), name
    ids = torch.tensor([[5, 17, 33, 2, 9]])
    assert torch.equal(fresh(ids).logits[4], trained(ids).logits[4])


def test_train_local_errors_are_one_sentence(corpus, tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["train-local", "tiny", "--steps", "1", "--out", str(tmp_path), *args]) == 1
        return capsys.readouterr().err

    assert "No dataset file at" in error("--data", str(tmp_path / "missing.jsonl"))
    assert "Sequence length 512 is beyond the model's 256 positions: use --seq-len <= 256." in (
        error("--data", str(corpus), "--seq-len", "512")
    )
    short = tmp_path / "short.txt"
    short.write_text("Exit, pursued by a bear.\n")
    assert "fewer than one block of 64" in error("--data", str(short))
    assert "is not one of this family's exits [2, 4]" in error(
        "--data", str(corpus), "--branch", "3"
    )
    missing = str(tmp_path / "missing.jsonl")
    assert main(["familialize", "tiny", "--prompt-data", missing, "--data", str(corpus)]) == 1
    assert "No dataset file at" in capsys.readouterr().err


def test_generate_serves_the_trained_branch_with_its_lora(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train-local", "tiny", "--data", str(corpus), "--seq-len", "16", "--steps", "30"]
    assert main([*args, "--lr", "2e-2", "--branch", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    generate = ["generate", "tiny", "--exit", "2", "--prompt", "Now is", "--max-new-tokens", "8"]
    assert main(generate) == 0
    untrained = capsys.readouterr().out
    assert main([*generate, "--adapters", str(out)]) == 0
    trained = capsys.readouterr().out
    assert trained != untrained
    assert main([*generate, "--adapters", str(tmp_path / "nowhere")]) == 1
    assert "No directory at" in capsys.readouterr().err
