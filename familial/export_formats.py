"""The standalone export formats of a branch and the GGUF types, by name (no heavy imports)."""

from __future__ import annotations

from famflow.familial.errors import FamflowError

EXPORT_FORMATS = ("hf", "gguf", "peft")
GGUF_TYPE_NAMES = ("f16", "q8_0")


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_formats(text: str) -> tuple[str, ...]:
    """``"hf,gguf"`` -> ``("hf", "gguf")``; an unknown format is refused."""
    formats = _split(text)
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise FamflowError(
            f"Unknown export format(s) {unknown}: use {', '.join(EXPORT_FORMATS)} "
            "(comma-separated)."
        )
    return formats


def parse_gguf_types(text: str) -> tuple[str, ...]:
    """``"f16,q8_0"`` -> ``("f16", "q8_0")``; an unknown or empty list is refused."""
    types = _split(text)
    unknown = [t for t in types if t not in GGUF_TYPE_NAMES]
    if unknown or not types:
        raise FamflowError(
            f"Unknown GGUF type(s) {unknown or [text]}: use {', '.join(GGUF_TYPE_NAMES)} "
            "(comma-separated)."
        )
    return types
