"""chatterbot-corpus 1.3.3: the wheel's English YAML files, one row per conversation.

All knowledge of the wheel's layout and YAML format lives here. Each
``chatterbot_corpus/data/english/*.yml`` has ``categories`` (a list; the first names the
file's category) and ``conversations``: lists of turns that alternate user and assistant.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset
from tqdm import tqdm

from famflow.familial.errors import FamflowError

logger = logging.getLogger("famflow.data")

REQUIREMENT = "chatterbot-corpus==1.3.3"
ARCHIVE_NAME = "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
ENGLISH_DIR = "chatterbot_corpus/data/english"
COLUMNS = ("messages", "category")
ROLES = ("user", "assistant")


def messages(turns: list[str]) -> list[dict[str, str]]:
    """Chat messages from a conversation's turns: user, assistant, user, ..."""
    return [{"role": ROLES[i % 2], "content": turn} for i, turn in enumerate(turns)]


def parse_category(text: str, source: str) -> tuple[str, list[list[str]]]:
    """A YAML file's category and its well-formed conversations (two or more text turns)."""
    try:
        # BaseLoader keeps every scalar as text: an answer "Yes" or "42" must stay a string.
        data: Any = yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError as error:
        raise FamflowError(f"{source} is not valid YAML ({error}): use an intact wheel.") from None
    if not isinstance(data, dict) or not data.get("categories") or "conversations" not in data:
        raise FamflowError(
            f"{source} has no `categories` and `conversations`: use an intact {REQUIREMENT} wheel."
        )
    conversations = [
        turns
        for turns in data["conversations"] or []
        if isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, str) for t in turns)
    ]
    skipped = len(data["conversations"] or []) - len(conversations)
    if skipped:
        logger.info("Skipped %d malformed conversation(s) in %s", skipped, source)
    return str(data["categories"][0]), conversations


def read_categories(archive: Path) -> dict[str, str]:
    """File name -> YAML text of the English files, read straight from the wheel."""
    try:
        with zipfile.ZipFile(archive) as wheel:
            files = {
                name.rpartition("/")[2]: wheel.read(name).decode("utf-8")
                for name in wheel.namelist()
                if name.rpartition("/")[0] == ENGLISH_DIR and name.endswith((".yml", ".yaml"))
            }
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
        raise FamflowError(
            f"{archive} is not a readable {REQUIREMENT} wheel ({error}): "
            "replace it with an intact copy, or delete it to download one."
        ) from None
    if not files:
        raise FamflowError(
            f"{archive} has no {ENGLISH_DIR}/*.yml files: pass the {ARCHIVE_NAME} wheel "
            f"that `pip download --no-deps {REQUIREMENT}` fetches."
        )
    return dict(sorted(files.items()))


def build(archive: Path, progress: bool = False) -> Dataset:
    """One row per conversation: ``messages`` (user/assistant turns) and ``category``."""
    rows: dict[str, list[Any]] = {column: [] for column in COLUMNS}
    files = read_categories(archive)
    for filename, text in tqdm(
        files.items(), desc="chatterbot: parsing", unit="file", disable=not progress
    ):
        category, conversations = parse_category(text, f"{archive.name}:{filename}")
        for turns in conversations:
            rows["messages"].append(messages(turns))
            rows["category"].append(category)
    return Dataset.from_dict(rows)
