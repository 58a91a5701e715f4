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

from tasks.adapters.ops.atomic_files import write_text_atomically
from tasks.adapters.ops.config_files import load_model
from tasks.adapters.ops.settings import REPO_ROOT, Paths
from tasks.domain.errors import RslmError, first_line
from tasks.domain.stack import AGENT_LABEL, Service, StackConfig, agent_values, env_overrides, plan, redact, render_agent

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
    write_text_atomically(_state_file(paths), json.dumps(state, indent=2))


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
                        f"{first_line(error)}") from None
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            for database in (config.prefect_database, config.mlflow_database):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    finally:
        connection.close()


def up(config: StackConfig, paths: Paths, timeout: float = 120.0, only: set[str] | None = None) -> dict:
    """Start whatever of the stack is not already running (or of `only` those services)."""
    state = read_state(paths)
    running = {name: s for name, s in state.get("services", {}).items() if _alive(s)}
    ensure_postgres_databases(config)
    logs = state_dir(paths) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (paths.home / "prefect").mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    services = dict(running)  # whatever still runs stays in the state, even if starting another fails
    for service in plan(config, paths.home, bin_dir, REPO_ROOT):
        if only is not None and service.name not in only:
            continue
        if service.name in running:
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
                                  "health_url": service.health_url, "started_at": time.time()}
        _write_state(paths, {"config": config.model_dump(exclude={"postgres_url"}),
                             "database": "postgresql" if config.postgres_url else "sqlite", "services": services})
        _wait_healthy(service, process, log, timeout)
        if service.name == "prefect-server":
            prepare_prefect(config)
    return read_state(paths)


def _this_machines_slot() -> str:
    """The device slot the runs on this machine take (the pipeline config's machine id)."""
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.adapters.ops.prefect_admin import device_slot_name

    return device_slot_name(load_pipeline_config().device_slot)


def prepare_prefect(config: StackConfig) -> None:
    """The process work pool and this machine's device slot (a global concurrency limit; idempotent)."""
    from tasks.adapters.ops.prefect_admin import ensure_concurrency_limit, ensure_work_pool

    ensure_work_pool(config.prefect_api_url, config.work_pool)
    ensure_concurrency_limit(config.prefect_api_url, _this_machines_slot(), config.training_slots)


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


def _group(pgid: int) -> list[int]:
    """The live processes of the session `up` started a service in (its leader's pid is the
    group id): a server's workers keep serving after their leader is killed."""
    import psutil

    members = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.info["pid"]) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.info["pid"])
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return members


def _alive(service: dict) -> bool:
    """The service's leader runs, or some process of its group does (a leader killed alone)."""
    return _ours(service["pid"], service["argv"]) or bool(_group(service["pid"]))


def down(paths: Paths, grace: float = 15.0) -> list[str]:
    """Stop what `up` started (worker first, so no run is left half-talking to a server): each
    service's whole process group, so no child outlives a leader that was killed before."""
    state = read_state(paths)
    stopped = []
    for name, service in reversed(list(state.get("services", {}).items())):
        members = _group(service["pid"])
        if _ours(service["pid"], service["argv"]):
            _stop_tree(service["pid"], grace)
        for pid in (pid for pid in members if pid != service["pid"]):
            _stop_tree(pid, grace=5.0)
        if members:
            stopped.append(name)
    _state_file(paths).unlink(missing_ok=True)
    return stopped


def status(paths: Paths) -> list[dict]:
    """Each service: running when any process of its group is, healthy when its port answers."""
    state = read_state(paths)
    rows = []
    for name, service in state.get("services", {}).items():
        alive = _alive(service)
        healthy = _healthy(service["health_url"]) if service.get("health_url") else alive
        rows.append({"service": name, "pid": service["pid"], "running": alive, "healthy": healthy,
                     "url": service.get("url") or "-", "log": service["log"]})
    return rows


def live_endpoints(paths: Paths) -> dict[str, str]:
    """PREFECT_API_URL / MLFLOW_TRACKING_URI of a running stack, so every `rslm` command (and
    `make run`) talks to it instead of starting a temporary server on the same database."""
    services = read_state(paths).get("services", {})
    endpoints = {}
    for name, variable, suffix in (("prefect-server", "PREFECT_API_URL", "/api"), ("mlflow-server", "MLFLOW_TRACKING_URI", "")):
        service = services.get(name)
        if service and _alive(service):
            endpoints[variable] = service["url"] + suffix
    return endpoints


def deploy(config: StackConfig, api_url: str | None = None, prefect_file: str = "infra/prefect.yaml") -> str:
    """Work pool + concurrency limit, then every deployment in `prefect_file`; returns the CLI output."""
    api_url = api_url or config.prefect_api_url
    from tasks.adapters.ops.prefect_admin import ensure_concurrency_limit, ensure_work_pool

    ensure_work_pool(api_url, config.work_pool)
    ensure_concurrency_limit(api_url, _this_machines_slot(), config.training_slots)
    env = {**os.environ, "PREFECT_API_URL": api_url, "RSLM_REPO": str(REPO_ROOT), "RSLM_WORK_POOL": config.work_pool,
           "RSLM_TIMEZONE": config.timezone, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    result = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all",
                             "--prefect-file", prefect_file], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-8:]
        raise RslmError(f"prefect deploy failed (exit {result.returncode}): " + " | ".join(tail))
    return result.stdout


AGENT_TEMPLATES = {"launchd": REPO_ROOT / "infra/launchd/com.reasoning-slm.worker.plist",
                   "systemd": REPO_ROOT / "infra/systemd/rslm-worker.service"}


def agent_kind() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


def agent_target(kind: str) -> Path:
    if kind == "launchd":
        return Path.home() / "Library/LaunchAgents" / f"{AGENT_LABEL}.plist"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "systemd/user/rslm-worker.service"


def render_agent_file(config: StackConfig, paths: Paths, kind: str) -> str:
    values = agent_values(config, paths.home, Path(sys.executable).parent, REPO_ROOT)
    return render_agent(AGENT_TEMPLATES[kind].read_text(), values)


def install_agent(config: StackConfig, paths: Paths) -> Path:
    """Write the agent file for this platform and load it (launchctl / systemctl --user)."""
    kind = agent_kind()
    target = agent_target(kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    (paths.home / "stack" / "logs").mkdir(parents=True, exist_ok=True)
    target.write_text(render_agent_file(config, paths, kind))
    for command in _agent_commands(kind, target, install=True):
        subprocess.run(command, check=False)
    return target


def uninstall_agent() -> Path:
    kind = agent_kind()
    target = agent_target(kind)
    for command in _agent_commands(kind, target, install=False):
        subprocess.run(command, check=False)
    target.unlink(missing_ok=True)
    if kind == "systemd":
        subprocess.run(["systemctl", "--user", "daemon-reload"], check=False)
    return target


def _agent_commands(kind: str, target: Path, install: bool) -> list[list[str]]:
    if kind == "launchd":
        domain = f"gui/{os.getuid()}"
        return ([["launchctl", "bootstrap", domain, str(target)]] if install
                else [["launchctl", "bootout", f"{domain}/{AGENT_LABEL}"]])
    return ([["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", target.stem]]
            if install else [["systemctl", "--user", "disable", "--now", target.stem]])


def orphaned_temporary_servers(prefect_home: Path) -> list[int]:
    """Prefect's temporary API servers on `prefect_home` whose run is gone. A run starts one as its
    child; killed with -9, the run cannot stop it, and it serves on. Told apart from the stack's
    own server (`make up`) by the environment Prefect gives only temporary servers."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "ppid", "cmdline"]):
        try:
            if "prefect.server.api.server:create_app" not in " ".join(process.info["cmdline"] or []):
                continue
            if psutil.pid_exists(process.info["ppid"]) and process.info["ppid"] != 1:
                continue  # its run is alive
            environ = process.environ()
            same_home = Path(environ.get("PREFECT_HOME", "~/.prefect")).expanduser().resolve() == prefect_home.resolve()
            if environ.get("PREFECT__SERVER_EPHEMERAL") == "1" and same_home:
                found.append(process.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_orphaned_temporary_servers(prefect_home: Path) -> list[int]:
    """Stop what `orphaned_temporary_servers` finds; returns their pids."""
    found = orphaned_temporary_servers(prefect_home)
    for pid in found:
        _stop_tree(pid, grace=5.0)
    return found


def start_temporary_prefect_server(prefect_home: Path, timeout: float = 120.0) -> tuple[str, int]:
    """A Prefect API server for one command, as Prefect's own temporary server but in a session of
    its own: Ctrl-C in the terminal then reaches only the run, which can still report to the server
    that it was interrupted (Prefect's server, sharing the terminal's process group, died with the
    same Ctrl-C and left the run retrying against it). Returns the API URL and the server's pid;
    stop it with `stop_process`. A run killed with -9 leaves it behind, and the next run stops it
    (`stop_orphaned_temporary_servers`: it carries Prefect's temporary-server environment)."""
    import importlib.util
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    log = prefect_home / "temporary-server.log"
    prefect_home.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        process = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    _wait_healthy(Service(name="temporary Prefect server", argv=argv, env={}, url=url, health_url=f"{url}/health"),
                  process, log, timeout)
    return url, process.pid


def stop_process(pid: int, grace: float = 10.0) -> None:
    _stop_tree(pid, grace)
