"""The cost of differential privacy: one DP-SGD step (Opacus) vs one plain step, same branch.

Both train the LoRA and exit adapters of the same SmolLM2 branch on the same Shakespeare blocks
with the multi-exit loss: ``familial.training.train`` against ``familial.privacy.train_private``
(per-sample gradients, per-sample clipping, Gaussian noise, Poisson batches of the same expected
size). The two alternate for ``--repeats`` rounds so that machine noise hits both; the table
shows the median seconds per step and their ratio.

    .venv/bin/python benchmarks/dp_step.py [--branch 10] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from famflow.familial.data import DataConfig, prepare_data
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora
from famflow.familial.presets import resolve_model
from famflow.familial.privacy import DPConfig, train_private
from famflow.familial.tokenizer import load_tokenizer
from famflow.familial.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--branch", type=int, default=None, help="default: the shallowest")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    spec = resolve_model(args.model)
    branch = args.branch or spec.family.exits[0]
    data = DataConfig(name="shakespeare", seq_len=args.seq_len, max_examples=2000)
    blocks = prepare_data(data, load_tokenizer(spec)).train
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=2e-3, min_lr_ratio=1.0)
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    seconds: dict[str, list[float]] = {"plain step": [], "DP-SGD step": []}
    for _ in range(args.repeats):
        model = attach_lora(load_branch(spec, branch), LoraSettings(rank=args.rank))
        seconds["plain step"].append(train(model, blocks, config).seconds / args.steps)
        model = attach_lora(load_branch(spec, branch), LoraSettings(rank=args.rank))
        private = train_private(model, blocks, config, dp)
        seconds["DP-SGD step"].append(private.result.seconds / args.steps)

    print(
        f"{spec.name} branch {branch}, LoRA r={args.rank}, {args.steps} steps x batch "
        f"{args.batch_size} x {args.seq_len} tokens, {args.repeats} repeats, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'step':<14} {'median s/step':>14} {'all runs':>24}")
    for name, values in seconds.items():
        runs = ", ".join(f"{v:.3f}" for v in values)
        print(f"{name:<14} {statistics.median(values):>14.3f} {runs:>24}")
    ratio = statistics.median(seconds["DP-SGD step"]) / statistics.median(seconds["plain step"])
    print(f"DP-SGD step / plain step: {ratio:.2f}x")


if __name__ == "__main__":
    main()
