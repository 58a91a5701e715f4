"""The command line's composition root: environment defaults set once, before any flow or stage
runs. Kept out of `tasks/` so that no adapter depends on the local stack through them."""
from __future__ import annotations

import os
from pathlib import Path

from tasks.adapters.settings import paths


def quiet_offline_defaults(use_stack: bool = True) -> None:
    """Environment defaults for an offline, telemetry-free run (set only where the user has not).
    With a local stack running (`make up`), commands talk to its Prefect and MLflow servers
    rather than starting a temporary Prefect server on the same database."""
    for key, value in {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per file floods the Prefect logs
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(paths().prefect_home),
    }.items():
        os.environ.setdefault(key, value)
    if use_stack:
        from tasks.adapters.stack import live_endpoints

        for key, value in live_endpoints(paths()).items():
            os.environ.setdefault(key, value)
    # Prefect's temporary server keeps its SQLite database here; it must exist before start-up.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
