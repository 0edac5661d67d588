"""A FamilialStrategy of four nodes with their slices sent, and train replies built by hand.

Nodes 11, 12 and 13 hold exit 1 (trunk layer 0) at LoRA rank 2, node 14 exit 2 (layers 0
and 1) at rank 4, the global rank. Messages need a task
identity: the ``server_identity`` fixture (conftest).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from famflow.familial.codecs import decode, encode
from famflow.strategies.familial_strategy import FamilialStrategy, NodePlan
from famflow.strategies.records import from_record, to_record
from famflow.strategies.rules import AggregationRule, FlexLoRA

RANK, IN, OUT, HIDDEN = 4, 12, 10, 6
SHALLOW = (11, 12, 13)
DEEP = 14


def module(layer: int) -> str:
    return f"trunk.{layer}.mlp.up_proj"


def branch_keys(depth: int) -> tuple[str, ...]:
    keys = [f"{module(layer)}.{factor}" for layer in range(depth) for factor in "AB"]
    return tuple(keys + [f"exit.{d}.norm.weight" for d in range(1, depth + 1)])


def global_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for key in branch_keys(2):
        shape = (
            (RANK, IN) if key.endswith(".A") else (OUT, RANK) if key.endswith(".B") else (HIDDEN,)
        )
        arrays[key] = rng.standard_normal(shape).astype(np.float32)
    return arrays


def make_strategy(
    codec: str = "fp32", rule: AggregationRule | None = None, **kwargs: Any
) -> FamilialStrategy:
    plans = {node: NodePlan(node, "device", 1, 2, 2.0, "cpu", branch_keys(1)) for node in SHALLOW}
    plans[DEEP] = NodePlan(DEEP, "edge", 2, RANK, 2.0, "cpu", branch_keys(2))
    return FamilialStrategy(rule or FlexLoRA(), plans, codec=codec, **kwargs)


def send(strategy: FamilialStrategy, server_round: int = 1) -> dict[int, Message]:
    """The train message of every node, by node."""
    messages = strategy.configure_train(
        server_round, to_record(global_arrays()), ConfigRecord(), None
    )
    return {message.metadata.dst_node_id: message for message in messages}


def honest_wire(
    sent: Message, codec: str, seed: int, size: float = 1e-2, frozen_a: bool = False
) -> dict[str, Array]:
    """What a node that trained a small random change sends (none to A if ``frozen_a``):
    the change, encoded."""
    received = decode(from_record(sent.content["arrays"]), codec)
    rng = np.random.default_rng(seed)
    trained = {k: v + size * rng.standard_normal(v.shape) for k, v in received.items()}
    if frozen_a:
        trained |= {k: v for k, v in received.items() if k.endswith(".A")}
    return dict(to_record(encode(trained, codec, received)).items())


def reply(sent: Message, wire: Any = None, metrics: Any = None) -> Message:
    """A reply to ``sent`` with ``wire`` arrays (an ArrayRecord, a dict or a record of another
    kind) and ``metrics`` (a dict, or any record); a key left as None is not sent."""
    content = RecordDict()
    if wire is not None:
        content["arrays"] = ArrayRecord(wire) if isinstance(wire, dict) else wire
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics) if isinstance(metrics, dict) else metrics
    return Message(content, reply_to=sent)


def honest_reply(sent: Message, codec: str, seed: int, frozen_a: bool = False) -> Message:
    wire = honest_wire(sent, codec, seed, frozen_a=frozen_a)
    return reply(sent, wire, {"num-examples": 8})
