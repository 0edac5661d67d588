"""The ``famflow`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from familial.argtypes import positive_int
from familial.data.cli import add_data_parser
from familial.errors import FamflowError
from familial.train_cli import add_train_parsers
from simulations.comm_cli import add_comm_parser

logger = logging.getLogger("famflow")


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def cmd_info(args: argparse.Namespace) -> None:
    from familial.sizing import model_info

    info = model_info(args.model, rank=args.rank)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(
        f"{info['model']}: {info['architecture']}, {info['num_hidden_layers']} layers, "
        f"exit style {info['exit_style']}, dtype {info['dtype']}, "
        f"family {info['family_parameters'] / 1e9:.3f}B parameters"
    )
    lora = f"LoRA r={args.rank}"
    print(
        f"{'exit':>20} {'layers':>6} {'params':>12} {'weights':>11} {lora:>12} "
        f"{'LoRA fp32':>11} {'full grad fp32':>15}"
    )
    for b in info["branches"]:
        print(
            f"{b['label']:>20} {b['layers']:>6} {b['parameters'] / 1e9:>11.3f}B "
            f"{_size(b['weight_bytes']):>11} {b['lora_parameters']:>12,} "
            f"{_size(b['lora_bytes_fp32']):>11} {_size(b['full_gradient_fp32_bytes']):>15}"
        )


def cmd_prepare(args: argparse.Namespace) -> None:
    from familial.loading import checkpoint_dir
    from familial.presets import resolve_model

    spec = resolve_model(args.model)
    if spec.source in ("gguf", "local"):
        print(f"{spec.name}: safetensors checkpoint at {checkpoint_dir(spec)}")
    else:
        print(f"{spec.name}: {spec.source} preset, nothing to prepare")


def cmd_generate(args: argparse.Namespace) -> None:
    import time

    from familial.inference import generate
    from familial.loading import load_branch
    from familial.local_training import load_trained_branch
    from familial.presets import resolve_model
    from familial.tokenizer import load_tokenizer

    spec = resolve_model(args.model)
    tokenizer = load_tokenizer(spec)
    exits = args.exit or spec.family.exits
    messages = [{"role": "user", "content": args.prompt}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt"
    )
    input_ids = prompt if not hasattr(prompt, "input_ids") else prompt["input_ids"]
    for depth in exits:
        start = time.perf_counter()
        if args.adapters is None:
            branch = load_branch(spec, depth, exits=[depth]).eval()
        else:
            branch = load_trained_branch(spec, depth, args.adapters, exits=[depth])
        loaded = time.perf_counter() - start
        tokens = generate(branch, input_ids, depth, args.max_new_tokens, tokenizer.eos_token_id)
        text = tokenizer.decode(tokens[0, input_ids.shape[1] :], skip_special_tokens=True)
        print(f"[exit {spec.exit_label(depth)}, loaded in {loaded:.2f}s] {text.strip()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="famflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="branch sizes, LoRA and gradient bytes of a model")
    info.add_argument("model", help="preset name (configs/models) or local checkpoint path")
    info.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (default 8)")
    info.add_argument("--json", action="store_true", help="print JSON (fields: README)")
    info.set_defaults(run=cmd_info)

    prepare = sub.add_parser("prepare", help="convert a GGUF model into its safetensors cache")
    prepare.add_argument("model")
    prepare.set_defaults(run=cmd_prepare)

    gen = sub.add_parser("generate", help="greedy generation from each exit of a family")
    gen.add_argument("model")
    gen.add_argument("--prompt", default="What is the capital of France?")
    gen.add_argument("--exit", type=int, action="append", help="exit depth (repeatable)")
    gen.add_argument("--max-new-tokens", type=positive_int, default=24)
    gen.add_argument(
        "--adapters", default=None, help="output of train-local/familialize (exit adapters, LoRA)"
    )
    gen.set_defaults(run=cmd_generate)

    add_data_parser(sub)
    add_train_parsers(sub)
    add_comm_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        args.run(args)
    except FamflowError as error:
        print(f"famflow: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
