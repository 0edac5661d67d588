"""Examples -> text -> one token stream (each example ends with eos) -> fixed-size blocks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from famflow.familial.data.local import check_text_columns
from famflow.familial.errors import FamflowError

_BATCH = 1024


def example_texts(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, source: str) -> list[str]:
    """Each example's training text; chat ``messages`` go through the tokenizer's template.

    Blank examples are dropped: they would only add lone eos tokens.
    """
    column = check_text_columns(dataset, source)
    if column == "text":
        texts = dataset["text"][:]
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise FamflowError(
                f"The tokenizer has no chat template to format the chat turns of {source}: "
                "use a chat model's tokenizer or data with a `text` column."
            )
        texts = [
            tokenizer.apply_chat_template(list(turns), tokenize=False)
            for turns in dataset["messages"][:]
        ]
    return [text for text in texts if text and text.strip()]


def concatenate(token_lists: Iterable[list[int]], eos_id: int) -> list[int]:
    """Every list followed by ``eos_id``, as one stream."""
    stream: list[int] = []
    for tokens in token_lists:
        stream.extend(tokens)
        stream.append(eos_id)
    return stream


def to_blocks(stream: list[int], seq_len: int) -> torch.Tensor:
    """``[n, seq_len]`` blocks cut from the stream; the remainder shorter than a block dropped."""
    n_blocks = len(stream) // seq_len
    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def token_stream(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens of every text, each closed by the tokenizer's eos."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise FamflowError(
            "The tokenizer has no eos token to separate examples: give it an eos_token."
        )

    def token_lists() -> Iterable[list[int]]:
        for start in range(0, len(texts), _BATCH):
            # Special tokens come from the text (chat templates) and the eos we add, no more;
            # verbose=False: texts longer than the model are expected, packing cuts them.
            encoded = tokenizer(
                texts[start : start + _BATCH], add_special_tokens=False, verbose=False
            )
            yield from encoded["input_ids"]

    return concatenate(token_lists(), int(eos_id))


def tokenize_and_pack(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> torch.Tensor:
    """Packed ``[n_blocks, seq_len]`` blocks of ``texts``, each text closed by eos."""
    return to_blocks(token_stream(texts, tokenizer), seq_len)


def split_blocks(
    blocks: torch.Tensor, validation_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint train and validation blocks, drawn with ``seed``; each keeps stream order.

    With two or more blocks and a non-zero fraction, at least one block validates and one
    trains.
    """
    n = blocks.shape[0]
    n_val = 0
    if validation_fraction > 0 and n >= 2:
        n_val = min(n - 1, max(1, round(validation_fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    validation = order[:n_val].sort().values
    train = order[n_val:].sort().values
    return blocks[train], blocks[validation]
