"""A collaborative route's settings: the decoding modes and transports, checked on creation.

No torch here: the command line builds its parser from these registries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from famflow.familial.errors import FamflowError

Mode = Literal["speculative", "early-exit"]
MODES = ("speculative", "early-exit")
TRANSPORTS = ("local", "http")


@dataclass
class RouteSettings:
    mode: Mode = "speculative"
    draft_tokens: int = 4
    codec: str = "fp16"
    threshold: float = 0.9
    transport: str = "local"
    max_new_tokens: int = 24
    # Speculative: the device drafts the next round while a verification is in flight.
    predraft: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FamflowError(f"Unknown mode {self.mode!r}: use one of {', '.join(MODES)}.")
        if self.transport not in TRANSPORTS:
            raise FamflowError(
                f"Unknown transport {self.transport!r}: use one of {', '.join(TRANSPORTS)}."
            )


# Link models the comparison prints by default: bandwidth in bit/s, round-trip time in s.
DEFAULT_LINKS = ("10e6,0.05", "100e6,0.01")
