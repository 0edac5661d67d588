"""``famflow export RUN_OR_DIR``: a refreshed branch as a transformers, GGUF or PEFT export."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from famflow.commands.argtypes import checked, positive_int
from famflow.familial.errors import FamflowError
from famflow.familial.export_formats import EXPORT_FORMATS, parse_formats, parse_gguf_types

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from famflow.familial.export_origin import ExportOrigin
    from famflow.familial.model import FamilialLM


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="write exits of a run (its latest checkpoint) or of an adapter directory as "
        "hf / gguf / peft, loadable without famflow",
    )
    export.add_argument(
        "source",
        type=Path,
        help="a federation's out-dir (runs/federation), an export/exit-E directory, or a "
        "train-local output",
    )
    export.add_argument(
        "--exit", type=positive_int, action="append", help="exit depth (repeatable; default all)"
    )
    export.add_argument(
        "--format",
        default="hf",
        type=checked(parse_formats),
        help=f"comma-separated, of {', '.join(EXPORT_FORMATS)} (default hf)",
    )
    export.add_argument("--model", help="the family, for an adapter directory without export.json")
    export.add_argument(
        "--gguf-types", default="f16,q8_0", type=checked(parse_gguf_types), help="default f16,q8_0"
    )
    export.add_argument(
        "--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="hf weights"
    )
    export.add_argument(
        "--out", type=Path, help="default: RUN/export/exit-E for a run, else SOURCE itself"
    )
    export.set_defaults(run=_export)


def _is_run(source: Path) -> bool:
    return any((source / "checkpoints").glob("round-*.json"))


def _adapter_branch(args: argparse.Namespace, depth: int) -> tuple[FamilialLM, ExportOrigin]:
    from famflow.familial.export_origin import ExportOrigin, read_origin
    from famflow.familial.local_training import load_trained_branch, trained_branch_depth
    from famflow.familial.presets import resolve_model

    recorded = read_origin(args.source) or {}
    model = args.model or recorded.get("model")
    if not model:
        raise FamflowError(
            f"{args.source} does not record its model (no export.json): pass --model."
        )
    spec = resolve_model(model)
    spec.family.check_exit(depth)
    branch_depth = trained_branch_depth(args.source) or int(recorded.get("exit", depth))
    if branch_depth < depth:
        raise FamflowError(
            f"{args.source} holds branch {branch_depth}, which has no exit {depth}: pass an exit "
            f"of {spec.family.exits_up_to(branch_depth)}."
        )
    branch = load_trained_branch(spec, branch_depth, args.source)
    origin = ExportOrigin(
        model=str(model),
        exit=depth,
        run_id=recorded.get("run_id"),
        round=recorded.get("round"),
        source=str(args.source.resolve()),
    )
    return branch, origin


def _adapter_exits(args: argparse.Namespace) -> list[int]:
    if args.exit:
        return sorted(set(args.exit))
    from famflow.familial.export_origin import read_origin

    recorded = read_origin(args.source) or {}
    if "exit" in recorded:
        return [int(recorded["exit"])]
    raise FamflowError(f"Name the exit(s) to export from {args.source}: pass --exit E.")


def _branches(args: argparse.Namespace) -> Iterator[tuple[FamilialLM, ExportOrigin]]:
    """A run's exits from its latest checkpoint (read once), else the adapter directory's."""
    if _is_run(args.source):
        from famflow.server.export import checkpointed_branches

        yield from checkpointed_branches(args.source, sorted(set(args.exit or [])) or None)
        return
    for depth in _adapter_exits(args):
        yield _adapter_branch(args, depth)


def _export(args: argparse.Namespace) -> None:
    from famflow.familial.branch_export import export_exit, source_tokenizer_pre
    from famflow.familial.export_origin import exit_dir_name
    from famflow.familial.presets import parse_dtype, resolve_model
    from famflow.familial.tokenizer import load_tokenizer

    source: Path = args.source
    if not source.is_dir():
        raise FamflowError(
            f"{source} is not a directory: pass a run's out-dir or an export/exit-E directory."
        )
    run = _is_run(source)
    tokenizers: dict[str, tuple[PreTrainedTokenizerBase, str]] = {}  # and its GGUF pre-tokenizer
    for branch, origin in _branches(args):
        depth = origin.exit
        spec = resolve_model(origin.model)
        if origin.model not in tokenizers:
            pre = source_tokenizer_pre(spec) if "gguf" in args.format else "default"
            tokenizers[origin.model] = (load_tokenizer(spec), pre)
        tokenizer, tokenizer_pre = tokenizers[origin.model]
        default_out = source / "export" / exit_dir_name(depth) if run else source
        written = export_exit(
            branch,
            depth,
            args.format,
            args.out / exit_dir_name(depth) if args.out else default_out,
            tokenizer,
            origin,
            gguf_types=args.gguf_types,
            tokenizer_pre=tokenizer_pre,
            dtype=parse_dtype(args.dtype),
        )
        where = f"round {origin.round} of run {origin.run_id}" if origin.run_id else str(source)
        print(f"exit {spec.exit_label(depth)} from {where}:")
        for path in written:
            print(f"  {path}  ({_how_to_load(path)})")


def _how_to_load(path: Path) -> str:
    if path.suffix == ".gguf":
        return f"llama.cpp: llama-cli -m {path}"
    if path.name == "peft":
        base = f"AutoModelForCausalLM.from_pretrained('{path}/base')"
        return f"PeftModel.from_pretrained({base}, '{path}')"
    return f"AutoModelForCausalLM.from_pretrained('{path}')"
