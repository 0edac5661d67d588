"""LoRA on a branch (PEFT), exchanged under canonical branch-independent names."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from famflow.familial.errors import FamflowError
from famflow.familial.model import FamilialLM
from famflow.familial.naming import exit_adapter_key, lora_module_key
from famflow.familial.sizing import DEFAULT_LORA_TARGETS

ADAPTER_NAME = "default"


@dataclass
class LoraSettings:
    """LoRA on a branch's decoder layers (and a Ruyi branch's exit layers).

    ``freeze_a`` is FFA-LoRA: every A starts from ``seed`` and the tensor's canonical name, so
    it is identical in every branch and client, and stays frozen; only B trains.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    freeze_a: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise FamflowError(f"LoRA rank must be at least 1, got {self.rank}: set rank >= 1.")
        if self.alpha <= 0:
            raise FamflowError(f"LoRA alpha must be positive, got {self.alpha}: set alpha > 0.")
        if not 0 <= self.dropout < 1:
            raise FamflowError(
                f"LoRA dropout must be in [0, 1), got {self.dropout}: pick e.g. 0.05."
            )
        if not self.targets:
            raise FamflowError("LoRA needs target modules: name some, e.g. q_proj,v_proj.")
        bad = [t for t in self.targets if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t)]
        if bad:
            raise FamflowError(f"LoRA targets must be module names, got {bad}: e.g. q_proj.")

    def module_pattern(self, with_exit_layers: bool, layers: Sequence[int] | None = None) -> str:
        """Regex (PEFT full match) over module names: the trunk's layers (all, or ``layers``),
        optionally the exits' own layers."""
        indices = r"\d+" if layers is None else f"(?:{'|'.join(str(i) for i in layers)})"
        blocks = rf"model\.layers\.{indices}" + (r"|exits\.\d+\.layer" if with_exit_layers else "")
        return rf"(?:{blocks})\.(?:.*\.)?(?:{'|'.join(self.targets)})"

    def peft_config(
        self, with_exit_layers: bool, layers: Sequence[int] | None = None
    ) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.module_pattern(with_exit_layers, layers),
            bias="none",
        )


def lora_modules(model: nn.Module) -> dict[str, LoraLayer]:
    """The LoRA-wrapped modules of a model, by canonical name."""
    return {
        lora_module_key(name): module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A
    }


def _shared_seed_init(weight: torch.Tensor, seed: int, key: str) -> None:
    """PEFT's Kaiming-uniform A init, drawn from a generator seeded by (seed, canonical key)."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    with torch.no_grad():
        values = torch.empty(weight.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(values, a=math.sqrt(5), generator=generator)
        weight.copy_(values)


def attach_lora(model: FamilialLM, settings: LoraSettings) -> FamilialLM:
    """Inject LoRA into the branch in place; everything else is frozen.

    A Ruyi branch's exit layers are pretrained model layers and get LoRA too; an adapter
    ``extra_layer`` is an exit adapter and is trained whole instead.
    """
    if lora_modules(model):
        raise FamflowError("This branch already has LoRA adapters: attach them once.")
    with_exit_layers = model.family.exit_style == "ruyi"
    try:
        inject_adapter_in_model(settings.peft_config(with_exit_layers), model, ADAPTER_NAME)
    except ValueError as error:
        raise FamflowError(
            f"LoRA targets {list(settings.targets)} match no linear layer of this model "
            f"({error}): use names such as {', '.join(DEFAULT_LORA_TARGETS)}."
        ) from None
    for key, module in lora_modules(model).items():
        # PEFT gives LoRA the base layer's dtype; factors stay fp32 over bf16 or quantized bases
        module.lora_A[ADAPTER_NAME].float()
        module.lora_B[ADAPTER_NAME].float()
        weight = module.lora_A[ADAPTER_NAME].weight
        _shared_seed_init(weight, settings.seed, f"{key}.A")
        weight.requires_grad_(not settings.freeze_a)
    model.lora_settings = settings
    return model


def lora_state(model: nn.Module, lora_a: bool = True) -> dict[str, torch.Tensor]:
    """LoRA factors under canonical names: ``trunk.7.self_attn.q_proj.A`` (r x in) and ``.B``.

    ``lora_a`` False leaves the A factors out (FFA: they are frozen and shared, never sent).
    """
    state: dict[str, torch.Tensor] = {}
    for key, module in lora_modules(model).items():
        if lora_a:
            state[f"{key}.A"] = module.lora_A[ADAPTER_NAME].weight
        state[f"{key}.B"] = module.lora_B[ADAPTER_NAME].weight
    return state


def exit_adapter_parameters(model: FamilialLM) -> dict[str, nn.Parameter]:
    """Exit adapter parameters (norm, translator, extra layer) under canonical names."""
    if model.family.adapters is None:
        return {}
    return {
        exit_adapter_key(name): param
        for name, param in model.named_parameters()
        if name.startswith("exits.") and ".lora_" not in name
    }


def trainable_state(
    model: FamilialLM, lora: bool = True, exit_adapters: bool = True, lora_a: bool = True
) -> dict[str, torch.Tensor]:
    """What a branch trains and exchanges, under canonical names (live tensors, not copies)."""
    state: dict[str, torch.Tensor] = {}
    if lora:
        state.update(lora_state(model, lora_a=lora_a))
    if exit_adapters:
        state.update(exit_adapter_parameters(model))
    return state


def load_trainable_state(
    model: FamilialLM,
    state: dict[str, torch.Tensor],
    lora: bool = True,
    exit_adapters: bool = True,
    lora_a: bool = True,
) -> None:
    """Copy ``state`` into the branch; every expected key must be there and nothing else."""
    target = trainable_state(model, lora=lora, exit_adapters=exit_adapters, lora_a=lora_a)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        raise FamflowError(
            f"Adapter state does not fit this branch (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): send each branch exactly the keys it holds."
        )
    for key, tensor in target.items():
        value = state[key]
        if tuple(value.shape) != tuple(tensor.shape):
            raise FamflowError(
                f"{key} has shape {tuple(value.shape)}, the branch expects "
                f"{tuple(tensor.shape)}: check the LoRA rank and the model."
            )
        with torch.no_grad():
            tensor.copy_(value)


def set_trainable(model: FamilialLM, lora: bool = True, exit_adapters: bool = True) -> None:
    """Freeze everything except the chosen parts (FFA keeps every A frozen)."""
    for param in model.parameters():
        param.requires_grad_(False)
    settings: LoraSettings | None = getattr(model, "lora_settings", None)
    train_a = lora and not (settings is not None and settings.freeze_a)
    for module in lora_modules(model).values():
        module.lora_A[ADAPTER_NAME].weight.requires_grad_(train_a)
        module.lora_B[ADAPTER_NAME].weight.requires_grad_(lora)
    for param in exit_adapter_parameters(model).values():
        param.requires_grad_(exit_adapters)
