"""The Flower app directory that ``flwr run`` needs, for an installed famflow.

famflow's ServerApp and ClientApp are the installed package's code
(``famflow.server.server_app:app``, ``famflow.clients.client_app:app``). The app directory holds
only a ``pyproject.toml`` naming them with the run config's defaults, and the FAB that
``flwr run`` builds from it carries that file alone (``fab-include``): every SuperNode runs the
famflow installed on its box. The repository's own ``pyproject.toml`` is such an app too
(``tests/test_app.py`` keeps the two the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from famflow import __version__
from famflow.federation.config import FederationConfig

APP_FILE = "pyproject.toml"
COMPONENTS = {
    "serverapp": "famflow.server.server_app:app",
    "clientapp": "famflow.clients.client_app:app",
}


def app_table(run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``[tool.flwr.app]``: publisher, the FAB's one file, the components and the run config
    (``FederationConfig``'s defaults, updated with ``run_config``)."""
    config = FederationConfig.from_run_config(run_config or {}).to_run_config()
    return {
        "publisher": "famflow",
        "fab-include": [APP_FILE],
        "components": dict(COMPONENTS),
        "config": config,
    }


def write_app(directory: Path, run_config: dict[str, Any] | None = None) -> Path:
    """Write ``directory/pyproject.toml``; then ``flwr run DIRECTORY [CONNECTION]``."""
    directory.mkdir(parents=True, exist_ok=True)
    pyproject = {
        "project": {
            "name": "famflow",
            "version": __version__.split("+")[0],
            "description": "famflow's Flower app: the code is the installed famflow package.",
            "license": "Apache-2.0",
        },
        "tool": {"flwr": {"app": app_table(run_config)}},
    }
    path = directory / APP_FILE
    path.write_text(tomli_w.dumps(pyproject))
    return path
