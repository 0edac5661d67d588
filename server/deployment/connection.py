"""A named SuperLink connection in ``$FLWR_HOME/config.toml``, for ``flwr run . NAME``."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import tomli_w

from famflow.familial.errors import FamflowError


def flwr_config_file() -> Path:
    home = os.environ.get("FLWR_HOME")
    if not home:
        raise FamflowError("FLWR_HOME is not set: source scripts/env.sh first.")
    return Path(home) / "config.toml"


def write_connection(
    name: str, address: str, root_certificates: Path | None, config_file: Path | None = None
) -> Path:
    """Add or replace ``[superlink.NAME]`` in ``config_file`` (default Flower's): TLS checked
    against ``root_certificates``, or insecure when it is None. Other connections and the
    default stay as they were."""
    path = config_file or flwr_config_file()
    config = tomllib.loads(path.read_text()) if path.is_file() else {}
    superlink = config.setdefault("superlink", {})
    superlink.setdefault("default", "local")
    superlink.setdefault("local", {"address": ":local:"})
    entry: dict[str, object] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        if not root_certificates.is_file():
            raise FamflowError(
                f"No CA certificate at {root_certificates}: run scripts/deploy/make-certs.sh first."
            )
        entry["root-certificates"] = str(root_certificates.resolve())
    superlink[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path
