"""A deployment on 127.0.0.1 with real Flower processes, for tests and benchmarks: a SuperLink
with TLS and SuperNode authentication, SuperNodes, ``flwr run``. Every process started is
stopped with its children (a SuperLink and a SuperNode each start a SuperExec, which starts
the ServerApp and ClientApp processes)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from famflow.server.deployment.app import write_app
from famflow.server.deployment.certificates import NodeKey, make_node_key, make_server_certificates
from famflow.server.deployment.connection import write_connection

CONNECTION = "famflow-loopback"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def kill_tree(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal a process and every descendant (collected first: killed parents orphan them)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
    psutil.wait_procs(tree, timeout=10)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


@dataclass
class Deployment:
    """One SuperLink (TLS + SuperNode auth) under ``root``, and what was started against it."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    superlink: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.root / "flwr"),
            **self.extra_env,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.port = free_port()
        self.certificates = make_server_certificates(self.root / "certs", ["127.0.0.1"])
        # The app as an installed famflow runs it (no checkout needed).
        self.app_dir = write_app(self.root / "app").parent

    def _start(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{log_name}.log").open("ab")
        process = subprocess.Popen(
            command, env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def start_superlink(self) -> None:
        certs = self.certificates
        self.superlink = self._start(
            [
                str(BIN / "flower-superlink"),
                *("--ssl-ca-certfile", str(certs.ca_cert)),
                *("--ssl-certfile", str(certs.server_cert)),
                *("--ssl-keyfile", str(certs.server_key)),
                "--enable-supernode-auth",
                *("--host", "127.0.0.1", "--port", str(self.port)),
                "--disable-runtime-dependency-installation",
            ],
            "superlink",
        )
        config_file = Path(self.env["FLWR_HOME"]) / "config.toml"
        write_connection(CONNECTION, f"127.0.0.1:{self.port}", certs.ca_cert, config_file)
        wait_for(lambda: "Uvicorn running" in self.log("superlink"), 60, "the SuperLink start")

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def node_key(self, name: str) -> NodeKey:
        return make_node_key(self.root / "keys", name)

    def register(self, key: NodeKey) -> int:
        """``flwr supernode register``; returns the node ID the SuperLink gave the key."""
        done = self.flwr(
            "supernode", "register", str(key.public_key), CONNECTION, "--format", "json"
        )
        output = done.stdout
        reply = json.loads(output[output.index("{") : output.rindex("}") + 1])
        if not reply.get("success"):
            raise RuntimeError(f"register failed: {output} {done.stderr}")
        return int(reply["node-id"])

    def start_supernode(
        self, name: str, key: NodeKey, node_config: dict[str, Any], *extra: str
    ) -> subprocess.Popen[bytes]:
        return self._start(
            [
                str(BIN / "flower-supernode"),
                *("--root-certificates", str(self.certificates.ca_cert)),
                *("--superlink", f"127.0.0.1:{self.port}"),
                *("--port", str(free_port())),
                *("--auth-supernode-private-key", str(key.private_key)),
                "--node-config",
                " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items()),
                *extra,
            ],
            f"supernode-{name}",
        )

    def run_command(self, run_config: dict[str, Any]) -> list[str]:
        config = " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())
        app = str(self.app_dir)
        return [str(BIN / "flwr"), "run", app, CONNECTION, "--stream", "--run-config", config]

    def start_run(self, run_config: dict[str, Any], log_name: str) -> subprocess.Popen[bytes]:
        """``flwr run APP CONNECTION --stream``, in the background."""
        return self._start(self.run_command(run_config), log_name)

    def serverapps(self) -> list[psutil.Process]:
        """The ServerApp processes the SuperLink's SuperExec started (still running)."""
        assert self.superlink is not None
        children = psutil.Process(self.superlink.pid).children(recursive=True)
        return [
            p
            for p in children
            if p.status() != psutil.STATUS_ZOMBIE and "flwr-serverapp" in " ".join(p.cmdline())
        ]

    def stop(self, process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
        kill_tree(process.pid, sig)
        process.wait(timeout=30)

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
