"""The familial model: one trunk, several early exits, branch-only loading. No Flower here."""

from familial.config import ExitAdapterConfig, FamilyConfig
from familial.errors import FamflowError
from familial.model import FamilialLM, FamilialOutput

__all__ = ["ExitAdapterConfig", "FamflowError", "FamilialLM", "FamilialOutput", "FamilyConfig"]
