"""Nodes leaving and joining between rounds (server/membership.py)."""

from __future__ import annotations

from uuid import uuid4

from flwr.app import ConfigRecord, Message, RecordDict

from famflow.federation.config import FederationConfig
from famflow.server.membership import refresh_nodes
from famflow.server.plans import node_plans
from famflow.strategies.familial_strategy import FamilialStrategy
from famflow.strategies.rules import get_rule

DEVICE = {"tier": "device", "exit": 1, "rank": 2, "device": "cpu"}
CLOUD = {"tier": "cloud", "exit": 4, "rank": 8, "device": "cpu"}


class ProfileGrid:
    """Connected node IDs, and profile replies as each node's ClientApp would send them."""

    def __init__(self, profiles: dict[int, dict]) -> None:
        self.profiles = profiles
        self.connected = set(profiles)
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.connected)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's push does
            node = message.metadata.dst_node_id
            self.asked.append(node)
            profile = ConfigRecord(self.profiles[node])
            replies.append(Message(RecordDict({"profile": profile}), reply_to=message))
        return replies


def test_a_node_that_left_is_skipped_and_one_that_joined_is_planned_at_the_global_rank(
    root, server_identity
):
    config = FederationConfig(model="tiny3", rule="flexlora", min_nodes=1)
    grid = ProfileGrid({1: DEVICE, 2: DEVICE})
    strategy = FamilialStrategy(get_rule("flexlora"), node_plans(config, {1: DEVICE, 2: DEVICE}))
    grid.connected = {2}
    refresh_nodes(grid, strategy, config, global_rank=4)
    assert strategy.sample(1) == [2] and grid.asked == []

    grid.profiles[3] = CLOUD  # a new box with rank 8 joins a rank-4 federation
    grid.connected = {1, 2, 3}
    refresh_nodes(grid, strategy, config, global_rank=4)
    assert grid.asked == [3]
    assert (strategy.plans[3].exit, strategy.plans[3].rank) == (4, 4)
    assert strategy.sample(2) == [1, 2, 3]


def test_fedit_puts_a_joining_node_at_the_global_rank(root):
    config = FederationConfig(model="tiny3", rule="fedit")
    assert node_plans(config, {5: DEVICE}, global_rank=8)[5].rank == 8
