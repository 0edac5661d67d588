"""``famflow report RUN_DIR``: plots and a summary of a federation's run directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report", help="PNG plots and a markdown summary of a run (its out-dir)"
    )
    report.add_argument("run_dir", type=Path, help="a federation's out-dir, e.g. runs/federation")
    report.add_argument("--out", type=Path, help="where to write (default RUN_DIR/report)")
    report.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> None:
    from famflow.server.run_plots import write_report  # imports matplotlib

    for path in write_report(args.run_dir, args.out):
        print(path)
