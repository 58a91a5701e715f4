"""DPO on top of a real SFT adapter (tiny profile): the refined adapter prefers chosen over
rejected more than its SFT parent on the pairs it trained on, and saves as safetensors."""
import json
from pathlib import Path

import pytest

from tasks.domain.config import RefineConfig, TrainingConfig

pytestmark = pytest.mark.slow

SFT = TrainingConfig(max_steps=30, learning_rate=1.0e-2, batch_size=8, max_length=320, logging_steps=5,
                     save_steps=30, seed=5)


def test_dpo_raises_the_preference_margin_over_the_sft_parent(tiny_base, small_build, devops_framework, tmp_path):
    from tasks.adapters.model.inference import load_generator
    from tasks.adapters.model.measurement import preference_margins
    from tasks.adapters.model.preference_training import train_dpo
    from tasks.adapters.model.training import train_lora
    from tasks.domain.preferences import build_pairs, preference_accuracy

    train_lora(tiny_base, small_build.train, small_build.eval, SFT, tmp_path / "sft")
    pairs = build_pairs(small_build.train[:48], devops_framework, seed=3)

    def margins(adapter):
        generator = load_generator(tiny_base, adapter, devops_framework.system_prompt, device="cpu")
        return preference_margins(generator, pairs, 16).summed

    before = margins(tmp_path / "sft")
    logged = []
    summary = train_dpo(tiny_base, tmp_path / "sft", pairs, RefineConfig(max_steps=12, batch_size=8, learning_rate=5.0e-3),
                        SFT, tmp_path / "dpo", sink=lambda metrics, step: logged.append(metrics))
    after = margins(tmp_path / "dpo")
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0, (sum(before), sum(after))
    assert preference_accuracy(pairs, after)["preference/accuracy"] >= preference_accuracy(pairs, before)["preference/accuracy"]
    assert summary["steps"] == 12 and "rewards/accuracies" in summary and "rewards/margins" in summary
    assert any("rewards/margins" in m for m in logged), "TRL's reward figures reached the sink"
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())["r"] == 16

    # The SFT term (RPO) holds the chosen answers' likelihood where plain DPO lets it fall.
    train_dpo(tiny_base, tmp_path / "sft", pairs, RefineConfig(max_steps=12, batch_size=8, learning_rate=5.0e-3,
                                                               sft_weight=1.0), SFT, tmp_path / "rpo")

    def chosen_nll(adapter):
        generator = load_generator(tiny_base, adapter, devops_framework.system_prompt, device="cpu")
        return sum(preference_margins(generator, pairs, 16).chosen_nll) / len(pairs)

    assert chosen_nll(tmp_path / "rpo") < chosen_nll(tmp_path / "dpo"), "the SFT term keeps chosen likelier"
    assert sum(margins(tmp_path / "rpo")) / len(pairs) > sum(before) / len(before), "and still widens the margin"


REFINE = {"enabled": True, "max_steps": 4, "batch_size": 8, "learning_rate": 5.0e-3, "on_policy_rows": 16,
          "mining_pool": 40, "sft_weight": 1.0}


@pytest.mark.integration
def test_refine_stage_registers_the_refined_adapter_with_its_sft_parent(prefect_harness, rslm_home):
    """The nightly run with refinement on: DPO runs nested under the training run, with TRL's
    reward figures and base / SFT / SFT+DPO preference accuracy; the refined adapter is the
    registered version, tagged with its parent run and the pairs' sha256; the gate holds it to its
    parent's held-out style; and the SFT run keeps its own summary and loss curve."""
    from mlflow.tracking import MlflowClient

    from flows.nightly_retrain import nightly_retrain
    from tasks.adapters.data.dataset_store import file_sha256
    from tasks.stages.refine import ON_POLICY_FILE

    from conftest import NO_FLOORS, tiny_run

    record = nightly_retrain(overrides=tiny_run(12, refine_overrides=REFINE, **NO_FLOORS))
    assert record["status"] == "succeeded" and record["sft_run_id"] != record["mlflow_run_id"]
    client = MlflowClient(tracking_uri=record["mlflow_tracking_uri"], registry_uri=record["mlflow_tracking_uri"])
    refine_run, sft_run = client.get_run(record["mlflow_run_id"]), client.get_run(record["sft_run_id"])
    assert refine_run.data.tags["mlflow.parentRunId"] == sft_run.info.run_id
    assert len(client.get_metric_history(refine_run.info.run_id, "dpo/rewards/accuracies")) == REFINE["max_steps"]
    assert client.get_metric_history(refine_run.info.run_id, "dpo/rewards/margins")
    metrics = refine_run.data.metrics
    for model in ("base", "sft", "dpo"):
        assert 0 <= metrics[f"preference/{model}/accuracy"] <= 1
        assert 0 <= metrics[f"preference_per_token/{model}/accuracy/hedged"] <= 1
    assert metrics["sft/heldout/questions"] == 20 and "sft/heldout/style" in metrics
    assert 0 <= metrics["mining/sft/accuracy"] <= 1, "the SFT model ranked the mining pool"
    trained = {k: v for k, v in metrics.items() if k.startswith("refine/trained_pairs/")}
    assert sum(trained.values()) == REFINE["max_steps"] * REFINE["batch_size"]
    assert refine_run.data.params["refine.on_policy_pairs"] != "0", "number salad fails the checks: on-policy pairs"
    artifacts = {a.path for a in client.list_artifacts(refine_run.info.run_id, "refine")}
    assert {"refine/preference_accuracy.json", "refine/reasoning_preferences.on_policy.jsonl"} <= artifacts
    adapter_files = {p.name for p in Path(record["adapter_dir"]).iterdir()}
    assert "adapter_model.safetensors" in adapter_files and "ref" not in adapter_files, "TRL's reference copy is not kept"
    assert not {"on_policy_validation", ON_POLICY_FILE} & adapter_files, "the registered model holds the adapter only"
    assert {"training_summary.json", "plots"} <= {a.path for a in client.list_artifacts(sft_run.info.run_id)}

    version = client.get_model_version("reasoning-slm-devops", record["model_version"])
    assert version.run_id == refine_run.info.run_id
    assert version.tags["refine.parent_run_id"] == sft_run.info.run_id
    assert version.tags["refine.pairs_sha256"] == file_sha256(record["preferences_path"])
    assert record["adapter_dir"] != record["sft_adapter_dir"] and "/dpo-" in record["adapter_dir"]
    (parent_check,) = [c for c in record["promotion"]["checks"] if "SFT parent" in c["name"]]
    assert f"vs SFT parent {metrics['sft/heldout/style']:.3f}" in parent_check["detail"]
    assert record["evaluation"]["metrics"]["heldout/style"] >= 0

    # `rslm refine` refines a registered version on demand: its adapter comes from the registry
    from click.testing import CliRunner

    from flows.cli import cli

    result = CliRunner().invoke(cli, ["refine", "--model", f"models:/reasoning-slm-devops/{record['model_version']}",
                                      "--max-steps", "2", "--on-policy-rows", "0"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index('{\n  "refined"'):])
    assert summary["refined"] == "models:/reasoning-slm-devops/2" and summary["parent_run"] == refine_run.info.run_id
    assert set(summary["preference_accuracy"]) == {"base", "sft", "dpo"}
    again = client.get_model_version("reasoning-slm-devops", "2")
    assert again.tags["refine.parent_run_id"] == refine_run.info.run_id
    assert client.get_run(again.run_id).data.params["refine.max_steps"] == "2"


@pytest.mark.integration
def test_a_corrupted_pairs_file_is_refused_by_its_line_and_nothing_is_trained(prefect_harness, rslm_home):
    import json

    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from flows.cli import cli
    from flows.nightly_retrain import nightly_retrain
    from tasks.domain.errors import DataValidationError

    from conftest import shipped_caps, tiny_run

    built = CliRunner().invoke(cli, ["generate", "--max-samples", "300"])
    dataset_dir = json.loads(built.output[built.output.index("{"):])["directory"]
    made = CliRunner().invoke(cli, ["preferences", dataset_dir])
    assert made.exit_code == 0, made.output
    pairs_file = Path(made.output.strip().splitlines()[-1])
    lines = pairs_file.read_text().splitlines()
    tampered = json.loads(lines[6])
    tampered["rejected"] = tampered["chosen"]  # a pair that teaches nothing, and breaks no rule
    pairs_file.write_text("\n".join([*lines[:6], json.dumps(tampered), *lines[7:]]) + "\n")

    with pytest.raises(DataValidationError) as failed:
        nightly_retrain(overrides=tiny_run(12, refine_overrides=REFINE, **shipped_caps()))
    (differs,) = [f for f in failed.value.failures if f["rule"] == "rejected differs from chosen"]
    assert differs["rows"] == [f"{tampered['id']} ({pairs_file.name}:7)"]
    record = json.loads((rslm_home / "last-run.json").read_text())
    assert record["status"] == "failed" and not record.get("mlflow_run_id") and not record.get("registered_model")
    store = f"sqlite:///{rslm_home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert not client.search_registered_models(), "nothing registered"
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])], "nothing trained"

    lines[3] = lines[3][:-5]  # a line cut short: named by file and line before any check runs
    pairs_file.write_text("\n".join(lines) + "\n")
    from tasks.domain.errors import DatasetFormatError

    with pytest.raises(DatasetFormatError, match=r"reasoning_preferences.jsonl: 1 malformed line\(s\): line 4: invalid JSON"):
        nightly_retrain(overrides=tiny_run(12, refine_overrides=REFINE, **shipped_caps()))
