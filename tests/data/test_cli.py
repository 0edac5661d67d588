"""The `famflow data prepare` command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from famflow.commands.data import add_data_parser
from famflow.familial.data import corpus
from tests.data_setup import N_ROLES, N_SPEECHES


def test_data_prepare_command(
    sdist: Path, offline_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    parser = argparse.ArgumentParser()
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "prepare", "shakespeare", "--quiet"])
    args.run(args)
    out = capsys.readouterr().out.strip()
    assert out == (
        f"shakespeare: 4 plays and poems, {N_SPEECHES} speeches, {N_ROLES} roles "
        f"at {offline_cache / 'data' / 'shakespeare'}"
    )
    assert corpus.corpus_dir("shakespeare") == offline_cache / "data" / "shakespeare"
