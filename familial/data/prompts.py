"""Prompts taken from a corpus: a chat corpus's questions, or a text corpus's openings.

The corpus's rows are shuffled once with ``seed``; the last ``held_out_fraction`` of them are
held out, so prompts drawn for training never overlap the prompts a benchmark measures on.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from famflow.familial.data.corpus import load_corpus
from famflow.familial.data.local import check_text_columns
from famflow.familial.errors import FamflowError

Split = Literal["train", "held-out"]
MIN_TEXT_TOKENS = 4


def _chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def corpus_prompts(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    count: int,
    max_tokens: int = 32,
    seed: int = 0,
    held_out_fraction: float = 0.1,
) -> list[list[int]]:
    """Up to ``count`` prompts of ``split``: for chat rows the first user turn through the chat
    template (ready for the answer; never cut), for text rows the first ``max_tokens`` tokens."""
    if split not in ("train", "held-out"):
        raise FamflowError(f"Unknown prompt split {split!r}: use train or held-out.")
    dataset = load_corpus(name)
    column = check_text_columns(dataset, name)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, int(len(order) * held_out_fraction))
    rows = order[-held:] if split == "held-out" else order[:-held]
    prompts: list[list[int]] = []
    for row in rows:
        if len(prompts) == count:
            break
        if column == "text":
            ids = list(tokenizer(dataset[row]["text"])["input_ids"][:max_tokens])
            if len(ids) >= MIN_TEXT_TOKENS:
                prompts.append(ids)
        else:
            turns = dataset[row]["messages"]
            if turns and turns[0]["role"] == "user" and turns[0]["content"].strip():
                prompts.append(_chat_prompt(tokenizer, turns[0]["content"]))
    return prompts
