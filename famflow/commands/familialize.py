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
    data.add_argument("--prompts", type=positive_int, default=256, help="per prompt corpus")
    data.add_argument("--held-out-prompts", type=positive_int, default=16, help="per corpus")
    data.add_argument("--new-tokens", type=positive_int, default=48)
    data.add_argument("--data", default="shakespeare", help="corpus for text blocks")
    data.add_argument("--corpus-blocks", type=non_negative_int, default=64)
    data.add_argument("--eval-blocks", type=positive_int, default=32)
    data.add_argument("--seq-len", type=positive_int, default=64)
    train = parser.add_argument_group("distillation")
    train.add_argument(
        "--exit-layers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give every lower exit its own decoder layer (Ruyi's exits always have one)",
    )
    train.add_argument("--steps", type=positive_int, default=200)
    train.add_argument("--batch-size", type=positive_int, default=32, help="sequences per step")
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--temperature", type=float, default=1.0)
    train.add_argument(
        "--draft-vocab",
        type=non_negative_int,
        default=8192,
        help="distill over the N most frequent tokens (0: the full vocabulary)",
    )
    train.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapters", type=Path, default=None, help="start from exit adapters")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT))
    parser.set_defaults(run=cmd_familialize)


def cmd_familialize(args: argparse.Namespace) -> None:
    from famflow.familial.familialize import FamilializeConfig, familialize
    from famflow.familial.presets import resolve_model
    from famflow.familial.self_distillation import DistillConfig

    config = FamilializeConfig(
        prompt_sources=tuple(s for s in args.prompt_data.split(",") if s),
        prompts_per_source=args.prompts,
        held_out_prompts=args.held_out_prompts,
        new_tokens=args.new_tokens,
        corpus=args.data,
        corpus_blocks=args.corpus_blocks,
        eval_blocks=args.eval_blocks,
        seq_len=args.seq_len,
        exit_layers=args.exit_layers,
        distill=DistillConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            temperature=args.temperature,
            draft_vocab=args.draft_vocab,
            seed=args.seed,
        ),
    )
    familialize(resolve_model(args.model), args.out, config, args.adapters)
