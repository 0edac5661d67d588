"""Canonical, branch-independent names of the tensors a branch trains and exchanges.

A module's name inside a branch (``model.layers.7.self_attn.q_proj``) becomes
``trunk.7.self_attn.q_proj``; an exit's own parts (``exits.12.layer...``) become ``exit.12...``.
LoRA factors end in ``.A`` / ``.B``; exit adapter tensors keep their parameter name
(``exit.12.norm.weight``, ``exit.12.translator.proj.weight``). The same key means the same
tensor in every branch that holds it.
"""

from __future__ import annotations

import re

from famflow.familial.errors import FamflowError

_TRUNK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXIT_LAYER = re.compile(r"^exits\.(\d+)\.layer\.(.+)$")
_EXIT = re.compile(r"^exits\.(\d+)\.(.+)$")


def lora_module_key(module_name: str) -> str:
    """``model.layers.7.self_attn.q_proj`` -> ``trunk.7.self_attn.q_proj``; exits: ``exit.D``."""
    if match := _TRUNK.match(module_name):
        return f"trunk.{match[1]}.{match[2]}"
    if match := _EXIT_LAYER.match(module_name):
        return f"exit.{match[1]}.{match[2]}"
    raise FamflowError(f"{module_name} is not a decoder layer module: LoRA targets layers only.")


def exit_adapter_key(parameter_name: str) -> str:
    """``exits.12.translator.proj.weight`` -> ``exit.12.translator.proj.weight``."""
    match = _EXIT.match(parameter_name)
    if not match:
        raise FamflowError(f"{parameter_name} is not an exit parameter.")
    return f"exit.{match[1]}.{match[2]}"
