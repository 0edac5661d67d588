"""Where famflow keeps things on disk (no heavy imports: the data commands start fast)."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def shipped_configs() -> Path:
    """The model presets (``models/``) and tier files (``hardware/``) shipped with famflow."""
    return Path(str(files("famflow.configs")))


def cache_root() -> Path:
    return Path(os.environ.get("FAMFLOW_CACHE", Path.home() / ".cache" / "famflow"))
