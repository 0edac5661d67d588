"""Where an export came from: the run, round and exit, written beside every export."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ORIGIN_FILE = "export.json"


def exit_dir_name(depth: int) -> str:
    """A run's export of exit ``depth``: ``RUN/export/exit-<depth>``."""
    return f"exit-{depth}"


@dataclass(frozen=True)
class ExportOrigin:
    """``run_id`` and ``round`` are None for a branch trained outside a federation."""

    model: str
    exit: int
    run_id: str | None = None
    round: int | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def as_strings(self) -> dict[str, str]:
        """Flat string fields, for formats whose metadata holds strings only (GGUF)."""
        return {key: str(value) for key, value in self.to_dict().items()}

    def write(self, directory: Path, **extra: Any) -> Path:
        path = Path(directory) / ORIGIN_FILE
        path.write_text(json.dumps({**self.to_dict(), **extra}, indent=2) + "\n")
        return path


def read_origin(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / ORIGIN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
