"""Refreshed branches at the end of a run: per exit a PEFT adapter and its exit adapters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from famflow.familial.family_io import save_exit_adapters
from famflow.familial.loading import load_branch
from famflow.familial.lora import attach_lora, lora_modules
from famflow.familial.model import FamilialLM
from famflow.familial.peft_export import save_peft_adapter
from famflow.familial.presets import resolve_model
from famflow.federation.config import FederationConfig
from famflow.federation.contract import exchanged, load_exchanged, lora_settings
from famflow.strategies.rules import AggregationRule

MERGED_FILE = "merged_model.safetensors"


def save_merged_weights(branch: FamilialLM, path: Path) -> None:
    """The branch's weights with LoRA merged in, under the plain model's names."""
    for module in lora_modules(branch).values():
        module.merge()
    state = {
        name.replace(".base_layer.", "."): tensor.detach().contiguous().cpu()
        for name, tensor in branch.state_dict().items()
        if ".lora_" not in name
    }
    if branch.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(path))


def export_branches(
    config: FederationConfig,
    rule: AggregationRule,
    arrays: dict[str, np.ndarray],
    rank: int,
    out_dir: Path,
) -> list[Path]:
    """``OUT/exit-E/`` per exit, served by ``famflow generate MODEL --exit E --adapters``.

    With ``export-merged`` each directory also holds ``merged_model.safetensors``.
    """
    spec = resolve_model(config.model)
    written = []
    for depth in spec.family.exits:
        branch = attach_lora(load_branch(spec, depth, exits=[depth]), lora_settings(config, rank))
        keys = sorted(exchanged(config, branch))
        sliced = rule.slice_for(arrays, keys, rank, config.lora_alpha_ratio)
        load_exchanged(
            config, branch, {key: torch.from_numpy(value) for key, value in sliced.items()}
        )
        directory = out_dir / f"exit-{depth}"
        save_peft_adapter(branch, directory, base_model=str(spec.path or spec.name))
        if spec.family.adapters is not None:
            save_exit_adapters(branch, directory)
        if config.export_merged:
            save_merged_weights(branch, directory / MERGED_FILE)
        written.append(directory)
    return written
