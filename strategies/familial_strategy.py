"""FamilialStrategy: per-node slices of the global adapters, per-key aggregation of replies.

Flower's built-in strategies send one payload to every node and refuse replies whose keys
differ. Here each node gets the keys of its own branch at its own LoRA rank, and a key is
aggregated only over the nodes that hold it (the rule decides how).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from familial.codecs import decode, encode
from familial.errors import FamflowError
from strategies.records import from_record, to_record
from strategies.rules import AggregationRule, ClientUpdate, FlexLoRA
from strategies.server_step import server_step

logger = logging.getLogger("famflow.strategies")


@dataclass(frozen=True)
class NodePlan:
    """What one node holds: its branch (exit), LoRA rank and scale, and exchanged keys."""

    node_id: int
    tier: str
    exit: int
    rank: int
    scale: float
    device: str
    keys: tuple[str, ...]


@dataclass
class RoundTraffic:
    """Bytes on the wire per node in one round, measured on the ArrayRecords sent."""

    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)


class FamilialStrategy(Strategy):
    """Train and evaluate a family whose nodes each hold one branch."""

    def __init__(
        self,
        rule: AggregationRule,
        plans: dict[int, NodePlan],
        codec: str = "fp32",
        fraction_train: float = 1.0,
        min_nodes: int = 1,
        lr_for_round: Callable[[int], float] = lambda _: 2e-3,
        seed: int = 0,
        codec_reference: dict[str, np.ndarray] | None = None,
        server_lr: float = 1.0,
    ) -> None:
        self.rule = rule
        self.server_lr = server_lr
        self.plans = plans
        self.codec = codec
        # Exit adapters as the checkpoint builds them, which every node builds too (codecs).
        self.codec_reference = codec_reference
        self.fraction_train = fraction_train
        self.min_nodes = min_nodes
        self.lr_for_round = lr_for_round
        self.seed = seed
        self.traffic: dict[tuple[int, str], RoundTraffic] = {}
        self._global: dict[str, np.ndarray] = {}
        # What each node was sent to train from this round: replies encode their change from it.
        self._sent: dict[int, dict[str, np.ndarray]] = {}

    def summary(self) -> None:
        tiers = sorted({(p.tier, p.exit, p.rank) for p in self.plans.values()})
        logger.info(
            "FamilialStrategy: rule %s, codec %s, %d nodes, (tier, exit, rank) %s",
            self.rule.name,
            self.codec,
            len(self.plans),
            tiers,
        )

    def sample(self, server_round: int) -> list[int]:
        nodes = sorted(self.plans)
        wanted = max(self.min_nodes, math.ceil(self.fraction_train * len(nodes)))
        return sorted(
            random.Random(self.seed + server_round).sample(nodes, min(wanted, len(nodes)))
        )

    def _messages(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        kind: str,
        nodes: Iterable[int],
        keys: dict[int, tuple[str, ...]] | None = None,
    ) -> list[Message]:
        self._global = from_record(arrays)
        traffic = self.traffic.setdefault((server_round, kind), RoundTraffic())
        if kind == MessageType.TRAIN:
            self._sent = {}
        messages = []
        for node in nodes:
            plan = self.plans[node]
            node_keys = keys[node] if keys is not None else plan.keys
            arrays_for_node = self.rule.slice_for(self._global, node_keys, plan.rank, plan.scale)
            if kind == MessageType.TRAIN:
                self._sent[node] = arrays_for_node
            payload = to_record(encode(arrays_for_node, self.codec, self.codec_reference))
            traffic.down[node] = payload.count_bytes()
            setup = ConfigRecord(
                {
                    **dict(config),
                    "server-round": server_round,
                    "exit": plan.exit,
                    "rank": plan.rank,
                    "device": plan.device,
                    "lr": self.lr_for_round(server_round),
                }
            )
            content = RecordDict({"arrays": payload, "config": setup})
            messages.append(Message(content, dst_node_id=node, message_type=kind))
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.sample(server_round)
        return self._messages(server_round, arrays, config, MessageType.TRAIN, nodes)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, MessageType.EVALUATE, self.plans)

    def configure_query(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: Iterable[int],
        message_type: str,
        keys: dict[int, tuple[str, ...]] | None = None,
    ) -> list[Message]:
        """Messages of another type (``query.calibrate``) to ``nodes``, each with its slice
        (of ``keys[node]`` if given, else of the node's plan)."""
        return self._messages(server_round, arrays, config, message_type, nodes, keys)

    def _usable(self, server_round: int, kind: str, replies: Iterable[Message]) -> list[Message]:
        """Replies without errors, from planned nodes; the rest are dropped with a reason."""
        traffic = self.traffic.setdefault((server_round, kind), RoundTraffic())
        usable = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in self.plans:
                traffic.dropped[node] = "not a profiled node"
            elif reply.has_error():
                traffic.dropped[node] = f"client error: {reply.error.reason}"
            elif "metrics" not in reply.content:
                traffic.dropped[node] = "reply without metrics"
            else:
                usable.append(reply)
        return usable

    def _update(self, reply: Message) -> ClientUpdate:
        node = reply.metadata.src_node_id
        plan = self.plans[node]
        if node not in self._sent:
            raise FamflowError("the node was not sent anything to train this round")
        if "arrays" not in reply.content:
            raise FamflowError("the reply carries no arrays")
        # The node encoded its change from the decoded slice it got; adding that change to the
        # exact slice keeps the downlink's rounding out of the global adapters.
        arrays = decode(from_record(reply.content["arrays"]), self.codec, self._sent[node])
        if set(arrays) != set(plan.keys):
            missing = sorted(set(plan.keys) - set(arrays))[:3]
            unexpected = sorted(set(arrays) - set(plan.keys))[:3]
            raise FamflowError(
                f"keys do not match the node's branch (missing {missing}, unexpected {unexpected})"
            )
        examples = reply.content["metrics"].get("num-examples", 0)
        update = ClientUpdate(arrays, int(examples), plan.rank, plan.scale)
        self.rule.validate(self._global, update)
        return update

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic = self.traffic.setdefault((server_round, MessageType.TRAIN), RoundTraffic())
        updates, metrics = [], []
        for reply in self._usable(server_round, MessageType.TRAIN, replies):
            node = reply.metadata.src_node_id
            try:
                updates.append(self._update(reply))
            except (FamflowError, KeyError, TypeError, ValueError) as error:
                traffic.dropped[node] = f"bad update: {error}"
                continue
            traffic.up[node] = reply.content["arrays"].count_bytes()
            metrics.append(reply.content["metrics"])
        for node, reason in traffic.dropped.items():
            logger.warning(
                "round %d: dropped the reply of node %d (%s)", server_round, node, reason
            )
        if not updates:
            logger.warning("round %d: no usable update, the global adapters stay", server_round)
            return None, None
        try:
            aggregate = self.rule.aggregate(self._global, updates)
        except FamflowError as error:
            logger.warning(
                "round %d: aggregation failed, the global adapters stay (%s)", server_round, error
            )
            return None, None
        on_products = isinstance(self.rule, FlexLoRA)
        self._global = server_step(self._global, aggregate, self.server_lr, on_products)
        return to_record(self._global), weighted_exit_means(metrics, "num-examples", "loss-exit-")

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        usable = self._usable(server_round, MessageType.EVALUATE, replies)
        metrics = [reply.content["metrics"] for reply in usable]
        if not metrics:
            return None
        losses = weighted_exit_means(metrics, "num-tokens", "loss-exit-")
        accuracies = weighted_exit_means(metrics, "num-tokens", "accuracy-exit-")
        result = MetricRecord({**dict(losses), **dict(accuracies)})
        for key, loss in dict(losses).items():
            result[key.replace("loss-", "perplexity-")] = math.exp(min(float(loss), 700.0))
        return result


def weighted_exit_means(records: list[MetricRecord], weight_key: str, prefix: str) -> MetricRecord:
    """Per ``prefix<exit>`` metric, the ``weight_key``-weighted mean over the nodes reporting it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        weight = float(record.get(weight_key, 0))
        for key, value in record.items():
            if key.startswith(prefix):
                sums[key] = sums.get(key, 0.0) + weight * float(value)
                weights[key] = weights.get(key, 0.0) + weight
    return MetricRecord({key: sums[key] / weights[key] for key in sums if weights[key] > 0})
