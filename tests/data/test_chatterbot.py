"""The chatterbot corpus: its rows, their chat-template texts and packing."""

from __future__ import annotations

from pathlib import Path

import pytest

from famflow.familial.data import describe_corpus, load_corpus, tokenize_and_pack
from famflow.familial.data.packing import example_texts
from famflow.familial.errors import FamflowError
from famflow.familial.tokenizer import byte_tokenizer


def test_chatterbot_rows(wheel: Path) -> None:
    dataset = load_corpus("chatterbot")
    assert dataset.column_names == ["messages", "category"]
    rows = [(r["category"], [(m["role"], m["content"]) for m in r["messages"]]) for r in dataset]
    assert rows == [
        (
            "AI",
            [
                ("user", "What is AI?"),
                (
                    "assistant",
                    "Artificial Intelligence is the branch of engineering and science devoted "
                    "to constructing machines that think.",
                ),
            ],
        ),
        ("AI", [("user", "How old are you?"), ("assistant", "42")]),
        ("greetings", [("user", "Hello"), ("assistant", "Hi")]),
        (
            "greetings",
            [
                ("user", "How are you doing?"),
                ("assistant", "Very well, thanks."),
                ("user", "Glad to hear it."),
                ("assistant", "Yes"),
            ],
        ),
    ]
    assert describe_corpus("chatterbot", dataset) == "2 categories, 4 conversations"


def test_chat_template_formatting_and_packing(wheel: Path) -> None:
    tokenizer = byte_tokenizer()
    dataset = load_corpus("chatterbot")
    texts = example_texts(dataset.select([2, 3]), tokenizer, "chatterbot")
    assert texts == [
        "<user>Hello\n<assistant>Hi\n",
        "<user>How are you doing?\n<assistant>Very well, thanks.\n"
        "<user>Glad to hear it.\n<assistant>Yes\n",
    ]
    blocks = tokenize_and_pack(texts, tokenizer, seq_len=8)
    stream = [b for text in texts for b in [*text.encode(), tokenizer.eos_token_id]]
    assert blocks.flatten().tolist() == stream[: len(stream) // 8 * 8]


def test_chat_data_needs_a_chat_template(wheel: Path) -> None:
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(FamflowError, match="no chat template"):
        example_texts(load_corpus("chatterbot"), tokenizer, "chatterbot")
