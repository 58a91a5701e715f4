"""`rslm stack up | down | status | deploy | agent`: the local stack on 127.0.0.1."""
from __future__ import annotations

import sys

import click


@click.group()
def stack() -> None:
    """The local stack: Prefect server, MLflow server and a worker on 127.0.0.1 (infra/stack.yaml)."""


def _stack_context():
    from flows.environment import quiet_offline_defaults
    from tasks.adapters.ops.settings import paths
    from tasks.adapters.ops.stack_processes import load_stack_config

    quiet_offline_defaults(use_stack=False)
    return load_stack_config(), paths()


@stack.command()
def up() -> None:
    """Start whatever is not running yet; create the work pool and the training concurrency limit."""
    from tasks.adapters.ops import stack_processes as local_stack

    config, where = _stack_context()
    local_stack.up(config, where)
    _print_status(local_stack.status(where))
    click.echo(f"Prefect UI: http://{config.host}:{config.prefect_port}   MLflow UI: {config.mlflow_url}")


@stack.command()
def down() -> None:
    """Stop exactly what `up` started (and the flow runs its worker spawned)."""
    from tasks.adapters.ops import stack_processes as local_stack

    _, where = _stack_context()
    stopped = local_stack.down(where)
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def _print_status(rows: list[dict]) -> None:
    if not rows:
        click.echo("stack: not running (make up)")
        return
    for row in rows:
        state = "healthy" if row["healthy"] else ("running" if row["running"] else "STOPPED")
        click.echo(f"{row['service']:<15} {state:<8} pid {row['pid']:<8} {row['url']:<24} log {row['log']}")


@stack.command()
def status() -> None:
    """What runs, whether it answers, and where its log is."""
    from tasks.adapters.ops import stack_processes as local_stack

    _, where = _stack_context()
    rows = local_stack.status(where)
    _print_status(rows)
    api_url = local_stack.live_endpoints(where).get("PREFECT_API_URL")
    if api_url:
        from tasks.adapters.ops.config_files import load_pipeline_config
        from tasks.adapters.ops.prefect_admin import device_slot_name, slot_leases

        slot = device_slot_name(load_pipeline_config().device_slot)
        leases = slot_leases(api_url, slot)
        click.echo(f"{slot} slot: " + ("; ".join(f"held by {lease.describe()}" for lease in leases) or "free"))
    if rows and not all(r["healthy"] for r in rows):
        sys.exit(3)


@stack.command()
def deploy() -> None:
    """Register the deployments of infra/prefect.yaml (nightly at 02:00 and the on-demand ones)."""
    from tasks.adapters.ops import stack_processes as local_stack

    config, where = _stack_context()
    if "PREFECT_API_URL" not in local_stack.live_endpoints(where):
        from tasks.domain.errors import RslmError

        raise RslmError("the Prefect server is not running: make up first")
    local_stack.deploy(config)
    click.echo(f"deployed infra/prefect.yaml to {config.prefect_api_url} (work pool {config.work_pool}, "
               f"nightly 02:00 {config.timezone})")


@stack.command()
@click.argument("action", type=click.Choice(["render", "install", "uninstall"]))
@click.option("--kind", type=click.Choice(["launchd", "systemd"]), help="Default: this platform's.")
def agent(action, kind) -> None:
    """The worker as a launchd agent (macOS) or systemd user service (Linux)."""
    from tasks.adapters.ops import stack_processes as local_stack

    config, where = _stack_context()
    if action == "render":
        click.echo(local_stack.render_agent_file(config, where, kind or local_stack.agent_kind()), nl=False)
    elif action == "install":
        click.echo(f"installed {local_stack.install_agent(config, where)}; set start_worker: false in "
                   "infra/stack.yaml (or RSLM_START_WORKER=false) so `make up` does not start a second worker")
    else:
        click.echo(f"removed {local_stack.uninstall_agent()}")
