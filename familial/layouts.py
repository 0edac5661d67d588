"""Where each FamilialLM tensor comes from in a checkpoint of a given format.

A layout maps a famflow parameter name to the checkpoint tensors that may hold (or initialise)
it, first present wins; an empty tuple means it has no source and starts at identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXIT_KEY = re.compile(r"^exits\.(\d+)\.(layer|norm|lm_head|translator)(?:\.(.*))?$")
TIED_HEAD = ("lm_head.weight", "model.embed_tokens.weight")


@dataclass(frozen=True)
class DenseLayout:
    """A plain HF checkpoint (Llama/Qwen2/Qwen3): exit parts start from the trunk's.

    An exit's own layer starts from the trunk layer it stands for: the layer after the exit
    for adapter layers, the exit's last layer for ruyi-style families made from a dense model.
    """

    exit_style: str = "shared-head"
    name = "dense"

    def source_keys(self, param: str) -> tuple[str, ...]:
        match = EXIT_KEY.match(param)
        if match is None:
            return TIED_HEAD if param == "lm_head.weight" else (param,)
        depth, part, rest = int(match[1]), match[2], match[3]
        if part == "norm":
            return ("model.norm.weight",)
        if part == "layer":
            index = depth - 1 if self.exit_style == "ruyi" else depth
            return (f"model.layers.{index}.{rest}",)
        if part == "lm_head":
            return TIED_HEAD
        return ()


@dataclass(frozen=True)
class RuyiLayout:
    """AI-Flow-Ruyi: ``model.eelayers.j``, ``model.norms.j``, ``lm_head.j`` per exit j."""

    exits: tuple[int, ...]
    name = "ruyi"

    def source_keys(self, param: str) -> tuple[str, ...]:
        match = EXIT_KEY.match(param)
        if match is None:
            return (param,)
        index = self.exits.index(int(match[1]))
        part, rest = match[2], match[3]
        if part == "layer":
            return (f"model.eelayers.{index}.{rest}",)
        if part == "norm":
            return (f"model.norms.{index}.weight",)
        if part == "lm_head":
            return (f"lm_head.{index}.weight",)
        return ()


Layout = DenseLayout | RuyiLayout
