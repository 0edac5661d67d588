"""A branch as a transformers checkpoint directory: config.json, model.safetensors, tokenizer.

``AutoModelForCausalLM.from_pretrained(directory)`` loads it with no famflow import.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, PreTrainedTokenizerBase

from famflow.familial.export_origin import ExportOrigin
from famflow.familial.standalone import StandaloneBranch

HF_WEIGHTS_FILE = "model.safetensors"
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def save_hf_branch(
    branch: StandaloneBranch,
    directory: Path,
    tokenizer: PreTrainedTokenizerBase,
    origin: ExportOrigin,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``branch`` into ``directory`` in ``dtype``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.to(dtype).contiguous() for name, tensor in branch.tensors.items()}
    if branch.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    config = copy.deepcopy(branch.config)
    config.dtype = DTYPE_NAMES[dtype]
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, field, None)
        if token_id is not None:
            setattr(config, field, token_id)
    save_file(tensors, str(directory / HF_WEIGHTS_FILE), metadata={"format": "pt"})
    config.save_pretrained(str(directory))
    GenerationConfig.from_model_config(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    origin.write(directory, format="hf", dtype=DTYPE_NAMES[dtype])
    return directory
