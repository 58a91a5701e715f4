"""Datasets in S3 (or any S3-compatible store), content-addressed by sha256:

    s3://BUCKET/PREFIX/datasets/<domain>/<sha256>/{reasoning_dataset.jsonl, reasoning_dataset.eval.jsonl,
                                                    blueprint.json, manifest.json}

The manifest is written last and is what marks a dataset as present, so a reader never sees a
partial one; an existing manifest makes a re-upload a no-op. Downloads verify every file's sha256
before the dataset appears locally. Credentials come from the AWS chain (or a prefect-aws block)
and are never logged: errors name the bucket and key, not the client."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.adapters.data.dataset_store import (
    BLUEPRINT_FILE,
    CARD_FILE,
    EVAL_FILE,
    MANIFEST_FILE,
    TRAIN_FILE,
    DatasetRef,
    dataset_ref,
    file_sha256,
)
from tasks.domain.config import StorageConfig
from tasks.domain.errors import RslmError
from tasks.domain.hashing import sha256_bytes


class StorageError(RslmError):
    exit_code = 1


def s3_client(config: StorageConfig):
    """A boto3 S3 client with bounded, backed-off retries (botocore's standard mode)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    if config.credentials_block:
        try:
            from prefect_aws import AwsCredentials
        except ImportError:
            raise StorageError("storage.credentials_block needs the prefect-aws package (pip install prefect-aws)") from None
        session = AwsCredentials.load(config.credentials_block).get_boto3_session()
    return session.client("s3", region_name=config.region, endpoint_url=config.endpoint_url, config=Config(
        retries={"max_attempts": config.max_attempts, "mode": "standard"}, connect_timeout=5, read_timeout=60))


@dataclass(frozen=True)
class RemoteDataset:
    bucket: str
    key_prefix: str  # .../datasets/<domain>/<sha256>/

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key_prefix}"


def location(config: StorageConfig, domain: str, sha256: str) -> RemoteDataset:
    prefix = config.prefix.strip("/")
    return RemoteDataset(str(config.bucket), f"{prefix + '/' if prefix else ''}datasets/{domain}/{sha256}/")


def _failure(action: str, where: str, error: Exception, keep: str = "") -> StorageError:
    kept = f"; local copy kept at {keep}" if keep else ""
    detail = getattr(error, "response", {}).get("Error", {}).get("Code") or type(error).__name__
    return StorageError(f"S3 {action} of {where} failed after retries ({detail}){kept}")


class S3DatasetStore:
    def __init__(self, config: StorageConfig, client=None):
        self.config = config
        self.client = client or s3_client(config)

    def location(self, domain: str, sha256: str) -> RemoteDataset:
        return location(self.config, domain, sha256)

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.config.bucket, Key=key)
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise

    def upload(self, dataset: DatasetRef) -> RemoteDataset:
        """Publish a local dataset (files first, manifest last); a no-op when it is already there."""
        from botocore.exceptions import BotoCoreError, ClientError

        remote = self.location(dataset.domain, dataset.sha256)
        files = {TRAIN_FILE: dataset.train_path, EVAL_FILE: dataset.eval_path, BLUEPRINT_FILE: dataset.blueprint_path}
        card = Path(dataset.directory) / CARD_FILE
        if card.is_file():
            files[CARD_FILE] = str(card)
        files[MANIFEST_FILE] = dataset.manifest_path
        try:
            if self._exists(remote.key_prefix + MANIFEST_FILE):
                return remote
            for name, path in files.items():  # dict order: the manifest goes last
                body = Path(path).read_bytes()
                self.client.put_object(Bucket=remote.bucket, Key=remote.key_prefix + name, Body=body,
                                       Metadata={"sha256": sha256_bytes(body)})
        except (BotoCoreError, ClientError) as error:
            raise _failure("upload", remote.uri, error, keep=dataset.directory) from None
        return remote

    def download(self, domain: str, sha256: str, root: Path) -> DatasetRef:
        """Fetch into `root/<domain>/<sha12>/`, verifying every file against the manifest."""
        from botocore.exceptions import BotoCoreError, ClientError

        remote = self.location(domain, sha256)
        target = root / domain / sha256[:12]
        if (target / MANIFEST_FILE).exists() and file_sha256(target / TRAIN_FILE) == sha256:
            return dataset_ref(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            try:
                manifest_bytes = self._get(remote.key_prefix + MANIFEST_FILE)
                for name in (TRAIN_FILE, EVAL_FILE, BLUEPRINT_FILE):
                    (staging / name).write_bytes(self._get(remote.key_prefix + name))
            except (BotoCoreError, ClientError) as error:
                raise _failure("download", remote.uri, error) from None
            manifest = json.loads(manifest_bytes)
            expected = {TRAIN_FILE: manifest["sha256"], EVAL_FILE: manifest["eval_sha256"]}
            if manifest["sha256"] != sha256:
                raise StorageError(f"{remote.uri}: manifest names sha256 {manifest['sha256'][:12]}, not {sha256[:12]}")
            for name, digest in expected.items():
                actual = file_sha256(staging / name)
                if actual != digest:
                    raise StorageError(f"{remote.uri}{name}: sha256 mismatch (expected {digest[:12]}, got "
                                       f"{actual[:12]}): refusing the download")
            (staging / MANIFEST_FILE).write_bytes(manifest_bytes)  # last, as on upload
            shutil.rmtree(target, ignore_errors=True)
            staging.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dataset_ref(target)

    def _get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.config.bucket, Key=key)["Body"].read()


def parse_s3_dataset_uri(uri: str) -> tuple[str, str, str, str]:
    """`s3://bucket/prefix/datasets/<domain>/<sha256>/` -> (bucket, prefix, domain, sha256).

    >>> parse_s3_dataset_uri("s3://b/team/rslm/datasets/devops/" + "a" * 64 + "/")[::2]
    ('b', 'devops')
    """
    if not uri.startswith("s3://"):
        raise StorageError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    parts = [p for p in key.split("/") if p]
    if len(parts) < 3 or parts[-3] != "datasets" or len(parts[-1]) != 64:
        raise StorageError(f"{uri!r}: expected s3://BUCKET/PREFIX/datasets/<domain>/<sha256>/")
    return bucket, "/".join(parts[:-3]), parts[-2], parts[-1]
