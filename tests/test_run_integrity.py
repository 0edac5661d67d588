"""A run directory belongs to one run: fresh runs refuse a used one (or move it aside), resume
refuses another run's checkpoint and names what differs, a corrupt latest checkpoint falls back
to the round before it, and the rows and TensorBoard carry the per-exit training loss.

The federations run in-process (``InProcessGrid``): the real ClientApp and server loop on tiny3.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity
from safetensors.numpy import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from famflow.clients.client_app import make_client_app
from famflow.familial.errors import FamflowError
from famflow.federation.config import FederationConfig
from famflow.server.checkpoints import load_checkpoint, save_checkpoint
from famflow.server.federation import run_federation
from famflow.server.records import read_rows
from famflow.server.run_identity import claim_out_dir
from tests.federation_setup import InProcessGrid, run_config, write_federation_files

ROUNDS = 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """tiny3's files (and a copy of the preset named tiny3-copy), pointed at by env."""
    root = tmp_path_factory.mktemp("integrity")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in write_federation_files(root).items():
            patch.setenv(key, value)
        preset = (root / "presets" / "tiny3.toml").read_text()
        copy = preset.replace('name = "tiny3"', 'name = "tiny3-copy"')
        (root / "presets" / "tiny3-copy.toml").write_text(copy)
        for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
            patch.setattr(TaskIdentity, name, value)
        yield root


@pytest.fixture(scope="module")
def federate(files) -> Callable[..., list[dict[str, Any]]]:
    """``federate(**overrides)`` runs tiny3 in-process and returns its rows."""

    def run(**overrides: Any) -> list[dict[str, Any]]:
        defaults = {"num-server-rounds": ROUNDS, "local-steps": 2, "eval-blocks": 2}
        config = run_config(files, **{**defaults, "calibration-blocks": 2, **overrides})
        grid = InProcessGrid(make_client_app(config), 3)
        return run_federation(grid, FederationConfig.from_run_config(config))

    return run


@pytest.fixture(scope="module")
def first_run(files, federate) -> Path:
    out = files / "first"
    federate(**{"out-dir": str(out)})
    return out


def copy_of(run: Path, name: str) -> Path:
    return Path(shutil.copytree(run, run.with_name(name)))


def test_every_row_and_checkpoint_carries_the_run_id_and_fingerprint(first_run):
    rows = read_rows(first_run)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert len({(row["run_id"], row["fingerprint"]) for row in rows}) == 1
    state = json.loads((first_run / "checkpoints" / "round-2.json").read_text())
    assert (state["run_id"], state["fingerprint"]) == (rows[0]["run_id"], rows[0]["fingerprint"])
    assert state["identity"]["rule"] == "flexlora" and state["rank"] == 8


def test_per_exit_training_loss_and_per_node_tokens_are_recorded(first_run):
    rows = read_rows(first_run)
    for row in rows[1:]:
        assert set(row["train_loss"]) == {"1", "2", "4"}
        assert all(np.isfinite(loss) and loss > 0 for loss in row["train_loss"].values())
        for node in row["nodes"].values():
            assert node["tokens"] > 0 and node["train_seconds"] > 0
    events = EventAccumulator(str(first_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train-loss/exit-1", "train-loss/exit-2", "train-loss/exit-4"} <= set(tags)
    steps = [event.step for event in events.Scalars("train-loss/exit-4")]
    assert steps == [1, 2]


def test_a_fresh_run_into_a_used_directory_is_refused(federate, first_run):
    before = sorted(p.name for p in first_run.rglob("*"))
    with pytest.raises(FamflowError, match=r"already holds run .* set move-old-run = true"):
        federate(**{"out-dir": str(first_run)})
    assert sorted(p.name for p in first_run.rglob("*")) == before


def test_move_old_run_moves_it_aside_and_the_new_run_never_sees_its_checkpoints(
    federate, first_run
):
    used = copy_of(first_run, "reused")
    old_id = read_rows(used)[0]["run_id"]
    rows = federate(**{"out-dir": str(used), "move-old-run": True, "num-server-rounds": 1})
    assert [row["round"] for row in rows] == [0, 1]
    assert {row["run_id"] for row in rows} != {old_id}
    aside = used.with_name(f"reused.{old_id}")
    assert (aside / "checkpoints" / "round-2.json").is_file()
    assert sorted(p.name for p in (used / "checkpoints").iterdir()) == [
        "round-1.json",
        "round-1.safetensors",
    ]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rule": "fedit"}, "rule: flexlora -> fedit"),
        ({"model": "tiny3-copy"}, "model: tiny3 -> tiny3-copy"),
        ({"codec": "fp16"}, "codec: fp32 -> fp16"),
    ],
    ids=["rule", "model", "codec"],
)
def test_resume_refuses_a_checkpoint_of_a_different_run_naming_the_field(
    federate, first_run, change, named
):
    resume = {"resume": str(first_run / "checkpoints"), "num-server-rounds": 3}
    out = first_run.with_name(f"resumed-{next(iter(change))}")
    with pytest.raises(FamflowError, match="Cannot resume") as refused:
        federate(**{"out-dir": str(out), **resume, **change})
    assert named in str(refused.value)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_round_before(federate, first_run, caplog):
    run = copy_of(first_run, "corrupt")
    latest = run / "checkpoints" / "round-2.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    round_1 = load_file(run / "checkpoints" / "round-1.safetensors")
    with caplog.at_level(logging.WARNING, logger="famflow"):
        assert load_checkpoint(run / "checkpoints")[0] == 1
    assert "falling back to the round before it" in caplog.text and "round-2" in caplog.text
    rows = federate(**{"out-dir": str(run), "resume": str(run / "checkpoints")})
    assert [row["round"] for row in rows] == [0, 1, 2]  # round 2 again, once
    assert len({row["run_id"] for row in rows}) == 1
    assert load_file(run / "checkpoints" / "round-1.safetensors").keys() == round_1.keys()
    assert load_checkpoint(run / "checkpoints")[0] == 2


def test_every_checkpoint_corrupt_is_one_sentence(tmp_path):
    save_checkpoint(tmp_path, 1, {"a": np.zeros(2, dtype=np.float32)}, {})
    (tmp_path / "round-1.json").write_text("{")
    with pytest.raises(FamflowError, match=r"Every checkpoint in .* is corrupt: start a fresh run"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_is_written_through_a_temporary_file(tmp_path):
    save_checkpoint(tmp_path, 3, {"a": np.ones(2, dtype=np.float32)}, {"rank": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-3.json", "round-3.safetensors"]
    assert load_checkpoint(tmp_path)[2] == {"rank": 2}


def test_claiming_an_empty_or_own_directory_is_allowed(tmp_path):
    claim_out_dir(tmp_path / "new", move_old_run=False)
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text(json.dumps({"run_id": "abc", "round": 0}) + "\n")
    claim_out_dir(used, move_old_run=False, resuming="abc")
    with pytest.raises(FamflowError, match="already holds run abc"):
        claim_out_dir(used, move_old_run=False, resuming="other")


def test_report_writes_three_plots_and_a_summary(first_run, capsys):
    from famflow.__main__ import main

    assert main(["report", str(first_run)]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert [path.name for path in written] == [
        "perplexity.png",
        "bytes.png",
        "time.png",
        "report.md",
    ]
    for png in written[:3]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    summary = written[3].read_text()
    run_id = read_rows(first_run)[0]["run_id"]
    assert summary.startswith(f"# famflow run {run_id}") and "tiny3, rule flexlora" in summary
    assert "| 4 |" in summary and "![time.png](time.png)" in summary


def test_report_on_a_directory_without_a_run_is_one_sentence(tmp_path, capsys):
    from famflow.__main__ import main

    assert main(["report", str(tmp_path)]) == 1
    assert "holds no metrics.jsonl: pass a run's out-dir" in capsys.readouterr().err
