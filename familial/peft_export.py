"""A branch's LoRA in PEFT's own format (``adapter_config.json`` + ``adapter_model.safetensors``).

``save_peft_adapter`` writes famflow's own adapter (read back by ``load_peft_adapter``: module
names of the family model, exit parts kept apart). ``save_standalone_peft`` writes one exit's
LoRA for the plain model of that exit (``familial.standalone``), which it writes beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from famflow.familial.errors import FamflowError
from famflow.familial.export_origin import ExportOrigin
from famflow.familial.hf_export import save_hf_branch
from famflow.familial.lora import ADAPTER_NAME, LoraSettings, lora_modules
from famflow.familial.model import FamilialLM
from famflow.familial.standalone import StandaloneBranch

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PEFT_BASE_DIR = "base"


def _settings(model: FamilialLM) -> LoraSettings:
    settings = getattr(model, "lora_settings", None)
    if settings is None or not lora_modules(model):
        raise FamflowError("This branch has no LoRA adapters: call attach_lora first.")
    return settings


def save_peft_adapter(model: FamilialLM, directory: Path, base_model: str | None = None) -> Path:
    """Write the branch's LoRA as a PEFT adapter for ``base_model`` (a path or name)."""
    settings = _settings(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: LoraConfig = settings.peft_config(model.family.exit_style == "ruyi")
    config.task_type = "CAUSAL_LM"
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(directory))
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    tensors = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(directory / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    return directory


def read_lora_settings(directory: Path) -> LoraSettings:
    """The LoRA settings of an adapter written by ``save_peft_adapter``."""
    config_file = Path(directory) / PEFT_CONFIG_FILE
    if not config_file.is_file():
        raise FamflowError(f"No {PEFT_CONFIG_FILE} in {directory}: pass a train-local output.")
    saved = LoraConfig.from_pretrained(str(directory))
    targets = re.search(r"\(\?:([\w|]+)\)$", str(saved.target_modules))
    if targets is None:
        raise FamflowError(
            f"{config_file} was not written by famflow (target_modules "
            f"{saved.target_modules!r}): load it with PEFT directly."
        )
    return LoraSettings(
        rank=saved.r,
        alpha=saved.lora_alpha,
        dropout=saved.lora_dropout,
        targets=tuple(targets[1].split("|")),
    )


def load_peft_adapter(model: FamilialLM, directory: Path) -> None:
    """Load a PEFT adapter saved by ``save_peft_adapter`` into a branch with LoRA attached."""
    settings = _settings(model)
    file = Path(directory) / PEFT_WEIGHTS_FILE
    if not file.is_file():
        raise FamflowError(f"No PEFT adapter at {file}: pass a directory written by train-local.")
    saved = LoraConfig.from_pretrained(str(directory))
    if saved.r != settings.rank:
        raise FamflowError(
            f"The adapter in {directory} has rank {saved.r}, this branch rank {settings.rank}: "
            f"attach LoRA with rank {saved.r}."
        )
    try:
        tensors = load_file(str(file))
    except Exception as error:  # safetensors raises several types for a corrupt file
        raise FamflowError(f"{file} is not a readable safetensors file ({error}).") from None
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise FamflowError(
            f"The adapter in {directory} does not fit this branch (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}): load it onto the branch it was "
            "trained for."
        )


def save_standalone_peft(
    branch: StandaloneBranch,
    settings: LoraSettings,
    directory: Path,
    tokenizer: PreTrainedTokenizerBase,
    origin: ExportOrigin,
) -> Path:
    """The branch's LoRA as a PEFT adapter on the plain model the branch is without it.

    ``directory/base`` holds that model (a transformers checkpoint, exit parts folded in) and
    ``base_model_name_or_path`` names it by absolute path, so ``AutoPeftModelForCausalLM`` and
    ``AutoModelForCausalLM.from_pretrained(directory)`` find it; moved elsewhere, load
    ``directory/base`` yourself and pass it to ``PeftModel.from_pretrained``.
    """
    if not branch.lora:
        raise FamflowError("This branch has no LoRA adapters to export: use format hf instead.")
    directory = Path(directory)
    base = save_hf_branch(branch, directory / PEFT_BASE_DIR, tokenizer, origin)
    layers = sorted({int(name.split(".")[2]) for name in branch.lora})
    config = settings.peft_config(with_exit_layers=False, layers=layers)
    config.task_type = "CAUSAL_LM"
    config.base_model_name_or_path = str(base.resolve())
    config.save_pretrained(str(directory))
    tensors = {PEFT_PREFIX + k: v for k, v in branch.lora.items()}
    save_file(tensors, str(directory / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(directory))
    origin.write(directory, format="peft", base=str(base.resolve()))
    return directory
