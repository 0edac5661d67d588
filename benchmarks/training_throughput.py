"""Training throughput: famflow's loop vs a minimal hand-written PyTorch loop, same branch/batches.

Both loops train the same LoRA + exit adapters of the same SmolLM2 branch on the same Shakespeare
blocks with AdamW and the multi-exit loss; famflow's adds the cosine schedule, gradient
clipping, accumulation bookkeeping and per-exit loss logging. The two alternate for ``--repeats``
rounds so that machine noise hits both; the table shows the median tokens/s and their ratio.

    .venv/bin/python benchmarks/training_throughput.py [--branch 30] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from famflow.familial.data import DataConfig, prepare_data
from famflow.familial.loading import load_branch
from famflow.familial.lora import LoraSettings, attach_lora, set_trainable
from famflow.familial.model import FamilialLM
from famflow.familial.presets import resolve_model
from famflow.familial.tokenizer import load_tokenizer
from famflow.familial.training import TrainConfig, next_token_loss, train


def plain_loop(model: FamilialLM, blocks: torch.Tensor, steps: int, batch_size: int) -> float:
    """The baseline: forward, summed exit losses, backward, AdamW step. Returns seconds."""
    set_trainable(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=0.0)
    exits = model.held_exits
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        input_ids = blocks[step * batch_size : (step + 1) * batch_size]
        logits = model(input_ids, exits=exits).logits
        loss = sum(next_token_loss(logits[depth], input_ids) for depth in exits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def famflow_loop(model: FamilialLM, blocks: torch.Tensor, steps: int, batch_size: int) -> float:
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, min_lr_ratio=0.1)
    return train(model, blocks[: steps * batch_size], config).seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--branch", type=int, default=None, help="default: the deepest")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    spec = resolve_model(args.model)
    branch = args.branch or spec.family.exits[-1]
    data = DataConfig(name="shakespeare", seq_len=args.seq_len, max_examples=4000)
    blocks = prepare_data(data, load_tokenizer(spec)).train
    needed = args.steps * args.batch_size
    if len(blocks) < needed:
        raise SystemExit(f"Only {len(blocks)} blocks, need {needed}: lower --steps.")
    tokens = needed * args.seq_len
    loops = {"plain PyTorch loop": plain_loop, "famflow train()": famflow_loop}
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, loop in loops.items():
            model = attach_lora(load_branch(spec, branch), LoraSettings(rank=8))
            loop(model, blocks, 1, args.batch_size)  # warm-up step, not timed
            model = attach_lora(load_branch(spec, branch), LoraSettings(rank=8))
            rates[name].append(tokens / loop(model, blocks, args.steps, args.batch_size))

    print(
        f"{spec.name} branch {branch} (exits {spec.family.exits_up_to(branch)}), "
        f"{args.steps} steps x {args.batch_size} x {args.seq_len} tokens, {args.repeats} repeats, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'loop':<22} {'median tokens/s':>16} {'all runs':>28}")
    for name, values in rates.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<22} {statistics.median(values):>16.0f} {runs:>28}")
    baseline = statistics.median(rates["plain PyTorch loop"])
    ours = statistics.median(rates["famflow train()"])
    print(f"famflow time / plain time: {baseline / ours:.3f}x (goal: <= 1.10x)")


if __name__ == "__main__":
    main()
