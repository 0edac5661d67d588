"""Where a round's time goes on Flower's Deployment Engine against a simulation, same run.

Deployment: a real SuperLink (TLS, SuperNode auth) and one SuperNode per tier on 127.0.0.1
(``server.deployment.loopback``); every message starts a fresh ClientApp process, which
imports torch, reads its branch from the safetensors cache and its token blocks from the block
cache. Simulation: the same run config in-process (``flwr.simulation.run_simulation``, one
2-CPU actor, so clients train one after another and each process starts once). The table
shows per round and mode the wall seconds and, summed over the nodes, the seconds from process
start to handler, loading (branch + data), and training.

    .venv/bin/python benchmarks/deployment_rounds.py [--rounds 2] [--out runs/bench-deployment]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from famflow.server.records import read_rows
from famflow.simulations.compare_federations import base_run_config

TIERS = ("device", "edge", "cloud")


def simulate(run_config: dict[str, Any]) -> float:
    from flwr.simulation import run_simulation

    from famflow.clients.client_app import make_client_app
    from famflow.server.server_app import make_server_app

    start = time.perf_counter()
    run_simulation(
        make_server_app(run_config),
        make_client_app(run_config),
        num_supernodes=len(TIERS),
        backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0}},
    )
    return time.perf_counter() - start


def deploy(run_config: dict[str, Any], root: Path) -> float:
    from famflow.server.deployment.loopback import Deployment

    deployment = Deployment(root)
    try:
        deployment.start_superlink()
        for partition, tier in enumerate(TIERS):
            key = deployment.node_key(tier)
            deployment.register(key)
            node_config = {"tier": tier, "partition-id": partition, "device": "cpu"}
            deployment.start_supernode(tier, key, node_config)
        start = time.perf_counter()
        run = deployment.start_run(run_config, "run")
        run.wait(timeout=3600)
        return time.perf_counter() - start
    finally:
        deployment.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-deployment")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    base = {
        **base_run_config(),
        "tier-mix": ",".join(f"{tier}:1" for tier in TIERS),
        "num-server-rounds": args.rounds,
        "min-nodes": len(TIERS),
    }
    walls = {
        "simulation": simulate({**base, "out-dir": str(args.out / "simulation")}),
        "deployment": deploy(
            {**base, "out-dir": str(args.out / "deployment")}, args.out / "loopback"
        ),
    }
    print(
        f"{'mode':<11} {'round':>5} {'wall s':>7} {'start s':>8} {'load s':>7} {'train s':>8} "
        f"{'(start+load)/train':>19}"
    )
    for mode, wall in walls.items():
        for row in read_rows(args.out / mode)[1:]:
            start, load = row["startup_seconds_sum"], row["load_seconds_sum"]
            train = row["train_seconds_sum"]
            print(
                f"{mode:<11} {row['round']:>5} {row['seconds']:>7.1f} {start:>8.1f} {load:>7.1f} "
                f"{train:>8.1f} {(start + load) / train if train else float('nan'):>19.2f}"
            )
        print(f"{mode:<11} whole run {wall:.0f} s")


if __name__ == "__main__":
    main()
