"""The command line's composition root: environment defaults set once, before any flow or stage
runs. Kept out of `tasks/` so that no adapter depends on the local stack through them."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from tasks.adapters.ops.prefect_admin import LEASE_STORAGE
from tasks.adapters.ops.settings import paths


def quiet_offline_defaults(use_stack: bool = True) -> None:
    """Environment defaults for an offline, telemetry-free run (set only where the user has not).
    With a local stack running (`make up`), commands talk to its Prefect and MLflow servers
    rather than starting a temporary Prefect server on the same database."""
    for key, value in {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per file floods the Prefect logs
        # a tracking server that goes away fails a call in about a minute, not MLflow's default of
        # seven retries with doubling backoff and two-minute timeouts
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(paths().prefect_home),
        # concurrency leases on disk under PREFECT_HOME, not in the server's memory: a slot held by a
        # killed run can then be found and reclaimed by the next one, whichever server it talks to
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
    }.items():
        os.environ.setdefault(key, value)
    if use_stack:
        from tasks.adapters.ops.stack_processes import live_endpoints

        for key, value in live_endpoints(paths()).items():
            os.environ.setdefault(key, value)
    # Prefect's temporary server keeps its SQLite database here; it must exist before start-up.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


class _WithoutTraceback(logging.Formatter):
    """Formats a record as `inner` would, leaving out its traceback (the record itself is untouched,
    so the Prefect API handler still stores the traceback for the UI)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def brief_console_errors() -> None:
    """Prefect prints every failed task's and flow's traceback to the console, so a bad flag used
    to end in a hundred lines before our one-line error. The console now gets each log line
    without its traceback; the Prefect UI keeps the full logs, and RSLM_DEBUG=1 prints them here."""
    if os.environ.get("RSLM_DEBUG"):
        return
    import prefect  # noqa: F401 - importing prefect configures its logging handlers
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    for handler in {h for logger in loggers for h in logger.handlers}:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))


def stop_leftover_servers() -> None:
    """Before a run starts its temporary Prefect server: stop those that killed runs left behind."""
    from tasks.adapters.ops.stack_processes import stop_orphaned_temporary_servers

    for pid in stop_orphaned_temporary_servers(Path(os.environ["PREFECT_HOME"]).expanduser()):
        logging.getLogger("rslm").warning(f"stopped the temporary Prefect server (pid {pid}) of a run that was killed")


def temporary_prefect_server() -> None:
    """Without a local stack, the run's own Prefect server, started here in a session of its own
    (see `start_temporary_prefect_server`) and stopped when the command exits, however it exits
    short of kill -9."""
    import atexit

    from tasks.adapters.ops.stack_processes import start_temporary_prefect_server, stop_process

    if os.environ.get("PREFECT_API_URL"):
        return  # the stack's server (make up), or one the user named
    url, pid = start_temporary_prefect_server(Path(os.environ["PREFECT_HOME"]).expanduser())
    os.environ["PREFECT_API_URL"] = url
    atexit.register(stop_process, pid)
