"""famflow ServerApp: a federation of branches of one familial model."""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from familial.federation_config import FederationConfig
from server.federation import run_federation
from server.report import print_report


def log_progress() -> None:
    """famflow's per-round lines on stderr (the ServerApp process has no logging set up)."""
    logger = logging.getLogger("famflow")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("famflow: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def make_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` replace run-config keys (tests run without a run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        log_progress()
        config = FederationConfig.from_run_config({**context.run_config, **(overrides or {})})
        print_report(run_federation(grid, config), config)

    return app


app = make_server_app()
