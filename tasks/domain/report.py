"""What a pipeline run reports: the `last-run.json` record and the markdown summary."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.domain.numbers import fmt as _fmt


class RunRecord(BaseModel):
    """One pipeline run, as written to `$RSLM_HOME/last-run.json`. Fields stay None for stages
    that did not run; `status` and `error` say why."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    status: str = "running"
    error: str | None = None
    started_at: str
    finished_at: str | None = None
    domain: str | None = None
    profile: str | None = None
    framework_path: str | None = None
    dataset_path: str | None = None
    eval_dataset_path: str | None = None
    dataset_sha256: str | None = None
    dataset_uri: str | None = None  # s3://... when storage.backend is s3
    blueprint_hash: str | None = None
    validation_success: bool | None = None
    validation_failures: list[dict[str, Any]] = []
    data_docs: str | None = None
    base_model_dir: str | None = None
    base_model_provenance: dict[str, Any] = {}  # packaged bases: package, version, GGUF sha256
    adapter_dir: str | None = None
    training: dict[str, Any] = {}
    # A preference-refined run: the SFT adapter and run it refined (adapter_dir/mlflow_run_id are the refined ones)
    sft_adapter_dir: str | None = None
    sft_run_id: str | None = None
    preferences_path: str | None = None  # the validated pairs DPO trained on
    reward_model: dict[str, Any] = {}  # the process reward model: version, status, verdict, held-out figures
    export: dict[str, Any] = {}  # export.on_promotion: where the new champion's merged model, GGUF files and Modelfile lie
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = None
    mlflow_run_id: str | None = None
    registered_model: str | None = None
    model_version: str | None = None
    model_uri: str | None = None
    aliases: list[str] = []
    training_key: str | None = None
    unchanged_version: dict[str, Any] | None = None  # set when nothing changed and nothing was trained
    resumed_evaluation: bool = False  # the version was trained by an earlier run stopped while evaluating it
    evaluation: dict[str, Any] = {}
    promotion: dict[str, Any] = {}
    prefect_flow_run_id: str | None = None
    pid: int | None = None  # the process running it: a record left `running` by a dead pid was killed
    reconciled_runs: list[str] = []  # MLflow runs of killed earlier attempts, marked KILLED by this run

    def update(self, fields: dict[str, Any]) -> None:
        """Fill in what a stage produced, in place (so a later failure keeps what came before)."""
        for key, value in fields.items():
            setattr(self, key, value)


def summary_markdown(record: RunRecord) -> str:
    """The run summary users read in Prefect's Artifacts tab."""
    t = record.training
    e = record.evaluation.get("metrics", {})
    base = record.base_model_provenance
    lines = [
        f"# nightly-retrain: {record.status}",
        "",
        "| | |",
        "|---|---|",
        f"| domain | {_fmt(record.domain)} |",
        f"| profile | {_fmt(record.profile)} |",
        f"| base model | {_fmt(base.get('package'))} {_fmt(base.get('package_version'))} "
        f"(GGUF sha256 `{_fmt(base.get('gguf_sha256'))[:12]}`) |",
        f"| dataset | `{_fmt(record.dataset_path)}` |",
        f"| dataset sha256 | `{_fmt(record.dataset_sha256)}` |",
        f"| dataset in S3 | `{_fmt(record.dataset_uri)}` |",
        f"| validation | {'passed' if record.validation_success else 'FAILED' if record.validation_success is False else '—'} |",
        f"| train loss (first → last) | {_fmt(t.get('train_loss_first'))} → {_fmt(t.get('train_loss_last'))} |",
        f"| tokens/s | {_fmt(t.get('tokens_per_second'))} on {_fmt(t.get('device'))} ({_fmt(t.get('precision'))}) |",
        f"| MLflow run | `{_fmt(record.mlflow_run_id)}` in `{_fmt(record.mlflow_experiment)}` |",
        f"| registered | {_fmt(record.registered_model)} v{_fmt(record.model_version)} "
        f"{' '.join('@' + a for a in record.aliases)} |",
        f"| held-out loss (per token) / style / drift KL | {_fmt(e.get('loss'))} / {_fmt(e.get('style_adherence'))} / "
        f"{_fmt(e.get('drift_kl'))} |",
        f"| promotion | {_fmt(record.promotion.get('verdict'))} "
        f"(against champion v{_fmt(record.promotion.get('champion_version'))}) |",
    ]
    refined = t.get("refine")
    if refined:
        accuracy = " / ".join(_fmt(refined.get(f"preference/{m}/accuracy")) for m in ("base", "sft", "dpo"))
        lines += [f"| refined (DPO) | {_fmt(refined.get('steps'))} steps on {_fmt(refined.get('pairs'))} pairs in "
                  f"{_fmt(refined.get('duration_s'))} s; held-out pairs ranked right, base / SFT / SFT+DPO: {accuracy} |",
                  f"| SFT parent run | `{_fmt(record.sft_run_id)}` |"]
    reasons = [f"- {'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}" for c in record.promotion.get("checks", [])]
    if reasons:
        lines += ["", "## Promotion checks", "", *reasons]
    if record.unchanged_version:
        u = record.unchanged_version
        lines += ["", f"**Nothing changed:** this dataset (sha256 `{_fmt(record.dataset_sha256)[:12]}`) and training "
                      f"config (key `{_fmt(record.training_key)[:12]}`) were already trained as {u['name']} v{u['version']} "
                      f"(run `{u['run_id']}`). Nothing was trained, registered or promoted; run with force=true to retrain."]
    if record.error:
        lines += ["", f"**Error:** {record.error}"]
    if record.validation_failures:
        lines += ["", "## Failed expectations", "", "| expectation | rule | rows |", "|---|---|---|"]
        for failure in record.validation_failures:
            rows = ", ".join(failure.get("rows", [])[:5]) or failure.get("detail", "")
            lines.append(f"| {failure['expectation']} | {failure['rule']} | {rows} |")
    return "\n".join(lines) + "\n"
