"""A federation that starts from a familialized family (run-config ``family-adapters``)."""

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity
from safetensors.numpy import load_file

from famflow.__main__ import main
from famflow.clients.client_app import make_client_app
from famflow.familial.errors import FamflowError
from famflow.familial.naming import exit_adapter_key
from famflow.federation.config import FederationConfig
from famflow.server.federation import run_federation
from famflow.server.plans import initial_global_state
from tests.federation_setup import InProcessGrid, run_config, write_federation_files

pytestmark = pytest.mark.slow


@pytest.fixture
def familialized(tmp_path, monkeypatch):
    for key, value in write_federation_files(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FAMFLOW_CACHE", str(tmp_path / "cache"))
    corpus, out = str(tmp_path / "hamlet.txt"), tmp_path / "family"
    args = ["familialize", "tiny3", "--prompt-data", corpus, "--data", corpus, "--prompts", "8"]
    args += ["--held-out-prompts", "2", "--new-tokens", "6", "--seq-len", "16", "--steps", "4"]
    assert main([*args, "--corpus-blocks", "4", "--eval-blocks", "2", "--out", str(out)]) == 0
    return tmp_path, out


def test_the_federation_starts_from_the_distilled_exits_and_trains_their_layers(
    familialized, monkeypatch
):
    root, family = familialized
    # Every node holds the whole family: the exits' own layers need more than tiny3's
    # device and edge budgets.
    overrides = {"family-adapters": str(family), "num-server-rounds": 1, "tier-mix": "cloud:3"}
    config = run_config(root, **overrides)
    federation = FederationConfig.from_run_config(config)
    start = initial_global_state(federation, 8)
    saved = load_file(family / "exit_adapters.safetensors")
    distilled = {exit_adapter_key(name): value for name, value in saved.items()}
    assert any(".layer." in key for key in distilled)
    for key, value in distilled.items():
        np.testing.assert_array_equal(start[key], value.astype(np.float32))

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    grid = InProcessGrid(make_client_app(config), 3)
    rows = run_federation(grid, federation)
    assert not any(row["dropped"] for row in rows)
    assert all(np.isfinite(rows[-1]["exits"][d]["loss"]) for d in ("1", "2", "4"))
    trained = load_file(root / "run" / "export" / "exit-1" / "exit_adapters.safetensors")
    assert any(".layer." in key for key in trained)


def test_family_adapters_that_are_missing_are_named_with_the_fix(tmp_path):
    config = FederationConfig(model="tiny", family_adapters=str(tmp_path / "nowhere"))
    with pytest.raises(FamflowError, match="run `famflow familialize tiny --out"):
        config.check_setup()
