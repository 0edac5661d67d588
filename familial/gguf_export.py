"""A branch as a GGUF file (f16 or q8_0), written with the ``gguf`` package's writer.

The file follows what llama.cpp's converter writes for Llama, Qwen2 and Qwen3: the same
metadata keys, tensor names (``blk.N.attn_q``...) and, for Llama, Q and K rows permuted to the
interleaved rotary layout llama.cpp uses. The tokenizer travels as a byte-level BPE
(``tokenizer.ggml.model = gpt2``) with its merges and special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from famflow.familial.errors import FamflowError
from famflow.familial.export_formats import GGUF_TYPE_NAMES
from famflow.familial.export_origin import ExportOrigin
from famflow.familial.standalone import StandaloneBranch

GGUF_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
assert tuple(GGUF_TYPES) == GGUF_TYPE_NAMES
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
ARCHES = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
}


def _permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's half-split rotary rows -> llama.cpp's interleaved pairs (Llama only)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _tensor_data(name: str, tensor: torch.Tensor, config: Any) -> np.ndarray:
    data = tensor.detach().float().numpy()
    if config.model_type == "llama":
        if name.endswith("self_attn.q_proj.weight"):
            data = _permute_rotary(data, config.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            data = _permute_rotary(data, config.num_key_value_heads)
    return data


def _encode(data: np.ndarray, gguf_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Norms and biases stay f32 (as llama.cpp keeps them); matrices take the file's type, and
    q8_0 falls back to f16 for rows that are not whole 32-value blocks."""
    if data.ndim < 2:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = GGUF_TYPES[gguf_type]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 == 0:
        return gguf.quants.quantize(data, qtype), qtype
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _merges(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise FamflowError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: GGUF export needs a "
            "byte-level BPE tokenizer (tokenizer.json)."
        )
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise FamflowError(
            f"The tokenizer is a {model.get('type')} model: GGUF export supports byte-level BPE "
            "tokenizers (Llama 3, SmolLM, Qwen) only."
        )
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _add_tokenizer(
    writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, vocab_size: int, pre: str
) -> None:
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {index: token.special for index, token in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        if index in added:
            types.append(gguf.TokenType.CONTROL if added[index] else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = _merges(tokenizer)
    if merges:
        writer.add_token_merges(merges)
    else:  # a vocabulary of single bytes: readers derive (no) merges from scores instead
        writer.add_token_scores([0.0] * len(tokens))
    for field, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("pad_token_id", writer.add_pad_token_id),
        ("unk_token_id", writer.add_unk_token_id),
    ):
        token_id = getattr(tokenizer, field, None)
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _add_hyperparameters(writer: gguf.GGUFWriter, config: Any, name: str, gguf_type: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_key_length(int(head_dim))
    writer.add_value_length(int(head_dim))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(FILE_TYPES[gguf_type])


def save_gguf_branch(
    branch: StandaloneBranch,
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    origin: ExportOrigin,
    gguf_type: str = "f16",
    tokenizer_pre: str = "default",
) -> Path:
    """Write ``branch`` as one GGUF file at ``path``; returns the path."""
    if gguf_type not in GGUF_TYPES:
        raise FamflowError(f"Unknown GGUF type {gguf_type!r}: use one of {', '.join(GGUF_TYPES)}.")
    config = branch.config
    if config.model_type not in ARCHES:
        raise FamflowError(
            f"GGUF export supports {', '.join(ARCHES)} branches, not {config.model_type!r}."
        )
    arch = ARCHES[config.model_type]
    names = gguf.get_tensor_name_map(arch, branch.num_layers)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    _add_hyperparameters(writer, config, f"{origin.model} exit {origin.exit}", gguf_type)
    for key, value in origin.as_strings().items():
        writer.add_string(f"famflow.{key}", value)
    _add_tokenizer(writer, tokenizer, int(config.vocab_size), tokenizer_pre)
    for name, tensor in branch.tensors.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise FamflowError(f"No GGUF name for tensor {name!r} of a {config.model_type} model.")
        data, qtype = _encode(_tensor_data(name, tensor, config), gguf_type)
        quantized = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        writer.add_tensor(target, data, raw_dtype=qtype if quantized else None)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
