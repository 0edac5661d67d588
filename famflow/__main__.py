"""The ``famflow`` command line: every command, wired here; nothing imports this module.

Each command's parser and handler live in ``famflow.commands``; handlers import the library
lazily, so ``famflow --help`` and the light commands start without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from famflow.commands.comm import add_comm_parser
from famflow.commands.data import add_data_parser
from famflow.commands.deploy import add_deploy_parser
from famflow.commands.export import add_export_parser
from famflow.commands.familialize import add_familialize_parser
from famflow.commands.model import add_model_parsers
from famflow.commands.report import add_report_parser
from famflow.commands.train import add_train_parsers
from famflow.familial.errors import FamflowError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="famflow", description="Federated learning on familial models (early-exit branches)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)
    add_model_parsers(sub)
    add_data_parser(sub)
    add_train_parsers(sub)
    add_familialize_parser(sub)
    add_comm_parser(sub)
    add_deploy_parser(sub)
    add_report_parser(sub)
    add_export_parser(sub)
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
