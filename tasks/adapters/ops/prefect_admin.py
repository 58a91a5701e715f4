"""Idempotent Prefect set-up: the process work pool for the local agent and the global concurrency
limit that lets one training at a time use the device."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def _client(api_url: str | None) -> Iterator:
    """A sync client for `api_url`, or for the current settings (the flow's own API) when None."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if api_url is None:
        with get_client(sync_client=True) as client:
            yield client
        return
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def ensure_work_pool(api_url: str | None, name: str) -> bool:
    """Create a `process` work pool called `name` unless it exists; True when created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with _client(api_url) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", description="reasoning-slm local agent (make up / launchd / systemd)",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            return True


def ensure_concurrency_limit(api_url: str | None, name: str, limit: int, overwrite: bool = True) -> bool:
    """Create the global concurrency limit `name` (and, with `overwrite`, set an existing one to
    `limit`); True when created or changed."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with _client(api_url) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True))
            return True
        if overwrite and (existing.limit != limit or not existing.active):
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
            return True
        return False
