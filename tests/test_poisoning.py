"""One of five nodes poisons its updates: the held-out loss of the real tiny3 family, trained
by the real ClientApp and aggregated by the real server loop, with and without defences.

The federation runs in-process (``InProcessGrid`` hands each message to the ClientApp, as
Flower's simulation does, without starting Ray): five edge nodes (exits 1 and 2, rank 4),
flexlora, four rounds of five local steps. The attacker is partition 0; a ClientApp mod scales
its reply (its change from the slice it was sent) by 250 or flips its sign.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, Context, Message
from flwr.supercore.task_identity import TaskIdentity

from famflow.clients.client_app import make_client_app
from famflow.federation.config import FederationConfig
from famflow.server.federation import run_federation
from tests.federation_setup import InProcessGrid, run_config, write_federation_files

pytestmark = pytest.mark.slow
NODES, ROUNDS, STEPS = 5, 4, 5
SCALED, FLIPPED = 250.0, -1.0


def poison(factor: float) -> Callable[..., Message]:
    def mod(message: Message, context: Context, call_next: Callable[..., Message]) -> Message:
        reply = call_next(message, context)
        if message.metadata.message_type == "train" and context.node_config["partition-id"] == 0:
            arrays = reply.content["arrays"]
            for key in list(arrays):
                arrays[key] = Array(factor * arrays[key].numpy())
        return reply

    return mod


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """``run(attack, robust, outlier_ratio)`` -> the per-round rows (each run once)."""
    root = tmp_path_factory.mktemp("poisoning")
    runs: dict[tuple[float, str, float], list[dict[str, Any]]] = {}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in write_federation_files(root).items():
            patch.setenv(key, value)
        for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
            patch.setattr(TaskIdentity, name, value)

        def run(attack: float = 1.0, robust: str = "none", outlier_ratio: float = 0.0):
            if (attack, robust, outlier_ratio) not in runs:
                overrides = {
                    "tier-mix": f"edge:{NODES}",
                    "min-nodes": NODES,
                    "num-server-rounds": ROUNDS,
                    "local-steps": STEPS,
                    "evaluate-every": ROUNDS,
                    "robust": robust,
                    "outlier-norm-ratio": outlier_ratio,
                    "out-dir": str(root / f"run-{len(runs)}"),
                }
                config = run_config(root, **overrides)
                mods = [poison(attack)] if attack != 1.0 else []
                grid = InProcessGrid(make_client_app(config, mods=mods), NODES)
                federation = FederationConfig.from_run_config(config)
                runs[(attack, robust, outlier_ratio)] = run_federation(grid, federation)
            return runs[(attack, robust, outlier_ratio)]

        yield run


def held_out_loss(rows: list[dict[str, Any]]) -> np.ndarray:
    """The last round's held-out loss per exit (1, 2)."""
    return np.array([rows[-1]["exits"][depth]["loss"] for depth in ("1", "2")])


@pytest.mark.parametrize("attack", [SCALED, FLIPPED], ids=["scaled x250", "sign-flipped"])
def test_an_attacker_among_five_hurts_an_undefended_federation(federation, attack):
    clean = held_out_loss(federation())
    attacked = held_out_loss(federation(attack))
    assert (attacked > 1.05 * clean).all()
    assert all(not row["dropped"] for row in federation(attack))


@pytest.mark.parametrize(
    ("attack", "robust"),
    [
        pytest.param(SCALED, "median", id="scaled x250, median"),
        pytest.param(SCALED, "trimmed-mean", id="scaled x250, trimmed-mean"),
        pytest.param(SCALED, "clip", id="scaled x250, clip"),
        pytest.param(FLIPPED, "median", id="sign-flipped, median"),
        pytest.param(FLIPPED, "trimmed-mean", id="sign-flipped, trimmed-mean"),
    ],
)
def test_robust_aggregation_keeps_the_held_out_loss_within_5_percent(federation, attack, robust):
    clean = held_out_loss(federation())
    defended = held_out_loss(federation(attack, robust))
    assert (defended < 1.05 * clean).all()


def test_the_outlier_check_drops_a_scaled_attacker_every_round(federation):
    rows = federation(SCALED, outlier_ratio=10.0)
    assert [row["dropped_reasons"] for row in rows[1:]] == [{"norm-outlier": 1}] * ROUNDS
    assert (held_out_loss(rows) < 1.05 * held_out_loss(federation())).all()
    # A sign flip keeps the norm: the check does not see it (the robust rules do).
    assert not any(row["dropped"] for row in federation(FLIPPED, outlier_ratio=10.0))
