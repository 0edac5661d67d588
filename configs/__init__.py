"""Presets shipped as package data: model presets (``models/*.toml``) and hardware tiers
(``hardware/*.toml``), read with ``importlib.resources``."""
