"""`rslm`: one entry point over the flows and stages. Heavy imports live inside the commands so
`rslm --help` is instant. Errors print one line (`error: ...`) and exit non-zero; RSLM_DEBUG=1
shows the traceback."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

DEFAULT_CONFIG = "configs/pipeline.yaml"


def _overrides(framework: str | None, profile: str | None, max_steps: int | None, max_samples: int | None,
               device: str | None) -> dict:
    overrides: dict = {}
    if framework:
        overrides["framework"] = framework
    if profile:
        overrides["profile"] = profile
    if max_samples is not None:
        overrides["dataset.max_samples"] = max_samples
    training = {}
    if max_steps is not None:
        training["max_steps"] = max_steps
    if device:
        training["device"] = device
    if training:
        overrides["training_overrides"] = training
    return overrides


def _setup() -> None:
    from flows.environment import quiet_offline_defaults

    quiet_offline_defaults()


config_option = click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
                             help="Pipeline YAML (configs/pipeline.yaml).")
framework_option = click.option("--framework", help="Framework YAML; overrides the config's `framework`.")
profile_option = click.option("--profile", help="Model profile: smollm2-135m | tiny | mistral-7b-instruct | a YAML path.")
max_steps_option = click.option("--max-steps", type=int, help="Optimizer steps (overrides the profile).")
max_samples_option = click.option("--max-samples", type=int, help="Cap on dataset rows (0 = all).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Training device.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """reasoning-slm: teach a small LLM to reason in a domain (framework -> dataset -> LoRA -> MLflow)."""


@cli.command()
@config_option
@framework_option
@profile_option
@max_steps_option
@max_samples_option
@device_option
@click.option("--base-model", help="Hub id or local path replacing a pretrained profile's source.")
@click.option("--force", is_flag=True, help="Rebuild and retrain even when nothing changed.")
def pipeline(config_path, framework, profile, max_steps, max_samples, device, base_model, force) -> None:
    """Run the nightly_retrain flow once: build, validate, train, register, evaluate, promote."""
    _setup()
    from flows.nightly_retrain import nightly_retrain

    record = nightly_retrain(config_path=config_path, base_model=base_model, force=force,
                             overrides=_overrides(framework, profile, max_steps, max_samples, device))
    click.echo(json.dumps({**{k: record[k] for k in ("status", "dataset_path", "adapter_dir", "mlflow_run_id",
                                                     "registered_model", "model_version", "aliases")},
                           "eval": {k: record["evaluation"].get("metrics", {}).get(k)
                                    for k in ("loss", "style_adherence", "consistency", "drift_kl")},
                           "promotion": record["promotion"].get("verdict")}, indent=2))
    if record["status"] == "unchanged":
        click.echo(f"nothing changed since v{record['model_version']}: nothing trained (use --force to retrain)")
    from tasks.adapters.settings import paths

    click.echo(f"run record: {paths().last_run}")


@cli.command()
@config_option
@framework_option
@max_samples_option
@click.option("--seed", type=int, help="Seed for shuffling and the split.")
@click.option("--generator", type=click.Choice(["offline", "openai-compatible", "transformers"]),
              help="Blueprint generator (overrides dataset.generator).")
@click.option("--preview", is_flag=True, help="Show the blueprint, sample rows and the expected size; write nothing.")
@click.option("--samples", default=5, show_default=True, help="Rows shown by --preview.")
def generate(config_path, framework, max_samples, seed, generator, preview, samples) -> None:
    """Build the dataset (blueprint -> expansion -> dedup -> split) as the build-dataset flow."""
    _setup()
    from tasks.adapters.configs import load_pipeline_config

    overrides = _overrides(framework, None, None, max_samples, None)
    if seed is not None:
        overrides["seed"] = seed
    if generator:
        overrides["dataset.generator"] = generator
    config = load_pipeline_config(config_path, overrides)
    if preview:
        from tasks.adapters.configs import load_framework
        from tasks.adapters.settings import paths
        from tasks.domain.expansion import preview as preview_dataset
        from tasks.stages.build_dataset import generate_blueprint

        framework_model = load_framework(config.framework)
        blueprint = generate_blueprint(framework_model, config, paths())
        click.echo(preview_dataset(framework_model, blueprint, config.seed, config.dataset, samples))
        return
    from flows.nightly_retrain import build_dataset

    dataset = build_dataset(config)
    click.echo(json.dumps(dataset.to_dict(), indent=2))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@config_option
@framework_option
@click.option("--out", type=click.Path(), help="Where to write the GX result and Data Docs.")
def validate(files, config_path, framework, out) -> None:
    """Validate dataset JSONL FILES with the Great Expectations suite (train and eval together)."""
    _setup()
    from datetime import UTC, datetime

    from tasks.adapters.configs import load_framework, load_pipeline_config
    from tasks.adapters.settings import paths
    from tasks.stages.build_dataset import require_valid, validate_files

    config = load_pipeline_config(config_path, _overrides(framework, None, None, None, None))
    out_dir = Path(out) if out else paths().validations / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    report = validate_files(list(files), load_framework(config.framework), config.validation, out_dir)
    require_valid(report)
    click.echo(f"ok: {report.summary()} (Data Docs: {report.data_docs_index})")


@cli.command(name="format")
@click.argument("file", type=click.Path())
@click.option("--chat-format", type=click.Choice(["mistral", "chatml"]),
              help="Chat format (default: the configured profile's: chatml for SmolLM2, mistral for tiny/7B).")
@config_option
def format_(file, chat_format, config_path) -> None:
    """Print, per row of FILE, the exact `prompt` and `completion` strings the trainer sees."""
    from tasks.adapters.dataset_store import read_rows
    from tasks.domain.formatting import chat_format as format_named

    if chat_format is None:
        from tasks.adapters.configs import load_pipeline_config, load_profile

        chat_format = load_profile(load_pipeline_config(config_path).profile).chat_format
    fmt = format_named(chat_format)
    for _, row in read_rows(file):
        example = fmt.row(row)
        click.echo(json.dumps({"id": row.id, "prompt": example.prompt, "completion": example.completion},
                              ensure_ascii=False))


@cli.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@config_option
@profile_option
@max_steps_option
@device_option
@click.option("--base-model", help="Hub id or local path replacing a pretrained profile's source.")
def train(dataset_dir, config_path, profile, max_steps, device, base_model) -> None:
    """Validate, then train a LoRA adapter on the dataset in DATASET_DIR (tracked in MLflow, not registered)."""
    _setup()
    from flows.nightly_retrain import train_adapter, validate_dataset
    from tasks.adapters.configs import load_pipeline_config, resolve_run
    from tasks.adapters.dataset_store import dataset_ref

    config = load_pipeline_config(config_path, _overrides(None, profile, max_steps, None, device))
    dataset = dataset_ref(Path(dataset_dir))
    report = validate_dataset(config, dataset)
    trained = train_adapter(resolve_run(config), dataset, report, base_model)
    click.echo(json.dumps(trained.to_dict(), indent=2))


def _registered_generator(model_uri: str):
    """Base + adapter of a registered version, from the configured MLflow store."""
    from tasks.adapters import tracking
    from tasks.adapters.inference import load_registered_generator
    from tasks.adapters.settings import paths, tracking_uri

    tracking.use_store(tracking_uri())
    return load_registered_generator(model_uri, paths().registry_cache)


def _champion_uri(config_path: str) -> str:
    """The configured domain's champion: what `chat` and `serve` answer with when not told otherwise."""
    from tasks.adapters import registry, tracking
    from tasks.adapters.settings import tracking_uri
    from tasks.domain.errors import RslmError

    name = _model_name(None, config_path)
    tracking.use_store(tracking_uri())
    if registry.version_for_alias(name, registry.CHAMPION) is None:
        raise RslmError(f"{name} has no @champion yet: run `make run` (or `rslm pipeline`), or pass --model/--adapter")
    return f"models:/{name}@{registry.CHAMPION}"


def _adapter_generator(adapter: str, system_prompt: str):
    from tasks.adapters.inference import load_generator

    summary = json.loads((Path(adapter) / "training_summary.json").read_text())
    return load_generator(summary["base_model"], adapter, system_prompt)


@cli.command()
@click.argument("question")
@click.option("--model", "model_uri", help="Registry URI (default: the configured domain's @champion).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="Adapter directory instead of a registered model.")
@click.option("--max-new-tokens", type=int, help="Answer length cap in tokens (default: the model's own).")
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@config_option
def chat(question, model_uri, adapter, max_new_tokens, temperature, config_path) -> None:
    """Answer QUESTION with the champion (or --model URI, or --adapter DIR under the framework's system prompt)."""
    _setup()
    length = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    if adapter:
        from tasks.adapters.configs import load_framework, load_pipeline_config

        generator = _adapter_generator(adapter, load_framework(load_pipeline_config(config_path).framework).system_prompt)
    else:
        generator = _registered_generator(model_uri or _champion_uri(config_path))
    click.echo(generator.reply([question], temperature=temperature, **length)[0])


@cli.command()
@click.option("--model", "model_uri", help="Registry URI (default: the configured domain's @champion).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="Adapter directory (base from its summary).")
@click.option("--base", type=click.Path(exists=True, file_okay=False), help="Base model directory (alone: no adapter).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless a token is set).")
@click.option("--port", default=8000, show_default=True)
@click.option("--token-env", default="RSLM_SERVE_TOKEN", show_default=True,
              help="Environment variable holding the bearer token clients must send (unset: no auth).")
@click.option("--system", "system_prompt", default=None, help="System prompt when a request has none.")
@config_option
def serve(model_uri, adapter, base, host, port, token_env, system_prompt, config_path) -> None:
    """An OpenAI-compatible server (/v1/models, /v1/chat/completions): the champion unless told otherwise."""
    _setup()
    from tasks.adapters import serve as server
    from tasks.adapters.inference import load_generator
    from tasks.domain.errors import ConfigError

    token = os.environ.get(token_env) or None
    if host not in {"127.0.0.1", "localhost", "::1"} and not token:
        raise ConfigError(f"refusing to serve on {host} without a token: set {token_env}")
    if adapter:
        generator, model_id = _adapter_generator(adapter, ""), Path(adapter).name
    elif base:
        generator, model_id = load_generator(base, None, ""), Path(base).name
    else:
        model_id = model_uri or _champion_uri(config_path)
        generator = _registered_generator(model_id)
    if system_prompt is not None:
        generator.system_prompt = system_prompt
    click.echo(f"serving {model_id} on http://{host}:{port}/v1" + (" (bearer token required)" if token else ""))
    server.run(generator, model_id, host, port, token)


def _model_name(name: str | None, config_path: str) -> str:
    """NAME as given, else the registered model of the configured framework's domain."""
    if name:
        return name
    from tasks.adapters.configs import load_framework, load_pipeline_config

    config = load_pipeline_config(config_path)
    return config.tracking.registered_model(load_framework(config.framework).domain)


@cli.command()
@click.option("--model", "model_uri", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION.")
@click.option("--dataset", "eval_path", type=click.Path(exists=True),
              help="Eval JSONL or dataset directory (default: the eval split the version was trained with).")
@config_option
def evaluate(model_uri, eval_path, config_path) -> None:
    """Evaluate a registered version against the champion (loss, style, consistency, drift, stability);
    logs everything to the version's MLflow run. Promotes nothing."""
    _setup()
    from flows.nightly_retrain import evaluate_model
    from tasks.adapters.configs import load_pipeline_config

    evaluation = evaluate_model(load_pipeline_config(config_path), model_uri, eval_path)
    click.echo(evaluation.markdown())
    click.echo(f"report: {evaluation.report_dir}")


@cli.command()
@click.argument("name", required=False)
@click.option("--version", required=True, help="The version to make champion.")
@click.option("--reason", default="", help="Why, for the record (version description and tags).")
@config_option
def promote(name, version, reason, config_path) -> None:
    """Make VERSION of NAME the champion by hand (recorded; refused if its training or evaluation failed)."""
    _setup()
    from tasks.adapters.settings import tracking_uri
    from tasks.stages.promote import manual_promote

    promotion = manual_promote(_model_name(name, config_path), version, tracking_uri(), reason)
    click.echo(f"{promotion.name}: v{promotion.version} is champion; previous-champion: "
               f"v{promotion.aliases.get('previous-champion') or '-'}")


@cli.command()
@click.argument("name", required=False)
@config_option
def rollback(name, config_path) -> None:
    """Point NAME's champion back at previous-champion."""
    _setup()
    from tasks.adapters.settings import tracking_uri
    from tasks.stages.promote import rollback as roll_back

    name = _model_name(name, config_path)
    aliases = roll_back(name, tracking_uri())
    click.echo(f"{name}: champion is v{aliases['champion']}; previous-champion: v{aliases['previous-champion'] or '-'}")


@cli.command()
@click.argument("name", required=False)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(name, config_path, as_json) -> None:
    """List NAME's versions: aliases, key eval metrics, evaluation status and promotion decision."""
    _setup()
    from tasks.adapters.settings import tracking_uri
    from tasks.stages.promote import model_table

    rows = model_table(_model_name(name, config_path), tracking_uri())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = list(rows[0])

    def cell(value) -> str:
        return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))

    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(cell(row[c]).ljust(widths[c]) for c in columns))


@cli.group()
def dataset() -> None:
    """Datasets in S3: s3://BUCKET/PREFIX/datasets/<domain>/<sha256>/ (storage: in configs/pipeline.yaml)."""


@dataset.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@config_option
def push(dataset_dir, config_path) -> None:
    """Upload a local dataset directory (manifest last; a no-op when already there)."""
    _setup()
    from tasks.adapters.configs import load_pipeline_config
    from tasks.adapters.dataset_store import dataset_ref
    from tasks.adapters.s3_store import S3DatasetStore
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
    _setup()
    from tasks.adapters.configs import load_pipeline_config
    from tasks.adapters.s3_store import S3DatasetStore, parse_s3_dataset_uri
    from tasks.adapters.settings import paths

    bucket, prefix, domain, sha = parse_s3_dataset_uri(uri)
    config = load_pipeline_config(config_path, {"storage.backend": "s3", "storage.bucket": bucket, "storage.prefix": prefix})
    click.echo(S3DatasetStore(config.storage).download(domain, sha, paths().datasets).directory)


@cli.group()
def stack() -> None:
    """The local stack: Prefect server, MLflow server and a worker on 127.0.0.1 (infra/stack.yaml)."""


def _stack_context():
    from flows.environment import quiet_offline_defaults
    from tasks.adapters.settings import paths
    from tasks.adapters.stack import load_stack_config

    quiet_offline_defaults(use_stack=False)
    return load_stack_config(), paths()


@stack.command()
def up() -> None:
    """Start whatever is not running yet; create the work pool and the training concurrency limit."""
    from tasks.adapters import stack as local_stack

    config, where = _stack_context()
    local_stack.up(config, where)
    _print_status(local_stack.status(where))
    click.echo(f"Prefect UI: http://{config.host}:{config.prefect_port}   MLflow UI: {config.mlflow_url}")


@stack.command()
def down() -> None:
    """Stop exactly what `up` started (and the flow runs its worker spawned)."""
    from tasks.adapters import stack as local_stack

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
    from tasks.adapters import stack as local_stack

    _, where = _stack_context()
    rows = local_stack.status(where)
    _print_status(rows)
    if rows and not all(r["healthy"] for r in rows):
        sys.exit(3)


@stack.command()
def deploy() -> None:
    """Register the deployments of infra/prefect.yaml (nightly at 02:00 and the on-demand ones)."""
    from tasks.adapters import stack as local_stack

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
    from tasks.adapters import stack as local_stack

    config, where = _stack_context()
    if action == "render":
        click.echo(local_stack.render_agent_file(config, where, kind or local_stack.agent_kind()), nl=False)
    elif action == "install":
        click.echo(f"installed {local_stack.install_agent(config, where)}; set start_worker: false in "
                   "infra/stack.yaml (or RSLM_START_WORKER=false) so `make up` does not start a second worker")
    else:
        click.echo(f"removed {local_stack.uninstall_agent()}")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into one line
        if os.environ.get("RSLM_DEBUG"):
            raise
        from tasks.domain.errors import RslmError

        code = error.exit_code if isinstance(error, RslmError) else 1
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        prefix = "" if isinstance(error, RslmError) else f"{type(error).__name__}: "
        click.echo(f"error: {prefix}{message}", err=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
