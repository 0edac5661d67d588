"""Compare federations of one family: rules, tier mixes, and centralized training.

Each scenario is a Flower simulation (in-process ``run_simulation``, one 2-CPU client actor,
so clients train one after another) of the run config in pyproject.toml with the scenario's
changes; ``train-local`` trains the deepest branch centrally on the union of the same client
partitions for the same total number of steps; ``local-only`` trains every node alone on its
own partition for the local steps the federation gives it (its ``ppl@`` cells are the best
node's; a second table sets each federation against every node, per exit). The table gives
the final perplexity per exit on the union of every node's held-out blocks (each exported
exit evaluated once, so scenarios compare on the same tokens; results.json also keeps the
federation's own per-node means), bytes per round per tier, wall time, and the largest share
of a round spent outside client training (rounds after the first).

    .venv/bin/python simulations/compare_federations.py --scenario mixed-flexlora \\
        --scenario local-only --set num-server-rounds=3
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from famflow.federation.config import FederationConfig

SCENARIOS: dict[str, dict[str, Any]] = {
    "mixed-fedit": {"rule": "fedit"},
    "mixed-ffa": {"rule": "ffa"},
    "mixed-flexlora": {"rule": "flexlora"},
    "mixed-hetlora": {"rule": "hetlora"},
    "device-only": {"tier-mix": "device:6"},
    "mixed-int8": {"codec": "int8"},
    # the device tier holds the deepest exit whose training fits its memory with an nf4 frozen
    # trunk, recomputing activations (SmolLM2: exit 20 in nf4 instead of exit 10 in fp32)
    "device-quantized": {"tier-weights": "device:nf4", "gradient-checkpointing": "device:auto"},
    # the same deeper exit with fp32 weights, which recomputing alone makes fit
    "device-recomputed": {"gradient-checkpointing": "device:auto"},
}


def base_run_config() -> dict[str, Any]:
    """The demo's run config: the defaults pyproject.toml's app section holds."""
    return FederationConfig().to_run_config()


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def union_validation(config: Any) -> torch.Tensor:
    """The first ``eval_blocks`` held-out blocks of every node's partition, one tensor."""
    from famflow.clients.task import get_data

    nodes = config.node_count()
    return torch.cat([get_data(config, p).validation[: config.eval_blocks] for p in range(nodes)])


def exported_perplexity(run_config: dict[str, Any]) -> dict[str, float]:
    """Every exported exit evaluated on the union of the nodes' held-out blocks."""
    from famflow.familial.evaluation import evaluate
    from famflow.familial.local_training import load_trained_branch
    from famflow.familial.presets import resolve_model

    config = FederationConfig.from_run_config(run_config)
    spec = resolve_model(config.model)
    blocks = union_validation(config)
    perplexity = {}
    for depth in spec.family.exits:
        export = Path(config.out_dir) / "export" / f"exit-{depth}"
        branch = load_trained_branch(spec, depth, export, exits=[depth])
        perplexity[str(depth)] = evaluate(branch, blocks)[depth].perplexity
    return perplexity


def federate(run_config: dict[str, Any]) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    from famflow.clients.client_app import make_client_app
    from famflow.server.records import read_rows
    from famflow.server.server_app import make_server_app

    nodes = FederationConfig.from_run_config(run_config).node_count()
    start = time.perf_counter()
    run_simulation(
        make_server_app(run_config),
        make_client_app(run_config),
        num_supernodes=nodes,
        backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0}},
    )
    rows = read_rows(Path(run_config["out-dir"]))
    later = [row for row in rows if row["round"] >= 2]
    outside = [1 - row["train_seconds_sum"] / row["seconds"] for row in later if row["seconds"]]
    tiers: dict[str, int] = {}
    for node in rows[-1]["nodes"].values():
        tiers[node["tier"]] = tiers.get(node["tier"], 0) + node["bytes_up"]
    return {
        "perplexity": {d: m["perplexity"] for d, m in rows[-1]["exits"].items()},
        "before": {d: m["perplexity"] for d, m in rows[0]["exits"].items()},
        "bytes_up_per_round": tiers,
        "seconds": time.perf_counter() - start,
        "outside_training": max(outside, default=float("nan")),
        "union": exported_perplexity(run_config),
    }


def federation_steps(config: Any) -> int:
    """The local steps a federation trains in all: per round, each tier's sampled nodes (a
    ``fraction-train`` share, at least one) times the tier's local steps."""
    from famflow.strategies.familial_strategy import tier_sample_size

    per_round = sum(
        tier_sample_size(config.fraction_train, count) * config.local_steps_of(tier)
        for tier, count in config.tier_counts()
    )
    return config.num_server_rounds * per_round


def train_locally(run_config: dict[str, Any], steps: int | None = None) -> dict[str, Any]:
    """The deepest branch trained centrally on the clients' partitions.

    ``steps`` defaults to the federation's total (``federation_steps``). The translators
    are calibrated first on as many blocks as the federation's deepest-branch holders use.
    """
    from famflow.clients.task import get_data, node_profile
    from famflow.familial.local_training import train_branch
    from famflow.familial.lora import LoraSettings
    from famflow.familial.presets import resolve_model
    from famflow.familial.training import TrainConfig

    config = FederationConfig.from_run_config(run_config)
    spec = resolve_model(config.model)
    nodes = config.node_count()
    train_blocks = torch.cat([get_data(config, partition).train for partition in range(nodes)])
    validation = union_validation(config)
    steps = steps or federation_steps(config)
    deepest = spec.family.exits[-1]
    holders = sum(
        node_profile(config, {"partition-id": p})["exit"] == deepest for p in range(nodes)
    )
    calibration_blocks = config.calibration_blocks * holders if config.calibrate_exits else 0
    train_config = TrainConfig(
        steps=steps, batch_size=config.batch_size, lr=config.lr, min_lr_ratio=0.1, seed=config.seed
    )
    start = time.perf_counter()
    metrics = train_branch(
        spec,
        spec.family.exits[-1],
        train_blocks,
        validation,
        train_config,
        LoraSettings(rank=16, alpha=config.lora_alpha_ratio * 16, seed=config.seed),
        Path(config.out_dir),
        calibration_blocks=calibration_blocks,
    )
    perplexity = {d: m["perplexity"] for d, m in metrics["after"].items()}
    return {
        "perplexity": perplexity,
        "before": {d: m["perplexity"] for d, m in metrics["before"].items()},
        "union": perplexity,
        "bytes_up_per_round": {},
        "seconds": time.perf_counter() - start,
        "outside_training": float("nan"),
    }


def train_nodes_alone(run_config: dict[str, Any]) -> dict[str, Any]:
    """Each node of the federation trains alone on its own partition (local-only).

    A node trains the branch its profile gives, at its tier's rank, for the local steps the
    federation gives it over all rounds, at the federation's learning rate, its translators
    calibrated on its own blocks; every node is evaluated on the union of held-out blocks.
    """
    from famflow.clients.task import get_data, node_profile
    from famflow.familial.local_training import train_branch
    from famflow.familial.presets import resolve_model
    from famflow.familial.training import TrainConfig
    from famflow.federation.contract import lora_settings

    config = FederationConfig.from_run_config(run_config)
    spec = resolve_model(config.model)
    validation = union_validation(config)
    nodes = {}
    start = time.perf_counter()
    for partition in range(config.node_count()):
        profile = node_profile(config, {"partition-id": partition})
        train_config = TrainConfig(
            steps=config.num_server_rounds * config.local_steps_of(profile["tier"]),
            batch_size=config.batch_size,
            lr=config.lr,
            min_lr_ratio=1.0,
            distill_weight=config.distill_weight,
            train_exit_adapters=config.train_exit_adapters,
            seed=config.seed + partition,
        )
        metrics = train_branch(
            spec,
            profile["exit"],
            get_data(config, partition).train,
            validation,
            train_config,
            lora_settings(config, profile["rank"]),
            Path(config.out_dir) / f"node-{partition}",
            calibration_blocks=config.calibration_blocks if config.calibrate_exits else 0,
        )
        nodes[str(partition)] = {
            "tier": profile["tier"],
            "exit": profile["exit"],
            "perplexity": {d: m["perplexity"] for d, m in metrics["after"].items()},
        }
    best = {}
    for node in nodes.values():
        for depth, perplexity in node["perplexity"].items():
            best[depth] = min(best.get(depth, float("inf")), perplexity)
    return {
        "nodes": nodes,
        "union": best,
        "bytes_up_per_round": {},
        "seconds": time.perf_counter() - start,
        "outside_training": float("nan"),
    }


def joining_table(results: dict[str, Any]) -> list[str]:
    """Per exit: each federation's union perplexity against every local-only node's."""
    alone = results.get("local-only")
    federations = {n: r for n, r in results.items() if n not in ("local-only", "train-local")}
    if not alone or not federations:
        return []
    lines = ["", "Does joining pay? Union held-out perplexity per exit (lower is better)"]
    for name, result in federations.items():
        for depth, perplexity in sorted(result["union"].items(), key=lambda item: int(item[0])):
            locals_ = [
                (p, node["perplexity"][depth])
                for p, node in alone["nodes"].items()
                if depth in node["perplexity"]
            ]
            cells = ", ".join(f"node {p} {value:.4g}" for p, value in locals_)
            wins = all(perplexity < value for _, value in locals_)
            verdict = "beats every local-only node" if wins else "does NOT beat every node"
            lines.append(f"  exit {depth}: {name} {perplexity:.4g} {verdict} ({cells})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "train-local", "local-only"],
        required=True,
    )
    parser.add_argument("--set", action="append", default=[], help="run-config key=value")
    parser.add_argument(
        "--train-local-steps", type=int, default=None, help="default: the federation's total"
    )
    parser.add_argument("--out", type=Path, default=Path("runs") / "compare")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    results = {}
    for name in args.scenario:
        run_config = {**base_run_config(), **{k: parse_value(v) for k, v in overrides.items()}}
        run_config |= SCENARIOS.get(name, {})
        run_config["out-dir"] = str(args.out / name)
        if name == "train-local":
            results[name] = train_locally(run_config, args.train_local_steps)
        elif name == "local-only":
            results[name] = train_nodes_alone(run_config)
        else:
            results[name] = federate(run_config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    exits = sorted({d for r in results.values() for d in r["union"]}, key=int)
    print(
        f"{'scenario':<16} "
        + " ".join(f"{'ppl@' + d:>10}" for d in exits)
        + f" {'bytes up/round by tier':>40} {'wall s':>8} {'outside':>8}"
    )
    for name, result in results.items():
        ppl = " ".join(f"{result['union'].get(d, float('nan')):>10.4g}" for d in exits)
        tiers = ", ".join(
            f"{t} {b / 1e6:.1f} MB" for t, b in sorted(result["bytes_up_per_round"].items())
        )
        outside = result["outside_training"]
        share = "-" if outside != outside else f"{outside:.1%}"  # NaN: no federation rounds
        print(f"{name:<16} {ppl} {tiers:>40} {result['seconds']:>8.0f} {share:>8}")
    for line in joining_table(results):
        print(line)


if __name__ == "__main__":
    main()
