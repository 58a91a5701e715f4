"""The local stack as data: which processes `make up` starts, with which arguments, environment
and health checks. Pure: `tasks/adapters/ops/stack_processes.py` starts and stops what this describes.

    prefect-server  -> http://HOST:PREFECT_PORT (UI + API), SQLite under RSLM_HOME or PostgreSQL
    mlflow-server   -> http://HOST:MLFLOW_PORT  (UI + tracking + registry + artifact proxy)
    prefect-worker  -> polls the `process` work pool; runs each flow run as a local process
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from tasks.domain.frozen import Frozen

Port = Annotated[int, Field(ge=1024, le=65535)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=63)]


class StackConfig(Frozen):
    host: str = "127.0.0.1"
    prefect_port: Port = 4200
    mlflow_port: Port = 5001
    work_pool: Name = "rslm-local"
    worker_name: str = "rslm-agent"
    # False when the launchd/systemd agent runs the worker (make agent-install): one worker only.
    start_worker: bool = True
    training_slots: int = Field(default=1, ge=1)
    timezone: str = "UTC"
    # PostgreSQL server URL without a database (postgresql://user[:password]@host:port). Set it to
    # run both Prefect and MLflow on PostgreSQL; None keeps SQLite files under RSLM_HOME.
    postgres_url: str | None = None
    prefect_database: Name = "rslm_prefect"
    mlflow_database: Name = "rslm_mlflow"
    # Where the MLflow server keeps artifacts (adapters, plots, reports): None is
    # $RSLM_HOME/mlartifacts; s3://BUCKET/PREFIX puts them in S3. Clients upload through the server,
    # so only the server needs S3 credentials (from the AWS chain in its environment).
    artifacts_destination: str | None = None
    s3_endpoint_url: str | None = None  # S3-compatible store for the artifacts (MinIO, moto, ...)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, host: str) -> str:
        # The servers have no authentication configured: never expose them beyond this machine.
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"host {host!r}: the local stack binds to loopback only (127.0.0.1)")
        return host

    @field_validator("postgres_url")
    @classmethod
    def _postgres_scheme(cls, url: str | None) -> str | None:
        if url and urlsplit(url).scheme not in {"postgresql", "postgres"}:
            raise ValueError("postgres_url must look like postgresql://user@127.0.0.1:5432")
        return url or None

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"


# Environment variables that override `infra/stack.yaml` (one variable switches to PostgreSQL).
ENV_OVERRIDES = {
    "RSLM_PREFECT_PORT": "prefect_port",
    "RSLM_MLFLOW_PORT": "mlflow_port",
    "RSLM_POSTGRES_URL": "postgres_url",
    "RSLM_TIMEZONE": "timezone",
    "RSLM_WORK_POOL": "work_pool",
    "RSLM_START_WORKER": "start_worker",
    "RSLM_MLFLOW_ARTIFACTS": "artifacts_destination",
    "RSLM_S3_ENDPOINT_URL": "s3_endpoint_url",
}


def env_overrides(environ: dict[str, str]) -> dict[str, str]:
    """The config keys the environment sets.

    >>> env_overrides({"RSLM_MLFLOW_PORT": "5055", "HOME": "/root"})
    {'mlflow_port': '5055'}
    """
    return {key: environ[var] for var, key in ENV_OVERRIDES.items() if environ.get(var)}


def database_url(server_url: str, database: str, driver: str = "") -> str:
    """`postgresql://u@h:5432` + `db` -> `postgresql+driver://u@h:5432/db`.

    >>> database_url("postgresql://postgres@127.0.0.1:5432", "rslm_prefect", "asyncpg")
    'postgresql+asyncpg://postgres@127.0.0.1:5432/rslm_prefect'
    """
    parts = urlsplit(server_url)
    scheme = "postgresql" + (f"+{driver}" if driver else "")
    return urlunsplit((scheme, parts.netloc, f"/{database}", parts.query, ""))


def redact(url: str) -> str:
    """A URL safe to print or log: the password replaced.

    >>> redact("postgresql://u:s3cret@127.0.0.1:5432/db")
    'postgresql://u:***@127.0.0.1:5432/db'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Service(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    argv: list[str]
    env: dict[str, str]
    health_url: str | None = None
    url: str | None = None


def tracking_store(config: StackConfig, home: Path) -> str:
    if config.postgres_url:
        # explicit driver: SQLAlchemy 2.1 defaults `postgresql://` to psycopg 3, which is not installed
        return database_url(config.postgres_url, config.mlflow_database, "psycopg2")
    return f"sqlite:///{home / 'mlflow.db'}"


def prefect_database(config: StackConfig, home: Path) -> str:
    if config.postgres_url:
        return database_url(config.postgres_url, config.prefect_database, "asyncpg")
    return f"sqlite+aiosqlite:///{home / 'prefect' / 'prefect.db'}"


def quiet_env(home: Path) -> dict[str, str]:
    return {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "RSLM_HOME": str(home),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TOKENIZERS_PARALLELISM": "false"}


def plan(config: StackConfig, home: Path, bin_dir: Path, repo: Path) -> list[Service]:
    """The three services, in start order. Credentials in `postgres_url` reach only the servers'
    environment (never their argv, which `ps` shows to every user)."""
    common = quiet_env(home)
    prefect_server = Service(
        name="prefect-server",
        argv=[str(bin_dir / "prefect"), "server", "start", "--host", config.host, "--port", str(config.prefect_port)],
        env={**common, "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_database(config, home),
             "PREFECT_UI_API_URL": config.prefect_api_url, "PREFECT_API_URL": config.prefect_api_url},
        health_url=f"{config.prefect_api_url}/health", url=f"http://{config.host}:{config.prefect_port}")
    mlflow_server = Service(
        name="mlflow-server",
        argv=[str(bin_dir / "mlflow"), "server", "--host", config.host, "--port", str(config.mlflow_port),
              "--workers", "1", "--artifacts-destination",
              config.artifacts_destination or (home / "mlartifacts").resolve().as_uri()],
        # The store URL goes by environment so a PostgreSQL password stays out of `ps`.
        env={**common, "MLFLOW_BACKEND_STORE_URI": tracking_store(config, home),
             **({"MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint_url} if config.s3_endpoint_url else {})},
        health_url=f"{config.mlflow_url}/health", url=config.mlflow_url)
    worker = Service(
        name="prefect-worker",
        argv=[str(bin_dir / "prefect"), "worker", "start", "--pool", config.work_pool, "--type", "process",
              "--name", config.worker_name],
        env={**common, "PREFECT_API_URL": config.prefect_api_url, "MLFLOW_TRACKING_URI": config.mlflow_url,
             "RSLM_REPO": str(repo)})
    return [prefect_server, mlflow_server, worker] if config.start_worker else [prefect_server, mlflow_server]


AGENT_LABEL = "com.reasoning-slm.worker"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


def agent_values(config: StackConfig, home: Path, bin_dir: Path, repo: Path) -> dict[str, str]:
    return {"LABEL": AGENT_LABEL, "VENV_BIN": str(bin_dir), "REPO": str(repo), "RSLM_HOME": str(home),
            "WORK_POOL": config.work_pool, "WORKER_NAME": config.worker_name,
            "PREFECT_API_URL": config.prefect_api_url, "MLFLOW_TRACKING_URI": config.mlflow_url}


def render_agent(template: str, values: dict[str, str]) -> str:
    """Fill `{{NAME}}` placeholders; a placeholder without a value is an error, not a blank.

    >>> render_agent("ExecStart={{BIN}}/prefect", {"BIN": "/v/bin"})
    'ExecStart=/v/bin/prefect'
    """
    missing = sorted({m for m in _PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise ValueError(f"no value for placeholder(s) {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
