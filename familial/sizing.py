"""Sizes of a family's branches, counted on the meta device (no weights allocated)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from famflow.familial.loading import build_meta_branch
from famflow.familial.model import FamilialLM
from famflow.familial.presets import ModelSpec, resolve_model

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP32_BYTES = 4


@dataclass
class BranchSize:
    exit: int
    label: str
    layers: int
    parameters: int
    weight_bytes: int
    lora_parameters: int
    lora_bytes_fp32: int
    lora_bytes_fp16: int
    full_gradient_fp32_bytes: int


def decoder_layers(model: FamilialLM) -> int:
    """Decoder layers the branch's deepest exit runs: trunk layers plus its own exit layer."""
    return len(model.model.layers) + (model.exit_head(model.branch).layer is not None)


def lora_parameters(
    layer: nn.Module, rank: int, targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
) -> int:
    """Parameters of rank-``rank`` LoRA (A: r x in, B: out x r) on a layer's targeted linears."""
    return sum(
        rank * (module.in_features + module.out_features)
        for name, module in layer.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


def branch_lora_parameters(
    model: FamilialLM, rank: int, targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
) -> int:
    """LoRA on the layers the branch's deepest exit runs (shallower exits' own layers excluded)."""
    total = sum(lora_parameters(layer, rank, targets) for layer in model.model.layers)
    own = model.exit_head(model.branch).layer
    return total + (lora_parameters(own, rank, targets) if own is not None else 0)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def branch_size(
    spec: ModelSpec, exit_depth: int, rank: int, targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
) -> BranchSize:
    branch = build_meta_branch(spec, exit_depth, exits=[exit_depth])
    parameters = _count(branch)
    lora = branch_lora_parameters(branch, rank, targets)
    return BranchSize(
        exit=exit_depth,
        label=spec.exit_label(exit_depth),
        layers=decoder_layers(branch),
        parameters=parameters,
        weight_bytes=parameters * spec.torch_dtype.itemsize,
        lora_parameters=lora,
        lora_bytes_fp32=lora * FP32_BYTES,
        lora_bytes_fp16=lora * 2,
        full_gradient_fp32_bytes=parameters * FP32_BYTES,
    )


def model_info(
    model: ModelSpec | str | Path, rank: int = 8, targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
) -> dict[str, Any]:
    """The figures ``famflow info`` prints; every field is documented in docs/info.md."""
    spec = model if isinstance(model, ModelSpec) else resolve_model(model)
    config = spec.base_config()
    branches = [branch_size(spec, e, rank, targets) for e in spec.family.exits]
    # Shallower exits' own layers, norms and heads belong to the family, not to the deepest path.
    family_parameters = _count(build_meta_branch(spec))
    return {
        "model": spec.name,
        "architecture": config.model_type,
        "exit_style": spec.family.exit_style,
        "dtype": spec.dtype,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "lora_rank": rank,
        "lora_targets": list(targets),
        "family_parameters": family_parameters,
        "full_model_parameters": branches[-1].parameters,
        "full_gradient_fp32_bytes": branches[-1].full_gradient_fp32_bytes,
        "branches": [asdict(b) for b in branches],
    }


def training_memory_bytes(
    spec: ModelSpec,
    exit_depth: int,
    rank: int,
    batch_size: int,
    seq_len: int,
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
) -> int:
    """An estimate of the memory a client needs to train a branch with every exit it holds.

    Weights, plus LoRA and exit adapters with gradient and two AdamW moments, plus the
    activations kept for backward: per token and layer the inputs of its linears, norms and
    attention, and per exit the logits with their softmax and gradient.
    """
    branch = build_meta_branch(spec, exit_depth)
    config = branch.config
    weights = _count(branch) * spec.torch_dtype.itemsize
    trainable = branch_lora_parameters(branch, rank, targets)
    if spec.family.adapters is not None:  # a Ruyi exit's own layer and head are not trained
        trainable += sum(p.numel() for n, p in branch.named_parameters() if n.startswith("exits."))
    tokens = batch_size * seq_len
    per_token_layer = (
        8 * config.hidden_size + 4 * config.intermediate_size + config.num_attention_heads * seq_len
    )
    layers = decoder_layers(branch)
    activations = tokens * per_token_layer * layers * FP32_BYTES
    logits = tokens * config.vocab_size * 3 * FP32_BYTES * len(branch.held_exits)
    return weights + trainable * 4 * FP32_BYTES + activations + logits


def largest_fitting_branch(
    spec: ModelSpec, memory_bytes: float, rank: int, batch_size: int, seq_len: int
) -> int | None:
    """The deepest exit whose training fits in ``memory_bytes``; None when none does."""
    fitting = [
        depth
        for depth in spec.family.exits
        if training_memory_bytes(spec, depth, rank, batch_size, seq_len) <= memory_bytes
    ]
    return fitting[-1] if fitting else None
