"""Hardware tiers (configs/hardware/tiers.toml) and what a node can hold."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from famflow.familial.errors import FamflowError
from famflow.familial.paths import shipped_configs
from famflow.familial.weights import weight_precision

GIB = 1024**3


@dataclass(frozen=True)
class Tier:
    name: str
    memory_gb: float
    rank: int
    # precisions its frozen layers may take (familial.weights); empty: the preset's dtype
    weights: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.memory_gb <= 0 or self.rank < 1:
            raise FamflowError(
                f"Tier {self.name!r} needs memory-gb > 0 and rank >= 1, got "
                f"{self.memory_gb} and {self.rank}: fix configs/hardware/tiers.toml."
            )
        for name in self.weights:
            weight_precision(name)


def parse_weights(value: object) -> tuple[str, ...]:
    """A tier's or node's ``weights``: one precision, a comma-separated string, or a list."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    names = tuple(str(item).strip() for item in items)
    for name in names:
        weight_precision(name)
    return names


def tiers_file(model_tiers: Path | None = None) -> Path:
    """``FAMFLOW_TIERS``, else the model's own tiers file (its preset's ``tiers``), else the
    shipped default (SmolLM2's device / edge / cloud)."""
    if "FAMFLOW_TIERS" in os.environ:
        return Path(os.environ["FAMFLOW_TIERS"])
    return model_tiers or shipped_configs() / "hardware" / "tiers.toml"


def load_tiers(path: Path | None = None) -> dict[str, Tier]:
    path = path or tiers_file()
    if not path.is_file():
        raise FamflowError(f"No tiers file at {path}: restore configs/hardware/tiers.toml.")
    try:
        data = tomllib.loads(path.read_text())
        return {
            name: Tier(
                name,
                float(table["memory-gb"]),
                int(table["rank"]),
                parse_weights(table.get("weights")),
            )
            for name, table in data.items()
        }
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as error:
        raise FamflowError(
            f"{path} is not a valid tiers file ({error}): give each tier memory-gb and rank "
            "(and optionally weights)."
        ) from None


def get_tier(name: str, tiers: dict[str, Tier] | None = None) -> Tier:
    tiers = tiers or load_tiers()
    if name not in tiers:
        raise FamflowError(f"Unknown tier {name!r}: use one of {', '.join(tiers)}.")
    return tiers[name]


def detected_memory_gb(device: str) -> float:
    """Memory of the accelerator (cuda) or of the machine (cpu), in GiB."""
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory / GIB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def resolve_device(requested: str) -> str:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available) -> the device to use."""
    if requested not in ("cpu", "cuda", "auto"):
        raise FamflowError(f"Unknown device {requested!r}: use cpu, cuda or auto.")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise FamflowError("device=cuda but no CUDA GPU is visible: use device=cpu or auto.")
    return requested
