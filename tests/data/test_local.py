"""Local dataset files of each kind, their columns, and unknown names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from famflow.familial.data import CORPORA, CORPUS_NAMES, load_corpus
from famflow.familial.data.packing import example_texts
from famflow.familial.errors import FamflowError
from famflow.familial.tokenizer import byte_tokenizer


def _write_local(kind: str, directory: Path) -> Path:
    texts = ["first example", "second, with a comma", "third"]
    rows = Dataset.from_dict({"text": texts, "label": ["a", "b", "a"]})
    if kind == "jsonl":
        path = directory / "data.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "csv":
        path = directory / "data.csv"
        rows.to_csv(path, index=False)
    elif kind == "parquet":
        path = directory / "data.parquet"
        rows.to_parquet(path)
    elif kind == "text":
        path = directory / "data.txt"
        path.write_text("\n".join(texts) + "\n")
    elif kind == "saved":
        path = directory / "saved"
        rows.save_to_disk(str(path))
    else:
        path = directory / "saved_dict"
        DatasetDict({"train": rows, "test": rows.select([0])}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "text", "saved", "saved_dict"])
def test_local_datasets(kind: str, tmp_path: Path) -> None:
    dataset = load_corpus(str(_write_local(kind, tmp_path)))
    assert dataset["text"] == ["first example", "second, with a comma", "third"]


def test_local_chat_messages(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path.write_text(json.dumps({"messages": turns}) + "\n")
    texts = example_texts(load_corpus(str(path)), byte_tokenizer(), str(path))
    assert texts == ["<user>hi\n<assistant>hello\n"]


def test_local_file_without_text_column(tmp_path: Path) -> None:
    path = tmp_path / "body.csv"
    path.write_text("body,label\nhello,1\n")
    with pytest.raises(FamflowError, match=r"columns body, label but no `text` or `messages`"):
        load_corpus(str(path))


def test_missing_file_and_unknown_corpus(tmp_path: Path) -> None:
    with pytest.raises(FamflowError, match=r"^No dataset file at .*missing\.jsonl: pass"):
        load_corpus(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FamflowError, match=r"^Unknown corpus 'shakespear': use shakespeare or"):
        load_corpus("shakespear")
    assert tuple(CORPORA) == CORPUS_NAMES
