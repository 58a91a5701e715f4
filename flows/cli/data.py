"""`rslm dataset push | pull`: the S3 dataset store."""
from __future__ import annotations

from pathlib import Path

import click

from flows.cli.common import config_option, setup


@click.group()
def dataset() -> None:
    """Datasets in S3: s3://BUCKET/PREFIX/datasets/<domain>/<sha256>/ (storage: in configs/pipeline.yaml)."""


@dataset.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@config_option
def push(dataset_dir, config_path) -> None:
    """Upload a local dataset directory (manifest last; a no-op when already there)."""
    setup()
    from tasks.adapters.data.dataset_store import dataset_ref
    from tasks.adapters.data.s3_store import S3DatasetStore
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.domain.errors import ConfigError

    config = load_pipeline_config(config_path)
    if not config.storage.bucket:
        raise ConfigError("no bucket: set RSLM_S3_BUCKET (or storage.bucket in the pipeline YAML)")
    click.echo(S3DatasetStore(config.storage).upload(dataset_ref(Path(dataset_dir))).uri)


@dataset.command()
@click.argument("uri")
@config_option
def pull(uri, config_path) -> None:
    """Download s3://BUCKET/PREFIX/datasets/<domain>/<sha256>/ into $RSLM_HOME/datasets, sha256-verified."""
    setup()
    from tasks.adapters.data.s3_store import S3DatasetStore, parse_s3_dataset_uri
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.adapters.ops.settings import paths

    bucket, prefix, domain, sha = parse_s3_dataset_uri(uri)
    config = load_pipeline_config(config_path, {"storage.backend": "s3", "storage.bucket": bucket, "storage.prefix": prefix})
    click.echo(S3DatasetStore(config.storage).download(domain, sha, paths().datasets).directory)
