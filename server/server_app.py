"""famflow ServerApp: a federation of branches of one familial model."""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Context
from flwr.app.exception import AppExitException
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.exit import ExitCode

from famflow.familial.errors import FamflowError
from famflow.federation.config import FederationConfig
from famflow.server.federation import run_federation
from famflow.server.report import print_report

logger = logging.getLogger("famflow")


class RunStopped(AppExitException):
    """A mistake the user can fix stopped the run; its one sentence is already logged."""

    exit_code = ExitCode.SERVERAPP_EXCEPTION


class DropRunStoppedTraceback(logging.Filter):
    """Flower logs a ServerApp's exception with its traceback, and exits non-zero; for a
    ``RunStopped`` the logged sentence is the whole story, so the traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RunStopped):
            record.exc_info, record.exc_text = None, None
        return True


def log_progress() -> None:
    """famflow's per-round lines on stderr (the ServerApp process has no logging set up)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("famflow: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    flower = logging.getLogger("flwr")
    if not any(isinstance(f, DropRunStoppedTraceback) for f in flower.filters):
        flower.addFilter(DropRunStoppedTraceback())


def make_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` replace run-config keys (tests run without a run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        log_progress()
        try:
            config = FederationConfig.from_run_config({**context.run_config, **(overrides or {})})
            rows = run_federation(grid, config)
        except FamflowError as error:
            logger.error("error: %s", error)
            raise RunStopped(str(error)) from None
        print_report(rows, config)

    return app


app = make_server_app()
