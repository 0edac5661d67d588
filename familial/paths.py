"""Where famflow keeps things on disk (no heavy imports: the data commands start fast)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    return Path(os.environ.get("FAMFLOW_CACHE", Path.home() / ".cache" / "famflow"))
