"""nightly_retrain end to end on the tiny profile under Prefect's test harness: a registered
adapter that independent clients can resolve and load; a failed validation trains and registers
nothing."""
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tasks.adapters.data.dataset_store import file_sha256

from conftest import NO_FLOORS, REPO, tiny_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]
QUICK = tiny_run(12)


def test_nightly_retrain_registers_a_loadable_adapter_and_the_gate_rejects_number_salad(prefect_harness, rslm_home):
    from mlflow.tracking import MlflowClient
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import mlflow
    from flows.nightly_retrain import nightly_retrain

    first = nightly_retrain(overrides=QUICK)
    record = json.loads((rslm_home / "last-run.json").read_text())
    assert record == first and record["status"] == "succeeded" and record["validation_success"] is True
    assert file_sha256(record["dataset_path"]) == record["dataset_sha256"]
    card = (Path(record["dataset_path"]).parent / "README.md").read_text()  # the dataset card, HF style
    assert card.startswith("---\nlicense: cc-by-4.0\n") and "## Rows per final principle" in card
    assert "suite `reasoning_dataset`: **passed**" in card and "Checked against 20 held-out questions" in card
    assert Path(record["data_docs"]).exists() and Path(record["base_model_dir"]).exists()
    assert record["mlflow_tracking_uri"] == f"sqlite:///{rslm_home / 'mlflow.db'}"
    assert (record["registered_model"], record["model_version"]) == ("reasoning-slm-devops", "1")
    # The random-init tiny model answers in number salad: registered, measured, and not promoted.
    assert record["aliases"] == ["challenger"] and record["promotion"]["verdict"] == "rejected"
    metrics = record["evaluation"]["metrics"]
    assert metrics["loss"] > 0 and metrics["structured"] < 0.6 and metrics["heldout/structured"] < 0.6
    assert metrics["heldout/questions"] == 20 and metrics["heldout/base_structured"] == 0.0
    failing = {c["name"] for c in record["promotion"]["checks"] if not c["passed"]}
    assert {"numbered-reason structure floor", "held-out structure floor", "beats its base on held-out questions"} <= failing
    assert "base vs tuned" in _artifact("base-vs-tuned")
    from click.testing import CliRunner

    from flows.cli import cli

    no_champion = CliRunner().invoke(cli, ["chat", "Why pin images by digest?"])
    assert no_champion.exit_code != 0 and "has no @champion yet" in str(no_champion.exception)
    assert record["training"]["train_loss_last"] < record["training"]["train_loss_first"]
    # held-out loss is measured once, by evaluate-model; the trainer makes no second pass over the split
    assert record["training"]["eval_loss"] is None

    # The adapter loads with plain PEFT, outside the project's code.
    base = AutoModelForCausalLM.from_pretrained(record["base_model_dir"], use_safetensors=True)
    assert isinstance(PeftModel.from_pretrained(base, record["adapter_dir"]), PeftModel)

    # An independent MLflow client sees the run, its params, metrics, dataset and the alias.
    client = MlflowClient(tracking_uri=record["mlflow_tracking_uri"], registry_uri=record["mlflow_tracking_uri"])
    run = client.get_run(record["mlflow_run_id"])
    assert run.data.params["training.lora.r"] == "16" and run.data.params["training.lora.alpha"] == "32"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 3
    assert run.data.metrics["validation/heldout_questions"] == 20  # decontamination figures, on the run
    assert run.data.metrics["validation/rows_over_heldout_threshold"] == 0
    assert run.inputs.dataset_inputs and run.data.tags["dataset.training.sha256"] == record["dataset_sha256"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"validation", "plots", "training_summary.json", "dataset"} <= artifacts
    assert run.data.params["blueprint.generator"] == "offline" and run.data.tags["blueprint.sources"] == "framework"
    version = client.get_model_version_by_alias("reasoning-slm-devops", "challenger")
    assert str(version.version) == "1" and version.run_id == record["mlflow_run_id"]

    mlflow.set_tracking_uri(record["mlflow_tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/reasoning-slm-devops@challenger")
    import pandas as pd

    replies = model.predict(pd.DataFrame({"prompt": ["Why pin the nginx image by digest?"]}), params={"max_new_tokens": 8})
    assert len(replies) == 1 and isinstance(replies[0], str)
    # The round trip a user makes: a fresh process, offline, loads the version through MLflow alone
    # and answers as `rslm chat` does.
    question = "Why pin the nginx image by digest?"
    loader = ("import json, sys, mlflow, pandas as pd; "
              "m = mlflow.pyfunc.load_model('models:/reasoning-slm-devops/1'); "
              f"print(json.dumps(list(m.predict(pd.DataFrame({{'prompt': [{question!r}]}}), "
              "params={'max_new_tokens': 12}))))")
    fresh = subprocess.run([sys.executable, "-c", loader], capture_output=True, text=True, timeout=300, cwd=rslm_home,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                "MLFLOW_TRACKING_URI": record["mlflow_tracking_uri"]})
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    chatted = CliRunner().invoke(cli, ["chat", question, "--model", "models:/reasoning-slm-devops/1",
                                       "--max-new-tokens", "12"])
    assert chatted.exit_code == 0, chatted.output
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == [chatted.stdout.strip()]

    # The registry holds safetensors, JSON and code: no pickle, no training checkpoint.
    files = [p for p in Path(mlflow.artifacts.download_artifacts("models:/reasoning-slm-devops/1")).rglob("*") if p.is_file()]
    assert any(p.name == "adapter_model.safetensors" for p in files)
    assert not [p for p in files if p.suffix in {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt"} or "checkpoint" in str(p)]
    assert not list(Path(record["adapter_dir"]).parent.glob(".*.partial")), "the staging directory was published"



def _steps(n: int) -> dict:
    # The tiny model's style adherence is noise near zero (an 8-step champion at 0.036, its 40-step
    # challenger at 0.000, after the epoch-order fix changed the row order): the runs below test the
    # loss check, the champion history and rollback, so style may drop by that noise. The style
    # check's own mechanics are tested in test_promotion.
    return tiny_run(n, **NO_FLOORS, **{"promotion.max_style_adherence_drop": 0.1})


def _artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    return found[0].data if found else ""


def test_gate_promotes_better_rejects_worse_and_rollback_restores(prefect_harness, rslm_home):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from flows.cli import cli
    from flows.nightly_retrain import nightly_retrain
    from tasks.domain.errors import ConfigError

    name = "reasoning-slm-devops"
    first = nightly_retrain(overrides=_steps(8))
    assert first["promotion"]["verdict"] == "promoted" and first["promotion"]["champion_version"] is None
    assert first["aliases"] == ["challenger", "champion"]

    # Nothing changed: nothing trained, registered or promoted, and the summary says so.
    again = nightly_retrain(overrides=_steps(8))
    assert again["status"] == "unchanged" and again["unchanged_version"]["version"] == "1"
    assert again["adapter_dir"] is None and again["training_key"] == first["training_key"]
    assert "Nothing changed" in _artifact("nightly-retrain-summary")

    better = nightly_retrain(overrides=_steps(40))
    assert better["model_version"] == "2" and better["promotion"]["verdict"] == "promoted", \
        [c for c in better["promotion"]["checks"] if not c["passed"]]
    metrics, champion = better["evaluation"]["metrics"], better["evaluation"]["champion_metrics"]
    assert better["evaluation"]["champion_version"] == "1" and metrics["loss"] < champion["loss"]
    client = MlflowClient(tracking_uri=better["mlflow_tracking_uri"], registry_uri=better["mlflow_tracking_uri"])
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, "previous-champion").version) == "1"

    # Everything about the evaluation is on the challenger's run.
    run = client.get_run(better["mlflow_run_id"])
    assert run.data.metrics["eval/loss"] == pytest.approx(metrics["loss"])
    assert run.data.metrics["eval_champion/loss"] == pytest.approx(champion["loss"])
    assert {"eval/drift_kl", "eval/consistency", "eval/style_adherence", "eval/perplexity"} <= set(run.data.metrics)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/loss_curve.png", "plots/champion_vs_challenger.png"} <= plots
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/answers.json", "evaluation/comparison.md", "evaluation/drift_probes.json"} <= evaluation

    # A deliberately worse challenger (barely trained) on the same eval set: rejected, champion kept.
    worse = nightly_retrain(overrides=_steps(1))
    assert worse["status"] == "succeeded" and worse["promotion"]["verdict"] == "rejected"
    assert worse["evaluation"]["eval_path"] == better["evaluation"]["eval_path"]
    assert any(c["name"] == "eval loss improves" and not c["passed"] for c in worse["promotion"]["checks"])
    assert worse["aliases"] == ["challenger"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    version = client.get_model_version(name, "3")
    assert version.tags["promotion.decision"] == "rejected" and "FAIL eval loss improves" in version.description
    assert "# v3: rejected (against champion v2)" in _artifact("promotion-decision")
    assert "data:image/png;base64," in _artifact("model-evaluation")

    # Every config file is read when the run starts: a missing probe file trains nothing.
    with pytest.raises(ConfigError, match="missing-probes.yaml"):
        nightly_retrain(overrides={**_steps(40), "evaluation.probes": "missing-probes.yaml"}, force=True)
    assert len(client.search_model_versions(f"name = '{name}'")) == 3

    # A version whose evaluation failed is never promoted, not even by hand, until it is re-evaluated.
    empty = rslm_home / "empty.jsonl"
    empty.write_text("")
    runner = CliRunner()
    failed = runner.invoke(cli, ["evaluate", "--model", f"models:/{name}/3", "--dataset", str(empty)])
    assert failed.exit_code != 0 and "the file is empty" in str(failed.exception)
    assert client.get_model_version(name, "3").tags["evaluation.status"] == "failed"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    refused = runner.invoke(cli, ["promote", name, "--version", "3"])
    assert refused.exit_code != 0 and "cannot be promoted" in str(refused.exception)
    assert failed_rows(runner, name) == {"3"}
    reevaluated = runner.invoke(cli, ["evaluate", "--model", f"models:/{name}/3"])
    assert reevaluated.exit_code == 0, reevaluated.output
    assert client.get_model_version(name, "3").tags["evaluation.status"] == "succeeded"
    assert "evaluation.error" not in client.get_model_version(name, "3").tags, "the old failure is cleared"

    # Rollback restores the previous champion; a manual promotion is recorded as such.
    rolled = runner.invoke(cli, ["rollback", name])
    assert rolled.exit_code == 0, rolled.output
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert client.get_model_version(name, "2").tags["promotion.rolled_back"] == "true"
    manual = runner.invoke(cli, ["promote", name, "--version", "3", "--reason", "test override"])
    assert manual.exit_code == 0, manual.output
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    assert str(client.get_model_version_by_alias(name, "previous-champion").version) == "1"
    assert client.get_model_version(name, "3").tags["promotion.decision"] == "promoted-manually"
    listing = runner.invoke(cli, ["models", name, "--json"])
    rows = {r["version"]: r for r in json.loads(listing.output)}
    assert rows["3"]["aliases"] == "challenger,champion" and rows["1"]["aliases"] == "previous-champion"
    assert "4" not in rows and rows["2"]["eval_loss"] < rows["3"]["eval_loss"]
    chat = runner.invoke(cli, ["chat", "Why pin images by digest?", "--model", f"models:/{name}/1",
                               "--max-new-tokens", "4"])
    assert chat.exit_code == 0, chat.output
    champion_chat = runner.invoke(cli, ["chat", "Why pin images by digest?", "--max-new-tokens", "4"])
    assert champion_chat.exit_code == 0, champion_chat.output  # no flags: the configured domain's @champion (v3)
    explicit = runner.invoke(cli, ["chat", "Why pin images by digest?", "--model", f"models:/{name}/3", "--max-new-tokens", "4"])
    assert champion_chat.stdout == explicit.stdout, "the same answer as the champion, v3, asked by name"


def failed_rows(runner, name: str) -> set[str]:
    """The versions `rslm models` lists as having failed evaluation."""
    from flows.cli import cli

    listing = runner.invoke(cli, ["models", name, "--json"])
    return {r["version"] for r in json.loads(listing.output) if r["evaluation"] == "failed"}


def test_promotion_retried_after_a_partial_failure_keeps_its_decision(prefect_harness, rslm_home, monkeypatch):
    """promote-model retries: when logging fails after the aliases moved, the retry finishes the
    recorded decision instead of re-deciding and finding the version 'already champion'."""
    from mlflow.tracking import MlflowClient

    from flows.nightly_retrain import nightly_retrain
    from tasks.adapters.tracking.runs import TrackedRun

    log_text, failures = TrackedRun.log_text, []

    def flaky_log_text(run: TrackedRun, text: str, artifact_file: str) -> None:
        if artifact_file.startswith("promotion/") and not failures:
            failures.append(artifact_file)
            raise ConnectionError("tracking server went away after the aliases moved")
        log_text(run, text, artifact_file)

    monkeypatch.setattr(TrackedRun, "log_text", flaky_log_text)
    record = nightly_retrain(overrides=tiny_run(4, **NO_FLOORS))
    assert failures == ["promotion/decision.md"], "the failure was injected once, after the aliases moved"
    assert record["promotion"]["verdict"] == "promoted" and record["aliases"] == ["challenger", "champion"]
    assert not any(c["name"] == "not already champion" for c in record["promotion"]["checks"])
    client = MlflowClient(tracking_uri=record["mlflow_tracking_uri"], registry_uri=record["mlflow_tracking_uri"])
    version = client.get_model_version("reasoning-slm-devops", "1")
    assert version.tags["promotion.decision"] == "promoted" and version.description.startswith("PROMOTED")


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        _Hook.received.append((self.path, json.loads(self.rfile.read(length))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_failed_validation_trains_and_registers_nothing(prefect_harness, rslm_home, tmp_path, monkeypatch):
    from flows.nightly_retrain import nightly_retrain
    from tasks.domain.errors import DataValidationError

    framework = yaml.safe_load((REPO / "configs/frameworks/devops.yaml").read_text())
    framework["style"]["max_answer_words"] = 20  # the shipped answers are longer: terseness fails
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(framework))
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("RSLM_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hooks/T0KEN")
    try:
        with pytest.raises(DataValidationError, match="answers are terse"):
            nightly_retrain(overrides={**QUICK, "framework": str(strict)})
    finally:
        server.shutdown()
    # The failure is recorded in Prefect and announced on the webhook.
    ((path, payload),) = _Hook.received
    assert path == "/hooks/T0KEN" and payload["status"] == "failed" and "answers are terse" in payload["error"]
    failure = _artifact("nightly-retrain-failure")
    assert "nightly-retrain FAILED" in failure and "answers are terse" in failure and "T0KEN" not in failure
    record = json.loads((rslm_home / "last-run.json").read_text())
    assert record["status"] == "failed" and record["validation_success"] is False
    assert record["adapter_dir"] is None and record["model_version"] is None
    assert record["validation_failures"][0]["row_ids"]
    assert not (rslm_home / "adapters").exists() and not (rslm_home / "mlflow.db").exists()
    assert Path(record["dataset_path"]).exists(), "the rejected dataset is kept for inspection"
    card = (Path(record["dataset_path"]).parent / "README.md").read_text()
    assert "**FAILED**" in card and "answers are terse" in card, "its card says why"


def test_training_slot_makes_overlapping_runs_take_turns(prefect_harness):
    """Two runs reaching training at once: the strict `device:<machine id>` limit (created if missing) makes
    the second wait for the first."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.adapters.ops.prefect_admin import device_slot_name
    from tasks.domain.config import DeviceSlotConfig
    from tasks.model_tasks import training_slot

    held: list[tuple[float, float]] = []

    @flow
    def hold_the_device():
        with training_slot(DeviceSlotConfig(poll_seconds=0.5)):
            start = time.monotonic()
            time.sleep(1.5)
            held.append((start, time.monotonic()))

    runs = [threading.Thread(target=hold_the_device) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    (first, second) = sorted(held)
    assert second[0] >= first[1], f"trainings overlapped: {held}"
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(device_slot_name(DeviceSlotConfig()))
    assert (limit.limit, limit.active, limit.active_slots) == (1, True, 0)


def test_nightly_domains_retrains_each_domain_as_its_own_run_and_model(prefect_harness, rslm_home):
    """Two domains and one missing framework: each domain gets its own flow run and registered
    model; the missing one fails alone, and the parent run names it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId

    from flows.nightly_retrain import nightly_domains

    frameworks = ["configs/frameworks/finance.yaml", "configs/frameworks/missing.yaml", "configs/frameworks/cs.yaml"]
    state = nightly_domains(frameworks, overrides=tiny_run(4, **NO_FLOORS), return_state=True)
    assert state.is_failed() and "1 of 3 domains failed: configs/frameworks/missing.yaml" in state.message
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{rslm_home / 'mlflow.db'}")
    for domain in ("finance", "cs"):
        (version,) = client.search_model_versions(f"name='reasoning-slm-{domain}'")
        assert version.tags["framework"].endswith(f"configs/frameworks/{domain}.yaml")
    with get_client(sync_client=True) as prefect:
        children = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=False)))
    names = {run.name for run in children}
    assert {"nightly-retrain-finance", "nightly-retrain-missing", "nightly-retrain-cs"} <= names
