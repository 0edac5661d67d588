"""Refreshed branches at the end of a run: per exit a PEFT adapter and its exit adapters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clients.task import exchanged, lora_settings
from familial.family_io import save_exit_adapters
from familial.federation_config import FederationConfig
from familial.loading import load_branch
from familial.lora import attach_lora, load_trainable_state
from familial.peft_export import save_peft_adapter
from familial.presets import resolve_model
from strategies.rules import AggregationRule


def export_branches(
    config: FederationConfig,
    rule: AggregationRule,
    arrays: dict[str, np.ndarray],
    rank: int,
    out_dir: Path,
) -> list[Path]:
    """``OUT/exit-E/`` per exit, served by ``famflow generate MODEL --exit E --adapters``."""
    spec = resolve_model(config.model)
    written = []
    for depth in spec.family.exits:
        branch = attach_lora(load_branch(spec, depth, exits=[depth]), lora_settings(config, rank))
        keys = sorted(exchanged(config, branch))
        sliced = rule.slice_for(arrays, keys, rank, config.lora_alpha_ratio)
        load_trainable_state(
            branch,
            {key: torch.from_numpy(value) for key, value in sliced.items()},
            exit_adapters=config.train_exit_adapters,
            lora_a=config.rule != "ffa",
        )
        directory = out_dir / f"exit-{depth}"
        save_peft_adapter(branch, directory, base_model=str(spec.path or spec.name))
        if spec.family.adapters is not None:
            save_exit_adapters(branch, directory)
        written.append(directory)
    return written
