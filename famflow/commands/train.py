"""``famflow train-local``: centralized training of branches on one machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from famflow.commands.argtypes import non_negative_int, positive_int
from famflow.familial.errors import FamflowError

if TYPE_CHECKING:
    from famflow.familial.lora import LoraSettings
    from famflow.familial.training import TrainConfig


def _exit_weights(text: str) -> dict[int, float]:
    """``10=0.5,20=1`` -> {10: 0.5, 20: 1.0}."""
    try:
        pairs = (item.split("=") for item in text.split(","))
        return {int(depth): float(weight) for depth, weight in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DEPTH=WEIGHT,..., got {text!r}") from None


def _add_common(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("model", help="preset name (configs/models) or local checkpoint path")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="shakespeare", help="shakespeare, chatterbot or a path")
    data.add_argument("--seq-len", type=positive_int, default=64)
    data.add_argument("--max-examples", type=positive_int, default=None)
    data.add_argument("--validation-fraction", type=float, default=0.1)
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=positive_int, default=80)
    train.add_argument("--batch-size", type=positive_int, default=4)
    train.add_argument("--grad-accum", type=positive_int, default=1)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--warmup-steps", type=int, default=0)
    train.add_argument("--min-lr-ratio", type=float, default=0.1)
    train.add_argument("--exit-weights", type=_exit_weights, default=None, help="10=1,20=0.5")
    train.add_argument("--distill", type=float, default=0.0, help="self-distillation weight")
    train.add_argument("--temperature", type=float, default=1.0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-blocks", type=positive_int, default=64)
    train.add_argument(
        "--calibration-blocks",
        type=non_negative_int,
        default=64,
        help="fit shallow exits' full translators in closed form first (0: off)",
    )
    parser.add_argument("--adapters", type=Path, default=None, help="start from exit adapters")
    parser.add_argument("--out", type=Path, default=Path(out), help=f"output (default {out})")


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    local = sub.add_parser("train-local", help="centralized LoRA fine-tuning of branches")
    _add_common(local, "runs/train-local")
    local.add_argument("--branch", type=int, action="append", help="exit depth (default: all)")
    lora = local.add_argument_group("LoRA")
    lora.add_argument("--rank", type=positive_int, default=8)
    lora.add_argument("--alpha", type=float, default=16.0)
    lora.add_argument("--dropout", type=float, default=0.0)
    lora.add_argument("--targets", default=None, help="comma-separated module names")
    lora.add_argument("--freeze-a", action="store_true", help="FFA-LoRA: A shared and frozen")
    lora.add_argument("--no-lora", action="store_true", help="train exit adapters only")
    lora.add_argument("--no-exit-adapters", action="store_true", help="train LoRA only")
    local.set_defaults(run=cmd_train_local)


def _train_config(args: argparse.Namespace, train_lora: bool, exit_adapters: bool) -> TrainConfig:
    from famflow.familial.training import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        exit_weights=args.exit_weights,
        distill_weight=args.distill,
        distill_temperature=args.temperature,
        train_lora=train_lora,
        train_exit_adapters=exit_adapters,
        seed=args.seed,
    )


def _run(
    args: argparse.Namespace,
    branches: list[int],
    lora: LoraSettings | None,
    train_config: TrainConfig,
) -> None:
    from famflow.familial.data import DataConfig, prepare_data
    from famflow.familial.local_training import train_branch
    from famflow.familial.presets import resolve_model
    from famflow.familial.tokenizer import load_tokenizer

    spec = resolve_model(args.model)
    data_config = DataConfig(
        name=args.data,
        seq_len=args.seq_len,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        max_examples=args.max_examples,
    )
    max_length = int(spec.base_config().max_position_embeddings)
    splits = prepare_data(data_config, load_tokenizer(spec), max_length=max_length)
    validation = splits.validation[: args.eval_blocks]
    print(
        f"{spec.name} on {args.data}: {len(splits.train)} training and {len(validation)} "
        f"validation blocks of {args.seq_len} tokens"
    )
    summary = {}
    for depth in branches:
        out = args.out if len(branches) == 1 else args.out / f"branch-{depth}"
        metrics = train_branch(
            spec,
            depth,
            splits.train,
            validation,
            train_config,
            lora,
            out,
            args.adapters,
            args.calibration_blocks,
        )
        summary[str(depth)] = metrics
        train = metrics["train"]
        print(
            f"branch {spec.exit_label(depth)}: {train['steps']} steps, "
            f"{train['tokens_per_second']:.0f} tokens/s, loss {train['first_loss']:.3f} -> "
            f"{train['last_loss']:.3f}; written to {out}"
        )
        for exit_depth, after in metrics["after"].items():
            before = metrics["before"][exit_depth]
            print(
                f"  exit {exit_depth:>4}: perplexity {before['perplexity']:.4g} -> "
                f"{after['perplexity']:.4g}, accuracy {before['accuracy']:.3f} -> "
                f"{after['accuracy']:.3f}"
            )
    if len(branches) > 1:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")


def cmd_train_local(args: argparse.Namespace) -> None:
    from famflow.familial.lora import LoraSettings
    from famflow.familial.presets import resolve_model
    from famflow.familial.sizing import DEFAULT_LORA_TARGETS

    if args.no_lora and args.no_exit_adapters:
        raise FamflowError("--no-lora and --no-exit-adapters leave nothing to train: drop one.")
    spec = resolve_model(args.model)
    branches = args.branch or spec.family.exits
    for depth in branches:
        spec.family.check_exit(depth)
    targets = tuple(args.targets.split(",")) if args.targets else DEFAULT_LORA_TARGETS
    lora = None
    if not args.no_lora:
        lora = LoraSettings(
            rank=args.rank,
            alpha=args.alpha,
            dropout=args.dropout,
            targets=targets,
            freeze_a=args.freeze_a,
            seed=args.seed,
        )
    exit_adapters = not args.no_exit_adapters and spec.family.adapters is not None
    if args.no_lora and not exit_adapters:
        raise FamflowError(
            f"{spec.name} has no exit adapters, so --no-lora leaves nothing to train: "
            "add [family.adapters] to its preset or train LoRA."
        )
    _run(args, branches, lora, _train_config(args, not args.no_lora, exit_adapters))
