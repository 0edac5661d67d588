"""One exit of a family as a standard decoder, which transformers, PEFT and llama.cpp load as is.

Exit E becomes a plain causal LM of the family's own architecture (Llama, Qwen2, Qwen3):
- its decoder layers are the trunk layers the exit runs, then the exit's own layer (Ruyi's
  eelayer or an adapter layer), which becomes the last decoder layer;
- its final norm is the exit's norm (or the shared final norm);
- its ``lm_head`` is the exit's head with the exit's translator folded in (``W @ T``, the
  translator being linear and applied after the norm); it stays tied to the embedding only when
  the exit reads through the tied shared head with no translator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers import PretrainedConfig

from famflow.familial.errors import FamflowError
from famflow.familial.lora import ADAPTER_NAME
from famflow.familial.model import FamilialLM

ARCHITECTURE_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclass
class StandaloneBranch:
    """The exit's config and tensors under transformers' names (``model.layers.N...``).

    ``lora``: the branch's LoRA factors under the same names, in PEFT's state-dict form; empty
    when the branch has none or they were merged into ``tensors``.
    """

    config: PretrainedConfig
    tensors: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor]

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)


def _standalone_name(model: FamilialLM, exit_depth: int, name: str) -> str | None:
    """The plain model's name of one branch tensor, or None when exit ``exit_depth`` does not
    run it (a trunk layer below another exit, another exit's parts)."""
    trunk = model.trunk_depth(exit_depth)
    if name.startswith("model.layers."):
        index = int(name.split(".")[2])
        return name if index < trunk else None
    own = f"exits.{exit_depth}."
    if name.startswith(own + "layer."):
        return f"model.layers.{trunk}." + name.removeprefix(own + "layer.")
    if name.startswith(own + "norm."):
        return "model.norm." + name.removeprefix(own + "norm.")
    if name == "model.embed_tokens.weight":
        return name
    if name == "model.norm.weight" and model.exit_head(exit_depth).norm is None:
        return name
    return None


def _head_weight(model: FamilialLM, exit_depth: int) -> tuple[torch.Tensor, bool]:
    """The exit's lm_head weight with its translator folded in, and whether it is the tied
    embedding unchanged."""
    head = model.exit_head(exit_depth)
    lm_head = head.lm_head if head.lm_head is not None else model.lm_head
    assert lm_head is not None
    weight = lm_head.weight.detach()
    tied = head.lm_head is None and bool(model.config.tie_word_embeddings)
    if head.translator is None:
        return weight, tied
    folded = weight.double() @ head.translator.matrix().detach().double()
    return folded.to(weight.dtype), False


def _merged_deltas(model: FamilialLM) -> dict[str, torch.Tensor]:
    """``W += scale * B @ A`` of every LoRA module, under the base weight's name."""
    return {
        f"{name}.weight": module.get_delta_weight(ADAPTER_NAME).detach()
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A
    }


def standalone_config(model: FamilialLM, exit_depth: int, tied: bool) -> PretrainedConfig:
    config = copy.deepcopy(model.config)
    trunk = model.trunk_depth(exit_depth)
    head = model.exit_head(exit_depth)
    layers = trunk + (1 if head.layer is not None else 0)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        own = [head.layer_type] if head.layer is not None else []
        config.layer_types = list(layer_types[:trunk]) + own
    config.num_hidden_layers = layers
    config.tie_word_embeddings = tied
    config.architectures = [ARCHITECTURE_CLASSES[config.model_type]]
    return config


def standalone_branch(
    model: FamilialLM, exit_depth: int, merge_lora: bool = True
) -> StandaloneBranch:
    """Exit ``exit_depth`` of ``model`` as a plain decoder; LoRA merged in, or kept apart."""
    model.family.check_exit(exit_depth)
    if exit_depth not in model.held_exits:
        raise FamflowError(
            f"Exit {exit_depth} is not held by this branch (it holds {model.held_exits}): "
            "export it from a branch that holds it."
        )
    deltas = _merged_deltas(model) if merge_lora else {}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        target = _standalone_name(model, exit_depth, name)
        if target is None:
            continue
        value = tensor.detach()
        if name in deltas:
            value = value + deltas[name].to(value.dtype)
        tensors[target] = value.contiguous().cpu()
    head, tied = _head_weight(model, exit_depth)
    tensors["lm_head.weight"] = head.contiguous().cpu()
    lora: dict[str, torch.Tensor] = {}
    if not merge_lora and any(isinstance(m, LoraLayer) for m in model.modules()):
        for name, tensor in get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME).items():
            target = _standalone_name(model, exit_depth, name)
            if target is not None:
                lora[target] = tensor.detach().contiguous().cpu()
    return StandaloneBranch(standalone_config(model, exit_depth, tied), tensors, lora)
