"""The federation on Flower's Deployment Engine: a real SuperLink (TLS, SuperNode auth) and
real SuperNodes of three tiers on 127.0.0.1, each message in a fresh ClientApp process."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from famflow.server.deployment.loopback import CONNECTION, Deployment, wait_for
from famflow.server.records import read_rows
from tests.federation_setup import run_config, write_federation_files

pytestmark = pytest.mark.slow
TIERS = ("device", "edge", "cloud")
EXITS = {"device": 1, "edge": 2, "cloud": 4}  # tests/federation_setup.py's TIERS
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    deployment = Deployment(root, write_federation_files(root))
    try:
        deployment.start_superlink()
        deployment.keys = {tier: deployment.node_key(tier) for tier in TIERS}
        deployment.node_ids = {tier: deployment.register(k) for tier, k in deployment.keys.items()}
        deployment.supernodes = {tier: start_node(deployment, tier) for tier in TIERS}
        yield deployment
    finally:
        deployment.close()


def start_node(deployment: Deployment, tier: str):
    config = {"tier": tier, "partition-id": TIERS.index(tier), "device": "cpu"}
    return deployment.start_supernode(tier, deployment.keys[tier], config)


def deployed_config(deployment: Deployment, name: str, **overrides: Any) -> dict[str, Any]:
    config = run_config(deployment.root, **overrides)
    config["out-dir"] = str(deployment.root / name)
    return config


def run_to_end(deployment: Deployment, config: dict[str, Any], name: str) -> str:
    process = deployment.start_run(config, name)
    process.wait(timeout=RUN_TIMEOUT)
    return deployment.log(name)


def nodes_by_tier(row: dict[str, Any], deployment: Deployment) -> dict[str, dict[str, Any]]:
    by_id = {str(node_id): tier for tier, node_id in deployment.node_ids.items()}
    return {by_id[node]: entry for node, entry in row["nodes"].items()}


def test_an_unregistered_node_key_is_refused(deployment):
    stranger = deployment.node_key("stranger")
    node = deployment.start_supernode(
        "stranger", stranger, {"tier": "cloud"}, "--max-retries", "1", "--max-wait-time", "20"
    )
    assert node.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in deployment.log("supernode-stranger")
    listed = deployment.flwr("supernode", "list", CONNECTION, "--format", "json")
    reply = json.loads(listed.stdout[listed.stdout.index("{") :])
    assert {int(n["node-id"]) for n in reply["nodes"]} == set(deployment.node_ids.values())


def test_a_supernode_killed_mid_round_is_dropped_and_rejoins_after_a_restart(deployment):
    config = deployed_config(
        deployment,
        "killed-node",
        **{"num-server-rounds": 3, "round-timeout": 120.0, "calibrate-exits": False},
        **{"evaluate-every": 10},
    )
    out = Path(config["out-dir"])
    run = deployment.start_run(config, "killed-node")
    # Round 0 (the evaluation before training) is recorded just before round 1's training.
    wait_for(lambda: len(read_rows(out)) >= 1, RUN_TIMEOUT, "round 0")
    deployment.stop(deployment.supernodes["cloud"], signal.SIGKILL)
    wait_for(lambda: len(read_rows(out)) >= 2, RUN_TIMEOUT, "round 1 without the cloud node")
    deployment.supernodes["cloud"] = start_node(deployment, "cloud")
    run.wait(timeout=RUN_TIMEOUT)
    rows = read_rows(out)
    assert [row["round"] for row in rows] == [0, 1, 2, 3], deployment.log("killed-node")
    cloud = str(deployment.node_ids["cloud"])
    first, last = nodes_by_tier(rows[1], deployment), nodes_by_tier(rows[3], deployment)
    assert list(rows[1]["dropped"]) == [cloud]
    assert rows[1]["dropped_reasons"] in ({"no-reply": 1}, {"client-error": 1})
    assert first["device"]["bytes_up"] > 0 and first["edge"]["bytes_up"] > 0
    assert first["cloud"]["bytes_up"] == 0
    assert rows[1]["exits"] == {}  # evaluated only at the end
    assert last["cloud"]["bytes_up"] > 0 and rows[3]["dropped"] == {}
    assert set(rows[3]["exits"]) == {"1", "2", "4"}


def test_two_rounds_on_three_tiers_go_on_after_the_serverapp_is_killed_and_resumed(deployment):
    # Round 1's row is written right after its training (no evaluation until the last round).
    config = deployed_config(deployment, "resumed", **{"evaluate-every": 10})
    out = Path(config["out-dir"])
    run = deployment.start_run(config, "killed-serverapp")
    wait_for(lambda: len(read_rows(out)) >= 2, RUN_TIMEOUT, "round 1")
    serverapps = deployment.serverapps()
    assert len(serverapps) == 1
    serverapps[0].kill()
    deployment.stop(run)
    round_1 = (out / "checkpoints" / "round-1.safetensors").read_bytes()

    resumed = {**config, "resume": str(out / "checkpoints")}
    log = run_to_end(deployment, resumed, "resumed")
    assert "resuming after round 1" in log
    rows = read_rows(out)
    assert [row["round"] for row in rows] == [0, 1, 2], log
    assert (out / "checkpoints" / "round-1.safetensors").read_bytes() == round_1
    assert (out / "checkpoints" / "round-2.json").is_file()
    for row in rows[1:]:
        nodes = nodes_by_tier(row, deployment)
        assert {tier: nodes[tier]["exit"] for tier in TIERS} == EXITS
        up = [nodes[tier]["bytes_up"] for tier in TIERS]
        assert 0 < up[0] < up[1] < up[2]  # each node sent its own, larger, branch
        assert all(nodes[tier]["bytes_down"] > 0 for tier in TIERS)
        assert row["dropped"] == {}
        assert row["startup_seconds_sum"] > 0  # a fresh ClientApp process per message
    assert set(rows[2]["exits"]) == {"1", "2", "4"}
    assert (out / "export" / "exit-1" / "adapter_config.json").is_file()
    assert (out / "export" / "exit-4").is_dir()
