"""The fault suite: processes killed, servers gone, runs overlapping. Each case asserts that
nothing is lost or left locked, and that the next run goes on without a manual step."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tasks.adapters.ops.prefect_admin import device_slot, device_slot_name, slot_leases
from tasks.domain.config import DeviceSlotConfig
from tasks.domain.errors import RslmError

from conftest import REPO, kill_once_printed, pause_after_checkpoint

pytestmark = [pytest.mark.integration]
QUICK_SLOT = DeviceSlotConfig(lease_seconds=60, poll_seconds=2, wait_seconds=150)
SLOT = device_slot_name(QUICK_SLOT)  # this machine's: device:<hostname>


def _active_slots() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(SLOT).active_slots


def _hold_slot_in_a_process(holder: str) -> subprocess.Popen:
    """Another run's process holding the device slot, as a real OS process we can kill -9."""
    from prefect.settings import PREFECT_API_URL

    code = textwrap.dedent(f"""
        import time
        from tasks.adapters.ops.prefect_admin import device_slot
        from tasks.domain.config import DeviceSlotConfig
        with device_slot(DeviceSlotConfig(lease_seconds=60), {holder!r}, lambda line: None):
            print("held", flush=True)
            time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.mark.parametrize("known_process", [True, False], ids=["holder-process-known", "lease-expiry-only"])
def test_a_killed_holders_slot_is_reclaimed(prefect_harness, known_process):
    """kill -9 of the run holding the device. Its process recorded beside the lease: the slot is
    reclaimed at once. Without that record (a holder on another machine), once its 60 s lease lapses."""
    from tasks.adapters.ops.prefect_admin import _holders_dir

    holder = str(uuid.uuid4())
    process = _hold_slot_in_a_process(holder)
    assert [lease.holder for lease in slot_leases(None, SLOT)] == [f"flow run {holder}"]
    process.send_signal(signal.SIGKILL)
    process.wait()
    if not known_process:
        for record in _holders_dir().glob("*.json"):  # as if the holder had run on another machine
            record.unlink()
    said: list[str] = []
    start = time.monotonic()
    with device_slot(QUICK_SLOT, str(uuid.uuid4()), said.append):
        waited = time.monotonic() - start
        assert _active_slots() == 1
    assert _active_slots() == 0
    assert said[-2] == f"{SLOT} slot: taken" and said[-1].startswith(f"{SLOT} slot: given back after ")
    said = said[:-2]
    if known_process:
        assert waited < 10 and said == [f"{SLOT} slot: reclaimed the lease of {said[0].split('lease of ')[1]}"]
        assert said[0].endswith("its process on this machine has ended") and f"flow run {holder}" in said[0]
    else:
        assert 30 < waited < 100, "reclaimed once the dead holder's 60 s lease lapsed"
        assert any(f"waiting for the {SLOT} slot, held by flow run {holder}" in line for line in said), said
        assert any(f"reclaimed the expired lease of flow run {holder}" in line for line in said), said


def test_a_slot_counted_without_a_lease_is_reclaimed(prefect_harness):
    """The leak from before leases were kept on disk: active_slots stuck at 1 with no holder."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from tasks.adapters.ops.prefect_admin import ensure_concurrency_limit

    ensure_concurrency_limit(None, SLOT, 1, overwrite=False)
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(SLOT, GlobalConcurrencyLimitUpdate(active_slots=1))
    said: list[str] = []
    with device_slot(QUICK_SLOT, None, said.append):
        pass
    assert said[:2] == [f"{SLOT} slot: reclaimed the 1 slot(s) held with no lease", f"{SLOT} slot: taken"]
    assert _active_slots() == 0


def test_each_machine_has_its_own_device_slot(prefect_harness):
    """Two machines train at once, each in its own slot; a second run on one machine waits."""
    here, there = (QUICK_SLOT.model_copy(update={"machine_id": m, "wait_seconds": 2, "poll_seconds": 1})
                   for m in ("mac-studio-1", "gpu-box-2"))
    with device_slot(here, str(uuid.uuid4()), print), device_slot(there, str(uuid.uuid4()), print):
        assert {lease.holder.split()[0] for name in ("device:mac-studio-1", "device:gpu-box-2")
                for lease in slot_leases(None, name)} == {"flow"}
        with pytest.raises(RslmError, match="device:mac-studio-1 slot: still held after 2 s"):
            with device_slot(here, None, lambda _: None):
                pass


def test_a_shared_server_elsewhere_reclaims_only_this_machines_dead_holders(prefect_harness, monkeypatch, tmp_path):
    """With the server on another machine its lease files are not readable here. A slot held
    there (no record on this machine) must not be taken for a leak and reset; a holder that died
    on this machine is released at once, by the lease id it recorded."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_HOME, temporary_settings

    from tasks.adapters.ops import prefect_admin

    assert prefect_admin.leases_readable(None) and not prefect_admin.leases_readable("http://10.0.0.5:4200/api")
    with temporary_settings({PREFECT_HOME: tmp_path}):
        (tmp_path / "concurrency_leases").mkdir()
        assert not prefect_admin.leases_readable(None), "a loopback server with another home keeps its leases there"
    monkeypatch.setattr(prefect_admin, "leases_readable", lambda api_url: False)
    remote = QUICK_SLOT.model_copy(update={"machine_id": "remote-box"})
    name = device_slot_name(remote)
    with device_slot(remote, str(uuid.uuid4()), print):
        for record in prefect_admin._holders_dir().glob("*.json"):  # its holder record lives on its machine
            record.unlink()
        assert prefect_admin.reclaim_dead_slots(None, name) == []
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 1, "a live remote holder kept"
    holder = str(uuid.uuid4())
    process = _hold_slot_in_a_process(holder)
    process.send_signal(signal.SIGKILL)
    process.wait()
    said: list[str] = []
    start = time.monotonic()
    with device_slot(QUICK_SLOT, str(uuid.uuid4()), said.append):
        assert time.monotonic() - start < 10, "released at once, not after the lease lapsed"
    assert len(said) == 3 and f"flow run {holder}" in said[0] and said[0].endswith("on this machine has ended")


def test_a_live_holder_is_waited_for_then_the_waiter_gives_up_naming_it(prefect_harness):
    holder, released = str(uuid.uuid4()), threading.Event()
    took = threading.Event()

    def hold():
        with device_slot(QUICK_SLOT, holder, lambda _: None):
            took.set()
            released.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    assert took.wait(30)
    said: list[str] = []
    try:
        with pytest.raises(RslmError, match=f"{SLOT} slot: still held after 3 s by flow run {holder}"):
            with device_slot(QUICK_SLOT.model_copy(update={"wait_seconds": 3, "poll_seconds": 1}), None, said.append):
                pass
        assert said and all(line.startswith(f"waiting for the {SLOT} slot, held by flow run {holder} since ")
                            for line in said), said
    finally:
        released.set()
        thread.join(30)
    assert _active_slots() == 0


def test_training_killed_mid_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
        tiny_base, small_build, tmp_path):
    """kill -9 a real training process right after it saved checkpoint 8 of 12; training again in
    the same directory picks up at step 8 (model, optimizer, scheduler, RNG, data position) and
    ends with the adapter an uninterrupted run gives. 24 rows in batches of 4 make 6 steps an
    epoch, so the kill lands in the second epoch: the resumed run must read that epoch's own order
    (before `epoch_order`, it read the first epoch's again, and ended 1.4e-3 away)."""
    from safetensors.torch import load_file

    from tasks.adapters.model.training import CHECKPOINTS, train_lora
    from tasks.domain.config import TrainingConfig

    from conftest import write_rows

    cfg = TrainingConfig(device="cpu", max_steps=12, save_steps=4, save_total_limit=2, batch_size=4,
                         learning_rate=5e-3, max_length=320, warmup_ratio=0.0)
    kept = small_build.train[:24]
    rows = write_rows(tmp_path / "rows.jsonl", kept)
    uninterrupted = train_lora(tiny_base, kept, [], cfg, tmp_path / "uninterrupted")
    assert uninterrupted.examples == 24 and uninterrupted.epochs == 2.0, "the 12 steps span two epochs"

    interrupted = tmp_path / "interrupted"
    code = pause_after_checkpoint("tasks.adapters.model.training", "build_trainer", 8) + textwrap.dedent(f"""
        from pathlib import Path
        from tasks.adapters.data.dataset_store import read_dataset_files
        from tasks.domain.config import TrainingConfig

        rows = [row for _, _, row in read_dataset_files([{str(rows)!r}])]
        trained_module.train_lora({str(tiny_base)!r}, rows, [], TrainingConfig.model_validate_json({cfg.model_dump_json()!r}),
                                  Path({str(interrupted)!r}))
    """)
    kill_once_printed(code, "saved 8")
    assert not (interrupted / "adapter_model.safetensors").exists(), "killed before it finished"

    resumed = train_lora(tiny_base, kept, [], cfg, interrupted)
    assert resumed.resumed_from_step == 8 and resumed.steps == 12
    assert sorted(p.name for p in (interrupted / CHECKPOINTS).glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    expected = load_file(tmp_path / "uninterrupted" / "adapter_model.safetensors")
    got = load_file(interrupted / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    worst = max(float((expected[k] - got[k]).abs().max()) for k in expected)
    assert worst < 1e-5, f"resumed adapter differs from the uninterrupted one by {worst:g}"
    assert resumed.train_loss_last == pytest.approx(uninterrupted.train_loss_last, rel=1e-4)


def _tiny_pipeline(tmp_path) -> tuple[list[str], dict, Path]:
    """`rslm pipeline --force` on the tiny profile, long enough (160 steps, a checkpoint every 20)
    to be interrupted mid-training, in its own RSLM_HOME; returns the command, environment and home."""
    import yaml

    home = tmp_path / "home"
    config = tmp_path / "pipeline.yaml"
    base = yaml.safe_load((REPO / "configs/pipeline.yaml").read_text())
    base.update({"profile": "tiny", "training_overrides": {"max_steps": 160, "save_steps": 20},
                 "dataset": {**base["dataset"], "max_samples": 600},
                 "evaluation": {**base["evaluation"], "max_generations": 4, "loss_rows": 16, "consistency_groups": 2},
                 "promotion": {}})
    config.write_text(yaml.safe_dump(base))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
           "RSLM_HOME": str(home)}
    return [sys.executable, "-m", "flows.cli", "pipeline", "--config", str(config), "--force"], env, home


def _wait_for_a_checkpoint(process: subprocess.Popen, home) -> None:
    deadline = time.monotonic() + 240
    while not list(home.glob("adapters/devops/.*.partial/checkpoints/checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, "the run never reached a checkpoint"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_run_stopped_during_training_says_so_and_leaves_nothing_running(tmp_path, stop):
    """Ctrl-C in a terminal (SIGINT to the whole process group) or SIGTERM to the run (a worker
    cancelling it): one stop is enough; last-run.json says `interrupted`, the MLflow run is closed,
    the temporary Prefect server is gone and the device slot is free."""
    import json

    import psutil
    from mlflow.tracking import MlflowClient

    command, env, home = _tiny_pipeline(tmp_path)
    # started as from a terminal, Ctrl-C handled (a suite run in the background has it ignored)
    run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_a_checkpoint(run, home)
    family = [p.pid for p in psutil.Process(run.pid).children(recursive=True)]
    if stop == "ctrl-c":
        os.killpg(run.pid, signal.SIGINT)
    else:
        run.send_signal(signal.SIGTERM)
    stderr = run.communicate(timeout=120)[1]
    assert run.returncode == 130, stderr[-2000:]
    assert "error: interrupted" in stderr.splitlines(), stderr[-2000:]
    record = json.loads((home / "last-run.json").read_text())
    assert record["status"] == "interrupted" and record["finished_at"]
    assert record["error"] == ("interrupted by SIGINT (Ctrl-C)" if stop == "ctrl-c" else "interrupted by SIGTERM")
    client = MlflowClient(tracking_uri=record["mlflow_tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("reasoning-slm-devops").experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    time.sleep(2)
    assert not [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    leases = [p for p in (home / "prefect" / "concurrency_leases").glob("*.json") if p.name != "expirations.json"]
    assert not leases, "the device slot's lease was given back"


@pytest.mark.slow
def test_a_pipeline_killed_during_training_is_followed_by_a_run_that_resumes_and_finishes(tmp_path):
    """`rslm pipeline --force` killed with -9 mid-training, as a user or the OOM killer would, then
    run again: no manual step. The second run stops the first one's orphaned Prefect server, marks
    its MLflow run KILLED, reclaims the device slot once the dead run's lease lapses, resumes from
    the last checkpoint and registers a version."""
    import json

    import psutil
    from mlflow.tracking import MlflowClient

    command, env, home = _tiny_pipeline(tmp_path)
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_a_checkpoint(first, home)
    server = [p.pid for p in psutil.Process(first.pid).children(recursive=True)]
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads((home / "last-run.json").read_text())["status"] == "running", "a killed run shows no old success"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    record = json.loads((home / "last-run.json").read_text())
    assert record["status"] == "succeeded" and record["model_version"] == "1"
    assert 20 <= record["training"]["resumed_from_step"] < 160 and record["training"]["steps"] == 160
    assert not [pid for pid in server if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    uri = record["mlflow_tracking_uri"]
    killed = MlflowClient(tracking_uri=uri).get_run(record["reconciled_runs"][0])
    assert killed.info.status == "KILLED" and "ended without closing the run" in killed.data.tags["rslm.killed_reason"]
    assert not list(home.glob("adapters/devops/.*.partial")), "published, nothing half-written left"


@pytest.mark.slow
def test_a_pipeline_killed_during_evaluation_is_followed_by_a_run_that_evaluates_that_version(tmp_path):
    """kill -9 after registration, while the version is being evaluated: it stays unpromoted (no
    evaluation status, so no gate passes it), and the next run, unforced, evaluates and promotes
    that same version instead of training again."""
    import json

    from mlflow.tracking import MlflowClient

    command, env, home = _tiny_pipeline(tmp_path)
    command = [c for c in command if c != "--force"]
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(home.glob("evaluations/reasoning-slm-devops/v1/*")):  # evaluation under way
        assert first.poll() is None and time.monotonic() < deadline, "the first run never reached evaluation"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", registry_uri=f"sqlite:///{home / 'mlflow.db'}")
    assert "evaluation.status" not in client.get_model_version("reasoning-slm-devops", "1").tags
    assert not client.get_registered_model("reasoning-slm-devops").aliases.get("champion")

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    record = json.loads((home / "last-run.json").read_text())
    assert record["status"] == "succeeded" and record["resumed_evaluation"] and record["model_version"] == "1"
    assert record["adapter_dir"] is None, "nothing trained again"
    assert client.get_model_version("reasoning-slm-devops", "1").tags["evaluation.status"] == "succeeded"
    assert len(client.search_model_versions("name = 'reasoning-slm-devops'")) == 1


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_neither_stalls_training_nor_reads_as_a_missing_version(
        tmp_path, monkeypatch):
    """The MLflow server killed mid-run: per-step metrics are queued, so a training step never
    waits on it; the failure surfaces, bounded, when the run closes; and afterwards the registry
    says the server did not answer, not that the version does not exist."""
    from tasks.adapters.ops import stack_processes as stack
    from tasks.adapters.ops.settings import Paths
    from tasks.adapters.tracking.runs import Tracking
    from tasks.domain.stack import StackConfig

    from conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    paths = Paths(tmp_path / "home")
    config = StackConfig(prefect_port=free_port(), mlflow_port=free_port())
    try:
        stack.up(config, paths, only={"mlflow-server"})
        tracking = Tracking(uri=config.mlflow_url, artifact_root=tmp_path / "artifacts")
        tracking.check_reachable()
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - whichever MLflow raises on closing the run is fine
            with tracking.run("outage") as run:
                sink = run.metrics_sink()
                sink({"loss": 3.0}, 0)
                os.killpg(stack.read_state(paths)["services"]["mlflow-server"]["pid"], signal.SIGKILL)
                time.sleep(0.5)
                steps_started = time.monotonic()
                for step in range(1, 50):
                    sink({"loss": 3.0 - step / 50}, step)
                assert time.monotonic() - steps_started < 2.0, "a training step waited on the dead server"
        assert time.monotonic() - started < 120, "the outage surfaced within a bounded time"
        with pytest.raises(RslmError, match=f"MLflow at {config.mlflow_url} is not reachable"):
            tracking.check_reachable()
        with pytest.raises(RslmError, match=f"MLflow at {config.mlflow_url} did not answer"):
            tracking.registry.resolve("models:/reasoning-slm-devops/1")
    finally:
        stack.down(paths)
