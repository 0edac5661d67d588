"""One client's data: its partition of the corpus as packed train and validation blocks."""

from __future__ import annotations

import logging

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from famflow.familial.data.config import DataConfig
from famflow.familial.data.corpus import load_corpus
from famflow.familial.data.packing import example_texts, split_blocks, to_blocks, token_stream
from famflow.familial.data.partition import load_partition
from famflow.familial.data.splits import TokenSplits
from famflow.familial.errors import FamflowError

logger = logging.getLogger("famflow.data")


def check_seq_len(seq_len: int, max_length: int | None) -> None:
    if max_length is not None and seq_len > max_length:
        raise FamflowError(
            f"Sequence length {seq_len} is beyond the model's {max_length} positions: "
            f"use --seq-len <= {max_length}."
        )


def cap_examples(dataset: Dataset, max_examples: int | None, seed: int) -> Dataset:
    """At most ``max_examples`` examples drawn with ``seed``, kept in their original order."""
    if max_examples is None or len(dataset) <= max_examples:
        return dataset
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.select(sorted(chosen[:max_examples].tolist()))


def prepare_data(
    config: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    partition_id: int = 0,
    max_length: int | None = None,
) -> TokenSplits:
    """Partition ``partition_id`` of ``config.name``, tokenised, packed and split.

    ``max_length`` is the model's ``max_position_embeddings``; ``seq_len`` may not exceed it.
    """
    check_seq_len(config.seq_len, max_length)
    partition = load_partition(config, load_corpus(config.name), partition_id)
    partition = cap_examples(partition, config.max_examples, config.seed)
    texts = example_texts(partition, tokenizer, config.name)
    stream = token_stream(texts, tokenizer)
    if len(stream) < config.seq_len:
        raise FamflowError(
            f"Partition {partition_id} of {config.name} has {len(stream)} tokens, fewer than one "
            f"block of {config.seq_len}: use fewer partitions or a shorter --seq-len."
        )
    blocks = to_blocks(stream, config.seq_len)
    train, validation = split_blocks(blocks, config.validation_fraction, config.seed)
    logger.info(
        "%s partition %d: %d examples -> %d train and %d validation blocks of %d tokens",
        config.name,
        partition_id,
        len(partition),
        train.shape[0],
        validation.shape[0],
        config.seq_len,
    )
    return TokenSplits(train=train, validation=validation)
