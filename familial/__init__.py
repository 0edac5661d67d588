"""The familial model: one trunk, several early exits, branch-only loading. No Flower here.

``FamilialLM`` and ``FamilialOutput`` are imported on first use, so that light modules
(errors, configs, codecs) do not pay for importing torch and transformers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from famflow.familial.config import ExitAdapterConfig, FamilyConfig
from famflow.familial.errors import FamflowError

# bitsandbytes (imported by PEFT) looks for optional CPU kernels on the Hugging Face hub and
# warns when they are absent; its own torch kernels run instead (familial.weights).
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

if TYPE_CHECKING:
    from famflow.familial.model import FamilialLM, FamilialOutput

__all__ = ["ExitAdapterConfig", "FamflowError", "FamilialLM", "FamilialOutput", "FamilyConfig"]


def __getattr__(name: str) -> object:
    if name in ("FamilialLM", "FamilialOutput"):
        from famflow.familial import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
