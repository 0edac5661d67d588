"""FamilialStrategy: per-node slices of the global adapters, per-key aggregation of replies.

Flower's built-in strategies send one payload to every node and refuse replies whose keys
differ. Here each node gets the keys of its own branch at its own LoRA rank, and a key is
aggregated only over the nodes that hold it (the rule decides how).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from famflow.familial.codecs import encode
from famflow.familial.errors import FamflowError
from famflow.strategies.central_dp import CentralDPSettings, central_dp_updates
from famflow.strategies.records import (
    ACCURACY_EXIT,
    LOSS_EXIT,
    NUM_EXAMPLES,
    NUM_TOKENS,
    from_record,
    to_record,
)
from famflow.strategies.robust import RobustSettings, robust_updates
from famflow.strategies.rules import AggregationRule, ClientUpdate
from famflow.strategies.rules.base import State
from famflow.strategies.server_step import server_step
from famflow.strategies.validation import (
    ReplyError,
    ReplyLimits,
    check_metrics,
    check_rule,
    decode_payload,
    norm_outliers,
    read_payload,
)

logger = logging.getLogger("famflow.strategies")


def tier_sample_size(fraction_train: float, tier_nodes: int) -> int:
    """How many of a tier's nodes train each round: a ``fraction_train`` share, at least one."""
    return math.ceil(fraction_train * tier_nodes)


@dataclass(frozen=True)
class NodePlan:
    """What one node holds: its branch (exit) and the precision of its frozen layers, LoRA
    rank and scale, and exchanged keys, and how many local steps it trains per round."""

    node_id: int
    tier: str
    exit: int
    rank: int
    scale: float
    device: str
    keys: tuple[str, ...]
    local_steps: int = 10
    weights: str = ""  # the precision of its frozen layers; "" the preset's dtype
    gradient_checkpointing: bool = False  # it recomputes activations to fit its memory


@dataclass
class RoundTraffic:
    """Bytes on the wire per node in one round, measured on the ArrayRecords sent, and the
    replies dropped: a sentence and a reason code (``strategies.validation.REASONS``) each."""

    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)
    messages: list[Message] = field(default_factory=list)

    def source(self, reply: Message) -> int:
        """The node a reply answers for. The SuperLink itself answers (as node
        ``SUPERLINK_NODE_ID``) for a node that went away; its reply names the message."""
        if reply.metadata.src_node_id != SUPERLINK_NODE_ID:
            return reply.metadata.src_node_id
        for message in self.messages:  # their IDs were set when Flower pushed them
            if message.metadata.message_id == reply.metadata.reply_to_message_id:
                return message.metadata.dst_node_id
        return reply.metadata.src_node_id

    def drop(self, node: int, reason: str, sentence: str) -> None:
        self.dropped[node] = sentence
        self.reasons[node] = reason

    def drop_unanswered(self, replies: Iterable[Message]) -> list[int]:
        """Drop every node asked this round that ``replies`` hold no answer for; returns them."""
        missing = sorted(self.asked - {self.source(reply) for reply in replies})
        for node in missing:
            self.drop(node, "no-reply", "no reply before the round timeout")
        return missing

    def merge_drops(self, other: RoundTraffic) -> None:
        self.dropped |= other.dropped
        self.reasons |= other.reasons

    def reason_counts(self) -> dict[str, int]:
        """Dropped replies per reason (``other`` for a drop recorded without one)."""
        return dict(sorted(Counter(self.reasons.get(n, "other") for n in self.dropped).items()))


class Accepted(NamedTuple):
    """A train reply that passed every check: its node, update, metrics and bytes."""

    node: int
    update: ClientUpdate
    metrics: MetricRecord
    size: int


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
        robust: RobustSettings | None = None,
        limits: ReplyLimits | None = None,
        central_dp: CentralDPSettings | None = None,
    ) -> None:
        self.rule = rule
        self.central_dp = central_dp or CentralDPSettings()
        self.server_lr = server_lr
        self.robust = robust or RobustSettings()
        self.limits = limits or ReplyLimits()
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
        # The planned nodes connected now (None: all); the server updates it every round.
        self.online: set[int] | None = None

    def summary(self) -> None:
        tiers = sorted({(p.tier, p.exit, p.rank) for p in self.plans.values()})
        logger.info(
            "FamilialStrategy: rule %s, robust %s, codec %s, %d nodes, (tier, exit, rank) %s",
            self.rule.name,
            self.robust.method,
            self.codec,
            len(self.plans),
            tiers,
        )

    def reachable(self) -> list[int]:
        """The planned nodes that are connected."""
        return sorted(n for n in self.plans if self.online is None or n in self.online)

    def sample(self, server_round: int) -> list[int]:
        """``fraction_train`` of each tier's reachable nodes, so every branch trains every round.

        Within a tier the nodes take turns (an order shuffled once by the seed), so over
        ``1 / fraction_train`` rounds each trains once; ``min_nodes`` tops up from the rest.
        """
        nodes = self.reachable()
        by_tier: dict[str, list[int]] = {}
        for node in nodes:
            by_tier.setdefault(self.plans[node].tier, []).append(node)
        chosen: list[int] = []
        for tier, members in sorted(by_tier.items()):
            random.Random(f"{self.seed}-{tier}").shuffle(members)
            count = tier_sample_size(self.fraction_train, len(members))
            start = (server_round - 1) * count
            chosen += [members[(start + i) % len(members)] for i in range(count)]
        rest = [node for node in nodes if node not in chosen]
        missing = min(len(rest), self.min_nodes - len(chosen))
        if missing > 0:
            chosen += random.Random(self.seed + server_round).sample(rest, missing)
        return sorted(chosen)

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
        # Nodes of one tier hold the same keys at the same rank: slice and encode once for all.
        slices: dict[tuple[tuple[str, ...], int, float], tuple[State, State]] = {}
        for node in nodes:
            traffic.asked.add(node)
            plan = self.plans[node]
            node_keys = keys[node] if keys is not None else plan.keys
            shape = (tuple(node_keys), plan.rank, plan.scale)
            if shape not in slices:
                sliced = self.rule.slice_for(self._global, node_keys, plan.rank, plan.scale)
                slices[shape] = (sliced, encode(sliced, self.codec, self.codec_reference))
            arrays_for_node, encoded = slices[shape]
            if kind == MessageType.TRAIN:
                self._sent[node] = arrays_for_node
            payload = to_record(encoded)
            traffic.down[node] = payload.count_bytes()
            setup = ConfigRecord(
                {
                    **dict(config),
                    "server-round": server_round,
                    "exit": plan.exit,
                    "rank": plan.rank,
                    "device": plan.device,
                    "weights": plan.weights,
                    "gradient-checkpointing": plan.gradient_checkpointing,
                    "lr": self.lr_for_round(server_round),
                    "local-steps": plan.local_steps,
                }
            )
            content = RecordDict({"arrays": payload, "config": setup})
            messages.append(Message(content, dst_node_id=node, message_type=kind))
        traffic.messages += messages
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.sample(server_round)
        return self._messages(server_round, arrays, config, MessageType.TRAIN, nodes)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.reachable()
        return self._messages(server_round, arrays, config, MessageType.EVALUATE, nodes)

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
        replies = list(replies)
        for reply in replies:
            node = traffic.source(reply)
            if node not in self.plans:
                traffic.drop(node, "not-profiled", "not a profiled node")
            elif reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE:
                traffic.drop(node, "no-reply", "the SuperLink reports the node unavailable")
            elif reply.has_error():
                traffic.drop(node, "client-error", f"client error: {reply.error.reason}")
            else:
                usable.append(reply)
        traffic.drop_unanswered(replies)
        return usable

    def _update(self, reply: Message) -> tuple[ClientUpdate, MetricRecord]:
        """The reply's update, checked (``strategies.validation``), and its metrics."""
        node = reply.metadata.src_node_id
        plan = self.plans[node]
        if node not in self._sent:
            raise ReplyError("not-sent", "the node was not sent anything to train this round")
        metrics = check_metrics(reply.content, MessageType.TRAIN, plan.exit)
        sent = self._sent[node]
        wire = read_payload(reply.content, sent, self.codec, self._global.keys(), self.limits)
        # The node encoded its change from the decoded slice it got; adding that change to the
        # exact slice keeps the downlink's rounding out of the global adapters.
        arrays = decode_payload(wire, self.codec, sent)
        update = ClientUpdate(arrays, int(metrics[NUM_EXAMPLES]), plan.rank, plan.scale, sent)
        check_rule(self.rule, self._global, update)
        return update, metrics

    def _accepted(self, reply: Message, traffic: RoundTraffic) -> Accepted | None:
        node = reply.metadata.src_node_id
        try:
            update, metrics = self._update(reply)
            return Accepted(node, update, metrics, reply.content["arrays"].count_bytes())
        except ReplyError as error:
            traffic.drop(node, error.reason, str(error))
        # A reply is untrusted input: whatever a check failed to foresee drops it, not the run.
        except Exception as error:
            logger.debug("unforeseen bad reply from node %d", node, exc_info=True)
            traffic.drop(node, "malformed", f"unreadable reply ({type(error).__name__}: {error})")
        return None

    def _log_drops(self, server_round: int, kind: str) -> None:
        traffic = self.traffic.get((server_round, kind), RoundTraffic())
        for node, sentence in traffic.dropped.items():
            logger.warning(
                "round %d: dropped the %s reply of node %d (%s: %s)",
                server_round,
                kind,
                node,
                traffic.reasons.get(node, "other"),
                sentence,
            )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic = self.traffic.setdefault((server_round, MessageType.TRAIN), RoundTraffic())
        usable = self._usable(server_round, MessageType.TRAIN, replies)
        checked = [self._accepted(reply, traffic) for reply in usable]
        accepted = [entry for entry in checked if entry is not None]
        outliers = norm_outliers(
            [entry.update for entry in accepted],
            [self._sent[entry.node] for entry in accepted],
            self.limits,
        )
        for index, sentence in outliers.items():
            traffic.drop(accepted[index].node, "norm-outlier", sentence)
        accepted = [entry for i, entry in enumerate(accepted) if i not in outliers]
        traffic.up |= {entry.node: entry.size for entry in accepted}
        self._log_drops(server_round, MessageType.TRAIN)
        if not accepted:
            logger.warning("round %d: no usable update, the global adapters stay", server_round)
            return None, None
        updates = [entry.update for entry in accepted]
        sent = [self._sent[entry.node] for entry in accepted]
        try:
            # Finite but absurd values (a key with too few holders to compare) may overflow.
            with np.errstate(over="ignore", invalid="ignore"):
                robust = robust_updates(updates, sent, self.robust)
                noise_rng = np.random.default_rng([self.seed, server_round])
                private = central_dp_updates(robust, sent, self.central_dp, noise_rng)
                aggregate = self.rule.aggregate(self._global, private)
                new = server_step(self._global, aggregate, self.server_lr, self.rule.on_products)
            if not all(np.isfinite(value).all() for value in new.values()):
                raise FamflowError("it holds NaN or inf values")
        except (FamflowError, np.linalg.LinAlgError) as error:
            logger.warning(
                "round %d: aggregation failed, the global adapters stay (%s)", server_round, error
            )
            return None, None
        self._global = new
        metrics = [entry.metrics for entry in accepted]
        return to_record(self._global), weighted_exit_means(metrics, NUM_EXAMPLES, LOSS_EXIT)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        traffic = self.traffic.setdefault((server_round, MessageType.EVALUATE), RoundTraffic())
        metrics = []
        for reply in self._usable(server_round, MessageType.EVALUATE, replies):
            node = reply.metadata.src_node_id
            try:
                deepest = self.plans[node].exit
                metrics.append(check_metrics(reply.content, MessageType.EVALUATE, deepest))
            except ReplyError as error:
                traffic.drop(node, error.reason, str(error))
        self._log_drops(server_round, MessageType.EVALUATE)
        if not metrics:
            return None
        losses = weighted_exit_means(metrics, NUM_TOKENS, LOSS_EXIT)
        accuracies = weighted_exit_means(metrics, NUM_TOKENS, ACCURACY_EXIT)
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
