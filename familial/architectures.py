"""The transformers building blocks famflow assembles families from, per architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

from famflow.familial.errors import FamflowError

# AI-Flow-Ruyi families (model.eelayers.j, model.norms.j, lm_head.j) by model type, and the
# transformers architecture of their decoder layers: Ruyi-7B is Qwen2; Ruyi2 is Qwen3, typed
# ruyi_qwen3 in its code and ee_qwen3 in its published config.
RUYI_MODEL_TYPES = {"ruyi_qwen2": "qwen2", "ruyi_qwen3": "qwen3", "ee_qwen3": "qwen3"}
RUYI_ONLY_KEYS = (
    "early_exit_points",
    "default_early_exit_point",
    "shared_heads",
    "auto_map",
    "architectures",
)


@dataclass(frozen=True)
class Architecture:
    config_class: type[PretrainedConfig]
    decoder_layer: type[nn.Module]
    rms_norm: type[nn.Module]
    rotary_embedding: type[nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(
        LlamaConfig,
        modeling_llama.LlamaDecoderLayer,
        modeling_llama.LlamaRMSNorm,
        modeling_llama.LlamaRotaryEmbedding,
    ),
    "qwen2": Architecture(
        Qwen2Config,
        modeling_qwen2.Qwen2DecoderLayer,
        modeling_qwen2.Qwen2RMSNorm,
        modeling_qwen2.Qwen2RotaryEmbedding,
    ),
    "qwen3": Architecture(
        Qwen3Config,
        modeling_qwen3.Qwen3DecoderLayer,
        modeling_qwen3.Qwen3RMSNorm,
        modeling_qwen3.Qwen3RotaryEmbedding,
    ),
}


def architecture_for(config: PretrainedConfig) -> Architecture:
    try:
        return ARCHITECTURES[config.model_type]
    except KeyError:
        raise FamflowError(
            f"Model type {config.model_type!r} is not supported: use a Llama, Qwen2, Qwen3 "
            f"or AI-Flow-Ruyi ({', '.join(RUYI_MODEL_TYPES)}) checkpoint."
        ) from None


def is_ruyi(config_dict: dict[str, Any]) -> bool:
    """Whether a config.json-like dict describes an AI-Flow-Ruyi family."""
    return config_dict.get("model_type") in RUYI_MODEL_TYPES


def base_config_from_dict(data: dict[str, Any]) -> PretrainedConfig:
    """A transformers config from a config.json-like dict; a Ruyi config becomes the config of
    its decoder layers' architecture (Qwen2 or Qwen3)."""
    data = dict(data)
    model_type = data.pop("model_type", None)
    if model_type in RUYI_MODEL_TYPES:
        model_type = RUYI_MODEL_TYPES[model_type]
        for key in RUYI_ONLY_KEYS:
            data.pop(key, None)
    if model_type not in ARCHITECTURES:
        raise FamflowError(
            f"Model type {model_type!r} is not supported: use one of "
            f"{', '.join(sorted(ARCHITECTURES))} or {', '.join(RUYI_MODEL_TYPES)}."
        )
    data.pop("quantization_config", None)
    data.pop("transformers_version", None)
    attention = data.pop("_attn_implementation", None) or data.pop("attn_implementation", None)
    config = ARCHITECTURES[model_type].config_class(**data)
    # Built outside from_pretrained, the config has no attention backend chosen yet.
    config._attn_implementation = attention or "sdpa"
    return config


def ruyi_exit_depths(config_dict: dict[str, Any]) -> list[int]:
    """Ruyi names exits by the 0-based index of the last layer run; famflow by depth (index + 1)."""
    points = config_dict.get("early_exit_points")
    if not points:
        raise FamflowError(
            f"This {config_dict.get('model_type')} config has no `early_exit_points`: add them "
            "to config.json."
        )
    return [int(p) + 1 for p in points]
