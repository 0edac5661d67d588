"""Collaborative device -> edge -> cloud inference with one family's exits.

A device runs the first trunk layers and its exit, and hands the hidden state (not tokens)
up; an edge or cloud tier continues from it. Modules, one job each:

- ``nodes``: a tier's layer range and exit with its own KV cache (``TierNode``).
- ``codec`` / ``protocol``: hidden states and tokens on the wire, counted to the byte.
- ``tiers``: what an edge or cloud tier does with a request (``UpperTier``).
- ``decoding``: the device side: speculative decoding and confidence early exit.
- ``transport`` / ``service``: in-process or HTTP (stdlib server and urllib client).
- ``latency``: link model and end-to-end latency against cloud-only and device-only.
- ``route``: route parsing, models and nodes of a route, local and HTTP chains.
- ``agreement``: how often a lower exit picks the top exit's token on given text.
"""

from familial.collab.codec import HIDDEN_CODECS, ProtocolError
from familial.collab.decoding import CollabResult, early_exit_generate, speculative_generate
from familial.collab.latency import Link
from familial.collab.nodes import TierNode
from familial.collab.route import (
    RouteModels,
    build_nodes,
    http_chain,
    load_route_models,
    local_chain,
    parse_route,
)
from familial.collab.service import TierService
from familial.collab.tiers import UpperTier

__all__ = [
    "HIDDEN_CODECS",
    "CollabResult",
    "Link",
    "ProtocolError",
    "RouteModels",
    "TierNode",
    "TierService",
    "UpperTier",
    "build_nodes",
    "early_exit_generate",
    "http_chain",
    "load_route_models",
    "local_chain",
    "parse_route",
    "speculative_generate",
]
