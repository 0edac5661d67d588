"""The profile round: ask every node what it can hold (``@app.query("profile")``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from familial.errors import FamflowError

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


def query_profiles(grid: Grid, min_nodes: int, timeout: float) -> dict[int, dict[str, Any]]:
    """Each answering node's profile; nodes that fail to answer are left out and logged."""
    nodes = wait_for_nodes(grid, min_nodes, timeout)
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
