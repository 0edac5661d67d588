"""Training data: named corpora (Shakespeare, chatterbot) or local files, partitioned per client
with flwr-datasets, tokenised and packed into fixed-length blocks.

Names are imported on first use, so ``famflow`` commands that never touch data (and
``famflow.commands.data``) do not pay for importing `datasets` and flwr-datasets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from famflow.familial.data.config import CORPUS_NAMES, PARTITIONERS, DataConfig
    from famflow.familial.data.corpus import CORPORA, describe_corpus, load_corpus, prepare_corpus
    from famflow.familial.data.packing import split_blocks, tokenize_and_pack
    from famflow.familial.data.partition import load_partition, partition_count
    from famflow.familial.data.prepare import prepare_data
    from famflow.familial.data.splits import TokenSplits

_EXPORTS = {
    "CORPUS_NAMES": "config",
    "PARTITIONERS": "config",
    "DataConfig": "config",
    "CORPORA": "corpus",
    "describe_corpus": "corpus",
    "load_corpus": "corpus",
    "prepare_corpus": "corpus",
    "split_blocks": "packing",
    "tokenize_and_pack": "packing",
    "load_partition": "partition",
    "partition_count": "partition",
    "TokenSplits": "splits",
    "prepare_data": "prepare",
}
__all__ = [
    "CORPORA",
    "CORPUS_NAMES",
    "PARTITIONERS",
    "DataConfig",
    "TokenSplits",
    "describe_corpus",
    "load_corpus",
    "load_partition",
    "partition_count",
    "prepare_corpus",
    "prepare_data",
    "split_blocks",
    "tokenize_and_pack",
]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"famflow.familial.data.{_EXPORTS[name]}"), name)
