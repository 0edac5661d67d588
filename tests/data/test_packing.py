"""Packing texts into blocks, the train/validation split and capping examples."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from famflow.familial.data import split_blocks, tokenize_and_pack
from famflow.familial.data.prepare import cap_examples
from famflow.familial.tokenizer import byte_tokenizer


def test_packing_is_the_concatenation_with_eos() -> None:
    tokenizer = byte_tokenizer()
    texts = ["ab", "cdé", "", "a longer example of text"]
    stream: list[int] = []
    for text in texts:
        stream += [*text.encode("utf-8"), tokenizer.eos_token_id]
    for seq_len in (2, 5, 7):
        blocks = tokenize_and_pack(texts, tokenizer, seq_len)
        assert blocks.dtype == torch.long
        assert blocks.shape == (len(stream) // seq_len, seq_len)
        assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert tokenize_and_pack(["ab"], tokenizer, 4).shape == (0, 4)


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(10, 0.1, 1), (100, 0.25, 25), (2, 0.1, 1), (1, 0.5, 0), (9, 0, 0)]
)
def test_split_is_disjoint_and_deterministic(n: int, fraction: float, n_val: int) -> None:
    blocks = torch.arange(n * 3).view(n, 3)
    train, validation = split_blocks(blocks, fraction, seed=4)
    assert validation.shape[0] == n_val and train.shape[0] == n - n_val
    train_rows = {tuple(row) for row in train.tolist()}
    val_rows = {tuple(row) for row in validation.tolist()}
    assert not train_rows & val_rows
    assert train_rows | val_rows == {tuple(row) for row in blocks.tolist()}
    again = split_blocks(blocks, fraction, seed=4)
    assert torch.equal(again[0], train) and torch.equal(again[1], validation)


def test_split_depends_on_the_seed() -> None:
    blocks = torch.arange(200).view(100, 2)
    validations = {tuple(split_blocks(blocks, 0.2, seed)[1][:, 0].tolist()) for seed in range(3)}
    assert len(validations) == 3


def test_cap_examples_is_a_seeded_ordered_subset() -> None:
    dataset = Dataset.from_dict({"id": list(range(50))})
    capped = cap_examples(dataset, 10, seed=1)["id"]
    assert len(capped) == 10 and capped == sorted(capped) and capped != list(range(10))
    assert cap_examples(dataset, 10, seed=1)["id"] == capped
    assert cap_examples(dataset, 10, seed=2)["id"] != capped
    assert cap_examples(dataset, 80, seed=1)["id"] == list(range(50))
