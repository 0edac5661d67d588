"""The calibration query: fit the shallow exits' translators before round 1 (a tuned lens).

Nodes holding the family's deepest exit send least-squares statistics of their training data
(``familial.calibration``); the server adds them up and solves once per exit. Only sums of
hidden-state products leave a node, never tokens.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from famflow.familial.calibration import LensStatistics, solve_translator
from famflow.familial.errors import FamflowError
from famflow.familial.presets import resolve_model
from famflow.federation.config import FederationConfig
from famflow.federation.contract import branch_keys
from famflow.server.progress import send_and_receive
from famflow.strategies.familial_strategy import FamilialStrategy, RoundTraffic
from famflow.strategies.records import from_record, to_record

logger = logging.getLogger("famflow.server")
CALIBRATE_QUERY = "query.calibrate"


def translator_key(depth: int) -> str:
    return f"exit.{depth}.translator.proj.weight"


def reply_statistics(
    reply: Message, exits: list[int], hidden_size: int
) -> dict[int, LensStatistics]:
    """One node's statistics, checked; any flaw drops the whole reply."""
    if reply.has_error():
        raise FamflowError(f"client error: {reply.error.reason}")
    if "arrays" not in reply.content or "metrics" not in reply.content:
        raise FamflowError("reply without arrays or metrics")
    arrays = from_record(reply.content["arrays"])
    expected = {f"exit.{d}.lens.{part}" for d in exits for part in ("gram", "cross")}
    if set(arrays) != expected:
        raise FamflowError(f"keys {sorted(arrays)[:4]} are not the lens statistics of {exits}")
    statistics = {}
    for depth in exits:
        tokens = reply.content["metrics"].get(f"tokens-exit-{depth}", 0)
        stats = LensStatistics(
            arrays[f"exit.{depth}.lens.gram"].astype(np.float64),
            arrays[f"exit.{depth}.lens.cross"].astype(np.float64),
            int(tokens),  # type: ignore[arg-type]
        )
        stats.check(hidden_size)
        statistics[depth] = stats
    return statistics


def calibrate_translators(
    grid: Grid,
    strategy: FamilialStrategy,
    config: FederationConfig,
    arrays: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], RoundTraffic]:
    """``arrays`` with every shallow exit's full translator fitted; the query's traffic."""
    deepest = max(plan.exit for plan in strategy.plans.values())
    fitted = {int(key.split(".")[1]) for key in arrays if key.endswith("translator.proj.weight")}
    exits = sorted(depth for depth in fitted if depth < deepest)
    holders = [node for node, plan in strategy.plans.items() if plan.exit == deepest]
    if not exits or not holders:
        logger.info("calibration skipped: no full translator below exit %d", deepest)
        return arrays, RoundTraffic()
    # The holders answer with every exit their branch can hold, even when they train only
    # their own (branch-exits = own).
    held = replace(config, branch_exits="held")
    keys = {node: branch_keys(held, deepest, strategy.plans[node].rank) for node in holders}
    messages = strategy.configure_query(
        0, to_record(arrays), ConfigRecord(), holders, CALIBRATE_QUERY, keys
    )
    traffic = strategy.traffic[(0, CALIBRATE_QUERY)]
    hidden_size = int(resolve_model(config.model).base_config().hidden_size)
    totals: dict[int, LensStatistics] = {}
    replies = send_and_receive(grid, messages, config.round_timeout, "calibrating the exits")
    for reply in replies:
        node = traffic.source(reply)
        try:
            statistics = reply_statistics(reply, exits, hidden_size)
        except FamflowError as error:
            reason = "client-error" if reply.has_error() else "bad-statistics"
            traffic.drop(node, reason, str(error))
            logger.warning("calibration: dropped the reply of node %d (%s)", node, error)
            continue
        traffic.up[node] = reply.content["arrays"].count_bytes()
        for depth, stats in statistics.items():
            totals[depth] = totals[depth] + stats if depth in totals else stats
    for node in traffic.drop_unanswered(replies):
        logger.warning("calibration: node %d did not reply before the round timeout", node)
    if not totals:
        logger.warning("calibration: no usable reply, the translators stay at identity")
        return arrays, traffic
    calibrated = dict(arrays)
    for depth, stats in totals.items():
        calibrated[translator_key(depth)] = solve_translator(stats)
        logger.info("calibrated exit %d's translator on %d tokens", depth, stats.tokens)
    return calibrated, traffic
