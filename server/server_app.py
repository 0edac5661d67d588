"""famflow ServerApp: a federation of branches of one familial model."""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from familial.federation_config import FederationConfig
from server.federation import run_federation
from server.report import print_report


def make_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` replace run-config keys (tests run without a run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = FederationConfig.from_run_config({**context.run_config, **(overrides or {})})
        print_report(run_federation(grid, config), config)

    return app


app = make_server_app()
