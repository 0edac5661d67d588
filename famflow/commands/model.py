"""``famflow info``, ``famflow prepare`` and ``famflow generate`` (per exit, or along a
device -> edge -> cloud route)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING, Any

from famflow.collab.codec import HIDDEN_CODECS
from famflow.collab.settings import DEFAULT_LINKS, MODES, TRANSPORTS
from famflow.commands.argtypes import non_negative_int, positive_int
from famflow.familial.errors import FamflowError

if TYPE_CHECKING:
    from famflow.familial.presets import ModelSpec

logger = logging.getLogger("famflow")

ROUTE_OPTIONS = ("mode", "draft_tokens", "predraft", "codec", "threshold", "link", "transport")


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def cmd_info(args: argparse.Namespace) -> None:
    from famflow.familial.sizing import model_info

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
    quantized = ("int8", "nf4")  # weights with the frozen decoder layers quantized
    print(
        f"{'exit':>20} {'layers':>6} {'params':>12} {'weights':>11} "
        + "".join(f"{name + ' weights':>13}" for name in quantized)
        + f" {lora:>12} {'LoRA fp32':>11} {'full grad fp32':>15}"
    )
    for b in info["branches"]:
        by_precision = b["weight_bytes_by_precision"]
        print(
            f"{b['label']:>20} {b['layers']:>6} {b['parameters'] / 1e9:>11.3f}B "
            f"{_size(b['weight_bytes']):>11} "
            + "".join(f"{_size(by_precision[name]):>13}" for name in quantized)
            + f" {b['lora_parameters']:>12,} "
            f"{_size(b['lora_bytes_fp32']):>11} {_size(b['full_gradient_fp32_bytes']):>15}"
        )


def cmd_prepare(args: argparse.Namespace) -> None:
    from famflow.familial.loading import checkpoint_dir
    from famflow.familial.presets import resolve_model

    spec = resolve_model(args.model)
    if spec.source in ("gguf", "local"):
        print(f"{spec.name}: safetensors checkpoint at {checkpoint_dir(spec)}")
    else:
        print(f"{spec.name}: {spec.source} preset, nothing to prepare")


def _generate_model(args: argparse.Namespace) -> str:
    if args.model and args.model_option and args.model != args.model_option:
        raise FamflowError(
            f"Two models named ({args.model!r} and --model {args.model_option!r}): name one."
        )
    model = args.model or args.model_option
    if not model:
        raise FamflowError("Name the model: famflow generate MODEL or --model MODEL.")
    return model


def cmd_generate(args: argparse.Namespace) -> None:
    import time

    from famflow.familial.inference import generate
    from famflow.familial.loading import load_branch
    from famflow.familial.local_training import load_trained_branch
    from famflow.familial.presets import resolve_model
    from famflow.familial.tokenizer import load_tokenizer

    route_only = [
        f"--{name.replace('_', '-')}" for name in ROUTE_OPTIONS if getattr(args, name) is not None
    ]
    if args.route is None and route_only:
        raise FamflowError(f"{', '.join(route_only)} need --route: add --route device,edge,cloud.")
    if args.route is not None and args.exit:
        raise FamflowError("--exit and --route exclude each other: pass one of them.")
    spec = resolve_model(_generate_model(args))
    tokenizer = load_tokenizer(spec)
    if args.raw:
        prompt = tokenizer(args.prompt, return_tensors="pt")
    else:
        messages = [{"role": "user", "content": args.prompt}]
        prompt = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt"
        )
    input_ids = prompt if not hasattr(prompt, "input_ids") else prompt["input_ids"]
    if args.route is not None:
        _generate_along_route(args, spec, tokenizer, input_ids)
        return
    exits = args.exit or spec.family.exits
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


def _generate_along_route(
    args: argparse.Namespace, spec: ModelSpec, tokenizer: Any, input_ids: Any
) -> None:
    from famflow.collab.compare import compare_route, describe
    from famflow.collab.latency import Link
    from famflow.collab.route import load_route_models, parse_route, tier_names
    from famflow.collab.settings import RouteSettings

    exits = parse_route(args.route, spec.family.exits)
    settings = RouteSettings(
        mode=args.mode or "speculative",
        draft_tokens=args.draft_tokens if args.draft_tokens is not None else 4,
        codec=args.codec or "fp16",
        threshold=args.threshold if args.threshold is not None else 0.9,
        transport=args.transport or "local",
        max_new_tokens=args.max_new_tokens,
        predraft=args.predraft is not False,
    )
    links = [[Link.parse(text)] for text in (args.link or DEFAULT_LINKS)]
    models = load_route_models(spec, exits, args.adapters)
    comparison = compare_route(models, exits, input_ids, settings, tokenizer.eos_token_id)
    new = comparison.result.tokens[0, input_ids.shape[1] :]
    tiers = ", ".join(
        f"{name}={spec.exit_label(e)}"
        for name, e in zip(tier_names(len(exits)), exits, strict=True)
    )
    print(f"[{settings.mode} along {tiers}] {tokenizer.decode(new, skip_special_tokens=True)}")
    for line in describe(comparison, links):
        print(line)


def add_model_parsers(sub: argparse._SubParsersAction) -> None:
    """``info``, ``prepare`` and ``generate``."""

    info = sub.add_parser("info", help="branch sizes, LoRA and gradient bytes of a model")
    info.add_argument("model", help="preset name (configs/models) or local checkpoint path")
    info.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (default 8)")
    info.add_argument("--json", action="store_true", help="print JSON (fields: docs/info.md)")
    info.set_defaults(run=cmd_info)

    prepare = sub.add_parser("prepare", help="convert a GGUF model into its safetensors cache")
    prepare.add_argument("model")
    prepare.set_defaults(run=cmd_prepare)

    gen = sub.add_parser(
        "generate",
        help="greedy generation from each exit of a family, or along a device/edge/cloud route",
    )
    gen.add_argument("model", nargs="?", help="preset name or local checkpoint path")
    gen.add_argument("--model", dest="model_option", metavar="MODEL", help="same as MODEL")
    gen.add_argument("--prompt", default="What is the capital of France?")
    gen.add_argument("--exit", type=int, action="append", help="exit depth (repeatable)")
    gen.add_argument("--max-new-tokens", type=positive_int, default=24)
    gen.add_argument(
        "--raw",
        action="store_true",
        help="continue the prompt as plain text, without the chat template (for branches "
        "trained on a corpus, such as a federation's)",
    )
    gen.add_argument(
        "--adapters",
        default=None,
        help="output of train-local/familialize (exit adapters, LoRA); with --route also a "
        "federation export directory (exit-E/ per exit)",
    )
    collab = gen.add_argument_group("collaborative inference (famflow.collab)")
    collab.add_argument(
        "--route",
        help="tiers from the device up: device,edge,cloud (the family's first, second and "
        "deepest exits) or exit depths, e.g. 10,20,30",
    )
    collab.add_argument("--mode", choices=MODES, help="default speculative")
    collab.add_argument(
        "--draft-tokens", type=non_negative_int, help="tokens the device drafts per round (4)"
    )
    collab.add_argument(
        "--predraft",
        action=argparse.BooleanOptionalAction,
        help="speculative: draft the next round while a verification is in flight (default on)",
    )
    collab.add_argument(
        "--codec", choices=HIDDEN_CODECS, help="hidden states on the wire (default fp16)"
    )
    collab.add_argument(
        "--threshold", type=float, help="early exit: top probability a tier needs (0.9)"
    )
    collab.add_argument(
        "--link",
        action="append",
        metavar="BW,RTT",
        help="link of every hop in bit/s and seconds, repeatable: one latency line per link "
        f"(default {' and '.join(DEFAULT_LINKS)})",
    )
    collab.add_argument("--transport", choices=TRANSPORTS, help="local (default) or http")
    gen.set_defaults(run=cmd_generate)
