"""`last-run.json`: written at a run's start (status `running`, with the process that runs it) and
at its end, atomically, so a reader never sees half a record. A plain function, not a Prefect task,
so it still runs while Prefect shuts down after Ctrl-C."""
from __future__ import annotations

import json
from pathlib import Path

from tasks.adapters.ops.atomic_files import write_text_atomically
from tasks.domain.report import RunRecord


def write_run_record(record: RunRecord, path: Path) -> None:
    write_text_atomically(path, json.dumps(record.model_dump(mode="json"), indent=2))
