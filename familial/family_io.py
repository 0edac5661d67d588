"""Saving and reading a family's exit parameters (adapters, Ruyi exit layers, exit heads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from famflow.familial.config import ExitAdapterConfig, FamilyConfig
from famflow.familial.errors import FamflowError
from famflow.familial.exits import refuse_pre_norm_translators
from famflow.familial.model import FamilialLM

ADAPTERS_FILE = "exit_adapters.safetensors"
FAMILY_FILE = "family.json"
DRAFT_VOCABULARY_FILE = "draft_vocabulary.safetensors"


def exit_parameters(model: FamilialLM) -> dict[str, torch.Tensor]:
    """The exits' own tensors under the plain model's names (LoRA factors left out)."""
    return {
        name.replace(".base_layer.", "."): tensor.detach().contiguous().cpu()
        for name, tensor in model.state_dict().items()
        if name.startswith("exits.") and ".lora_" not in name
    }


def save_exit_adapters(model: FamilialLM, directory: Path) -> Path:
    """Write ``exit_adapters.safetensors`` and ``family.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(exit_parameters(model), str(directory / ADAPTERS_FILE))
    family = {"family": model.family.to_dict(), "held_exits": model.held_exits}
    (directory / FAMILY_FILE).write_text(json.dumps(family, indent=2) + "\n")
    return directory


def read_exit_adapters(path: Path, family: FamilyConfig) -> dict[str, torch.Tensor]:
    """The saved exit parameters, refused when they were saved for a different family."""
    path = Path(path)
    file = path / ADAPTERS_FILE if path.is_dir() else path
    saved_family = file.parent / FAMILY_FILE
    if saved_family.is_file():
        saved = json.loads(saved_family.read_text()).get("family")
        if saved != family.to_dict():
            raise FamflowError(
                f"The exit adapters in {file.parent} were saved for family {saved}, not "
                f"{family.to_dict()}: load them with the model settings they were trained with."
            )
    if not file.is_file():
        raise FamflowError(f"No exit adapters at {file}: pass a directory saved by famflow.")
    try:
        tensors = load_file(str(file))
    except Exception as error:  # safetensors raises several types for a corrupt file
        raise FamflowError(
            f"{file} is not a readable safetensors file ({error}): re-save it."
        ) from None
    refuse_pre_norm_translators(tensors, file)
    return tensors


def saved_family(directory: Path) -> FamilyConfig | None:
    """The family settings ``family.json`` in ``directory`` records, if there is one."""
    file = Path(directory) / FAMILY_FILE
    if not Path(directory).is_dir() or not file.is_file():
        return None
    try:
        data = dict(json.loads(file.read_text())["family"])
        if isinstance(data.get("adapters"), dict):
            data["adapters"] = ExitAdapterConfig(**data["adapters"])
        return FamilyConfig.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise FamflowError(f"{file} is not a family famflow saved: re-save the adapters.") from None


def saved_branch_depth(directory: Path) -> int | None:
    """The deepest exit the branch saved in ``directory`` held, if ``family.json`` says so."""
    family = Path(directory) / FAMILY_FILE
    if not family.is_file():
        return None
    try:
        held = json.loads(family.read_text()).get("held_exits") or []
    except (json.JSONDecodeError, AttributeError):
        raise FamflowError(f"{family} is not valid JSON: re-save the adapters.") from None
    return max(int(depth) for depth in held) if held else None


def save_draft_vocabulary(directory: Path, vocabulary: torch.Tensor) -> Path:
    """Write the token ids the lower exits draft over (FR-Spec) into ``directory``."""
    file = Path(directory) / DRAFT_VOCABULARY_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({"token_ids": vocabulary.to(torch.int64).contiguous().cpu()}, str(file))
    return file


def read_draft_vocabulary(directory: Path | None, vocab_size: int) -> torch.Tensor | None:
    """The draft vocabulary saved in ``directory`` (None when there is none)."""
    file = Path(directory) / DRAFT_VOCABULARY_FILE if directory is not None else None
    if file is None or not file.is_file():
        return None
    try:
        ids = load_file(str(file))["token_ids"]
    except Exception:  # safetensors raises several types for a corrupt file
        ids = None
    if ids is None or ids.ndim != 1 or len(ids) == 0 or ids.dtype != torch.int64:
        raise FamflowError(f"{file} is not a draft vocabulary famflow saved: re-run familialize.")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise FamflowError(
            f"{file} names token ids outside the model's {vocab_size}: it belongs to another "
            "model; re-run familialize for this one."
        )
    return ids
