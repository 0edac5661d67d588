"""famflow ClientApp: report a profile, train the branch it can hold, evaluate its exits."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from famflow.clients.node import first_message_startup_seconds, get_node_data, use_node_cache
from famflow.clients.task import get_branch, node_profile, receive, reply_arrays, train_round
from famflow.familial.calibration import lens_statistics
from famflow.familial.data.splits import TokenSplits
from famflow.familial.evaluation import evaluate
from famflow.familial.model import FamilialLM
from famflow.familial.privacy import PrivacyBudgetError
from famflow.familial.training import TrainConfig
from famflow.federation import contract
from famflow.federation.config import FederationConfig
from famflow.strategies.records import from_record, to_record


@dataclass
class Received:
    """The node's cached branch with the server's slice applied, the slice, the node's data."""

    branch: FamilialLM
    arrays: dict[str, np.ndarray]
    splits: TokenSplits


def received_branch(config: FederationConfig, msg: Message, context: Context) -> Received:
    setup = msg.content["config"]
    use_node_cache(context.node_config)
    weights = str(setup.get("weights", "")) or None
    branch = get_branch(
        config, int(setup["exit"]), int(setup["rank"]), str(setup["device"]), weights
    )
    arrays = receive(config, branch, from_record(msg.content["arrays"]))
    splits = get_node_data(config, context.node_config)
    return Received(branch, arrays, splits)


def make_client_app(
    overrides: dict[str, Any] | None = None, mods: list[Mod] | None = None
) -> ClientApp:
    """The ClientApp; ``overrides`` replace run-config keys (tests run without a run config)."""
    app = ClientApp(mods=mods)

    def run_config(context: Context) -> FederationConfig:
        return FederationConfig.from_run_config({**context.run_config, **(overrides or {})})

    @app.query("profile")
    def profile(msg: Message, context: Context) -> Message:
        first_message_startup_seconds()
        profile = node_profile(run_config(context), dict(context.node_config))
        return Message(RecordDict({"profile": ConfigRecord(profile)}), reply_to=msg)

    @app.query("calibrate")
    def calibrate(msg: Message, context: Context) -> Message:
        first_message_startup_seconds()
        # The statistics of every shallower exit: hold them all, whatever branch-exits says.
        config = replace(run_config(context), branch_exits="held")
        received = received_branch(config, msg, context)
        statistics = lens_statistics(
            received.branch, received.splits.train[: config.calibration_blocks]
        )
        arrays = {}
        metrics: dict[str, int] = {}
        for depth, stats in statistics.items():
            arrays[f"exit.{depth}.lens.gram"] = stats.gram
            arrays[f"exit.{depth}.lens.cross"] = stats.cross
            metrics[f"tokens-exit-{depth}"] = stats.tokens
        content = {"arrays": to_record(arrays), "metrics": MetricRecord(metrics)}
        return Message(RecordDict(content), reply_to=msg)

    @app.train()
    def train_branch(msg: Message, context: Context) -> Message:
        config = run_config(context)
        setup = msg.content["config"]
        settings = TrainConfig(
            steps=int(setup.get("local-steps", config.local_steps)),
            batch_size=config.batch_size,
            lr=float(setup["lr"]),
            min_lr_ratio=1.0,
            distill_weight=config.distill_weight,
            train_exit_adapters=config.train_exit_adapters,
            seed=config.seed + int(setup["server-round"]),
            precision=config.train_precision,  # type: ignore[arg-type]
            gradient_checkpointing=setup.get("gradient-checkpointing") is True,
        )
        start = time.perf_counter()
        startup = first_message_startup_seconds()
        received = received_branch(config, msg, context)
        loaded = time.perf_counter()
        try:
            result, dp_metrics = train_round(
                config, received.branch, received.splits.train, settings, context
            )
        except PrivacyBudgetError as error:  # say so in one sentence, send nothing
            return Message(Error(code=0, reason=str(error)), reply_to=msg)
        metrics: dict[str, float] = {
            contract.NUM_EXAMPLES: len(received.splits.train),
            contract.TRAIN_SECONDS: result.seconds,
            contract.CLIENT_SECONDS: time.perf_counter() - loaded,
            # Deployment starts a ClientApp process per message: its start and the branch load.
            contract.STARTUP_SECONDS: startup,
            contract.LOAD_SECONDS: loaded - start,
            contract.TOKENS: result.tokens,
            contract.LOCAL_STEPS: result.steps,
        }
        for depth, loss in result.exit_losses.items():
            metrics[contract.exit_metric(contract.LOSS_EXIT, depth)] = loss
        metrics |= dp_metrics
        content = {
            "arrays": to_record(reply_arrays(config, received.branch, received.arrays)),
            "metrics": MetricRecord(metrics),
        }
        return Message(RecordDict(content), reply_to=msg)

    @app.evaluate()
    def evaluate_branch(msg: Message, context: Context) -> Message:
        first_message_startup_seconds()
        config = run_config(context)
        received = received_branch(config, msg, context)
        results = evaluate(received.branch, received.splits.validation[: config.eval_blocks])
        tokens = next(iter(results.values())).tokens
        metrics: dict[str, float] = {contract.NUM_TOKENS: tokens}
        for depth, exit_metrics in results.items():
            metrics[contract.exit_metric(contract.LOSS_EXIT, depth)] = exit_metrics.loss
            metrics[contract.exit_metric(contract.ACCURACY_EXIT, depth)] = exit_metrics.accuracy
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()
