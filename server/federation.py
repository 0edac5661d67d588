"""The round loop: profile, evaluate, then train/evaluate/checkpoint/record each round, export."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from famflow.federation import contract
from famflow.federation.config import FederationConfig
from famflow.server.calibration import calibrate_translators
from famflow.server.checkpoints import load_checkpoint, save_checkpoint
from famflow.server.export import export_branches
from famflow.server.membership import refresh_nodes
from famflow.server.plans import initial_global_state, node_plans
from famflow.server.profiles import query_profiles, usable_profiles
from famflow.server.records import RoundRecorder, read_rows
from famflow.strategies.central_dp import CentralDPSettings, central_epsilon, unstated_guarantee
from famflow.strategies.familial_strategy import FamilialStrategy, NodePlan, RoundTraffic
from famflow.strategies.records import from_record, to_record
from famflow.strategies.robust import RobustSettings
from famflow.strategies.rules import AggregationRule, get_rule
from famflow.strategies.validation import ReplyLimits

logger = logging.getLogger("famflow.server")


def cosine_lr(config: FederationConfig) -> Any:
    """The learning rate of each round: cosine from ``lr`` to ``lr / 10`` over the run."""

    def lr_for_round(server_round: int) -> float:
        progress = (server_round - 1) / max(1, config.num_server_rounds - 1)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    return lr_for_round


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
) -> dict[str, Any]:
    answered = [reply for reply in train_replies if not reply.has_error()]
    train_seconds = [reply_seconds(reply, contract.CLIENT_SECONDS) for reply in answered]
    epsilons = reported(train_replies, contract.DP_EPSILON)
    row: dict[str, Any] = {
        "round": server_round,
        "exits": exits_of(evaluation),
        "nodes": {
            str(node): {
                "tier": plan.tier,
                "exit": plan.exit,
                "rank": plan.rank,
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
    for node, steps in reported(answered, contract.LOCAL_STEPS).items():  # tier-local-steps
        if node in plans:
            row["nodes"][str(node)]["local_steps"] = int(steps)
    for node, value in epsilons.items():  # cumulative sample-level DP epsilon (familial.privacy)
        if node in plans:
            row["nodes"][str(node)]["dp_epsilon"] = value
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


def central_dp_accounted(config: FederationConfig, rule: AggregationRule) -> bool:
    """Whether the rows carry central DP's user-level epsilon (logged when they cannot)."""
    if config.central_dp_noise <= 0:
        return False
    reason = unstated_guarantee(rule, config.robust)
    if reason is not None:
        logger.warning("central DP is on but no epsilon is stated: %s.", reason)
    return reason is None


def run_federation(grid: Grid, config: FederationConfig) -> list[dict[str, Any]]:
    """Run the federation described by ``config``; returns the per-round rows."""
    out = Path(config.out_dir)
    config.check_setup()
    resumed = load_checkpoint(Path(config.resume)) if config.resume else None
    rule = get_rule(config.rule)
    profiles = query_profiles(grid, config.min_nodes, config.round_timeout)
    plans = node_plans(config, usable_profiles(config, profiles))
    rank = max(plan.rank for plan in plans.values())
    start_round = 1
    fresh = initial_global_state(config, rank)
    if resumed is not None:
        last_round, arrays, _ = resumed
        start_round = last_round + 1
        logger.info("resuming after round %d from %s", last_round, config.resume)
    else:
        arrays = fresh
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    strategy = FamilialStrategy(
        rule,
        plans,
        codec=config.codec,
        fraction_train=config.fraction_train,
        min_nodes=config.min_nodes,
        lr_for_round=cosine_lr(config),
        seed=config.seed,
        codec_reference=contract.codec_reference(fresh),
        server_lr=config.server_lr,
        robust=RobustSettings(config.robust, config.clip_norm, config.trim_ratio),
        limits=ReplyLimits(outlier_norm_ratio=config.outlier_norm_ratio),
        central_dp=CentralDPSettings(config.central_dp_noise, config.central_dp_clip),
    )
    strategy.summary()
    accounted = central_dp_accounted(config, rule)
    recorder = RoundRecorder(out)
    timeout = config.round_timeout
    calibration = RoundTraffic()
    if start_round == 1 and config.calibrate_exits:
        arrays, calibration = calibrate_translators(grid, strategy, config, arrays)
    record = to_record(arrays)
    if start_round == 1:
        replies = grid.send_and_receive(
            strategy.configure_evaluate(0, record, ConfigRecord(), grid), timeout=timeout
        )
        evaluation = strategy.aggregate_evaluate(0, replies)
        calibration.merge_drops(strategy.traffic[(0, MessageType.EVALUATE)])
        recorder.record(round_row(0, plans, calibration, evaluation, [], 0.0))
    for server_round in range(start_round, config.num_server_rounds + 1):
        start = time.perf_counter()
        refresh_nodes(grid, strategy, config, rank)
        train_replies = list(
            grid.send_and_receive(
                strategy.configure_train(server_round, record, ConfigRecord(), grid),
                timeout=timeout,
            )
        )
        aggregated, _ = strategy.aggregate_train(server_round, train_replies)
        record = aggregated if aggregated is not None else record
        evaluation = None
        last = server_round == config.num_server_rounds
        if last or server_round % config.evaluate_every == 0:
            evaluate_replies = grid.send_and_receive(
                strategy.configure_evaluate(server_round, record, ConfigRecord(), grid),
                timeout=timeout,
            )
            evaluation = strategy.aggregate_evaluate(server_round, evaluate_replies)
        traffic = strategy.traffic[(server_round, MessageType.TRAIN)]
        row = round_row(
            server_round,
            strategy.plans,
            traffic,
            evaluation,
            train_replies,
            time.perf_counter() - start,
        )
        if accounted:
            row["central_dp_epsilon"] = central_epsilon(
                config.central_dp_noise, server_round, config.dp_delta
            )
        save_checkpoint(
            out / "checkpoints",
            server_round,
            from_record(record),
            {"config": asdict(config), "rank": rank},
        )
        recorder.record(row)
        logger.info("round %d: %s", server_round, row["exits"])
    recorder.close()
    export_branches(config, rule, from_record(record), rank, out / "export")
    return read_rows(out)
