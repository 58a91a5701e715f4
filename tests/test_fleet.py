"""A fleet of workers (issue 31): two process workers on one work pool, each with its own machine
id and its own local state, as two machines sharing one Prefect server and one MLflow server.
`nightly-domains` fans out one `nightly-retrain` deployment run per domain; the two domains train
at once, each in its worker's device slot, and the registry ends consistent."""
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import NO_FLOORS, REPO, free_port, tiny_run

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.scale]
# A short run: the point is where and when each domain trains, not what it learns.
QUICK = tiny_run(6, **NO_FLOORS, **{"evaluation.max_generations": 8, "evaluation.choice_rows": 4,
                                    "evaluation.loss_rows": 16, "evaluation.consistency_groups": 2})


def _worker(pool: str, machine: str, home: Path, api_url: str, mlflow_url: str) -> subprocess.Popen:
    """`prefect worker start` as a machine of its own: its RSLM_HOME and PREFECT_HOME (so its holder
    records, like a remote machine's, are not this test's), its machine id, one flow run at a time."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "MLFLOW_TRACKING_URI": mlflow_url, "RSLM_MACHINE_ID": machine,
           "RSLM_HOME": str(home / "rslm"), "PREFECT_HOME": str(home / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_WORKER_QUERY_SECONDS": "2"}
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "worker.log").open("w")
    return subprocess.Popen([str(REPO / ".venv/bin/prefect"), "worker", "start", "--pool", pool, "--type", "process",
                             "--limit", "1", "--name", f"worker-{machine}"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _with_subflows(client, flow_run_ids: list) -> list:
    """These flow runs and all their subflow runs, at any depth."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    found, frontier = list(flow_run_ids), list(flow_run_ids)
    while frontier:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
        frontier = [run.id for run in children if run.id not in found]
        found += frontier
    return found


def _slot_log(client, flow_run_ids: list) -> list[tuple[float, str]]:
    """Every "<slot> slot: taken / given back" line these flow runs and their subflows logged, in
    time order (the Prefect API is the session's: earlier tests' runs logged slot lines too)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTextSearch

    runs = _with_subflows(client, flow_run_ids)
    logs = client.read_logs(log_filter=LogFilter(text=LogFilterTextSearch(query=" slot: "),
                                                 flow_run_id=LogFilterFlowRunId(any_=runs)), limit=200)
    return sorted((log.timestamp.timestamp(), log.message) for log in logs
                  if " slot: taken" in log.message or " slot: given back" in log.message)


def _held(log: list[tuple[float, str]], slot: str) -> list[tuple[float, float]]:
    """(taken, given back) times of `slot`, in order."""
    taken = [t for t, line in log if line == f"{slot} slot: taken"]
    back = [t for t, line in log if line.startswith(f"{slot} slot: given back")]
    return list(zip(taken, back, strict=True))


def test_two_workers_train_two_domains_at_once_each_in_its_machines_slot(prefect_harness, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.nightly_retrain import nightly_domains
    from tasks.adapters.ops import stack_processes as stack
    from tasks.adapters.ops.settings import Paths
    from tasks.domain.stack import StackConfig

    api_url = PREFECT_API_URL.value()
    config = StackConfig(prefect_port=free_port(), mlflow_port=free_port(), start_worker=False, work_pool="fleet")
    stack_paths = Paths(tmp_path / "servers")
    stack.up(config, stack_paths, only={"mlflow-server"})  # the team's MLflow server
    workers = []
    try:
        stack.deploy(config, api_url)  # infra/prefect.yaml's deployments on the `fleet` pool
        workers = [_worker("fleet", machine, tmp_path / machine, api_url, config.mlflow_url)
                   for machine in ("machine-a", "machine-b")]
        frameworks = ["configs/frameworks/devops.yaml", "configs/frameworks/cs.yaml"]
        outcome: dict = {}
        parent = threading.Thread(target=lambda: outcome.update(
            nightly_domains(frameworks, overrides=QUICK)), daemon=True)
        parent.start()
        parent.join(timeout=900)
        assert not parent.is_alive(), "the fanned-out runs did not finish in 15 minutes"
        assert {f: r["status"] for f, r in outcome.items()} == dict.fromkeys(frameworks, "succeeded"), outcome

        with get_client(sync_client=True) as client:
            runs = {framework: client.read_flow_run(result["flow_run_id"]) for framework, result in outcome.items()}
            log = _slot_log(client, [run.id for run in runs.values()])
        assert {run.name for run in runs.values()} == {"nightly-retrain-devops", "nightly-retrain-cs"}
        (a_start, a_end), (b_start, b_end) = [(run.start_time, run.end_time) for run in runs.values()]
        assert a_start < b_end and b_start < a_end, "the two domain runs overlapped"
        # who held which slot when (printed for the note): each machine's device, one training at a time
        for t, line in log:
            print(f"{t - log[0][0]:+7.1f} s  {line}")
        a, b = _held(log, "device:machine-a"), _held(log, "device:machine-b")
        assert a and b, f"both machines trained: {log}"
        assert any(ta < tb_back and tb < ta_back for ta, ta_back in a for tb, tb_back in b), \
            "the two machines held their device slots at the same time"
        for slot in ("domain:devops", "domain:cs"):
            assert len(_held(log, slot)) == 1, f"{slot} held once"

        registry = MlflowClient(tracking_uri=config.mlflow_url, registry_uri=config.mlflow_url)
        for domain in ("devops", "cs"):
            versions = registry.search_model_versions(f"name='reasoning-slm-{domain}'")
            assert [str(v.version) for v in versions] == ["1"]
            champions = [v for v in versions if "champion" in registry.get_model_version(v.name, v.version).aliases]
            assert len(champions) == 1, "one champion per model"
    finally:
        _stop(workers)
        stack.down(stack_paths)


def _stop(workers: list[subprocess.Popen]) -> None:
    """SIGTERM to every worker at once, then a minute for each to finish; one still running is
    killed. How long Prefect's worker takes to wind down (CI saw one retry its heartbeat against the
    harness's locked SQLite for over a minute) is not what this test is about, and an error raised
    here would hide the test's own outcome; the worker's log under tmp_path says what it was doing."""
    for worker in workers:
        os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print(f"worker {worker.args[-1]} still running a minute after SIGTERM: killed")
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
