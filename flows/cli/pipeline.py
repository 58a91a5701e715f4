"""`rslm pipeline | generate | validate | format | train`: the pipeline and its dataset and training stages."""
from __future__ import annotations

import json
from pathlib import Path

import click

from flows.cli.common import (
    config_option,
    device_option,
    framework_option,
    max_samples_option,
    max_steps_option,
    nproc_option,
    profile_option,
    run_overrides,
    setup,
    start_flows,
)


@click.command()
@config_option
@framework_option
@profile_option
@max_steps_option
@max_samples_option
@device_option
@nproc_option
@click.option("--base-model", help="Hub id or local path replacing a pretrained profile's source.")
@click.option("--force", is_flag=True,
              help="Rebuild and retrain the chat adapter even when nothing changed (a registered reward model with "
                   "the same step labels and settings is kept: see --force-reward).")
@click.option("--force-reward", is_flag=True, help="Retrain the process reward model even when its step labels and "
                                                   "settings are those of a registered version (implies --reward).")
@click.option("--dataset", "dataset_source", type=click.Path(exists=True),
              help="Train on your own dataset instead of generating one: a JSONL file of {\"messages\": [...]} rows, "
                   "a parquet file or a Hugging Face `datasets` directory (dataset.source; style from dataset.imported).")
@click.option("--refine/--no-refine", default=None,
              help="Refine the SFT adapter with DPO on the framework's preference pairs before registering "
                   "(default: the profile's refine.enabled).")
@click.option("--reward/--no-reward", default=None,
              help="Train the process reward model when its step labels changed (default: the profile's reward.enabled).")
def pipeline(config_path, framework, profile, max_steps, max_samples, device, nproc_per_node, base_model, force,
             force_reward, dataset_source, refine, reward) -> None:
    """Run the nightly_retrain flow once: build (or import), validate, train, [refine,] register, evaluate, promote."""
    setup()
    from flows.resolution import resolve_pipeline
    from tasks.adapters.ops.config_files import load_pipeline_config

    overrides = run_overrides(framework, profile, max_steps, max_samples, device, nproc_per_node)
    if dataset_source:
        overrides["dataset.source"] = str(Path(dataset_source).resolve())
    if refine is not None:
        overrides["refine_overrides.enabled"] = refine
    if force_reward:  # asked for by name, so trained even after a --no-reward (`make run` passes one)
        reward = True
    if reward is not None:
        overrides["reward_overrides.enabled"] = reward
    resolve_pipeline(load_pipeline_config(config_path, overrides))  # a bad flag, file or row fails here, before any server starts
    start_flows()
    from flows.nightly_retrain import nightly_retrain

    record = nightly_retrain(config_path=config_path, base_model=base_model, force=force, force_reward=force_reward,
                             overrides=overrides)
    click.echo(json.dumps({**{k: record[k] for k in ("status", "dataset_path", "adapter_dir", "mlflow_run_id",
                                                     "registered_model", "model_version", "aliases")},
                           "eval": {k: record["evaluation"].get("metrics", {}).get(k)
                                    for k in ("loss", "style_adherence", "consistency", "drift_kl",
                                              "heldout/step_reward")},
                           "promotion": record["promotion"].get("verdict"),
                           **({"reward_model": _reward_summary(record["reward_model"])} if record["reward_model"] else {})},
                          indent=2))
    if record["status"] == "unchanged":
        click.echo(f"nothing changed since v{record['model_version']}: nothing trained (use --force to retrain)")
    from tasks.adapters.ops.settings import paths

    click.echo(f"run record: {paths().last_run}")


@click.command()
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
    setup(flows=True)
    from flows.resolution import resolve_pipeline
    from tasks.adapters.ops.config_files import load_pipeline_config

    overrides = run_overrides(framework, None, None, max_samples, None)
    if seed is not None:
        overrides["seed"] = seed
    if generator:
        overrides["dataset.generator"] = generator
    spec = resolve_pipeline(load_pipeline_config(config_path, overrides))
    if preview and spec.config.dataset.source:
        raise click.UsageError("--preview shows a framework's expansion; dataset.source imports rows as they are")
    if preview:
        from tasks.adapters.ops.settings import paths
        from tasks.domain.expansion import preview as preview_dataset
        from tasks.stages.build_dataset import generate_blueprint

        blueprint = generate_blueprint(spec.framework, spec.config, paths())
        click.echo(preview_dataset(spec.framework, blueprint, spec.config.seed, spec.config.dataset, samples))
        return
    from flows.nightly_retrain import build_dataset

    dataset = build_dataset(spec)
    click.echo(json.dumps(dataset.to_dict(), indent=2))


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@config_option
@framework_option
@click.option("--out", type=click.Path(), help="Where to write the GX result and Data Docs.")
def validate(files, config_path, framework, out) -> None:
    """Validate dataset JSONL FILES (or dataset directories) with the Great Expectations suite (train and eval together)."""
    setup()
    from datetime import UTC, datetime

    from tasks.adapters.data.dataset_store import dataset_files
    from tasks.adapters.ops.config_files import load_framework, load_heldout, load_pipeline_config
    from tasks.adapters.ops.settings import paths
    from tasks.stages.build_dataset import require_valid, validate_files

    config = load_pipeline_config(config_path, run_overrides(framework, None, None, None, None))
    out_dir = Path(out) if out else paths().validations / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    framework_model = load_framework(config.framework)
    report = validate_files(dataset_files(list(files)), framework_model, config.validation, out_dir,
                            load_heldout(config.evaluation, framework_model.domain))
    require_valid(report)
    click.echo(f"ok: {report.summary()} (Data Docs: {report.data_docs_index})")


@click.command(name="format")
@click.argument("file", type=click.Path())
@click.option("--chat-format", type=click.Choice(["mistral", "chatml"]),
              help="Chat format (default: the configured profile's: chatml for SmolLM2, mistral for tiny/7B).")
@config_option
def format_(file, chat_format, config_path) -> None:
    """Print, per row of FILE, the exact `prompt` and `completion` strings the trainer sees."""
    from tasks.adapters.data.dataset_store import read_rows
    from tasks.domain.formatting import chat_format as format_named

    if chat_format is None:
        from tasks.adapters.ops.config_files import load_pipeline_config, load_profile

        chat_format = load_profile(load_pipeline_config(config_path).profile).chat_format
    fmt = format_named(chat_format)
    for _, row in read_rows(file):
        example = fmt.row(row)
        click.echo(json.dumps({"id": row.id, "prompt": example.prompt, "completion": example.completion},
                              ensure_ascii=False))


@click.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@config_option
def preferences(dataset_dir, config_path) -> None:
    """Build DPO preference pairs from the dataset in DATASET_DIR and validate them (GX suite
    `reasoning_preferences`): chosen is the framework's answer, rejected breaks one named rule."""
    setup()
    from flows.resolution import resolve_pipeline
    from tasks.adapters.data.dataset_store import dataset_ref
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.adapters.ops.settings import paths
    from tasks.stages.build_preferences import build_preferences, require_valid_pairs

    dataset = dataset_ref(Path(dataset_dir))
    spec = resolve_pipeline(load_pipeline_config(config_path))
    if spec.framework.domain != dataset.domain:
        from tasks.domain.errors import ConfigError

        raise ConfigError(f"{dataset_dir} is a {dataset.domain} dataset, but the configured framework is "
                          f"{spec.framework.domain}: pass --config with that domain's framework")
    built = build_preferences(dataset, spec.framework, spec.config, paths().preferences, spec.evaluation.heldout)
    require_valid_pairs(built.report)
    click.echo(f"ok: {built.summary()}")
    click.echo(built.train_path)


@click.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@config_option
@profile_option
@max_steps_option
@device_option
@nproc_option
@click.option("--base-model", help="Hub id or local path replacing a pretrained profile's source.")
def train(dataset_dir, config_path, profile, max_steps, device, nproc_per_node, base_model) -> None:
    """Validate, then train a LoRA adapter on the dataset in DATASET_DIR (tracked in MLflow, not registered)."""
    setup(flows=True)
    from flows.nightly_retrain import train_adapter, validate_dataset
    from flows.resolution import resolve_pipeline
    from tasks.adapters.data.dataset_store import dataset_ref
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.adapters.tracking.runs import Tracking

    spec = resolve_pipeline(load_pipeline_config(config_path, run_overrides(None, profile, max_steps, None, device,
                                                                                 nproc_per_node)))
    dataset = dataset_ref(Path(dataset_dir))
    report = validate_dataset(spec, dataset)
    trained = train_adapter(spec, dataset, report, Tracking.configured(), base_model)
    click.echo(json.dumps(trained.to_dict(), indent=2))


def _reward_summary(reward: dict) -> dict:
    figures = reward.get("metrics", {})
    return {"version": reward["version"], "status": reward["status"], "verdict": reward["verdict"],
            "champion_version": reward["champion_version"],
            **{k: figures.get(k) for k in ("bad_step_found", "auroc", "step_accuracy", "out_of_framework/f1",
                                          "out_of_framework/f1_low", "out_of_framework/f1_high")}}
