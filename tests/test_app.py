"""The Flower app: its FAB carries only pyproject.toml, its components are the installed
famflow's, and the repository's pyproject.toml is the same app ``famflow deploy app`` writes."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from flwr.common.config import validate_config

from famflow.__main__ import main
from famflow.server.deployment.app import app_table, write_app

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_repository_app_is_the_written_app():
    assert tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"] == app_table()


def test_a_written_app_validates_and_bundles_only_its_pyproject(tmp_path):
    write_app(tmp_path)
    (tmp_path / "stray.py").write_text("raise SystemExit('a FAB must not carry this')\n")
    config = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    valid, errors, _ = validate_config(config, check_module=True, project_dir=tmp_path)
    assert valid, errors
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(tmp_path))) as fab:
        names = sorted(name for name in fab.namelist() if not name.startswith(".info/"))
    assert names == ["pyproject.toml"]


def test_a_written_app_takes_run_config_overrides(tmp_path):
    write_app(tmp_path, {"rule": "ffa", "codec": "int8"})
    config = tomllib.loads((tmp_path / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert config["config"]["rule"] == "ffa" and config["config"]["codec"] == "int8"
    assert config["config"]["model"] == "smollm2-135m"


def test_deploy_app_command_writes_the_app(tmp_path, capsys):
    assert main(["deploy", "app", str(tmp_path / "app")]) == 0
    assert (tmp_path / "app" / "pyproject.toml").is_file()
    assert f"flwr run {tmp_path / 'app'}" in capsys.readouterr().out
