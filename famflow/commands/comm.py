"""``famflow comm``: bytes per round per tier for famflow and its baselines, or of a run."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from famflow.commands.argtypes import positive_int
from famflow.familial.codecs import CODECS
from famflow.familial.errors import FamflowError
from famflow.strategies.rules import RULES


def add_comm_parser(sub: argparse._SubParsersAction) -> None:
    comm = sub.add_parser(
        "comm",
        help="bytes per round per tier: famflow vs full-gradient/weight FedAvg and dense LoRA",
        description="Analytic bytes per round for MODEL and a tier mix, or (--run) the bytes "
        "measured in a finished run next to the analytic figure.",
    )
    comm.add_argument("model", nargs="?", help="preset or checkpoint path (with --run: optional)")
    comm.add_argument(
        "--run", dest="run_dir", type=Path, help="a finished run's out-dir (metrics.jsonl)"
    )
    comm.add_argument(
        "--tiers", type=Path, help="tiers file (default: the preset's own, else tiers.toml)"
    )
    comm.add_argument("--tier-mix", help="e.g. device:2,edge:2,cloud:2 (default: 2 per tier)")
    comm.add_argument("--rule", action="append", choices=RULES, help="repeatable (default all)")
    comm.add_argument("--codec", action="append", choices=CODECS, help="repeatable (default all)")
    comm.add_argument(
        "--exit-adapters",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exchange exit adapters, as train-exit-adapters (default: yes, or the run's)",
    )
    comm.add_argument(
        "--branch-exits",
        choices=("held", "own"),
        default=None,
        help="exits each node trains, as branch-exits (default: held, or the run's)",
    )
    comm.add_argument("--batch-size", type=positive_int, default=4, help="to fit tiers' branches")
    comm.add_argument("--seq-len", type=positive_int, default=64, help="to fit tiers' branches")
    comm.add_argument("--json", action="store_true", help="print JSON instead of the table")
    comm.add_argument("--csv", type=Path, help="write the rows as CSV")
    comm.add_argument("--plot", type=Path, help="write a PNG chart (with --run: cumulative)")
    comm.set_defaults(run=cmd_comm)


def _single(values: list[str] | None, flag: str) -> str | None:
    if values and len(values) > 1:
        raise FamflowError(f"--run compares one setting: give {flag} once.")
    return values[0] if values else None


def _note(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout)


def cmd_comm(args: argparse.Namespace) -> None:
    if args.run_dir is not None:
        cmd_comm_run(args)
        return
    if args.model is None:
        raise FamflowError("famflow comm needs a MODEL (preset or checkpoint) or --run RUN_DIR.")
    from famflow.familial.presets import resolve_model
    from famflow.simulations.comm_output import analytic_text, document, human_bytes, write_csv
    from famflow.simulations.comm_schemes import (
        DTYPE_NAMES,
        analytic_rows,
        dense_parameters,
        tier_nodes,
    )

    spec = resolve_model(args.model)
    nodes = tier_nodes(spec, args.tier_mix, args.tiers, args.batch_size, args.seq_len)
    exit_adapters = True if args.exit_adapters is None else args.exit_adapters
    own_exit = args.branch_exits == "own"
    rows = analytic_rows(
        spec, nodes, args.rule or list(RULES), args.codec or list(CODECS), exit_adapters, own_exit
    )
    dense = dense_parameters(spec)
    header = {
        "model": spec.name,
        "dtype": DTYPE_NAMES.get(spec.torch_dtype, str(spec.torch_dtype)),
        "dense_parameters": dense,
        "full_gradient_bytes": dense * 4,
        "exit_adapters": exit_adapters and spec.family.adapters is not None,
        "branch_exits": args.branch_exits or "held",
        "tiers": [asdict(node) for node in nodes],
    }
    if args.json:
        print(json.dumps(document(header, rows), indent=2))
    else:
        print(analytic_text(header, nodes, rows))
    if args.csv:
        write_csv(args.csv, rows)
        _note(args, f"CSV: {args.csv}")
    if args.plot:
        from famflow.simulations.comm_plot import plot_schemes

        title = (
            f"{spec.name}: bytes per client per round "
            f"(full-gradient FedAvg {human_bytes(dense * 4)})"
        )
        plot_schemes(rows, title, args.plot)
        _note(args, f"plot: {args.plot}")


def cmd_comm_run(args: argparse.Namespace) -> None:
    from famflow.simulations.comm_output import document, measured_text, write_csv
    from famflow.simulations.comm_run import (
        measured_rows,
        read_run,
        run_settings,
        setup_bytes,
        training_rounds,
    )

    every_row = read_run(args.run_dir)
    rows = training_rounds(every_row, args.run_dir)
    settings = run_settings(
        args.run_dir,
        model=args.model,
        rule=_single(args.rule, "--rule"),
        codec=_single(args.codec, "--codec"),
        exit_adapters=args.exit_adapters,
        own_exit=None if args.branch_exits is None else args.branch_exits == "own",
    )
    measured = measured_rows(rows, settings)
    if args.json:
        header = {
            "run_dir": str(args.run_dir),
            "settings": asdict(settings),
            "round_0_bytes": setup_bytes(every_row),
        }
        print(json.dumps(document(header, measured), indent=2))
    else:
        print(measured_text(args.run_dir, settings, measured))
        if setup_bytes(every_row):
            print(f"round 0 (before training) moved {setup_bytes(every_row):,} bytes, not compared")
    if args.csv:
        write_csv(args.csv, measured)
        _note(args, f"CSV: {args.csv}")
    if args.plot:
        from famflow.simulations.comm_plot import plot_cumulative

        plot_cumulative(rows, settings, args.plot)
        _note(args, f"plot: {args.plot}")
