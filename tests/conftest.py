"""Tiny models built from configs; nothing here touches the network."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)

from famflow.familial.config import ExitAdapterConfig, FamilyConfig
from famflow.familial.presets import ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent

TINY_SHAPE = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


def tiny_config(model_type: str = "llama", **overrides: object) -> PretrainedConfig:
    shape = {**TINY_SHAPE, **overrides}
    if model_type == "qwen3":
        shape.setdefault("head_dim", 8)
    return CONFIG_CLASSES[model_type](**shape)


def tiny_hf_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Random non-trivial norms, so that a wrong norm in an exit shows in the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


def truncated(model: PreTrainedModel, layers: int) -> PreTrainedModel:
    """The HF model cut to its first ``layers`` decoder layers (final norm + head kept)."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    short = AutoModelForCausalLM.from_config(config).eval()
    missing, _ = short.load_state_dict(model.state_dict(), strict=False)
    assert not [k for k in missing if k != "lm_head.weight"], missing
    return short


def spec_for(
    config: PretrainedConfig,
    exits: list[int],
    adapters: ExitAdapterConfig | None = None,
    **family: object,
) -> ModelSpec:
    return ModelSpec(
        name="test",
        config_dict=config.to_dict(),
        family=FamilyConfig(exits=exits, adapters=adapters, **family),
        source="config",
    )


@pytest.fixture(params=sorted(CONFIG_CLASSES))
def model_type(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(
        0, TINY_SHAPE["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1)
    )


def random_spec(
    exits: list[int],
    adapters: ExitAdapterConfig | None = None,
    model_type: str = "llama",
    **overrides: object,
) -> ModelSpec:
    """A tiny family whose weights transformers initialises from a seed (source ``random``)."""
    return ModelSpec(
        name=f"tiny-{model_type}",
        config_dict=tiny_config(model_type, **overrides).to_dict(),
        family=FamilyConfig(exits=exits, adapters=adapters),
        source="random",
    )


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp dir holding the tiny3 federation's preset, tiers and corpus, pointed at by env."""
    from tests.federation_setup import write_federation_files

    for key, value in write_federation_files(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are stamped with the identity of the process's task (a ServerApp's)."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` (no package, and site-packages may hold one by that name)."""
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run where CUDA is visible and are skipped, with why, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA GPU (torch.cuda.is_available() is False): run "
        "benchmarks/gpu_check.sh on a machine with one"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
