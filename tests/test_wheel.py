"""famflow as a wheel, outside the checkout: one import root with its presets, its command line,
and a one-round federation on real Flower processes whose ServerApp and ClientApps import famflow
from that wheel.

The wheel goes into a new venv with no famflow in it. Its dependencies are the test
environment's, seen through a folder of links that leaves famflow's own (editable) install
out, so the test builds and installs nothing but famflow and needs no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from configparser import ConfigParser
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path

import pytest

from tests.federation_setup import TEXT

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent
GENERIC_NAMES = {"familial", "clients", "server", "strategies", "simulations", "benchmarks"}
RUN_TIMEOUT = 420
DRIVER = """
import json, sys
from pathlib import Path
from famflow.server.deployment.loopback import Deployment

root, run_config = Path(sys.argv[1]), json.loads(sys.argv[2])
deployment = Deployment(root)
try:
    deployment.start_superlink()
    for partition, tier in enumerate(("device", "cloud")):
        key = deployment.node_key(tier)
        deployment.register(key)
        config = {"tier": tier, "partition-id": partition, "num-partitions": 2, "device": "cpu"}
        deployment.start_supernode(tier, key, config)
    deployment.start_run(run_config, "run").wait(timeout=float(sys.argv[3]))
finally:
    deployment.close()
"""


@dataclass
class Installed:
    python: Path
    bin: Path
    work: Path  # a directory outside the checkout
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*args], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout
        )


def linked_dependencies(target: Path) -> Path:
    """This environment's site-packages as links, without famflow's own install."""
    target.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "famflow" not in entry.name and entry.suffix != ".pth":
            (target / entry.name).symlink_to(entry)
    return target


def console_scripts(bin_dir: Path, python: Path) -> None:
    """Flower's and famflow's commands, run by the new venv's interpreter."""
    for name in ("flwr", "famflow"):
        entry_points = ConfigParser()
        entry_points.read_string(distribution(name).read_text("entry_points.txt") or "")
        for command, target in entry_points["console_scripts"].items():
            module, function = target.split(":")
            script = bin_dir / command
            script.write_text(
                f"#!{python}\nimport sys\nfrom {module} import {function}\n"
                f"sys.exit({function}())\n"
            )
            script.chmod(0o755)


def outside_env() -> dict[str, str]:
    """This process's environment without what points into it: famflow's settings, the active
    venv, pip's settings and PYTHON*. Flower's Ray simulation (earlier tests) sets PYTHONPATH to
    its sys.path, this venv's site-packages included, where pip finds famflow "already
    installed" and skips the wheel."""
    prefixes = ("FAMFLOW_", "VIRTUAL_ENV", "PYTHON", "PIP_")
    return {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}


def isolated_pip(python: Path, *args: str) -> str:
    """Run the new venv's own pip, blind to this machine's pip config and this environment."""
    env = outside_env()
    command = [str(python), "-m", "pip", "--isolated", "--disable-pip-version-check", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps"]
    subprocess.run(
        [*build, "--no-build-isolation", "-q", "-w", str(tmp / "dist")], check=True, timeout=300
    )
    (wheel,) = (tmp / "dist").glob("famflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "famflow/__init__.py" in names and "famflow/server/server_app.py" in names, names
    venv = tmp / "venv"
    env = outside_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env, check=True, timeout=300)
    python = venv / "bin" / "python"
    pip_said = isolated_pip(python, "install", "--no-index", "--no-deps", str(wheel))
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    assert (site / "famflow" / "__init__.py").is_file(), pip_said
    (site / "dependencies.pth").write_text(f"{linked_dependencies(tmp / 'deps')}\n")
    console_scripts(venv / "bin", python)
    work = tmp / "work"
    work.mkdir()
    env |= {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp / "flwr"),
        "FAMFLOW_CACHE": str(tmp / "cache"),
    }
    return Installed(python, venv / "bin", work, env)


def test_famflow_imports_from_the_wheel_under_one_root(installed):
    probe = (
        "import json, famflow, famflow.server.server_app, famflow.clients.client_app\n"
        "from importlib.metadata import packages_distributions\n"
        "names = sorted(n for n, d in packages_distributions().items() if 'famflow' in d)\n"
        "print(json.dumps({'file': famflow.__file__, 'names': names}))\n"
    )
    done = installed.run(str(installed.python), "-c", probe)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["file"].startswith(str(installed.python.parent.parent))
    assert found["names"] == ["famflow"]
    assert not GENERIC_NAMES & set(found["names"])


def test_info_and_comm_read_the_presets_shipped_in_the_wheel(installed):
    info = installed.run(str(installed.bin / "famflow"), "info", "tiny")
    assert info.returncode == 0, info.stderr
    assert "tiny: llama, 4 layers" in info.stdout
    comm = installed.run(
        str(installed.bin / "famflow"), "comm", "ruyi-7b", "--rule", "ffa", "--codec", "int8"
    )
    assert comm.returncode == 0, comm.stderr
    assert "E3B" in comm.stdout and "E7B" in comm.stdout  # the preset's own tiers


def test_a_deployed_round_runs_the_server_and_client_apps_from_the_wheel(installed):
    root = installed.work / "deployment"
    corpus = installed.work / "hamlet.txt"
    corpus.write_text(TEXT)
    run_config = {
        "model": "tiny",
        "num-server-rounds": 1,
        "tier-mix": "device:1,cloud:1",
        "local-steps": 2,
        "batch-size": 2,
        "seq-len": 16,
        "dataset": str(corpus),
        "partitioner": "iid",
        "eval-blocks": 2,
        "calibration-blocks": 2,
        "device": "cpu",
        "min-nodes": 2,
        "round-timeout": 300.0,
        "out-dir": str(installed.work / "run"),
    }
    driver = installed.work / "driver.py"
    driver.write_text(DRIVER)
    done = installed.run(
        str(installed.python),
        str(driver),
        str(root),
        json.dumps(run_config),
        str(RUN_TIMEOUT),
        timeout=RUN_TIMEOUT + 120,
    )
    log = (root / "run.log").read_text(errors="replace") if (root / "run.log").exists() else ""
    assert done.returncode == 0, done.stderr + log
    rows = [json.loads(line) for line in (installed.work / "run" / "metrics.jsonl").open()]
    assert [row["round"] for row in rows if row["round"] >= 1] == [1], log
    assert sorted(p.name for p in (installed.work / "run" / "export").iterdir()) == [
        "exit-2",
        "exit-4",
    ]
