"""Continuations made once per machine: a safetensors file keyed by model, exit and prompts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from famflow.familial.continuations import greedy_continuations
from famflow.familial.data.fetch import file_digest
from famflow.familial.model import FamilialLM
from famflow.familial.paths import cache_root


def continuation_cache_file(identity: dict, prompts: Sequence[Sequence[int]]) -> Path:
    """Where the continuations of ``prompts`` by the model ``identity`` describes are kept.

    ``identity`` names everything that changes the output: model, weights, exit, limits.
    """
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for prompt in prompts:
        digest.update(torch.as_tensor(list(prompt), dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
    return cache_root() / "continuations" / f"{digest.hexdigest()[:24]}.safetensors"


def adapters_identity(adapters: Path | None) -> list[str]:
    """What a directory of adapters holds, by file digest (for cache keys)."""
    if adapters is None:
        return []
    files = Path(adapters).rglob("*.safetensors")
    return sorted(f"{file.relative_to(adapters)}:{file_digest(file)}" for file in files)


def _pack(rows: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        "tokens": torch.cat([row.to(torch.int64) for row in rows]),
        "lengths": torch.tensor([len(row) for row in rows], dtype=torch.int64),
    }


def _unpack(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.split(tensors["tokens"], tensors["lengths"].tolist()))


def top_exit_continuations(
    model_name: str,
    model: FamilialLM,
    prompts: list[list[int]],
    new_tokens: int,
    eos_token_id: int | None,
    adapters: Path | None,
) -> tuple[list[torch.Tensor], bool]:
    """``model``'s deepest held exit's greedy continuations of ``prompts``, made once per
    machine; and whether they were read from the cache."""
    top = model.held_exits[-1]
    identity = {
        "model": model_name,
        "adapters": adapters_identity(adapters),
        "exit": top,
        "new_tokens": new_tokens,
        "eos": eos_token_id,
    }
    return cached_continuations(
        continuation_cache_file(identity, prompts),
        lambda: greedy_continuations(model, prompts, top, new_tokens, eos_token_id),
    )


def cached_continuations(
    file: Path, make: Callable[[], list[torch.Tensor]]
) -> tuple[list[torch.Tensor], bool]:
    """The rows saved in ``file``, else ``make()``'s, saved there; and whether they were cached.

    An unreadable file is remade, not trusted.
    """
    if file.is_file():
        try:
            return _unpack(load_file(str(file))), True
        except (SafetensorError, KeyError, RuntimeError, OSError):
            file.unlink(missing_ok=True)
    rows = make()
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".partial")
    save_file(_pack(rows), str(partial))
    partial.replace(file)
    return rows, False
