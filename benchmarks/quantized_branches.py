"""What a tier can hold: each (exit, weight precision) trained the same way, memory measured.

Every configuration runs in its own process: load the branch with its frozen decoder layers in
the precision (``familial.weights``: fp32, or bitsandbytes int8 / nf4), attach LoRA r=8, train
the same steps on the same Shakespeare blocks, evaluate the branch's own exit on held-out
blocks. A thread samples the process's RSS every 10 ms; the table shows the peak while loading
and training, and that peak over the process's RSS just before the branch loaded (torch,
transformers and the data already in memory): the part a tier's memory budget must hold.
``--compute bf16`` adds rows trained under bf16 autocast, ``--checkpointing on`` rows trained
with gradient checkpointing (``TrainConfig.gradient_checkpointing``: layers and logits recomputed
in backward, the heap's slack bounded). ``--held-exits`` trains every exit the branch holds, as a
federation's node does, instead of the branch's own exit only. Ratios are against fp32 weights,
fp32 compute and no checkpointing at the same exit, measured in the same run.

    .venv/bin/python benchmarks/quantized_branches.py [--exits 10 20 30] [--steps 40]
        [--weights fp32 int8 nf4] [--compute fp32 bf16] [--checkpointing off on] [--held-exits]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from typing import Any

CHILD = "--child"


def run_one(
    model: str, depth: int, weights: str, compute: str, checkpointing: str, args: argparse.Namespace
) -> dict:
    import psutil
    import torch

    from famflow.familial.data import DataConfig, prepare_data
    from famflow.familial.evaluation import evaluate
    from famflow.familial.loading import load_branch
    from famflow.familial.lora import LoraSettings, attach_lora
    from famflow.familial.presets import resolve_model
    from famflow.familial.tokenizer import load_tokenizer
    from famflow.familial.training import TrainConfig, train

    torch.manual_seed(0)
    spec = resolve_model(model)
    data = DataConfig(name="shakespeare", seq_len=args.seq_len, max_examples=args.max_examples)
    splits = prepare_data(data, load_tokenizer(spec), max_length=2048)
    blocks = splits.train[: args.steps * args.batch_size]
    validation = splits.validation[: args.eval_blocks]
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    exits = None if args.held_exits else [depth]
    branch = load_branch(spec, depth, exits=exits, weights=weights)
    branch = attach_lora(branch, LoraSettings(rank=8))
    loaded = time.perf_counter() - start
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=2e-3,
        min_lr_ratio=0.1,
        precision=compute,
        gradient_checkpointing=checkpointing == "on",
    )
    result = train(branch, blocks, config)
    running.clear()
    sampler.join()
    metrics = evaluate(branch, validation, exits=[depth])[depth]
    return {
        "exit": depth,
        "weights": weights,
        "compute": compute,
        "checkpointing": checkpointing,
        "load_seconds": loaded,
        "tokens_per_second": result.tokens / result.seconds,
        "perplexity": metrics.perplexity,
        "peak_rss": peak[0],
        "over_baseline": peak[0] - baseline,
        "baseline_rss": baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--exits", type=int, nargs="+", default=None, help="default: every exit")
    parser.add_argument("--weights", nargs="+", default=["fp32", "int8", "nf4"])
    parser.add_argument("--compute", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--held-exits", action="store_true", help="train every held exit")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--eval-blocks", type=int, default=48)
    parser.add_argument("--max-examples", type=int, default=4000)
    parser.add_argument("--json", type=str, default=None, help="also write the rows here")
    parser.add_argument(CHILD, nargs=5, metavar=("MODEL", "EXIT", "WEIGHTS", "COMPUTE", "CKPT"))
    args = parser.parse_args()
    if args.child:
        model, depth, weights, compute, checkpointing = args.child
        print(json.dumps(run_one(model, int(depth), weights, compute, checkpointing, args)))
        return

    from famflow.familial.presets import resolve_model

    spec = resolve_model(args.model)
    exits = args.exits or spec.family.exits
    passed = [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in ("steps", "batch_size", "seq_len", "eval_blocks", "max_examples")
    ] + (["--held-exits"] if args.held_exits else [])
    rows: list[dict[str, Any]] = []
    for depth in exits:
        for compute, checkpointing, weights in itertools.product(
            args.compute, args.checkpointing, args.weights
        ):
            if compute != "fp32" and weights != "fp32":
                continue  # bf16 autocast is measured against fp32 weights only
            setting = [str(depth), weights, compute, checkpointing]
            command = [sys.executable, __file__, CHILD, spec.name, *setting, *passed]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(setting)} failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  measured exit {' '.join(setting)}", file=sys.stderr, flush=True)
    baseline = {
        r["exit"]: r
        for r in rows
        if (r["weights"], r["compute"], r["checkpointing"]) == ("fp32", "fp32", "off")
    }
    print(
        f"{spec.name}: LoRA r=8, {args.steps} steps x {args.batch_size} x {args.seq_len} tokens "
        f"at lr 2e-3, {args.eval_blocks} held-out Shakespeare blocks; "
        f"{'every held exit' if args.held_exits else 'the branch exit'} trained; "
        "one process per row; peak RSS sampled every 10 ms; "
        "x = against fp32 weights, fp32 compute, no checkpointing, same exit"
    )
    header = (
        f"{'exit':>4} {'weights':>7} {'compute':>7} {'ckpt':>4} {'peak RSS':>9} {'over base':>9} "
        f"{'x mem':>6} {'tok/s':>7} {'x tok/s':>7} {'ppl':>8} {'x ppl':>6} {'load s':>6}"
    )
    print(header)
    for r in rows:
        base = baseline.get(r["exit"], r)
        speed = r["tokens_per_second"] / base["tokens_per_second"]
        print(
            f"{r['exit']:>4} {r['weights']:>7} {r['compute']:>7} {r['checkpointing']:>4} "
            f"{r['peak_rss'] / 2**30:>8.2f}G {r['over_baseline'] / 2**30:>8.3f}G "
            f"{r['over_baseline'] / base['over_baseline']:>6.2f} "
            f"{r['tokens_per_second']:>7.0f} {speed:>7.2f} "
            f"{r['perplexity']:>8.2f} {r['perplexity'] / base['perplexity']:>6.3f} "
            f"{r['load_seconds']:>6.1f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
