"""Build a branch of a family: on the meta device for sizing, from checkpoints for use.

Branch-only loading: the branch is built on the meta device, then exactly the tensors it
holds are read from the checkpoint (memory-mapped) and assigned; nothing else is allocated.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from famflow.familial.architectures import architecture_for
from famflow.familial.checkpoint import SafetensorsCheckpoint
from famflow.familial.errors import FamflowError
from famflow.familial.exits import FullTranslator, LowRankTranslator
from famflow.familial.family_io import read_exit_adapters, saved_family
from famflow.familial.host_memory import release_freed_memory
from famflow.familial.model import FamilialLM
from famflow.familial.presets import ModelSpec, resolve_model
from famflow.familial.weights import (
    precision_of_dtype,
    quantize_frozen_layers,
    weight_precision,
)

logger = logging.getLogger("famflow.familial")


def _spec(model: ModelSpec | str | Path) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else resolve_model(model)


def _check_exit(spec: ModelSpec, exit_depth: int | None) -> int:
    config = spec.base_config()
    if exit_depth is None:
        return spec.family.exits[-1]
    if exit_depth > config.num_hidden_layers or exit_depth < 1:
        raise FamflowError(
            f"Exit {exit_depth} is beyond {spec.name}'s {config.num_hidden_layers} layers: "
            f"choose one of its exits {spec.family.exits}."
        )
    spec.family.check_exit(exit_depth)
    return exit_depth


def with_saved_family(spec: ModelSpec, adapters: Path | None) -> ModelSpec:
    """``spec`` with its exits' own decoder layers when its saved adapters were trained with
    them (``famflow familialize`` records that in ``family.json``). Any other difference is
    left to ``read_exit_adapters`` to refuse."""
    saved = saved_family(adapters) if adapters is not None else None
    if saved is None or saved == spec.family or saved != spec.family.with_exit_layers():
        return spec
    return dataclasses.replace(spec, family=saved)


def build_meta_branch(
    model: ModelSpec | str | Path, exit_depth: int | None = None, exits: list[int] | None = None
) -> FamilialLM:
    """The branch's modules on the meta device: shapes and counts without any weights."""
    spec = _spec(model)
    exit_depth = _check_exit(spec, exit_depth)
    with torch.device("meta"):
        return FamilialLM(spec.base_config(), spec.family, branch=exit_depth, exits=exits)


def checkpoint_dir(spec: ModelSpec) -> Path:
    if spec.source == "gguf":
        from famflow.familial.gguf_cache import ensure_gguf_cache

        assert spec.path is not None
        return ensure_gguf_cache(spec.path)
    if spec.source == "local":
        assert spec.path is not None
        return spec.path
    raise FamflowError(
        f"Model {spec.name!r} is config-only: pass a local checkpoint directory to load weights."
    )


def _identity_init(model: FamilialLM) -> None:
    """Materialise parameters that have no checkpoint source (translators) at identity."""
    for module in model.modules():
        if isinstance(module, FullTranslator | LowRankTranslator) and any(
            p.is_meta for p in module.parameters()
        ):
            module.to_empty(device="cpu")
            module.reset_identity()


def load_branch(
    model: ModelSpec | str | Path,
    exit_depth: int | None = None,
    *,
    exits: list[int] | None = None,
    adapters: Path | None = None,
    dtype: torch.dtype | None = None,
    weights: str | None = None,
    device: str = "cpu",
) -> FamilialLM:
    """Load the branch ending at ``exit_depth`` (default: the deepest), reading only its tensors.

    ``exits`` are the exits the branch holds (default: all up to ``exit_depth``). ``adapters``
    is a directory or safetensors file written by ``familial.family_io.save_exit_adapters``;
    without it, exit adapters start from the trunk (final norm, layer ``depth``) and identity.
    ``weights`` (``familial.weights``: fp32, bf16, int8, nf4) is the precision of the frozen
    decoder layers, quantized on ``device`` as they load; default the preset's dtype.
    """
    spec = with_saved_family(_spec(model), adapters)
    precision = weight_precision(weights) if weights else None
    dtype = dtype or (precision.dense_dtype(spec.torch_dtype) if precision else spec.torch_dtype)
    branch = build_meta_branch(spec, exit_depth, exits)
    saved = read_exit_adapters(adapters, spec.family) if adapters is not None else {}
    if spec.source == "random":
        where = f"the random weights of {spec.name}"
        tensors = _gather(branch, spec, _random_state_dict(spec), where, saved, dtype, copy=False)
    else:
        directory = checkpoint_dir(spec)
        with SafetensorsCheckpoint(directory) as checkpoint:
            tensors = _gather(branch, spec, checkpoint, str(directory), saved, dtype, copy=False)
    _assign(branch, tensors)
    del tensors
    branch.weight_precision = precision_of_dtype(dtype)
    if precision is not None and precision.quantized:
        quantize_frozen_layers(branch, spec.family.exit_style, precision.name, device)
        _own_memory(branch)
    return branch


def _own_memory(branch: FamilialLM) -> None:
    """Copy the dense tensors out of the memory-mapped checkpoint. Quantizing read every
    page of the file; once no tensor views it, the mapping and its pages leave the process."""
    with torch.no_grad():
        for tensor in [*branch.parameters(), *branch.buffers()]:
            if tensor.is_floating_point():
                tensor.data = tensor.data.clone()
    release_freed_memory()


def from_dense_state_dict(
    model: ModelSpec | str | Path,
    state_dict: dict[str, torch.Tensor],
    exit_depth: int | None = None,
    exits: list[int] | None = None,
) -> FamilialLM:
    """A branch taken from an in-memory dense (HF-named) state dict, which it does not share."""
    spec = _spec(model)
    branch = build_meta_branch(spec, exit_depth, exits)
    where = "the given state dict"
    _assign(branch, _gather(branch, spec, state_dict, where, {}, None, copy=True))
    return branch


def _gather(
    branch: FamilialLM,
    spec: ModelSpec,
    source: SafetensorsCheckpoint | Mapping[str, torch.Tensor],
    where: str,
    saved: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None,
    copy: bool,
) -> dict[str, torch.Tensor]:
    """The branch's tensors: saved exit parameters first, then the layout's source tensors.

    Tensors without a source (translators) are left out and start at identity in ``_assign``;
    ``dtype`` None keeps the source's dtype.
    """
    tensors: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name in branch.state_dict():
        if name == "lm_head.weight" and branch.config.tie_word_embeddings:
            continue
        if name in saved:
            tensors[name] = saved[name]
            continue
        sources = spec.layout.source_keys(name)
        if not sources:
            continue
        present = [key for key in sources if key in source]
        if not present:
            raise FamflowError(
                f"{where} has no tensor {sources[0]!r} that exit {branch.branch} needs: "
                f"it is incomplete or not a {spec.layout.name} checkpoint of {spec.name}."
            )
        tensor = source.get(present[0]).detach()
        tensor = tensor if dtype is None else tensor.to(dtype)
        # safetensors hands out one tensor per key: parts initialised from the same source
        # (every exit norm from the final norm) need storage of their own.
        if copy or present[0] in used:
            tensor = tensor.clone()
        used.add(present[0])
        tensors[name] = tensor
    return tensors


def _assign(branch: FamilialLM, tensors: dict[str, torch.Tensor]) -> None:
    result = branch.load_state_dict(tensors, strict=False, assign=True)
    if result.unexpected_keys:
        raise FamflowError(
            f"Unexpected tensors {result.unexpected_keys[:3]}: check the adapters file."
        )
    _identity_init(branch)
    arch = architecture_for(branch.config)
    branch.model.rotary_emb = arch.rotary_embedding(config=branch.config)
    branch.tie_weights()
    still_meta = [name for name, p in branch.named_parameters() if p.is_meta]
    if still_meta:
        raise FamflowError(
            f"Parameters {still_meta[:3]} were not loaded: the checkpoint is incomplete."
        )


def _random_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Dense weights initialised by transformers from the spec's seed (the tiny preset)."""
    from transformers import AutoModelForCausalLM

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed)
    try:
        return AutoModelForCausalLM.from_config(spec.base_config()).state_dict()
    finally:
        torch.random.set_rng_state(generator_state)
