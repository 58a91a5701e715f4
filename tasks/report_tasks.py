"""Prefect tasks that report: markdown artifacts and `last-run.json`."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.adapters.gx_runner import ValidationReport
from tasks.domain.report import RunRecord, summary_markdown


@task(name="publish-validation", cache_policy=NO_CACHE)
def publish_validation_task(report: ValidationReport) -> None:
    lines = [f"# Dataset validation: {'passed' if report.success else 'FAILED'}", "", report.summary(), ""]
    if report.data_docs_index:
        lines.append(f"Data Docs: `{report.data_docs_index}`")
    create_markdown_artifact(key="dataset-validation", markdown="\n".join(lines),
                             description="Great Expectations result for the dataset")


@task(name="write-run-record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def write_run_record_task(record: RunRecord, path: str) -> None:
    """Write `last-run.json` atomically and publish the run summary as a Prefect artifact."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".last-run-")
    with os.fdopen(fd, "w") as handle:
        json.dump(record.model_dump(mode="json"), handle, indent=2)
    os.replace(tmp, target)
    create_markdown_artifact(key="nightly-retrain-summary", markdown=summary_markdown(record),
                             description="What the nightly retrain did")
