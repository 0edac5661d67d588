"""One exit of a trained branch, exported for use without famflow: ``hf``, ``gguf``, ``peft``.

Under ``directory``: ``hf/`` (a transformers checkpoint), ``gguf/<model>-exit-E-<type>.gguf``
(f16 and q8_0 by default) and ``peft/`` (the LoRA on ``peft/base``, the branch without it).
Every export records its origin (``export.json``, and ``famflow.*`` keys in a GGUF).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gguf
import torch
from transformers import PreTrainedTokenizerBase

from famflow.familial.errors import FamflowError
from famflow.familial.export_formats import GGUF_TYPE_NAMES, parse_formats
from famflow.familial.export_origin import ExportOrigin
from famflow.familial.gguf_export import save_gguf_branch
from famflow.familial.hf_export import save_hf_branch
from famflow.familial.model import FamilialLM
from famflow.familial.peft_export import save_standalone_peft
from famflow.familial.presets import ModelSpec
from famflow.familial.standalone import standalone_branch


def gguf_file_name(origin: ExportOrigin, gguf_type: str) -> str:
    return f"{origin.model}-exit-{origin.exit}-{gguf_type}.gguf"


def source_tokenizer_pre(spec: ModelSpec) -> str:
    """The pre-tokenizer name llama.cpp knows the model's tokenizer by (``smollm`` for
    SmolLM2), read from the GGUF it came from; ``default`` otherwise."""
    if spec.source != "gguf" or spec.path is None:
        return "default"
    field = gguf.GGUFReader(str(spec.path)).fields.get("tokenizer.ggml.pre")
    return bytes(field.parts[field.data[0]]).decode() if field is not None else "default"


def export_exit(
    model: FamilialLM,
    exit_depth: int,
    formats: Sequence[str],
    directory: Path,
    tokenizer: PreTrainedTokenizerBase,
    origin: ExportOrigin,
    gguf_types: Sequence[str] = GGUF_TYPE_NAMES,
    tokenizer_pre: str = "default",
    dtype: torch.dtype = torch.float32,
) -> list[Path]:
    """Write exit ``exit_depth`` of ``model`` in each of ``formats`` under ``directory``."""
    formats = parse_formats(",".join(formats))
    directory = Path(directory)
    written: list[Path] = []
    if "hf" in formats or "gguf" in formats:
        merged = standalone_branch(model, exit_depth)
        if "hf" in formats:
            written.append(save_hf_branch(merged, directory / "hf", tokenizer, origin, dtype))
        if "gguf" in formats:
            files = [directory / "gguf" / gguf_file_name(origin, t) for t in gguf_types]
            for path, gguf_type in zip(files, gguf_types, strict=True):
                save_gguf_branch(merged, path, tokenizer, origin, gguf_type, tokenizer_pre)
            origin.write(directory / "gguf", format="gguf", files=[p.name for p in files])
            written.extend(files)
    if "peft" in formats:
        settings = getattr(model, "lora_settings", None)
        if settings is None:
            raise FamflowError("This branch has no LoRA adapters: export it as hf or gguf.")
        unmerged = standalone_branch(model, exit_depth, merge_lora=False)
        written.append(
            save_standalone_peft(unmerged, settings, directory / "peft", tokenizer, origin)
        )
    return written
