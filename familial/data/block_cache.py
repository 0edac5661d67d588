"""Token blocks of one partition kept on disk, so that a process that trains or evaluates
(a deployment ClientApp starts one per message) neither imports `datasets` nor tokenises.

The key covers everything the blocks depend on: the data config, the partition, the model's
position limit, the tokenizer's source, and a local corpus file's size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from famflow.familial.data.config import DataConfig
from famflow.familial.data.splits import TokenSplits
from famflow.familial.paths import cache_root

FORMAT = 1


def _source_stamp(name: str) -> list[Any]:
    path = Path(name).expanduser()
    if not path.exists():
        return [name]  # a named corpus, prepared once into the cache
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def block_cache_file(
    config: DataConfig, partition_id: int, max_length: int | None, tokenizer_source: str
) -> Path:
    key = {
        "format": FORMAT,
        "data": config.to_dict(),
        "source": _source_stamp(config.name),
        "partition": partition_id,
        "max_length": max_length,
        "tokenizer": tokenizer_source,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_root() / "blocks" / f"{digest}.safetensors"


def cached_splits(path: Path, build: Callable[[], TokenSplits]) -> TokenSplits:
    """The splits stored at ``path``, else ``build()`` stored there (atomically: concurrent
    processes may build the same partition)."""
    if path.is_file():
        try:
            tensors = load_file(str(path))
            return TokenSplits(train=tensors["train"], validation=tensors["validation"])
        except Exception:  # a corrupt or partial file: build it again
            path.unlink(missing_ok=True)
    splits = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    tensors = {"train": splits.train.contiguous(), "validation": splits.validation.contiguous()}
    save_file(tensors, temporary)
    os.replace(temporary, path)
    return splits
