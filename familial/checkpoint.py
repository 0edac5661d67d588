"""Reading tensors lazily from local safetensors checkpoints (single file or sharded)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from famflow.familial.errors import FamflowError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _open(path: Path, stack: ExitStack) -> Any:
    try:
        return stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
    except (SafetensorError, OSError, ValueError) as error:
        raise FamflowError(
            f"{path} is not a readable safetensors file ({error}): re-download or re-convert it."
        ) from None


class SafetensorsCheckpoint:
    """Maps tensor names to shards and reads only the tensors asked for (memory-mapped)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}
        index = self.directory / INDEX_FILE
        single = self.directory / SINGLE_FILE
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise FamflowError(
                    f"{index} is not a valid shard index: re-download the checkpoint."
                ) from None
            shards = {name: self.directory / name for name in set(weight_map.values())}
            for shard in shards.values():
                if not shard.is_file():
                    raise FamflowError(
                        f"Shard {shard} listed in {index} is missing: re-download it."
                    )
        elif single.is_file():
            shards = {SINGLE_FILE: single}
            weight_map = {key: SINGLE_FILE for key in self._handle(single).keys()}  # noqa: SIM118
        else:
            raise FamflowError(
                f"No {SINGLE_FILE} or {INDEX_FILE} in {self.directory}: point to a directory "
                "holding a safetensors checkpoint."
            )
        self._shards = shards
        self._weight_map = weight_map

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            self._handles[path] = _open(path, self._stack)
        return self._handles[path]

    def __contains__(self, key: str) -> bool:
        return key in self._weight_map

    def keys(self) -> Iterator[str]:
        return iter(self._weight_map)

    def get(self, key: str) -> torch.Tensor:
        handle = self._handle(self._shards[self._weight_map[key]])
        try:
            return handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as error:
            raise FamflowError(
                f"Tensor {key!r} in {self.directory} cannot be read ({error}): the file is "
                "corrupt, re-download or re-convert it."
            ) from None

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
