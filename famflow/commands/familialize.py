"""``famflow familialize``: self-distill a model's lower exits from its top exit."""

from __future__ import annotations

import argparse
from pathlib import Path

from famflow.commands.argtypes import non_negative_int, positive_int

DEFAULT_OUT = "runs/familialize"


def add_familialize_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "familialize",
        help="self-distill the lower exits from the top exit, on its own greedy continuations",
    )
    parser.add_argument("model", help="preset name (configs/models) or local checkpoint path")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--prompt-data",
        default="chatterbot,shakespeare",
        help="comma-separated corpora (or paths) whose questions / openings the top continues",
    )
    data.add_argument("--prompts", type=positive_int, help="per prompt corpus (default 1024)")
    data.add_argument("--held-out-prompts", type=positive_int, help="per corpus (default 16)")
    data.add_argument("--new-tokens", type=positive_int, help="per continuation (default 48)")
    data.add_argument("--data", help="corpus for text blocks (default shakespeare)")
    data.add_argument("--corpus-blocks", type=non_negative_int, help="default 64")
    data.add_argument("--eval-blocks", type=positive_int, help="default 32")
    data.add_argument("--seq-len", type=positive_int, help="default 64")
    train = parser.add_argument_group("distillation")
    train.add_argument(
        "--exit-layers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give every lower exit its own decoder layer (Ruyi's exits always have one)",
    )
    train.add_argument(
        "--layer-init",
        choices=("last", "depth"),
        help="start new exit layers from the last decoder layer (default) or the exit's own",
    )
    train.add_argument("--steps", type=positive_int, help="optimizer steps (default 600)")
    train.add_argument("--batch-size", type=positive_int, help="sequences per step (default 32)")
    train.add_argument("--lr", type=float, help="default 1e-3")
    train.add_argument("--temperature", type=float, help="default 1")
    train.add_argument(
        "--draft-vocab",
        type=non_negative_int,
        help="distill over the N most frequent tokens, saved for drafting (default 8192; "
        "0: the full vocabulary)",
    )
    train.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        help="bf16 autocast (default) or fp32 for the trunk pass and training",
    )
    train.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--adapters", type=Path, default=None, help="start from exit adapters")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT))
    parser.set_defaults(run=cmd_familialize)


def given(args: argparse.Namespace, **fields: str) -> dict[str, object]:
    """The config fields whose option was given (``field=option``); the rest keep the
    dataclass defaults, which live in one place."""
    return {
        name: getattr(args, option)
        for name, option in fields.items()
        if getattr(args, option) is not None
    }


def cmd_familialize(args: argparse.Namespace) -> None:
    from famflow.familial.familialize import FamilializeConfig, familialize
    from famflow.familial.presets import resolve_model
    from famflow.familial.self_distillation import DistillConfig

    distill = given(
        args,
        steps="steps",
        batch_size="batch_size",
        lr="lr",
        temperature="temperature",
        draft_vocab="draft_vocab",
        precision="precision",
        seed="seed",
    )
    data = given(
        args,
        prompts_per_source="prompts",
        held_out_prompts="held_out_prompts",
        new_tokens="new_tokens",
        corpus="data",
        corpus_blocks="corpus_blocks",
        eval_blocks="eval_blocks",
        seq_len="seq_len",
        layer_init="layer_init",
    )
    config = FamilializeConfig(
        prompt_sources=tuple(s for s in args.prompt_data.split(",") if s),
        exit_layers=args.exit_layers,
        distill=DistillConfig(**distill),
        **data,
    )
    familialize(resolve_model(args.model), args.out, config, args.adapters)
