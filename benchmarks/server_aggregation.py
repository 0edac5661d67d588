"""Server seconds per round of each aggregation rule on the demo federation's adapter shapes.

A round here is the server's own work: one slice of the global adapters per tier (the
strategy sends a tier's nodes the same slice) and the aggregation of every node's update (its
slice plus a small random change, started from that slice). Round 1 starts from the fresh
adapters, later rounds from the rule's own aggregate. ``fedit`` (one rank, plain means) is
the baseline measured in the same run; x fedit = the rule's seconds / fedit's.

    .venv/bin/python benchmarks/server_aggregation.py [--rounds 3] [--rules fedit flexlora]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from famflow.clients.task import node_profile
from famflow.federation.config import FederationConfig
from famflow.server.plans import initial_global_state, node_plans
from famflow.simulations.compare_federations import base_run_config
from famflow.strategies.familial_strategy import NodePlan
from famflow.strategies.rules import ClientUpdate, get_rule

BASELINE = "fedit"


def tier_plans(config: FederationConfig) -> list[tuple[NodePlan, int]]:
    """One plan per tier of the config's tier mix (as the server plans its nodes: fedit puts
    every node at the largest rank) and the tier's node count."""
    counts = dict(config.tier_counts())
    profiles = {index: node_profile(config, {"tier": tier}) for index, tier in enumerate(counts)}
    plans = node_plans(config, profiles)
    return [(plans[index], counts[tier]) for index, tier in enumerate(counts)]


def time_rule(config: FederationConfig, rounds: int, seed: int = 0) -> list[dict[str, float]]:
    rule = get_rule(config.rule)
    tiers = tier_plans(config)
    state = initial_global_state(config, max(plan.rank for plan, _ in tiers))
    rng = np.random.default_rng(seed)
    timings = []
    for _ in range(rounds):
        begin = time.perf_counter()
        slices = {
            plan.tier: rule.slice_for(state, plan.keys, plan.rank, plan.scale) for plan, _ in tiers
        }
        sliced = time.perf_counter()
        updates = [
            ClientUpdate(
                {
                    k: v + 1e-3 * rng.standard_normal(v.shape, dtype=np.float32)
                    for k, v in start.items()
                },
                100,
                plan.rank,
                plan.scale,
                start=start,
            )
            for plan, count in tiers
            for start in [slices[plan.tier]] * count
        ]
        prepared = time.perf_counter()
        state = rule.aggregate(state, updates)
        timings.append({"slice_s": sliced - begin, "aggregate_s": time.perf_counter() - prepared})
    return timings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rules", nargs="+", default=["fedit", "ffa", "flexlora", "hetlora"])
    args = parser.parse_args(argv)
    base = FederationConfig.from_run_config(base_run_config())
    rules = [BASELINE, *(rule for rule in args.rules if rule != BASELINE)]
    results = {rule: time_rule(replace(base, rule=rule), args.rounds) for rule in rules}
    print(
        f"{base.model}, tiers {', '.join(f'{t} x{n}' for t, n in base.tier_counts())}: "
        "server seconds per round (one slice per tier + aggregation of every node)"
    )
    header = f"{'rule':<10} {'round':>5} {'slice s':>8} {'aggregate s':>11} {'total s':>8}"
    print(f"{header} {'x fedit':>8}")
    for rule, timings in results.items():
        for index, timing in enumerate(timings, start=1):
            total = timing["slice_s"] + timing["aggregate_s"]
            baseline = results[BASELINE][index - 1]
            ratio = total / (baseline["slice_s"] + baseline["aggregate_s"])
            print(
                f"{rule:<10} {index:>5} {timing['slice_s']:>8.3f} {timing['aggregate_s']:>11.3f}"
                f" {total:>8.3f} {ratio:>8.2f}"
            )


if __name__ == "__main__":
    main()
