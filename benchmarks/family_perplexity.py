"""Per-exit perplexity on held-out Shakespeare before and after ``famflow train-local``.

Each branch of the default SmolLM2 family trains its LoRA and exit adapters (multi-exit loss
over the exits it holds) and is evaluated on the same held-out blocks before and after. The goal
is a usable family: the shallowest exit's perplexity within 5x of the deepest exit's, against
~1e7x through the untrained shared head.

    .venv/bin/python benchmarks/family_perplexity.py [--steps 80] [--lr 2e-3] [--variant full]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from famflow.familial.config import ExitAdapterConfig
from famflow.familial.data import DataConfig, prepare_data
from famflow.familial.local_training import train_branch
from famflow.familial.lora import LoraSettings
from famflow.familial.presets import ModelSpec, resolve_model
from famflow.familial.tokenizer import load_tokenizer
from famflow.familial.training import TrainConfig

VARIANTS = {
    "full": ExitAdapterConfig(norm=True, translator="full"),
    "low-rank": ExitAdapterConfig(norm=True, translator="low-rank", translator_rank=64),
    "extra-layer": ExitAdapterConfig(norm=True, translator="full", extra_layer=True),
}


def with_adapters(spec: ModelSpec, adapters: ExitAdapterConfig) -> ModelSpec:
    return replace(spec, family=replace(spec.family, adapters=adapters))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="full")
    parser.add_argument("--branch", type=int, action="append", help="default: every exit")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--distill", type=float, default=0.0)
    parser.add_argument(
        "--calibration-blocks",
        type=int,
        default=0,
        help="fit the shallow exits' full translators in closed form on this many blocks first",
    )
    parser.add_argument("--eval-blocks", type=int, default=64)
    parser.add_argument("--max-examples", type=int, default=6000)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()

    spec = with_adapters(resolve_model(args.model), VARIANTS[args.variant])
    data = DataConfig(name="shakespeare", seq_len=args.seq_len, max_examples=args.max_examples)
    splits = prepare_data(data, load_tokenizer(spec), max_length=2048)
    validation = splits.validation[: args.eval_blocks]
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr_ratio=0.1,
        distill_weight=args.distill,
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="famflow-perplexity-"))
    rows = []
    for depth in args.branch or spec.family.exits:
        metrics = train_branch(
            spec,
            depth,
            splits.train,
            validation,
            config,
            LoraSettings(rank=8),
            out / str(depth),
            calibration_blocks=args.calibration_blocks,
        )
        for exit_depth, after in metrics["after"].items():
            before = metrics["before"][exit_depth]
            rows.append((depth, int(exit_depth), before, after, metrics["train"]))

    print(
        f"{spec.name}, exit adapters {args.variant}, LoRA r=8 + exit adapters, lr {args.lr}, "
        f"{args.steps} steps x {args.batch_size} x {args.seq_len} tokens, distill "
        f"{args.distill}, {args.calibration_blocks} calibration blocks, {len(validation)} "
        f"held-out blocks, {torch.get_num_threads()} threads"
    )
    print(
        f"{'branch':>6} {'exit':>5} {'ppl before':>12} {'ppl after':>10} "
        f"{'acc before':>10} {'acc after':>9} {'agree after':>11} {'tokens/s':>9}"
    )
    for depth, exit_depth, before, after, train in rows:
        print(
            f"{depth:>6} {exit_depth:>5} {before['perplexity']:>12.4g} "
            f"{after['perplexity']:>10.4g} "
            f"{before['accuracy']:>10.3f} {after['accuracy']:>9.3f} "
            f"{after['agreement']:>11.3f} {train['tokens_per_second']:>9.0f}"
        )
    deepest = max(rows, key=lambda row: (row[0], row[1]))
    family = [row for row in rows if row[0] == deepest[0]]
    shallow = min(family, key=lambda row: row[1])
    ratio_after = shallow[3]["perplexity"] / deepest[3]["perplexity"]
    ratio_before = shallow[2]["perplexity"] / deepest[2]["perplexity"]
    print(
        f"branch {deepest[0]}: exit {shallow[1]} / exit {deepest[1]} perplexity "
        f"{ratio_before:.3g}x before, {ratio_after:.3g}x after (goal: <= 5x); outputs in {out}"
    )


if __name__ == "__main__":
    main()
