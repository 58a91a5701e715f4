"""Prefect tasks that report: markdown artifacts and `last-run.json`."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.adapters.data.gx_runner import ValidationReport
from tasks.adapters.ops.run_record import write_run_record
from tasks.domain.report import RunRecord, summary_markdown


@task(name="publish-validation", cache_policy=NO_CACHE)
def publish_validation_task(report: ValidationReport, subject: str = "dataset") -> None:
    """The Great Expectations verdict as a Prefect artifact (`<subject>-validation`)."""
    lines = [f"# {subject.capitalize()} validation: {'passed' if report.success else 'FAILED'}", "", report.summary(), ""]
    if report.data_docs_index:
        lines.append(f"Data Docs: `{report.data_docs_index}`")
    create_markdown_artifact(key=f"{subject.replace(' ', '-')}-validation", markdown="\n".join(lines),
                             description=f"Great Expectations result for the {subject}")


@task(name="write-run-record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def write_run_record_task(record: RunRecord, path: str) -> None:
    """Write `last-run.json` and publish the run summary as a Prefect artifact."""
    write_run_record(record, Path(path))
    create_markdown_artifact(key="nightly-retrain-summary", markdown=summary_markdown(record),
                             description="What the nightly retrain did")


def failure_markdown(flow_name: str, flow_run, message: str) -> str:
    params = {k: v for k, v in (flow_run.parameters or {}).items()}
    return "\n".join([
        f"# {flow_name} FAILED", "",
        f"- flow run: `{flow_run.name}` (`{flow_run.id}`)",
        f"- error: {message}",
        f"- parameters: `{json.dumps(params, default=str)[:1000]}`", "",
        "Nothing from this run was promoted: stages after the failure did not run, and a version",
        "whose evaluation failed is tagged `evaluation.status=failed` and never promoted.",
    ]) + "\n"


def record_failure(flow, flow_run, state) -> None:
    """on_failure hook: a markdown artifact in Prefect and, if configured, a webhook POST."""
    from tasks.adapters.ops.config_files import PIPELINE_CONFIG, load_pipeline_config
    from tasks.adapters.ops.notify import post_json, webhook_url
    from tasks.domain.config import NotificationsConfig

    message = (state.message or "failed").splitlines()[0][:500]
    create_markdown_artifact(key=f"{flow.name}-failure", markdown=failure_markdown(flow.name, flow_run, message),
                             description=f"Why {flow_run.name} failed")
    try:
        params = flow_run.parameters or {}
        notifications = load_pipeline_config(params.get("config_path") or PIPELINE_CONFIG,
                                             params.get("overrides")).notifications
    except Exception:  # noqa: BLE001 - a broken config may be the failure itself: fall back to env only
        notifications = NotificationsConfig()
    url = webhook_url(notifications)
    if url:
        post_json(url, {"text": f"{flow.name} failed: {message}", "flow": flow.name, "flow_run": flow_run.name,
                        "flow_run_id": str(flow_run.id), "status": "failed", "error": message},
                  notifications.timeout_s)
