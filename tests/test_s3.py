"""S3 storage against a real S3 HTTP endpoint on 127.0.0.1 (moto's server): datasets published and
verified, MLflow artifacts proxied into the bucket, an outage failing cleanly, and the test
credentials nowhere they must not be."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import NO_FLOORS, free_port, tiny_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY_ID = "AKIARSLMTESTKEY12345"
SECRET = "rslm-test-secret-Zq8vX2pL9mN4"
BUCKET = "rslm-test"
QUICK = tiny_run(6, **NO_FLOORS)


@pytest.fixture
def moto(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield server, endpoint
    server.stop()


def storage(endpoint: str, **extra):
    from tasks.domain.config import StorageConfig

    return StorageConfig(backend="s3", bucket=BUCKET, prefix="team/rslm", endpoint_url=endpoint, **extra)


def test_dataset_round_trip_is_content_addressed_and_verified(moto, small_build, devops_blueprint, tmp_path):
    import boto3

    from tasks.adapters.data.dataset_store import write_dataset
    from tasks.adapters.data.s3_store import S3DatasetStore, StorageError, parse_s3_dataset_uri

    _, endpoint = moto
    local = write_dataset(small_build, devops_blueprint, config_hash="c", seed=7, root=tmp_path / "local")
    store = S3DatasetStore(storage(endpoint))
    remote = store.upload(local)
    assert remote.uri == f"s3://{BUCKET}/team/rslm/datasets/devops/{local.sha256}/"
    assert parse_s3_dataset_uri(remote.uri) == (BUCKET, "team/rslm", "devops", local.sha256)
    client = boto3.client("s3", endpoint_url=endpoint)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=remote.key_prefix)["Contents"]
    assert {o["Key"].rsplit("/", 1)[1] for o in listed} == {"reasoning_dataset.jsonl", "reasoning_dataset.eval.jsonl",
                                                           "blueprint.json", "manifest.json"}
    manifest_written = client.head_object(Bucket=BUCKET, Key=remote.key_prefix + "manifest.json")["LastModified"]
    assert store.upload(local) == remote, "re-uploading is a no-op"
    assert client.head_object(Bucket=BUCKET, Key=remote.key_prefix + "manifest.json")["LastModified"] == manifest_written

    pulled = store.download("devops", local.sha256, tmp_path / "pulled")
    assert Path(pulled.train_path).read_bytes() == Path(local.train_path).read_bytes()

    client.put_object(Bucket=BUCKET, Key=remote.key_prefix + "reasoning_dataset.jsonl", Body=b"tampered\n")
    with pytest.raises(StorageError, match="sha256 mismatch .*refusing the download"):
        store.download("devops", local.sha256, tmp_path / "again")
    assert not (tmp_path / "again" / "devops" / local.sha256[:12]).exists(), "nothing half-downloaded is left"


def test_pipeline_on_s3_then_an_outage_fails_cleanly_and_no_credential_leaks(moto, prefect_harness, rslm_home,
                                                                              monkeypatch, tmp_path):
    import boto3
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    from flows.nightly_retrain import nightly_retrain
    from tasks.adapters.data.s3_store import StorageError
    from tasks.adapters.ops import stack_processes as stack
    from tasks.adapters.ops.settings import Paths
    from tasks.domain.stack import StackConfig

    server, endpoint = moto
    stack_paths = Paths(tmp_path / "stack-home")
    config = StackConfig(prefect_port=free_port(), mlflow_port=free_port(), start_worker=False,
                         artifacts_destination=f"s3://{BUCKET}/team/rslm/mlartifacts", s3_endpoint_url=endpoint)
    # Only the MLflow server gets S3 credentials; the pipeline talks to it over HTTP for artifacts.
    stack.up(config, stack_paths, only={"mlflow-server"})
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", config.mlflow_url)
        monkeypatch.setenv("RSLM_S3_BUCKET", BUCKET)
        monkeypatch.setenv("RSLM_S3_PREFIX", "team/rslm")
        monkeypatch.setenv("RSLM_S3_ENDPOINT_URL", endpoint)
        record = nightly_retrain(overrides=QUICK)
        assert record["status"] == "succeeded"
        assert record["dataset_uri"] == f"s3://{BUCKET}/team/rslm/datasets/devops/{record['dataset_sha256']}/"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        assert any(k.endswith(f"{record['dataset_sha256']}/manifest.json") for k in keys)
        assert any(k.startswith("team/rslm/mlartifacts/") and k.endswith("adapter_model.safetensors") for k in keys), \
            "the registered adapter lives in the bucket"
        assert any(k.endswith("plots/champion_vs_challenger.png") for k in keys)
        client = MlflowClient(tracking_uri=config.mlflow_url, registry_uri=config.mlflow_url)
        run = client.get_run(record["mlflow_run_id"])
        assert run.data.tags["dataset.uri"] == record["dataset_uri"]

        # Outage mid-run: a new dataset (other seed) cannot be published; the run stops, local data stays.
        server.stop()
        with pytest.raises(StorageError, match="S3 upload of s3://rslm-test/team/rslm/datasets/devops/.* failed after "
                                               "retries .*local copy kept at"):
            nightly_retrain(overrides={**QUICK, "seed": 99, "storage.max_attempts": 2})
        failed = json.loads((rslm_home / "last-run.json").read_text())
        assert failed["status"] == "failed" and Path(failed["dataset_path"]).exists()
        assert failed["model_version"] is None, "nothing trained or registered after the failed upload"
        assert Path(record["dataset_path"]).exists() and Path(record["adapter_dir"]).exists()

        # The credentials are nowhere: MLflow params/tags, Prefect logs and artifacts, files on disk.
        seen = []
        for experiment in client.search_experiments():
            for found in client.search_runs([experiment.experiment_id]):
                seen += [json.dumps(found.data.params), json.dumps(found.data.tags)]
        with get_client(sync_client=True) as prefect:
            seen += [log.message for log in prefect.read_logs(limit=200)]
            seen += [json.dumps(a.data, default=str) for a in prefect.read_artifacts(limit=200)]
        text = "\n".join(seen)
        assert KEY_ID not in text and SECRET not in text
        for root in (rslm_home, stack_paths.home):
            for path in root.rglob("*"):
                if path.is_file() and path.stat().st_size < 50_000_000:
                    data = path.read_bytes()
                    assert KEY_ID.encode() not in data and SECRET.encode() not in data, path
    finally:
        stack.down(stack_paths)
