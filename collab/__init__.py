"""Collaborative device -> edge -> cloud inference with one family's exits.

A device runs the first trunk layers and its exit, and hands the hidden state (not tokens)
up; an edge or cloud tier continues from it. Modules, one job each:

- ``nodes``: a tier's layer range and exit with its own KV cache (``TierNode``).
- ``codec`` / ``protocol``: hidden states and tokens on the wire, counted to the byte.
- ``tiers``: what an edge or cloud tier does with a request (``UpperTier``).
- ``decoding``: the device side: speculative decoding and confidence early exit.
- ``transport`` / ``service``: in-process or HTTP (stdlib server and urllib client).
- ``latency``: link model and end-to-end latency against cloud-only and device-only.
- ``settings``: a route's validated settings and the mode/transport registries.
- ``route``: route parsing, models and nodes of a route, local and HTTP chains.
- ``agreement``: how often a lower exit picks the top exit's token on given text.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: the command line reads ``settings`` and ``codec`` without torch.
_EXPORTS = {
    "HIDDEN_CODECS": "codec",
    "ProtocolError": "codec",
    "CollabResult": "decoding",
    "early_exit_generate": "decoding",
    "speculative_generate": "decoding",
    "Link": "latency",
    "TierNode": "nodes",
    "RouteModels": "route",
    "build_nodes": "route",
    "http_chain": "route",
    "load_route_models": "route",
    "local_chain": "route",
    "parse_route": "route",
    "RouteSettings": "settings",
    "TierService": "service",
    "UpperTier": "tiers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
