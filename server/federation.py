"""The round loop: profile, evaluate, then train/evaluate/checkpoint/record each round, export."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MessageType
from flwr.serverapp import Grid

from famflow.federation import contract
from famflow.federation.config import FederationConfig
from famflow.server.calibration import calibrate_translators
from famflow.server.checkpoints import load_checkpoint, save_checkpoint
from famflow.server.export import export_branches
from famflow.server.membership import refresh_nodes
from famflow.server.plans import initial_global_state, node_plans
from famflow.server.profiles import query_profiles, usable_profiles
from famflow.server.progress import send_and_receive
from famflow.server.records import RoundRecorder, read_rows
from famflow.server.report import round_line, tier_counts
from famflow.server.rows import round_row
from famflow.server.run_identity import (
    RunIdentity,
    check_resumable,
    claim_out_dir,
    identity_fields,
    new_run_id,
)
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


def central_dp_accounted(config: FederationConfig, rule: AggregationRule) -> bool:
    """Whether the rows carry central DP's user-level epsilon (logged when they cannot)."""
    if config.central_dp_noise <= 0:
        return False
    reason = unstated_guarantee(rule, config.robust)
    if reason is not None:
        logger.warning("central DP is on but no epsilon is stated: %s.", reason)
    return reason is None


@dataclass(frozen=True)
class RunStart:
    """Where a run starts: its identity and plans, and a resumed checkpoint's arrays."""

    identity: RunIdentity
    plans: dict[int, NodePlan]
    rank: int  # of the global adapters
    arrays: dict[str, np.ndarray] | None  # the checkpoint's; None for a fresh run
    last_round: int  # the checkpoint's round; 0 for a fresh run


def begin_run(grid: Grid, config: FederationConfig) -> RunStart:
    """Claim the run directory, profile the nodes and plan them; a resume restores the saved
    global rank and refuses a checkpoint of a different run."""
    checkpoint = load_checkpoint(Path(config.resume)) if config.resume else None
    saved = RunIdentity.of_checkpoint(checkpoint[2], config.resume) if checkpoint else None
    out = Path(config.out_dir)
    claim_out_dir(out, config.move_old_run, resuming=saved.run_id if saved else None)
    usable = usable_profiles(config, query_profiles(grid, config.min_nodes, config.round_timeout))
    if checkpoint is None or saved is None:
        plans = node_plans(config, usable)
        rank = max(plan.rank for plan in plans.values())
        identity = RunIdentity(new_run_id(), identity_fields(config, plans, rank))
        logger.info("run %s (fingerprint %s) in %s", identity.run_id, identity.fingerprint, out)
        return RunStart(identity, plans, rank, None, 0)
    last_round, arrays, state = checkpoint
    rank = int(state["rank"])
    plans = node_plans(config, usable, global_rank=rank)
    check_resumable(saved, identity_fields(config, plans, rank), config.resume)
    logger.info("resuming after round %d from %s (run %s)", last_round, config.resume, saved.run_id)
    return RunStart(saved, plans, rank, arrays, last_round)


def run_federation(grid: Grid, config: FederationConfig) -> list[dict[str, Any]]:
    """Run the federation described by ``config``; returns the per-round rows."""
    out = Path(config.out_dir)
    config.check_setup()
    rule = get_rule(config.rule)
    begun = begin_run(grid, config)
    identity, plans, rank = begun.identity, begun.plans, begun.rank
    start_round = begun.last_round + 1
    fresh = initial_global_state(config, rank)
    arrays = begun.arrays if begun.arrays is not None else fresh
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
    recorder = RoundRecorder(out, identity.stamp(), keep_through=begun.last_round)
    timeout = config.round_timeout
    calibration = RoundTraffic()
    if start_round == 1 and config.calibrate_exits and not config.family_adapters:
        arrays, calibration = calibrate_translators(grid, strategy, config, arrays)
    record = to_record(arrays)
    rounds = config.num_server_rounds
    if start_round == 1:
        messages = list(strategy.configure_evaluate(0, record, ConfigRecord(), grid))
        logger.info("round 0/%d: evaluating %s", rounds, tier_counts(messages, plans))
        replies = send_and_receive(grid, messages, timeout, f"round 0/{rounds} evaluate")
        evaluation = strategy.aggregate_evaluate(0, replies)
        calibration.merge_drops(strategy.traffic[(0, MessageType.EVALUATE)])
        row = round_row(0, plans, calibration, evaluation, [], 0.0)
        recorder.record(row)
        logger.info(round_line(row, rounds))
    for server_round in range(start_round, rounds + 1):
        start = time.perf_counter()
        refresh_nodes(grid, strategy, config, rank)
        label = f"round {server_round}/{rounds}"
        messages = list(strategy.configure_train(server_round, record, ConfigRecord(), grid))
        logger.info("%s: training %s", label, tier_counts(messages, strategy.plans))
        train_replies = send_and_receive(grid, messages, timeout, f"{label} train")
        aggregated, train_losses = strategy.aggregate_train(server_round, train_replies)
        record = aggregated if aggregated is not None else record
        evaluation = None
        if server_round == rounds or server_round % config.evaluate_every == 0:
            messages = list(strategy.configure_evaluate(server_round, record, ConfigRecord(), grid))
            evaluate_replies = send_and_receive(grid, messages, timeout, f"{label} evaluate")
            evaluation = strategy.aggregate_evaluate(server_round, evaluate_replies)
        traffic = strategy.traffic[(server_round, MessageType.TRAIN)]
        row = round_row(
            server_round,
            strategy.plans,
            traffic,
            evaluation,
            train_replies,
            time.perf_counter() - start,
            train_losses,
        )
        if accounted:
            row["central_dp_epsilon"] = central_epsilon(
                config.central_dp_noise, server_round, config.dp_delta
            )
        save_checkpoint(
            out / "checkpoints",
            server_round,
            from_record(record),
            {**identity.state(), "config": asdict(config), "rank": rank},
        )
        recorder.record(row)
        logger.info(round_line(row, rounds))
    recorder.close()
    run = {"run_id": identity.run_id, "round": rounds}
    export_branches(config, rule, from_record(record), rank, out / "export", run)
    return read_rows(out)
