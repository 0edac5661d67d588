"""Centralized fine-tuning of one branch: evaluate, train, evaluate, save (train-local)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from famflow.familial.calibration import calibrate
from famflow.familial.errors import FamflowError
from famflow.familial.evaluation import ExitMetrics, evaluate
from famflow.familial.family_io import ADAPTERS_FILE, save_exit_adapters, saved_branch_depth
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora
from famflow.familial.model import FamilialLM
from famflow.familial.peft_export import (
    PEFT_WEIGHTS_FILE,
    load_peft_adapter,
    read_lora_settings,
    save_peft_adapter,
)
from famflow.familial.presets import ModelSpec
from famflow.familial.training import TrainConfig, train

logger = logging.getLogger("famflow.familial")
METRICS_FILE = "metrics.json"


def _table(metrics: dict[int, ExitMetrics]) -> dict[str, dict[str, Any]]:
    return {str(depth): asdict(m) for depth, m in metrics.items()}


def train_branch(
    spec: ModelSpec,
    exit_depth: int,
    train_blocks: torch.Tensor,
    validation_blocks: torch.Tensor,
    config: TrainConfig,
    lora: LoraSettings | None,
    out_dir: Path,
    adapters: Path | None = None,
    calibration_blocks: int = 0,
) -> dict[str, Any]:
    """Train branch ``exit_depth`` and write its adapters and ``metrics.json`` into ``out_dir``.

    ``lora`` None trains exit adapters only, with the trunk frozen (``famflow familialize``).
    ``calibration_blocks`` > 0 first fits the shallow exits' full translators in closed form on
    that many training blocks (``familial.calibration``); ``before`` is measured ahead of it.
    """
    branch = load_branch(spec, exit_depth, adapters=adapters)
    if lora is not None:
        attach_lora(branch, lora)
    before = evaluate(branch, validation_blocks)
    logger.info("branch %s before: %s", exit_depth, _summary(before))
    if calibration_blocks:
        fitted = calibrate(branch, train_blocks[:calibration_blocks])
        logger.info("branch %s: calibrated the translators of exits %s", exit_depth, fitted)
    result = train(branch, train_blocks, config)
    after = evaluate(branch, validation_blocks)
    logger.info("branch %s after: %s", exit_depth, _summary(after))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if lora is not None and config.train_lora:
        save_peft_adapter(branch, out_dir, base_model=str(spec.path or spec.name))
    if branch.family.adapters is not None and config.train_exit_adapters:
        save_exit_adapters(branch, out_dir)
    metrics = {
        "model": spec.name,
        "branch": exit_depth,
        "exits": branch.held_exits,
        "lora": asdict(lora) if lora is not None else None,
        "train_config": asdict(config),
        "train": {
            "steps": result.steps,
            "tokens": result.tokens,
            "seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second,
            "first_loss": result.losses[0],
            "last_loss": result.losses[-1],
        },
        "before": _table(before),
        "after": _table(after),
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def load_trained_branch(
    spec: ModelSpec, exit_depth: int, directory: Path, exits: list[int] | None = None
) -> FamilialLM:
    """A branch with what ``train_branch`` wrote into ``directory``: exit adapters and LoRA."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FamflowError(
            f"No directory at {directory}: pass the --out directory of train-local or familialize."
        )
    has_exit_adapters = (directory / ADAPTERS_FILE).is_file()
    has_lora = (directory / PEFT_WEIGHTS_FILE).is_file()
    if not (has_exit_adapters or has_lora):
        raise FamflowError(
            f"{directory} holds neither {ADAPTERS_FILE} nor {PEFT_WEIGHTS_FILE}: pass a "
            "directory written by famflow train-local or familialize."
        )
    branch = load_branch(
        spec, exit_depth, exits=exits, adapters=directory if has_exit_adapters else None
    )
    if has_lora:
        attach_lora(branch, read_lora_settings(directory))
        load_peft_adapter(branch, directory)
    return branch.eval()


def trained_branch_depth(directory: Path) -> int | None:
    """The branch an adapter directory was trained on: ``family.json``'s deepest held exit, else
    the ``branch`` in train-local's ``metrics.json``; None when neither says."""
    directory = Path(directory)
    saved = saved_branch_depth(directory)
    if saved is not None or not (directory / METRICS_FILE).is_file():
        return saved
    try:
        branch = json.loads((directory / METRICS_FILE).read_text()).get("branch")
    except (json.JSONDecodeError, AttributeError):
        return None
    return int(branch) if isinstance(branch, int) else None


def _summary(metrics: dict[int, ExitMetrics]) -> str:
    return ", ".join(f"exit {d} ppl {m.perplexity:.4g}" for d, m in metrics.items())
