"""The local stack's definition (pure), its agent files, the deployment definitions and the cache
keys. The running stack itself is exercised in test_stack_live.py."""
import plistlib
import socket
from pathlib import Path

import pytest
import yaml

from tasks.adapters.ops.stack_processes import AGENT_TEMPLATES, load_stack_config
from tasks.domain.stack import StackConfig, agent_values, plan, redact, render_agent

from conftest import REPO

HOME = Path("/tmp/rslm-home")
BIN = Path("/opt/venv/bin")


def test_shipped_stack_config_loads_and_environment_overrides_it():
    config = load_stack_config(environ={})
    assert (config.host, config.prefect_port, config.mlflow_port, config.postgres_url) == ("127.0.0.1", 4200, 5001, None)
    moved = load_stack_config(environ={"RSLM_MLFLOW_PORT": "5055", "RSLM_POSTGRES_URL": "postgresql://u@127.0.0.1:5432",
                                       "RSLM_START_WORKER": "false"})
    assert moved.mlflow_port == 5055 and moved.postgres_url and moved.start_worker is False


def test_stack_refuses_non_loopback_hosts_and_bad_database_urls():
    with pytest.raises(ValueError, match="loopback"):
        StackConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="postgresql://"):
        StackConfig(postgres_url="mysql://root@127.0.0.1")


def test_sqlite_plan_binds_loopback_and_keeps_state_under_home():
    services = {s.name: s for s in plan(StackConfig(), HOME, BIN, REPO)}
    assert list(services) == ["prefect-server", "mlflow-server", "prefect-worker"]
    prefect, mlflow, worker = services.values()
    assert prefect.argv[:3] == [str(BIN / "prefect"), "server", "start"] and "127.0.0.1" in prefect.argv
    assert prefect.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{HOME}/prefect/prefect.db"
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{HOME}/mlflow.db"
    assert "--workers" in mlflow.argv and mlflow.health_url == "http://127.0.0.1:5001/health"
    assert worker.argv[-5:] == ["rslm-local", "--type", "process", "--name", "rslm-agent"]
    assert worker.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5001"
    assert worker.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert [s.name for s in plan(StackConfig(start_worker=False), HOME, BIN, REPO)] == ["prefect-server", "mlflow-server"]


def test_one_variable_moves_both_servers_to_postgresql_without_leaking_the_password():
    config = StackConfig(postgres_url="postgresql://rslm:s3cret@127.0.0.1:5432")
    prefect, mlflow, worker = plan(config, HOME, BIN, REPO)
    assert prefect.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == \
        "postgresql+asyncpg://rslm:s3cret@127.0.0.1:5432/rslm_prefect"
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://rslm:s3cret@127.0.0.1:5432/rslm_mlflow"
    for service in (prefect, mlflow, worker):
        assert not any("s3cret" in a for a in service.argv), "argv is visible to every user through ps"
    assert "s3cret" not in str(worker.env)
    assert redact(config.postgres_url) == "postgresql://rslm:***@127.0.0.1:5432"


def test_launchd_agent_renders_to_a_valid_plist_running_the_worker():
    values = agent_values(StackConfig(), HOME, BIN, REPO)
    plist = plistlib.loads(render_agent(AGENT_TEMPLATES["launchd"].read_text(), values).encode())
    assert plist["Label"] == "com.reasoning-slm.worker" and plist["KeepAlive"] is True and plist["RunAtLoad"] is True
    assert plist["ProgramArguments"] == [str(BIN / "prefect"), "worker", "start", "--pool", "rslm-local", "--type",
                                         "process", "--name", "rslm-agent"]
    assert plist["EnvironmentVariables"]["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert plist["WorkingDirectory"] == str(REPO)


def test_systemd_unit_renders_with_every_placeholder_filled():
    values = agent_values(StackConfig(work_pool="nightly-mac"), HOME, BIN, REPO)
    unit = render_agent(AGENT_TEMPLATES["systemd"].read_text(), values)
    assert "{{" not in unit
    sections = {line.strip("[]") for line in unit.splitlines() if line.startswith("[")}
    assert sections == {"Unit", "Service", "Install"}
    assert f"ExecStart={BIN}/prefect worker start --pool nightly-mac --type process" in unit
    assert "Restart=always" in unit and "Environment=MLFLOW_TRACKING_URI=http://127.0.0.1:5001" in unit
    with pytest.raises(ValueError, match="LABEL"):
        render_agent("{{LABEL}}", {})


# --- deployments ------------------------------------------------------------------------------

DEPLOYMENTS = yaml.safe_load((REPO / "infra/prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_every_deployment_entrypoint_is_a_flow_accepting_its_parameters(deployment, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    flow.validate_parameters(deployment.get("parameters") or {})  # raises on unknown or mistyped parameters
    assert deployment["work_pool"]["name"] == "{{ $RSLM_WORK_POOL }}"


def test_nightly_deployment_runs_the_retrain_at_two_every_night():
    from prefect.client.schemas.schedules import CronSchedule

    nightly = next(d for d in DEPLOYMENTS if d["name"] == "nightly-retrain")
    assert nightly["entrypoint"] == "flows/nightly_retrain.py:nightly_retrain"
    (schedule,) = nightly["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["active"] is True
    assert schedule["timezone"] == "{{ $RSLM_TIMEZONE }}"
    CronSchedule(cron=schedule["cron"], timezone="Europe/Berlin")  # a valid cron for Prefect
    assert {d["name"] for d in DEPLOYMENTS} == {"nightly-retrain", "nightly-domains", "build-dataset", "evaluate",
                                                "refine", "promote", "export"}
    domains = next(d for d in DEPLOYMENTS if d["name"] == "nightly-domains")
    assert all((REPO / path).is_file() for path in domains["parameters"]["frameworks"])
    assert [s["active"] for s in domains["schedules"]] == [False], "the other domains retrain only when switched on"


@pytest.mark.integration
def test_make_deploy_registers_schedule_pool_and_this_machines_device_slot(prefect_harness, monkeypatch):
    monkeypatch.delenv("RSLM_MACHINE_ID", raising=False)
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from tasks.adapters.ops.stack_processes import deploy

    config = StackConfig(timezone="Europe/Berlin", work_pool="rslm-test-pool")
    deploy(config, api_url=PREFECT_API_URL.value())
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("nightly-retrain/nightly-retrain")
        assert nightly.work_pool_name == "rslm-test-pool"
        (schedule,) = nightly.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "Europe/Berlin", True)
        assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        assert client.read_deployment_by_name("promote-on-demand/promote").schedules == []
        assert client.read_work_pool("rslm-test-pool").type == "process"
        limit = client.read_global_concurrency_limit_by_name(f"device:{socket.gethostname()}")  # this machine's slot
        assert (limit.limit, limit.active) == (1, True)


# --- cache keys -------------------------------------------------------------------------------

def test_dataset_cache_keys_follow_content_not_identity(devops_framework, devops_blueprint):
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.dataset_tasks import blueprint_key, dataset_key

    config = load_pipeline_config()
    base = {"framework": devops_framework, "config": config}
    assert blueprint_key(None, base) == blueprint_key(None, dict(base, framework=devops_framework.model_copy()))
    edited = devops_framework.model_copy(update={"system_prompt": devops_framework.system_prompt + " Be brief."})
    assert blueprint_key(None, dict(base, framework=edited)) != blueprint_key(None, base)
    llm = load_pipeline_config(overrides={"dataset.generator": "openai-compatible"})
    assert blueprint_key(None, dict(base, config=llm)) != blueprint_key(None, base)
    other_model = load_pipeline_config(overrides={"dataset.generator": "openai-compatible", "llm.model": "qwen"})
    assert blueprint_key(None, dict(base, config=other_model)) != blueprint_key(None, dict(base, config=llm))
    # LLM settings do not matter to the offline generator.
    assert blueprint_key(None, dict(base, config=load_pipeline_config(overrides={"llm.model": "qwen"}))) == \
        blueprint_key(None, base)

    params = {"framework": devops_framework, "blueprint": devops_blueprint, "config": config, "root": "/d"}
    key = dataset_key(None, params)
    assert dataset_key(None, dict(params, config=load_pipeline_config())) == key
    assert dataset_key(None, dict(params, config=load_pipeline_config(overrides={"seed": 14}))) != key
    assert dataset_key(None, dict(params, config=load_pipeline_config(overrides={"dataset.max_samples": 50}))) != key
    # Training-only changes do not rebuild the dataset.
    assert dataset_key(None, dict(params, config=load_pipeline_config(
        overrides={"training_overrides": {"max_steps": 3}}))) == key


def test_training_key_covers_dataset_bytes_and_training_config():
    from tasks.adapters.data.dataset_store import DatasetRef
    from tasks.adapters.ops.config_files import load_pipeline_config, resolve_run
    from tasks.stages.train import training_key

    def spec(**overrides):
        return resolve_run(load_pipeline_config(overrides=overrides))

    dataset = DatasetRef(directory="d", train_path="t", eval_path="e", blueprint_path="b", manifest_path="m",
                         sha256="a" * 64, domain="devops", blueprint_hash="h")
    key = training_key(spec(), dataset)
    assert training_key(spec(), dataset) == key
    assert training_key(spec(), DatasetRef(**{**dataset.to_dict(), "sha256": "b" * 64})) != key
    assert training_key(spec(training_overrides={"lora.r": 8}), dataset) != key
    assert training_key(spec(profile="tiny"), dataset) != key
    assert training_key(spec(), dataset, base_override="/models/other") != key
    # Evaluation and promotion settings do not retrain.
    assert training_key(spec(**{"promotion.max_drift_kl": 2.0}), dataset) == key
