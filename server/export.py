"""Refreshed branches at the end of a run, and from a run's checkpoint later (``famflow export``).

``OUT/exit-E/`` per exit holds famflow's own adapters (PEFT LoRA of the family model and the exit
adapters, served by ``famflow generate MODEL --exit E --adapters``) and its ``export.json``;
the run config's ``export-formats`` adds standalone exports beside them
(``familial.branch_export``: ``hf/``, ``gguf/``, ``peft/``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from famflow.familial.branch_export import export_exit, source_tokenizer_pre
from famflow.familial.errors import FamflowError
from famflow.familial.export_formats import parse_formats
from famflow.familial.export_origin import ExportOrigin, exit_dir_name
from famflow.familial.family_io import save_exit_adapters
from famflow.familial.lora import attach_lora
from famflow.familial.model import FamilialLM
from famflow.familial.peft_export import save_peft_adapter
from famflow.familial.presets import resolve_model
from famflow.familial.tokenizer import load_tokenizer
from famflow.federation.config import FederationConfig
from famflow.federation.contract import exchanged, load_exchanged, lora_settings
from famflow.server.checkpoints import load_checkpoint
from famflow.strategies.rules import AggregationRule

logger = logging.getLogger("famflow.server")


def refreshed_branch(
    config: FederationConfig,
    rule: AggregationRule,
    arrays: dict[str, np.ndarray],
    rank: int,
    depth: int,
) -> FamilialLM:
    """Branch ``depth`` (its own exit only) with the run's global adapters loaded."""
    branch = attach_lora(config.load_branch(depth, exits=[depth]), lora_settings(config, rank))
    keys = sorted(exchanged(config, branch))
    sliced = rule.slice_for(arrays, keys, rank, config.lora_alpha_ratio)
    load_exchanged(config, branch, {key: torch.from_numpy(value) for key, value in sliced.items()})
    return branch.eval()


def export_branches(
    config: FederationConfig,
    rule: AggregationRule,
    arrays: dict[str, np.ndarray],
    rank: int,
    out_dir: Path,
    run: dict[str, Any] | None = None,
) -> list[Path]:
    """``OUT/exit-E/`` per exit, with the formats ``export-formats`` names.

    ``run``: ``run_id`` and ``round`` of what is exported, recorded in every export.
    """
    spec = config.model_spec()
    formats = parse_formats(config.export_formats)
    tokenizer = load_tokenizer(spec) if formats else None
    tokenizer_pre = source_tokenizer_pre(spec) if "gguf" in formats else "default"
    written = []
    for depth in spec.family.exits:
        branch = refreshed_branch(config, rule, arrays, rank, depth)
        directory = out_dir / exit_dir_name(depth)
        origin = ExportOrigin(
            model=config.model,
            exit=depth,
            run_id=(run or {}).get("run_id"),
            round=(run or {}).get("round"),
            source=str(out_dir.parent),
        )
        save_peft_adapter(branch, directory, base_model=config.model)
        if spec.family.adapters is not None:
            save_exit_adapters(branch, directory)
        origin.write(directory, format="famflow")
        if formats:
            assert tokenizer is not None
            export_exit(
                branch, depth, formats, directory, tokenizer, origin, tokenizer_pre=tokenizer_pre
            )
            logger.info("exit %d exported as %s into %s", depth, ", ".join(formats), directory)
        written.append(directory)
    return written


def saved_config(saved: dict[str, Any]) -> FederationConfig:
    """The run config a checkpoint recorded; keys a later famflow retired are left out."""
    known = {f.name for f in fields(FederationConfig)}
    return FederationConfig(**{k: v for k, v in saved.items() if k in known})


def checkpointed_branches(
    run_dir: Path, exits: list[int] | None = None
) -> Iterator[tuple[FamilialLM, ExportOrigin]]:
    """Each of ``exits`` (default: all the family's) from the run's latest checkpoint, read once."""
    round_number, arrays, state = load_checkpoint(Path(run_dir) / "checkpoints")
    if "config" not in state or "rank" not in state:
        raise FamflowError(
            f"The checkpoint in {run_dir} records no run config (an older famflow wrote it): "
            "export from its export/exit-E directory instead."
        )
    config = saved_config(state["config"])
    spec = resolve_model(config.model)
    for depth in exits or spec.family.exits:
        spec.family.check_exit(depth)
        branch = refreshed_branch(config, config.aggregation, arrays, int(state["rank"]), depth)
        origin = ExportOrigin(
            model=config.model,
            exit=depth,
            run_id=state.get("run_id"),
            round=round_number,
            source=str(Path(run_dir).resolve()),
        )
        yield branch, origin
