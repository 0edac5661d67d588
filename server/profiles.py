"""The profile round: ask every node what it can hold (``@app.query("profile")``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from famflow.familial.errors import FamflowError
from famflow.familial.presets import resolve_model
from famflow.familial.weights import PRECISIONS
from famflow.federation.config import FederationConfig

logger = logging.getLogger("famflow.server")
PROFILE_QUERY = "query.profile"


def wait_for_nodes(grid: Grid, min_nodes: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise FamflowError(
                f"Only {len(nodes)} of {min_nodes} nodes connected within {timeout:.0f} s: "
                "start more SuperNodes or lower min-nodes."
            )
        time.sleep(0.5)
    return nodes


def query_profiles(
    grid: Grid, min_nodes: int, timeout: float, nodes: list[int] | None = None
) -> dict[int, dict[str, Any]]:
    """Each answering node's profile (of ``nodes``, default every node once ``min_nodes`` are
    connected); nodes that fail to answer are left out and logged."""
    nodes = wait_for_nodes(grid, min_nodes, timeout) if nodes is None else nodes
    messages = [
        Message(
            RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=PROFILE_QUERY
        )
        for node in nodes
    ]
    profiles = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error() or "profile" not in reply.content:
            reason = reply.error.reason if reply.has_error() else "no profile"
            logger.warning("node %d left out: %s", node, reason)
            continue
        profiles[node] = dict(reply.content["profile"])
    if len(profiles) < min_nodes:
        raise FamflowError(
            f"Only {len(profiles)} of {len(nodes)} nodes reported a profile (min-nodes "
            f"{min_nodes}): see the client errors above."
        )
    return profiles


def usable_profiles(
    config: FederationConfig, profiles: dict[int, dict[str, Any]], min_nodes: int | None = None
) -> dict[int, dict[str, Any]]:
    """The profiles a node plan can be built from; a node whose profile names no exit of the
    family, no LoRA rank >= 1, no tier, no device, an unknown weight precision or a
    gradient-checkpointing other than true or false is left out with a logged reason.
    Raises when fewer than ``min_nodes`` (default the run's) remain."""
    min_nodes = config.min_nodes if min_nodes is None else min_nodes
    exits = resolve_model(config.model).family.exits
    usable = {}
    for node, profile in profiles.items():
        depth, rank = profile.get("exit"), profile.get("rank")
        tier, device = profile.get("tier"), profile.get("device")
        if not (_whole(depth) and depth in exits):
            reason = f"its exit {depth!r} is not one of the family's exits {exits}"
        elif not (_whole(rank) and rank >= 1):
            reason = f"its LoRA rank {rank!r} is not a whole number >= 1"
        elif not isinstance(tier, str) or device not in ("cpu", "cuda"):
            reason = f"its tier {tier!r} or device {device!r} is unusable"
        elif profile.get("weights", "fp32") not in PRECISIONS:
            reason = f"its weights {profile.get('weights')!r} are not one of {list(PRECISIONS)}"
        elif not isinstance(profile.get("gradient-checkpointing", False), bool):
            reason = "its gradient-checkpointing is not true or false"
        else:
            usable[node] = profile
            continue
        logger.warning("node %d left out: %s", node, reason)
    if len(usable) < min_nodes:
        raise FamflowError(
            f"Only {len(usable)} of {len(profiles)} nodes sent a usable profile (min-nodes "
            f"{min_nodes}): see the warnings above."
        )
    return usable


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
