"""`rslm chat | score | export | evaluate | refine | promote | rollback | models`: the registered models and their champion."""
from __future__ import annotations

import json

import click

from flows.cli.common import (
    champion_uri,
    config_option,
    model_name,
    nproc_option,
    registered_generator,
    registered_scorer,
    reward_model_uri,
    run_overrides,
    setup,
)

reward_model_option = click.option("--reward-model", "reward_uri",
                                   help="Process reward model URI (default: the configured domain's -prm@champion).")


@click.command()
@click.argument("question")
@click.option("--model", "model_uri", help="Registry URI (default: the configured domain's @champion).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="Adapter directory instead of a registered model.")
@click.option("--max-new-tokens", type=int, help="Answer length cap in tokens (default: the model's own).")
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy (0.7 with --best-of).")
@click.option("--best-of", type=click.IntRange(1, 32), default=1, show_default=True,
              help="Sample N answers and print the one the process reward model scores highest (scores on stderr).")
@reward_model_option
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@config_option
def chat(question, model_uri, adapter, max_new_tokens, temperature, best_of, reward_uri, seed, config_path) -> None:
    """Answer QUESTION with the champion (or --model URI, or --adapter DIR under the framework's system prompt)."""
    setup()
    length = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    scorer = registered_scorer(reward_model_uri(config_path, reward_uri)) if best_of > 1 else None
    if adapter:
        from tasks.adapters.model.inference import load_adapter_generator
        from tasks.adapters.ops.config_files import load_framework, load_pipeline_config

        system = load_framework(load_pipeline_config(config_path).framework).system_prompt
        generator = load_adapter_generator(adapter, system)
    else:
        generator = registered_generator(model_uri or champion_uri(config_path))
    if scorer is None:
        click.echo(generator.reply([question], temperature=temperature, seed=seed, **length)[0])
        return
    from tasks.adapters.model.best_of import best_of as choose

    picked = choose(generator, scorer, generator.conversation(question), best_of, temperature=temperature, seed=seed,
                    **length)
    click.echo(picked.text)
    click.echo(json.dumps(picked.metadata()), err=True)


@click.command()
@click.argument("question")
@click.argument("answer")
@reward_model_option
@config_option
def score(question, answer, reward_uri, config_path) -> None:
    """Score each step of ANSWER to QUESTION with the process reward model: JSON with per-step
    scores (probability the step is sound) and the answer's score (its weakest step)."""
    setup()
    uri = reward_model_uri(config_path, reward_uri)
    (scored,) = registered_scorer(uri).score([question], [answer])
    click.echo(json.dumps({"question": question, "reward_model": uri, **scored.to_dict()}, indent=2))


@click.command()
@click.option("--model", "model_uri", help="Registry URI (default: the configured domain's @champion).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Directory (default: .rslm/exports/NAME-vVERSION).")
@click.option("--format", "formats", help="Comma-separated: merged,gguf,ollama (default: export.formats).")
@config_option
def export(model_uri, out_dir, formats, config_path) -> None:
    """Merge a registered version into its base and write GGUF files and an Ollama Modelfile; each is
    read back and checked against base + adapter (logits, tokens, chat template, held-out style),
    by transformers and, where llama-cpp-python is installed, by llama.cpp, before anything is kept;
    recorded on the version's run (export/) and tags."""
    setup()
    from pathlib import Path

    from tasks.adapters.ops.config_files import load_pipeline_config, resolve_run
    from tasks.adapters.ops.settings import paths
    from tasks.adapters.tracking.runs import Tracking
    from tasks.domain.errors import ConfigError
    from tasks.stages.export import export_version

    spec = resolve_run(load_pipeline_config(config_path))
    try:
        chosen = spec.config.export.formats_to_write(formats)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    report = export_version(spec, model_uri or champion_uri(config_path), chosen, Path(out_dir) if out_dir else None,
                            paths(), Tracking.configured())
    for check in report.checks:
        click.echo(check.line())
    click.echo(json.dumps({"model": report.model_uri, "out_dir": report.out_dir, "minutes": round(report.seconds / 60, 1),
                           "files": {f.path: {"bytes": f.bytes, "sha256": f.sha256} for f in report.files
                                     if "/" not in f.path or f.path.endswith(".safetensors")},
                           "ollama": report.ollama_command, "llama.cpp": report.summary}, indent=2))


@click.command()
@click.option("--model", "model_uri", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION.")
@click.option("--dataset", "eval_path", type=click.Path(exists=True),
              help="Eval JSONL or dataset directory (default: the eval split the version was trained with).")
@config_option
def evaluate(model_uri, eval_path, config_path) -> None:
    """Evaluate a registered version against the champion (loss, style, consistency, drift, stability);
    logs everything to the version's MLflow run. Promotes nothing."""
    setup(flows=True)
    from flows.on_demand import evaluate_registered
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.adapters.tracking.runs import Tracking

    evaluation = evaluate_registered(load_pipeline_config(config_path), model_uri, Tracking.configured(), eval_path)
    click.echo(evaluation.markdown())
    click.echo(f"report: {evaluation.report_dir}")


@click.command()
@click.option("--model", "model_uri", help="The version to refine (default: the configured domain's @champion).")
@click.option("--max-steps", type=int, help="DPO steps (overrides the profile's refine.max_steps).")
@click.option("--on-policy-rows", type=int, help="Training questions answered for on-policy pairs (refine.on_policy_rows).")
@nproc_option
@config_option
def refine(model_uri, max_steps, on_policy_rows, nproc_per_node, config_path) -> None:
    """Refine a registered version with DPO on its framework's preference pairs; registers the
    refined adapter as a new version (tagged with its parent), evaluates it and puts it through the gate."""
    setup(flows=True)
    from flows.on_demand import refine_on_demand

    settings = {key: value for key, value in (("max_steps", max_steps), ("on_policy_rows", on_policy_rows))
                if value is not None}
    overrides = run_overrides(None, None, None, None, None, nproc_per_node)
    if settings:
        overrides["refine_overrides"] = settings
    record = refine_on_demand(model_uri or champion_uri(config_path), config_path, overrides or None)
    refined = record.get("training", {}).get("refine", {})
    click.echo(json.dumps({"refined": f"models:/{record['registered_model']}/{record['model_version']}",
                           "parent_run": record["sft_run_id"], "adapter_dir": record["adapter_dir"],
                           "preference_accuracy": {model: refined.get(f"preference/{model}/accuracy")
                                                   for model in ("base", "sft", "dpo")},
                           "promotion": record["promotion"].get("verdict")}, indent=2))


@click.command()
@click.argument("name", required=False)
@click.option("--version", required=True, help="The version to make champion.")
@click.option("--reason", default="", help="Why, for the record (version description and tags).")
@config_option
def promote(name, version, reason, config_path) -> None:
    """Make VERSION of NAME the champion by hand (recorded; refused if its training or evaluation failed)."""
    setup()
    from tasks.adapters.tracking.runs import Tracking
    from tasks.stages.promote import manual_promote

    promotion = manual_promote(model_name(name, config_path), version, Tracking.configured(), reason)
    click.echo(f"{promotion.name}: v{promotion.version} is champion; previous-champion: "
               f"v{promotion.aliases.get('previous-champion') or '-'}")


@click.command()
@click.argument("name", required=False)
@config_option
def rollback(name, config_path) -> None:
    """Point NAME's champion back at previous-champion."""
    setup()
    from tasks.adapters.tracking.runs import Tracking
    from tasks.stages.promote import rollback as roll_back

    name = model_name(name, config_path)
    aliases = roll_back(name, Tracking.configured())
    click.echo(f"{name}: champion is v{aliases['champion']}; previous-champion: v{aliases['previous-champion'] or '-'}")


@click.command()
@click.argument("name", required=False)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(name, config_path, as_json) -> None:
    """List NAME's versions: aliases, key eval metrics, evaluation status and promotion decision."""
    setup()
    from tasks.adapters.tracking.runs import Tracking
    from tasks.stages.promote import model_table

    rows = model_table(model_name(name, config_path), Tracking.configured())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = list(rows[0])

    from tasks.domain.numbers import fmt

    def cell(value) -> str:
        return fmt(value, missing="-")

    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(cell(row[c]).ljust(widths[c]) for c in columns))
