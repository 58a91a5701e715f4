"""`last-run.json`: written at a run's start (status `running`, with the process that runs it) and
at its end, atomically, so a reader never sees half a record. A plain function, not a Prefect task,
so it still runs while Prefect shuts down after Ctrl-C."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tasks.domain.report import RunRecord


def write_run_record(record: RunRecord, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".last-run-")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record.model_dump(mode="json"), handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
