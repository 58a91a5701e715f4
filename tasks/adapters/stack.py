"""Start, stop and inspect the local stack (`make up` / `make down` / `make status`).

What was started is written to `$RSLM_HOME/stack/state.json` (pid, command, port, log); `down`
stops exactly those processes and their children (flow runs the worker spawned), after checking
each pid still runs the command we started, so a recycled pid is never killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.adapters.configs import load_model
from tasks.adapters.settings import REPO_ROOT, Paths
from tasks.domain.errors import RslmError
from tasks.domain.stack import Service, StackConfig, env_overrides, plan, redact

STACK_CONFIG = "infra/stack.yaml"


def load_stack_config(path: str | Path = STACK_CONFIG, environ: dict[str, str] | None = None) -> StackConfig:
    """`infra/stack.yaml` with RSLM_* environment overrides (RSLM_POSTGRES_URL, RSLM_*_PORT, ...)."""
    return load_model(StackConfig, path, env_overrides(dict(os.environ if environ is None else environ)))


def state_dir(paths: Paths) -> Path:
    return paths.home / "stack"


def _state_file(paths: Paths) -> Path:
    return state_dir(paths) / "state.json"


def read_state(paths: Paths) -> dict:
    path = _state_file(paths)
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(paths: Paths, state: dict) -> None:
    path = _state_file(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _ours(pid: int, argv: list[str]) -> bool:
    """Is `pid` alive and still running the command we started (not a recycled pid)?"""
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(Path(argv[0]).name in Path(part).name for part in cmdline[:2]) and all(a in cmdline for a in argv[1:3])


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status == 200
    except OSError:
        return False


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        return sock.connect_ex((host, port)) != 0


def _wait_healthy(service: Service, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise RslmError(f"{service.name} exited with code {process.returncode}; log {log}: " + " | ".join(tail))
        if service.health_url is None or _healthy(service.health_url):
            return
        time.sleep(0.5)
    raise RslmError(f"{service.name} not healthy after {timeout:.0f}s ({service.health_url}); log {log}")


def ensure_postgres_databases(config: StackConfig) -> None:
    """Create the Prefect and MLflow databases on the PostgreSQL server if they are missing."""
    if not config.postgres_url:
        return
    import psycopg2
    from psycopg2 import sql

    try:
        connection = psycopg2.connect(config.postgres_url, dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as error:
        raise RslmError(f"PostgreSQL at {redact(config.postgres_url)} is not reachable: "
                        f"{str(error).strip().splitlines()[0]}") from None
    connection.autocommit = True
    with connection, connection.cursor() as cursor:
        for database in (config.prefect_database, config.mlflow_database):
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    connection.close()


def up(config: StackConfig, paths: Paths, timeout: float = 120.0) -> dict:
    """Start whatever of the stack is not already running; returns the state."""
    state = read_state(paths)
    running = {name: s for name, s in state.get("services", {}).items() if _ours(s["pid"], s["argv"])}
    ensure_postgres_databases(config)
    logs = state_dir(paths) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (paths.home / "prefect").mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    services = {}
    for service in plan(config, paths.home, bin_dir, REPO_ROOT):
        if service.name in running:
            services[service.name] = running[service.name]
            continue
        port = service.url and int(service.url.rsplit(":", 1)[1])
        if port and not _port_free(config.host, port):
            raise RslmError(f"{service.name}: {config.host}:{port} is already in use by another program; "
                            f"set RSLM_{service.name.split('-')[0].upper()}_PORT to another port")
        log = logs / f"{service.name}.log"
        env = {**os.environ, **service.env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        with log.open("ab") as handle:
            process = subprocess.Popen(service.argv, env=env, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        services[service.name] = {"pid": process.pid, "argv": service.argv, "log": str(log), "url": service.url,
                                  "started_at": time.time()}
        _write_state(paths, {"config": config.model_dump(exclude={"postgres_url"}),
                             "database": "postgresql" if config.postgres_url else "sqlite", "services": services})
        _wait_healthy(service, process, log, timeout)
        if service.name == "prefect-server":
            prepare_prefect(config)
    return read_state(paths)


def prepare_prefect(config: StackConfig) -> None:
    """The process work pool and the `training` global concurrency limit (idempotent)."""
    from tasks.adapters.prefect_admin import ensure_concurrency_limit, ensure_work_pool

    ensure_work_pool(config.prefect_api_url, config.work_pool)
    ensure_concurrency_limit(config.prefect_api_url, "training", config.training_slots)


def _stop_tree(pid: int, grace: float) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def down(paths: Paths, grace: float = 15.0) -> list[str]:
    """Stop what `up` started (worker first, so no run is left half-talking to a server)."""
    state = read_state(paths)
    stopped = []
    for name, service in reversed(list(state.get("services", {}).items())):
        if _ours(service["pid"], service["argv"]):
            _stop_tree(service["pid"], grace)
            stopped.append(name)
    _state_file(paths).unlink(missing_ok=True)
    return stopped


def status(paths: Paths) -> list[dict]:
    state = read_state(paths)
    rows = []
    for name, service in state.get("services", {}).items():
        alive = _ours(service["pid"], service["argv"])
        health = service.get("url") and alive and _healthy(f"{service['url']}/{'api/health' if 'prefect' in name else 'health'}")
        rows.append({"service": name, "pid": service["pid"], "running": alive,
                     "healthy": bool(health) if service.get("url") else alive, "url": service.get("url") or "-",
                     "log": service["log"]})
    return rows


def live_endpoints(paths: Paths) -> dict[str, str]:
    """PREFECT_API_URL / MLFLOW_TRACKING_URI of a running stack, so every `rslm` command (and
    `make run`) talks to it instead of starting a temporary server on the same database."""
    state = read_state(paths)
    services = state.get("services", {})
    config = state.get("config", {})
    endpoints = {}
    server = services.get("prefect-server")
    if server and _ours(server["pid"], server["argv"]):
        endpoints["PREFECT_API_URL"] = f"http://{config['host']}:{config['prefect_port']}/api"
    mlflow_server = services.get("mlflow-server")
    if mlflow_server and _ours(mlflow_server["pid"], mlflow_server["argv"]):
        endpoints["MLFLOW_TRACKING_URI"] = f"http://{config['host']}:{config['mlflow_port']}"
    return endpoints
