"""Nodes coming and going between rounds: a SuperNode that stopped is left out, one that
connected (a new box, or a restarted one under a new node ID) is profiled and planned."""

from __future__ import annotations

import logging

from flwr.serverapp import Grid

from famflow.federation.config import FederationConfig
from famflow.server.plans import node_plans
from famflow.server.profiles import query_profiles, usable_profiles
from famflow.strategies.familial_strategy import FamilialStrategy

logger = logging.getLogger("famflow.server")


def refresh_nodes(
    grid: Grid, strategy: FamilialStrategy, config: FederationConfig, global_rank: int
) -> None:
    """Mark which planned nodes are connected, and plan the nodes that joined since."""
    connected = set(grid.get_node_ids())
    was_offline = set(strategy.plans) - strategy.online if strategy.online is not None else set()
    if gone := sorted(set(strategy.plans) - connected - was_offline):
        logger.warning("nodes %s are not connected: left out until they are back", gone)
    if back := sorted(was_offline & connected):
        logger.info("nodes %s are connected again", back)
    joined = sorted(connected - set(strategy.plans))
    if joined:
        profiles = query_profiles(grid, 0, config.round_timeout, nodes=joined)
        plans = node_plans(config, usable_profiles(config, profiles, min_nodes=0), global_rank)
        for node, plan in plans.items():
            logger.info(
                "node %d joined: tier %s, exit %d, rank %d", node, plan.tier, plan.exit, plan.rank
            )
        strategy.plans |= plans
    strategy.online = connected
