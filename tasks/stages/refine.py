"""Stage: an SFT adapter -> DPO on the framework's preference pairs (and, where the profile asks,
the SFT model's own failing answers) -> a refined adapter. One MLflow run nested under the
training run holds it all: TRL's reward accuracies and margins per step; preference accuracy on
the held-out pairs for base, SFT and SFT+DPO, per rejection kind; and the SFT parent's held-out
metrics (`sft/heldout/...`), which the gate compares the refined version with. The SFT run keeps
its own adapter summary and loss curve, so the gain from DPO stays visible."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from tasks.adapters.data.dataset_store import DatasetRef, read_rows
from tasks.adapters.data.preference_store import read_preferences, write_pairs
from tasks.adapters.model.inference import Generator, load_generator
from tasks.adapters.ops.atomic_files import publish_directory, staging_dir
from tasks.adapters.ops.settings import Paths
from tasks.adapters.tracking.registry import VersionInfo
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.config import PipelineConfig, flatten_params
from tasks.domain.errors import RslmError
from tasks.domain.evaluation import answered_heldout_metrics
from tasks.domain.hashing import content_hash, sha256_bytes
from tasks.domain.preferences import PreferencePair, balanced_sample, dpo_training_set, on_policy_pairs, preference_accuracy
from tasks.domain.records import Row
from tasks.domain.run_spec import RunSpec
from tasks.stages.build_preferences import PairContext, PreferenceSet, check_pairs, require_valid_pairs
from tasks.stages.train import TrainedAdapter

ON_POLICY_FILE = "reasoning_preferences.on_policy.jsonl"
SFT_PREFIX = "sft/"  # the SFT parent's metrics, on the refined version's run
PARENT_RUN_TAG = "refine.parent_run_id"
PAIRS_SHA_TAG = "refine.pairs_sha256"


def _ranking(gen: Generator, pairs: Sequence[PreferencePair], batch_size: int, label: str) -> dict[str, float]:
    """Preference accuracy on `pairs` under `gen`, by summed and by per-token log-probability."""
    from tasks.adapters.model.measurement import preference_margins

    margins = preference_margins(gen, pairs, batch_size)
    return {**preference_accuracy(pairs, margins.summed, f"preference/{label}"),
            **preference_accuracy(pairs, margins.per_token, f"preference_per_token/{label}"),
            f"preference/{label}/chosen_nll": sum(margins.chosen_nll) / max(1, len(pairs))}


def _before(gen: Generator, spec: RunSpec, held_out: Sequence[PreferencePair]) -> dict[str, float]:
    """Base (the adapter switched off) and SFT on the held-out pairs, and the SFT model's
    held-out answers scored as evaluation scores them (the gate's `sft/heldout/style`)."""
    from tasks.adapters.model.measurement import heldout_replies, on_base

    batch = spec.evaluation.settings.batch_size
    figures = {**_ranking(gen, held_out, batch, "sft"),
               **on_base(gen, lambda: _ranking(gen, held_out, batch, "base"), {})}
    questions = [q.question for q in spec.evaluation.heldout.questions] if spec.evaluation.heldout else []
    if questions:
        answers = heldout_replies(gen, questions, spec.evaluation.settings)
        measured = answered_heldout_metrics(questions, answers, spec.framework.style)
        figures |= {f"{SFT_PREFIX}{k}": v for k, v in measured.items()}
    return figures


def _on_policy(gen: Generator, spec: RunSpec, rows: Sequence[Row]) -> list[PreferencePair]:
    """The SFT model's sampled answers to the first `on_policy_rows` training questions; those that
    fail the framework's checks become rejected sides."""
    cfg = spec.refine
    asked = list(rows[:cfg.on_policy_rows])
    if not asked:
        return []
    answers = gen.answer_rows(asked, spec.evaluation.settings, cfg.on_policy_temperature, spec.config.seed)
    return on_policy_pairs(asked, answers, spec.framework)


def _checked_on_policy(gen: Generator, spec: RunSpec, train_rows: list[Row], context: PairContext,
                       work_dir: Path) -> tuple[list[PreferencePair], str]:
    """On-policy pairs written, checked by the same suite as the rule-based ones and refused the
    same way; returns them and the file's sha256 ('' when there are none)."""
    pairs = _on_policy(gen, spec, train_rows)
    if not pairs:
        return [], ""
    path = write_pairs(work_dir / ON_POLICY_FILE, pairs)
    require_valid_pairs(check_pairs(path, spec.framework, spec.config, context, work_dir / "on_policy_validation"))
    return read_preferences(path), sha256_bytes(path.read_bytes())


def _mining_pool(gen: Generator, spec: RunSpec, train_pairs: Sequence[PreferencePair]
                 ) -> tuple[list[PreferencePair], list[float] | None, dict[str, float]]:
    """The rule-based pairs DPO chooses from and, where the profile mines (`refine.mining_pool`),
    the SFT model's per-token margins on them, with its accuracy there per kind."""
    from tasks.adapters.model.measurement import preference_margins

    if not spec.refine.mining_pool:
        return list(train_pairs), None, {}
    pool = balanced_sample(train_pairs, spec.refine.mining_pool)
    margins = preference_margins(gen, pool, spec.evaluation.settings.batch_size).per_token
    return pool, margins, preference_accuracy(pool, margins, "mining/sft")


def _trained_kinds(pairs: Sequence[PreferencePair]) -> dict[str, float]:
    return {f"refine/trained_pairs/{kind}": float(n) for kind, n in Counter(p.kind for p in pairs).items()}


def refined_adapter_dir(trained: TrainedAdapter, spec: RunSpec, preferences: PreferenceSet, paths: Paths) -> Path:
    """Keyed by its SFT parent, the pairs and the refine settings."""
    key = content_hash({"sft": trained.adapter_dir, "pairs": preferences.sha256, "refine": spec.refine.model_dump()})
    return paths.adapters / spec.framework.domain / f"dpo-{key[:12]}"


def parent_config(info: VersionInfo, config: PipelineConfig) -> PipelineConfig:
    """The config for refining a registered version on demand (`rslm refine`): the framework and
    profile it was trained with, refinement switched on."""
    return config.model_copy(update={"framework": info.tags.get("framework") or config.framework,
                                     "profile": info.tags.get("profile") or config.profile,
                                     "refine_overrides": {**config.refine_overrides, "enabled": True}})


def sft_version(info: VersionInfo, config: PipelineConfig, tracking: Tracking, paths: Paths
                ) -> tuple[DatasetRef, TrainedAdapter]:
    """A registered version as the SFT parent of an on-demand refinement: the dataset it was
    trained on and its adapter as downloaded from the registry."""
    from tasks.adapters.data.dataset_store import dataset_ref
    from tasks.adapters.tracking.registry import model_files

    eval_path = info.tags.get("dataset.eval_path")
    if not eval_path or not Path(eval_path).is_file():
        raise RslmError(f"{info.uri}: its dataset ({eval_path or 'not recorded'}) is not on this machine; "
                        "refinement builds its pairs from that dataset")
    dataset = dataset_ref(Path(eval_path).parent)
    model_config, artifacts = model_files(tracking.registry.download(info, paths.registry_cache))
    trained = TrainedAdapter(run_id=info.run_id, experiment=config.tracking.experiment(dataset.domain),
                             adapter_dir=str(artifacts["adapter"]),
                             base_model=str(artifacts.get("base_model") or model_config["base_model"]),
                             summary={"refined_from": info.uri}, base_provenance={})
    return dataset, trained


MODELS = ("base", "sft", "dpo")


def _accuracy(figures: dict[str, float], model: str, measure: str = "preference") -> dict[str, float]:
    """One model's accuracy by kind ("all" first) from the logged figures."""
    prefix = f"{measure}/{model}/accuracy"
    return {key.removeprefix(prefix).strip("/") or "all": value for key, value in figures.items()
            if key.startswith(prefix)}


def _comparison_table(figures: dict[str, float]) -> pd.DataFrame:
    """One row per kind; a column per model, summed and per token."""
    columns = {f"{model}{suffix}": _accuracy(figures, model, measure) for measure, suffix in
               (("preference", ""), ("preference_per_token", "_per_token")) for model in MODELS}
    return pd.DataFrame(columns).rename_axis("kind").reset_index()


def refine_generator(spec: RunSpec, base_model: str, adapter_dir: str | Path) -> Generator:
    """An adapter as the evaluation stage will ask it: under the run's grounding when it has one.
    The SFT parent's held-out figures, which the gate compares with the refined version's, and the
    on-policy answers must come from the prompts the registered model is asked with."""
    return load_generator(base_model, adapter_dir, spec.framework.system_prompt, device=spec.training.device,
                          grounding=spec.grounding)


def refine_and_track(spec: RunSpec, dataset: DatasetRef, trained: TrainedAdapter, preferences: PreferenceSet,
                     paths: Paths, tracking: Tracking) -> TrainedAdapter:
    """DPO on top of `trained`, tracked as a run nested under its training run; returns the
    refined adapter, which is what gets registered and evaluated."""
    from tasks.adapters.model.preference_training import train_dpo
    from tasks.adapters.tracking.plots import grouped_bars

    cfg, profile, training = spec.refine, spec.profile, spec.training
    train_rows = [row for _, row in read_rows(dataset.train_path)]
    context = PairContext.of(train_rows, [row for _, row in read_rows(dataset.eval_path)], spec.evaluation.heldout)
    train_pairs = read_preferences(Path(preferences.train_path))
    held_out = balanced_sample(read_preferences(Path(preferences.eval_path)), cfg.heldout_pairs)
    refined_dir = refined_adapter_dir(trained, spec, preferences, paths)
    work_dir = staging_dir(refined_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    experiment = trained.experiment
    tags = {"profile": profile.name, "domain": dataset.domain, "stage": "refine-preferences",
            PARENT_RUN_TAG: trained.run_id, PAIRS_SHA_TAG: preferences.sha256}
    with tracking.run(experiment, run_name=f"{dataset.domain}-{profile.name}-dpo", tags=tags,
                      parent_run_id=trained.run_id) as run:
        run.log_params({**flatten_params("refine", cfg), **flatten_params("preferences", spec.config.preferences),
                        "refine.sft_adapter": trained.adapter_dir, "refine.held_out_pairs": str(len(held_out))})
        sft = refine_generator(spec, trained.base_model, trained.adapter_dir)
        figures = _before(sft, spec, held_out)
        # kept with the pairs, not in the adapter directory that is logged as the registered model
        on_policy_dir = Path(preferences.directory) / f"on-policy-{refined_dir.name}"
        on_policy_dir.mkdir(parents=True, exist_ok=True)
        on_policy, on_policy_sha = _checked_on_policy(sft, spec, train_rows, context, on_policy_dir)
        pool, margins, mined = _mining_pool(sft, spec, train_pairs)
        del sft
        pairs = dpo_training_set(pool, on_policy, cfg.max_steps * cfg.batch_size, margins)
        figures |= mined | _trained_kinds(pairs)
        run.log_params({"refine.pairs": str(len(pairs)), "refine.on_policy_pairs": str(len(on_policy)),
                        "refine.on_policy_trained": str(sum(p.kind == "on_policy" for p in pairs)),
                        "refine.on_policy_sha256": on_policy_sha or "none"})
        summary = train_dpo(trained.base_model, trained.adapter_dir, pairs, cfg, training, work_dir,
                            sink=run.metrics_sink("dpo/"), chat_format=profile.chat_format)
        refined = refine_generator(spec, trained.base_model, work_dir)
        figures |= _ranking(refined, held_out, spec.evaluation.settings.batch_size, "dpo")
        del refined
        run.log_metrics({**figures, **{f"dpo/final/{k}": v for k, v in summary.items() if isinstance(v, int | float)}})
        table = _comparison_table(figures)
        run.log_table(table, "refine/preference_accuracy.json")
        if on_policy:
            run.log_file(on_policy_dir / ON_POLICY_FILE, "refine")
        run.log_image(grouped_bars({m: _accuracy(figures, m) for m in MODELS},
                                   on_policy_dir / "preference_accuracy.png",
                                   f"{dataset.domain}: held-out pairs ranked right, base / SFT / SFT+DPO",
                                   "preference accuracy"))
        publish_directory(work_dir, refined_dir, leave_out=("checkpoints",))
    return replace(trained, run_id=run.run_id, adapter_dir=str(refined_dir),
                   summary={**trained.summary, "refine": {**summary, **figures}},
                   lineage={PARENT_RUN_TAG: trained.run_id, PAIRS_SHA_TAG: preferences.sha256,
                            "refine.sft_adapter": trained.adapter_dir})


def sft_parent_metrics(run_metrics: dict[str, float]) -> dict[str, float] | None:
    """The SFT parent's metrics recorded on a refined version's run (None: not a refined version)."""
    found = {k.removeprefix(SFT_PREFIX): v for k, v in run_metrics.items() if k.startswith(SFT_PREFIX)}
    return found or None
