"""Sizes of a family's branches, counted on the meta device (no weights allocated)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from famflow.familial.chunked_loss import chunk_rows
from famflow.familial.compute import CHECKPOINTING, RECOMPUTE
from famflow.familial.errors import FamflowError
from famflow.familial.loading import build_meta_branch
from famflow.familial.model import FamilialLM
from famflow.familial.presets import ModelSpec, resolve_model
from famflow.familial.weights import (
    PRECISIONS,
    frozen_linears,
    precision_of_dtype,
    weight_precision,
)

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP32_BYTES = 4
# Resident memory over the activations counted below, measured on SmolLM2-135M exits 10/20/30
# (benchmarks/quantized_branches.py --held-exits --checkpointing off on: fp32 up to 1.58x and 2.29x;
# quantized layers add their training_overhead):
# glibc's heap keeps freed activations, bounded under checkpointing (familial.host_memory).
HEAP_SLACK = 1.6
CHECKPOINTED_HEAP_SLACK = 2.4


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
    # the branch's weights with its frozen decoder layers in each precision (familial.weights)
    weight_bytes_by_precision: dict[str, int]


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
        weight_bytes_by_precision={
            name: weight_bytes(branch, name, spec.torch_dtype) for name in PRECISIONS
        },
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


def weight_bytes(branch: FamilialLM, weights: str, model_dtype: torch.dtype) -> int:
    """Bytes of a (meta) branch's weights when its frozen decoder layers are held in
    ``weights`` (``familial.weights``) and the model is stored in ``model_dtype``."""
    precision = weight_precision(weights)
    linears = [module for _, module in frozen_linears(branch, branch.family.exit_style)]
    dense = _count(branch) - sum(linear.weight.numel() for linear in linears)
    total = dense * precision.dense_dtype(model_dtype).itemsize
    return total + sum(precision.linear_bytes(m.in_features, m.out_features) for m in linears)


def quantized_training_bytes(branch: FamilialLM, weights: str, model_dtype: torch.dtype) -> int:
    """What training keeps for the quantized linears beyond their weights
    (``WeightPrecision.training_overhead`` of their bytes in ``model_dtype``)."""
    precision = weight_precision(weights)
    if not precision.quantized:
        return 0
    linears = [module for _, module in frozen_linears(branch, branch.family.exit_style)]
    dense = sum(m.weight.numel() for m in linears) * model_dtype.itemsize
    return int(precision.training_overhead * dense)


def training_memory_bytes(
    spec: ModelSpec,
    exit_depth: int,
    rank: int,
    batch_size: int,
    seq_len: int,
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
    weights: str | None = None,
    gradient_checkpointing: bool = False,
) -> int:
    """An estimate of the memory a client needs to train a branch with every exit it holds.

    Weights (the frozen decoder layers in ``weights``, default the preset's dtype), plus LoRA
    and exit adapters with gradient and two AdamW moments, plus the activations kept for
    backward: per token and layer the inputs of its linears, norms and attention, and per
    exit the logits with their softmax and gradient. Under ``gradient_checkpointing``
    (``TrainConfig``) only each layer's input and each head's input are kept, plus one layer's
    and one chunk's activations being recomputed (``familial.chunked_loss``).
    """
    branch = build_meta_branch(spec, exit_depth)
    config = branch.config
    weights = weights or precision_of_dtype(spec.torch_dtype)
    dtype = spec.torch_dtype
    weights_total = weight_bytes(branch, weights, dtype) + quantized_training_bytes(
        branch, weights, dtype
    )
    trainable = branch_lora_parameters(branch, rank, targets)
    if spec.family.adapters is not None:  # a Ruyi exit's own layer and head are not trained
        trainable += sum(p.numel() for n, p in branch.named_parameters() if n.startswith("exits."))
    tokens = batch_size * seq_len
    per_token_layer = (
        8 * config.hidden_size + 4 * config.intermediate_size + config.num_attention_heads * seq_len
    )
    layers = decoder_layers(branch)
    exits = len(branch.held_exits)
    if gradient_checkpointing:
        kept = tokens * config.hidden_size * (layers + 2 * exits)
        recomputed = (
            tokens * per_token_layer + chunk_rows(config.vocab_size) * config.vocab_size * 3 * exits
        )
        activations = (kept + recomputed) * FP32_BYTES * CHECKPOINTED_HEAP_SLACK
    else:
        layer_activations = tokens * per_token_layer * layers
        logits = tokens * config.vocab_size * 3 * exits
        activations = (layer_activations + logits) * FP32_BYTES * HEAP_SLACK
    return int(weights_total + trainable * 4 * FP32_BYTES + activations)


@dataclass(frozen=True)
class BranchFit:
    """What a node trains: its exit, its frozen layers' precision, whether it recomputes."""

    exit: int
    weights: str
    gradient_checkpointing: bool = False


def largest_fitting_branch(
    spec: ModelSpec,
    memory_bytes: float,
    rank: int,
    batch_size: int,
    seq_len: int,
    weights: tuple[str, ...] = (),
    checkpointing: str = "off",
) -> BranchFit | None:
    """The deepest exit whose training fits in ``memory_bytes``, ``weights`` being the
    precisions allowed (default the preset's dtype only) and ``checkpointing`` whether
    gradient checkpointing is ``off``, ``on``, or taken only when needed to fit (``auto``).
    At that exit the most precise fitting precision wins, then no checkpointing (faster).
    None when nothing fits."""
    allowed = weights or (precision_of_dtype(spec.torch_dtype),)
    by_precision = sorted(allowed, key=lambda name: -weight_precision(name).bits)
    recompute = RECOMPUTE.get(checkpointing)
    if recompute is None:
        raise FamflowError(
            f"Unknown checkpointing {checkpointing!r}: use {', '.join(CHECKPOINTING)}."
        )
    for depth in reversed(spec.family.exits):
        for name in by_precision:
            for checkpointed in recompute:
                needed = training_memory_bytes(
                    spec,
                    depth,
                    rank,
                    batch_size,
                    seq_len,
                    weights=name,
                    gradient_checkpointing=checkpointed,
                )
                if needed <= memory_bytes:
                    return BranchFit(depth, name, checkpointed)
    return None
