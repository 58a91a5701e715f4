"""The Kubernetes work pool (issue 31), without a cluster: the base job template is rendered by
prefect-kubernetes' own `KubernetesWorkerJobConfiguration`, for a deployment registered by
`prefect deploy` against a kubernetes-typed pool on a real Prefect server. Nothing here starts a
pod; the README and docs/scaling.md say so."""
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

TEMPLATE = REPO / "infra/kubernetes/base-job-template.json"
IMAGE = "registry.example/reasoning-slm-worker:cuda"


def _render(base_job_template: dict, values: dict, flow_run, deployment=None, flow=None) -> dict:
    """The Job manifest the Kubernetes worker would submit for `flow_run`."""
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = run_coro_as_sync(KubernetesWorkerJobConfiguration.from_template_and_values(base_job_template, values))
    config.prepare_for_flow_run(flow_run=flow_run, deployment=deployment, flow=flow)
    return config


def _container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def test_the_job_template_asks_for_gpus_secrets_and_patience(prefect_harness):
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun

    template = json.loads(TEMPLATE.read_text())
    config = _render(template, {"image": IMAGE, "gpu_count": 2}, FlowRun(flow_id=uuid4(), name="nightly"))
    pod = config.job_manifest["spec"]["template"]["spec"]
    container = _container(config.job_manifest)
    assert container["image"] == IMAGE and str(container["resources"]["limits"]["nvidia.com/gpu"]) == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert [source["secretRef"]["name"] for source in container["envFrom"]] == ["rslm-s3", "rslm-mlflow"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["RSLM_HOME"] == "/scratch/rslm" and env["HF_HUB_OFFLINE"] == "1"
    assert not any(re.search(r"(?i)secret|password|access_key", name) for name in env), "credentials come from secrets"
    assert "PREFECT__FLOW_RUN_ID" in env, "the worker's own variables are still added"
    assert config.pod_watch_timeout_seconds >= 1800, "GPU nodes may scale up first (prefect#12071)"
    assert config.job_manifest["spec"]["backoffLimit"] == 0
    scratch = next(v for v in pod["volumes"] if v["name"] == "scratch")
    assert "ephemeral" in scratch, "a pod's disk is scratch: the state lives in S3 and on the servers"
    assert container["args"] == ["prefect", "flow-run", "execute"]


@pytest.mark.integration
@pytest.mark.scale
def test_the_kubernetes_deployment_registers_against_a_kubernetes_pool_and_renders(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    pool = "rslm-k8s-test"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="kubernetes",
                                               base_job_template=json.loads(TEMPLATE.read_text())), overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "RSLM_K8S_POOL": pool, "RSLM_WORKER_IMAGE": IMAGE}
    deployed = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all",
                               "--prefect-file", "infra/kubernetes/prefect.yaml"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("nightly-retrain/nightly-retrain-gpu")
        work_pool = client.read_work_pool(pool)
        flow = client.read_flow(deployment.flow_id)
        flow_run = client.create_flow_run_from_deployment(deployment.id)
    assert work_pool.type == "kubernetes" and deployment.work_pool_name == pool
    assert deployment.job_variables == {"image": IMAGE, "gpu_count": 4}
    overrides = deployment.parameters["overrides"]
    assert overrides["training_overrides"]["distributed"]["nproc_per_node"] == deployment.job_variables["gpu_count"], \
        "one rank per GPU the pod asks for"
    config = _render(work_pool.base_job_template, deployment.job_variables, flow_run, deployment, flow)
    container = _container(config.job_manifest)
    assert container["image"] == IMAGE and str(container["resources"]["limits"]["nvidia.com/gpu"]) == "4"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert config.job_manifest["metadata"]["labels"]["prefect.io/deployment-name"] == "nightly-retrain-gpu"


def test_the_worker_image_installs_what_pyproject_pins():
    """No Docker daemon here: the Dockerfile is checked against pyproject.toml, not built."""
    dockerfile = (REPO / "infra/docker/Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = next(d for d in project["project"]["dependencies"] if d.startswith("torch=="))
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in dockerfile
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, flags=re.M))
    assert packages | {"configs"} <= copied, "every package and the configs are in the image"
    kubernetes_pin = next(d for d in project["project"]["optional-dependencies"]["test"] if "prefect-kubernetes" in d)
    assert f'"{kubernetes_pin}"' in dockerfile
    assert re.search(r"^USER 1000$", dockerfile, flags=re.M), "not root"
