"""One round's row of ``metrics.jsonl``: held-out and training loss per exit, per node plan,
bytes, tokens and seconds, and dropped replies."""

from __future__ import annotations

import math
from typing import Any

from flwr.app import Message, MetricRecord

from famflow.federation import contract
from famflow.strategies.familial_strategy import NodePlan, RoundTraffic

INTEGERS = ("local_steps", "tokens")


def exits_of(metrics: MetricRecord | None) -> dict[str, dict[str, float]]:
    """``{"10": {"loss": .., "perplexity": .., "accuracy": ..}, ...}`` from evaluate metrics."""
    exits: dict[str, dict[str, float]] = {}
    for key, value in dict(metrics or {}).items():
        name, _, depth = key.partition("-exit-")
        exits.setdefault(depth, {})[name] = float(value)
    return dict(sorted(exits.items(), key=lambda item: int(item[0])))


def round_row(
    server_round: int,
    plans: dict[int, NodePlan],
    traffic: RoundTraffic,
    evaluation: MetricRecord | None,
    train_replies: list[Message],
    seconds: float,
    train_losses: MetricRecord | None = None,
) -> dict[str, Any]:
    answered = [reply for reply in train_replies if not reply.has_error()]
    train_seconds = [reply_seconds(reply, contract.CLIENT_SECONDS) for reply in answered]
    epsilons = reported(train_replies, contract.DP_EPSILON)
    row: dict[str, Any] = {
        "round": server_round,
        "exits": exits_of(evaluation),
        # The mean training loss at each exit over the accepted replies, weighted by examples.
        "train_loss": {depth: m["loss"] for depth, m in exits_of(train_losses).items()},
        "nodes": {
            str(node): {
                "tier": plan.tier,
                "exit": plan.exit,
                "rank": plan.rank,
                "weights": plan.weights or "model dtype",
                "gradient_checkpointing": plan.gradient_checkpointing,
                "bytes_down": traffic.down.get(node, 0),
                "bytes_up": traffic.up.get(node, 0),
            }
            for node, plan in plans.items()
        },
        "bytes_down": sum(traffic.down.values()),
        "bytes_up": sum(traffic.up.values()),
        "dropped": {str(node): reason for node, reason in traffic.dropped.items()},
        "dropped_reasons": traffic.reason_counts(),
        "seconds": seconds,
        "train_seconds_max": max(train_seconds, default=0.0),
        "train_seconds_sum": sum(train_seconds),
        # Deployment starts a ClientApp process per message (simulation: 0 after the first).
        "startup_seconds_sum": sum(reply_seconds(r, contract.STARTUP_SECONDS) for r in answered),
        "load_seconds_sum": sum(reply_seconds(r, contract.LOAD_SECONDS) for r in answered),
    }
    per_node = {
        "local_steps": contract.LOCAL_STEPS,  # tier-local-steps
        "tokens": contract.TOKENS,  # trained on this round
        "train_seconds": contract.TRAIN_SECONDS,
        "dp_epsilon": contract.DP_EPSILON,  # cumulative sample-level DP epsilon
        "dp_noise": contract.DP_NOISE,  # the noise multiplier its DP training used
    }
    for name, key in per_node.items():
        for node, value in reported(answered, key).items():
            if node in plans:
                row["nodes"][str(node)][name] = int(value) if name in INTEGERS else value
    if epsilons:
        row["dp_epsilon_max"] = max(epsilons.values())
    return row


def reported(replies: list[Message], key: str) -> dict[int, float]:
    """The finite number each node reports as metric ``key`` (``dp-epsilon``, ``local-steps``),
    by node; nodes that report none are left out."""
    values = {}
    for reply in replies:
        metrics = None if reply.has_error() else reply.content.get("metrics")
        value = metrics.get(key) if isinstance(metrics, MetricRecord) else None
        if isinstance(value, int | float) and math.isfinite(value):
            values[reply.metadata.src_node_id] = float(value)
    return values


def reply_seconds(reply: Message, key: str) -> float:
    """The seconds a node reports as ``key``, 0 when it reports no finite number."""
    metrics = reply.content.get("metrics")
    value = metrics.get(key, 0) if isinstance(metrics, MetricRecord) else 0
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0
