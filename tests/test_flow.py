"""nightly_retrain end to end on the tiny profile under Prefect's test harness: a registered
adapter that independent clients can resolve and load; a failed validation trains and registers
nothing."""
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from tasks.adapters.dataset_store import file_sha256

pytestmark = [pytest.mark.slow, pytest.mark.integration]
QUICK = {"dataset.max_samples": 300, "training_overrides": {"max_steps": 12, "save_steps": 12, "logging_steps": 2}}


def test_nightly_retrain_registers_a_loadable_adapter(prefect_harness, rslm_home):
    import mlflow
    from mlflow.tracking import MlflowClient
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from flows.nightly_retrain import nightly_retrain

    first = nightly_retrain(overrides=QUICK)
    record = json.loads((rslm_home / "last-run.json").read_text())
    assert record == first and record["status"] == "succeeded" and record["validation_success"] is True
    assert file_sha256(record["dataset_path"]) == record["dataset_sha256"]
    assert Path(record["data_docs"]).exists() and Path(record["base_model_dir"]).exists()
    assert record["mlflow_tracking_uri"] == f"sqlite:///{rslm_home / 'mlflow.db'}"
    assert (record["registered_model"], record["model_version"]) == ("reasoning-slm-devops", "1")
    assert sorted(record["aliases"]) == ["challenger", "champion"]
    assert record["training"]["train_loss_last"] < record["training"]["train_loss_first"]

    # The adapter loads with plain PEFT, outside the project's code.
    base = AutoModelForCausalLM.from_pretrained(record["base_model_dir"], use_safetensors=True)
    assert isinstance(PeftModel.from_pretrained(base, record["adapter_dir"]), PeftModel)

    # An independent MLflow client sees the run, its params, metrics, dataset and the alias.
    client = MlflowClient(tracking_uri=record["mlflow_tracking_uri"])
    run = client.get_run(record["mlflow_run_id"])
    assert run.data.params["training.lora.r"] == "16" and run.data.params["training.lora.alpha"] == "32"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 3
    assert run.inputs.dataset_inputs and run.data.tags["dataset.training.sha256"] == record["dataset_sha256"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"validation", "plots", "training_summary.json"} <= artifacts
    version = client.get_model_version_by_alias("reasoning-slm-devops", "challenger")
    assert str(version.version) == "1" and version.run_id == record["mlflow_run_id"]

    mlflow.set_tracking_uri(record["mlflow_tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/reasoning-slm-devops@champion")
    import pandas as pd

    replies = model.predict(pd.DataFrame({"prompt": ["Why pin the nginx image by digest?"]}), params={"max_new_tokens": 8})
    assert len(replies) == 1 and isinstance(replies[0], str)

    # A second run: a new challenger; the champion stays where it was.
    second = nightly_retrain(overrides={**QUICK, "training_overrides": {**QUICK["training_overrides"], "seed": 9}})
    assert second["model_version"] == "2" and second["aliases"] == ["challenger"]
    assert str(client.get_model_version_by_alias("reasoning-slm-devops", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("reasoning-slm-devops", "challenger").version) == "2"


def test_failed_validation_trains_and_registers_nothing(prefect_harness, rslm_home, tmp_path):
    from flows.nightly_retrain import nightly_retrain
    from tasks.domain.errors import DataValidationError

    framework = yaml.safe_load((REPO / "configs/frameworks/devops.yaml").read_text())
    framework["style"]["max_answer_words"] = 20  # the shipped answers are longer: terseness fails
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(framework))
    with pytest.raises(DataValidationError, match="answers are terse"):
        nightly_retrain(overrides={**QUICK, "framework": str(strict)})
    record = json.loads((rslm_home / "last-run.json").read_text())
    assert record["status"] == "failed" and record["validation_success"] is False
    assert record["adapter_dir"] is None and record["model_version"] is None
    assert record["validation_failures"][0]["row_ids"]
    assert not (rslm_home / "adapters").exists() and not (rslm_home / "mlflow.db").exists()
    assert Path(record["dataset_path"]).exists(), "the rejected dataset is kept for inspection"
