"""Local datasets: a jsonl/json, csv, parquet or text file, or a saved Hugging Face dataset."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from famflow.familial.errors import FamflowError

FORMATS: dict[str, str] = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
_KINDS = "a jsonl, csv, parquet or text file or a saved dataset directory"


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars inside (many clients would each print them)."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def looks_like_path(name: str) -> bool:
    """Whether a data name is meant as a path (rather than a misspelt corpus name)."""
    path = Path(name).expanduser()
    return "/" in name or path.suffix.lower() in FORMATS or path.exists()


def _load_saved(path: Path) -> Dataset:
    try:
        saved = load_from_disk(str(path))
    except FileNotFoundError:
        raise FamflowError(
            f"{path} is a directory but not a dataset saved with `save_to_disk`: pass {_KINDS}."
        ) from None
    if isinstance(saved, DatasetDict):
        if "train" not in saved:
            raise FamflowError(
                f"{path} holds splits {', '.join(saved)} but no `train` split: "
                "save the training split alone or name it `train`."
            )
        saved = saved["train"]
    return saved


def _load_file(path: Path, cache_dir: Path) -> Dataset:
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise FamflowError(
            f"{path} has an unknown extension {path.suffix!r}: "
            f"use one of {', '.join(FORMATS)} or a saved dataset directory."
        )
    try:
        with quiet_datasets():
            return load_dataset(
                builder, data_files=str(path), split="train", cache_dir=str(cache_dir)
            )
    except Exception as error:  # datasets raises many kinds for a malformed file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FamflowError(
            f"{path} could not be read as {builder} ({reason}): fix the file or convert it."
        ) from None


def check_text_columns(dataset: Dataset, source: str) -> str:
    """The column that holds each example's text: ``messages`` (chat turns, preferred when
    both exist) or ``text``."""
    features = dataset.features
    if "messages" in features:
        turn = getattr(features["messages"], "feature", None)
        if not (isinstance(turn, dict) and {"role", "content"} <= set(turn)):
            raise FamflowError(
                f"The `messages` column of {source} is not a list of {{role, content}} turns: "
                "store chat turns as such lists (jsonl or parquet) or give a `text` column."
            )
        return "messages"
    if "text" in features:
        if getattr(features["text"], "dtype", None) not in ("string", "large_string"):
            raise FamflowError(
                f"The `text` column of {source} holds {features['text']}, not strings: "
                "store the text as strings."
            )
        return "text"
    raise FamflowError(
        f"{source} has columns {', '.join(features) or 'none'} but no `text` or `messages` "
        "column: name the column with the text `text` (or chat turns `messages`)."
    )


def load_local(path: Path, cache_dir: Path) -> Dataset:
    """The dataset at ``path``; files are converted once into ``cache_dir`` by `datasets`."""
    path = path.expanduser()
    if not path.exists():
        raise FamflowError(f"No dataset file at {path}: pass {_KINDS}.")
    dataset = _load_saved(path) if path.is_dir() else _load_file(path, cache_dir)
    check_text_columns(dataset, str(path))
    return dataset
