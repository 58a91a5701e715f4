"""Stage: a validated dataset -> step-labelled answers (checked by Great Expectations) -> a process
reward model (LoRA + token head, one MLflow run) -> measured on held-out step labels beside the
champion reward model -> registered as `<prefix>-<domain>-prm` -> its own gate moves `champion`.

The reward model is a function of its step data and settings: a version registered with the same
key is reused, so an unchanged nightly trains nothing here either (issue 17)."""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from expectations.step_labels import build_suite, flatten_steps
from tasks.adapters.data.dataset_store import DatasetRef, read_rows
from tasks.adapters.data.gx_runner import ValidationReport, run_suite
from tasks.adapters.data.preference_store import read_located, write_record_set
from tasks.adapters.ops.atomic_files import publish_directory, staging_dir
from tasks.adapters.ops.settings import Paths
from tasks.adapters.tracking.registry import CHAMPION
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.blueprint import OfflineBlueprintGenerator
from tasks.domain.config import HeldOutSet, PipelineConfig, RewardConfig, flatten_params
from tasks.domain.errors import DataValidationError
from tasks.domain.framework import Framework
from tasks.domain.hashing import content_hash
from tasks.domain.promotion import Check, decide_reward_model, eligibility
from tasks.domain.records import Row
from tasks.domain.run_spec import RunSpec
from tasks.domain.sampling import spread_sample
from tasks.domain.steps import STEPS_VERSION, StepExample, borrowed_examples, on_policy_examples, step_examples
from tasks.stages.build_dataset import dataset_build
from tasks.stages.evaluate import EVALUATION_STATUS
from tasks.stages.record_set import CheckedRecords

STEPS_FILE = "reasoning_steps.jsonl"
STEPS_EVAL_FILE = "reasoning_steps.eval.jsonl"
REWARD_KEY_TAG = "reward_key"
PREFIX = "prm/"  # the reward model's metrics on its MLflow run


StepSet = CheckedRecords  # the step-labelled answers the reward model trains on and is measured with


@dataclass(frozen=True)
class OnPolicyAnswers:
    """A registered chat model's sampled answers to training questions (`reward.on_policy_rows`)."""

    model_uri: str  # pinned to its version: the step data's key changes when the model does
    asked: list[Row]
    answers: list[str]

    def settings(self) -> dict:
        return {"model": self.model_uri, "asked": len(self.asked), "answers": content_hash(self.answers)}


def sample_on_policy(spec: RunSpec, dataset: DatasetRef, tracking: Tracking, cache_root: Path,
                     say: Callable[[str], None] = print) -> OnPolicyAnswers | None:
    """The domain's registered chat model at `reward.on_policy_alias`, asked `reward.on_policy_rows`
    training questions drawn by the seed; None where that is 0 or no version holds the alias."""
    cfg = spec.reward
    if not cfg.on_policy_rows:
        return None
    name = spec.config.tracking.registered_model(dataset.domain)
    version = tracking.registry.version_for_alias(name, cfg.on_policy_alias)
    if version is None:
        say(f"reward model: no {name}@{cfg.on_policy_alias} to answer training questions: no on-policy steps this run")
        return None
    rows = [row for _, row in read_rows(dataset.train_path)]
    asked = random.Random(spec.config.seed).sample(rows, min(cfg.on_policy_rows, len(rows)))
    uri = f"models:/{name}/{version}"
    answers = tracking.registry.load_generator(uri, cache_root).answer_rows(
        asked, spec.evaluation.settings, cfg.on_policy_temperature, spec.config.seed)
    return OnPolicyAnswers(uri, asked, answers)


def build_step_data(dataset: DatasetRef, config: PipelineConfig, spec_reward: RewardConfig, framework, root: Path,
                    heldout: HeldOutSet | None = None, borrowed: Sequence[Framework] = (),
                    on_policy: OnPolicyAnswers | None = None) -> StepSet:
    """Step-labelled answers from the training rows (to train on, with the `borrowed` frameworks'
    answers and the `on_policy` model's failures) and the eval rows (to measure with), written
    whole, then read back and validated. The caller refuses a failed report."""
    train_rows = [row for _, row in read_rows(dataset.train_path)]
    eval_rows = [row for _, row in read_rows(dataset.eval_path)]
    settings = {"kinds": spec_reward.kinds, "per_row": spec_reward.per_row, "reorder_share": spec_reward.reorder_share,
                "borrowed": {b.domain: content_hash(b.model_dump(mode="json")) for b in borrowed},
                "on_policy": {**on_policy.settings(), "rule": spec_reward.on_policy_rule} if on_policy else None}
    own = (on_policy_examples(on_policy.asked, on_policy.answers, train_rows, spec_reward.on_policy_rule)
           if on_policy else [])
    train = step_examples(train_rows, framework, seed=config.seed, kinds=spec_reward.kinds, per_row=spec_reward.per_row,
                          reorder_share=spec_reward.reorder_share) + own + _borrowed_examples(config, spec_reward, borrowed)
    # the held-out labels keep the framework's order: the in-framework figure stays comparable
    held_out = step_examples(eval_rows, framework, seed=config.seed + 1, kinds=spec_reward.kinds,
                             per_row=spec_reward.per_row)
    key = content_hash({"steps": settings, "seed": config.seed, "framework": framework.model_dump(),
                        "version": STEPS_VERSION})
    counts = {"train": dict(Counter(e.kind for e in train)), "eval": dict(Counter(e.kind for e in held_out))}
    target = write_record_set(root / dataset.domain / f"{dataset.sha256[:12]}-{key[:8]}",
                              {STEPS_FILE: train, STEPS_EVAL_FILE: held_out},
                              {"domain": dataset.domain, "dataset_sha256": dataset.sha256, "settings": settings,
                               "seed": config.seed, "counts": counts})
    eval_questions = ["\n".join(r.turns("user")) for r in eval_rows]
    heldout_questions = [q.question for q in heldout.questions] if heldout else []
    report = check_steps(target / STEPS_FILE, spec_reward, config, eval_questions, heldout_questions,
                         target / "validation")
    return CheckedRecords.written(target, STEPS_FILE, STEPS_EVAL_FILE, counts, report, unit="step-labelled answers")


def _borrowed_examples(config: PipelineConfig, reward: RewardConfig, borrowed: Sequence[Framework]) -> list[StepExample]:
    """The training answers of each borrowed framework, expanded offline by the same recipe as its own
    dataset, with their corrupted copies."""
    return [example for framework in borrowed
            for example in borrowed_examples(framework.domain,
                                             dataset_build(OfflineBlueprintGenerator().generate(framework), config).train,
                                             framework, seed=config.seed, kinds=reward.kinds, per_row=reward.per_row)]


def check_steps(path: Path, reward: RewardConfig, config: PipelineConfig, eval_questions: Sequence[str],
                heldout_questions: Sequence[str], out_dir: Path) -> ValidationReport:
    """The `reasoning_steps` suite over a step file; failures name the example and its line. A
    malformed line (a label list that does not match the steps, say) fails before the suite."""
    located = read_located(path, StepExample)
    if not located:
        raise DataValidationError(f"{path}: no step-labelled answers to train on", [])
    frame = flatten_steps([e for _, e in located], eval_questions, heldout_questions,
                          located=(str(path), [line for line, _ in located]))
    return run_suite(frame, build_suite(config.validation, [*reward.kinds, "on_policy"]), out_dir)


def require_valid_steps(report: ValidationReport) -> None:
    if not report.success:
        docs = f" (Data Docs: {report.data_docs_index})" if report.data_docs_index else ""
        raise DataValidationError(f"step labels failed validation: {report.summary()}{docs}",
                                  report.failures, report.data_docs_index)


def reward_key(spec: RunSpec, steps: StepSet, base_override: str | None = None) -> str:
    """What a reward model is a function of: its step data, its settings, the base and the seed."""
    return content_hash({"steps_sha256": steps.sha256, "reward": spec.reward.model_dump(),
                         "model": spec.profile.model_dump(exclude={"training", "refine", "reward"}),
                         "seed": spec.training.seed, "base_override": base_override})


@dataclass
class RewardModel:
    """The domain's reward model after this stage: the version trained (or reused) and its verdict."""

    name: str
    version: str
    status: str  # trained | unchanged
    verdict: str
    metrics: dict[str, float]
    champion_version: str | None = None  # the reward model's champion after this stage
    run_id: str = ""
    aliases: list[str] = field(default_factory=list)
    minutes: float = 0.0
    resumed_from_step: int = 0  # 0: trained from the start; N: picked up from checkpoint N of a killed attempt

    @property
    def champion_uri(self) -> str | None:
        """What evaluation scores answers with: the reward model's champion, pinned to its version."""
        return f"models:/{self.name}/{self.champion_version}" if self.champion_version else None

    def to_dict(self) -> dict:
        return asdict(self)


def find_reward_model(spec: RunSpec, domain: str, key: str, tracking: Tracking) -> RewardModel | None:
    """The newest registered reward model trained with `key` whose evaluation succeeded (None: train)."""
    registry = tracking.registry
    name = spec.config.tracking.reward_model(domain)
    usable = [v for v in registry.find_by_tag(name, REWARD_KEY_TAG, key) if v.tags.get(EVALUATION_STATUS) == "succeeded"]
    if not usable:
        return None
    newest = registry.resolve(max(usable, key=lambda v: int(v.version)).uri, with_run=True)
    metrics = {k.removeprefix(f"{PREFIX}heldout/"): v for k, v in newest.metrics.items()
               if k.startswith(f"{PREFIX}heldout/")}
    return RewardModel(name=name, version=newest.version, status="unchanged",
                       verdict=newest.tags.get("promotion.decision", "-"), metrics=metrics,
                       champion_version=registry.version_for_alias(name, CHAMPION), run_id=newest.run_id,
                       aliases=sorted(newest.aliases))


@dataclass
class TrainedReward:
    run_id: str
    adapter_dir: str
    base_model: str
    metrics: dict[str, float]
    champion_version: str | None
    champion_metrics: dict[str, float] | None
    summary: dict


def _spread(examples: Sequence[StepExample], n: int) -> list[StepExample]:
    """Up to n examples across kinds and, within a kind, across patterns (the file is grouped by pattern)."""
    return spread_sample(examples, n, kind=lambda e: e.kind, pattern=lambda e: f"{e.borrowed_from or ''}/{e.pattern_id}")


def _training_sample(examples: Sequence[StepExample], cfg: RewardConfig) -> list[StepExample]:
    """The answers a training of `max_steps` x `batch_size` sees: `borrowed_share` of them from the
    borrowed frameworks (where there are any), the rest the domain's own, each spread by `_spread`."""
    n = cfg.max_steps * cfg.batch_size
    own = [e for e in examples if e.borrowed_from is None]
    borrowed = [e for e in examples if e.borrowed_from is not None]
    taken = round(n * cfg.borrowed_share) if borrowed else 0
    return _spread(own, n - taken) + (_spread(borrowed, taken) if taken else [])


def _score(scorer, examples: Sequence[StepExample], batch_size: int) -> list[list[float]]:
    return scorer.score_steps([e.prompt for e in examples], [e.steps for e in examples], batch_size)


def _measured(scorer, spec: RunSpec, held_out: Sequence[StepExample]) -> tuple[dict[str, float], list[list[float]]]:
    """A reward model's figures: on the held-out step labels of the framework, and on the domain's
    hand-written step probes outside it (where it has them); and its held-out step scores."""
    from tasks.domain.steps import out_of_framework_metrics, step_metrics

    batch = spec.evaluation.settings.batch_size
    scores = _score(scorer, held_out, batch)
    figures = step_metrics(held_out, scores)
    probes = spec.evaluation.step_probes
    if probes is not None:
        probe_scores = scorer.score_steps([scorer.conversation(a.question) for a in probes.answers],
                                          [a.steps for a in probes.answers], batch)
        figures |= out_of_framework_metrics([a.question for a in probes.answers],
                                            [a.wrong_step for a in probes.answers], probe_scores)
    return figures, scores


def _champion_figures(spec: RunSpec, domain: str, held_out: Sequence[StepExample], paths: Paths,
                      tracking: Tracking) -> tuple[str | None, dict[str, float] | None]:
    """The champion reward model measured on the same held-out labels (None: there is none)."""
    registry = tracking.registry
    name = spec.config.tracking.reward_model(domain)
    champion = registry.version_for_alias(name, CHAMPION)
    if not champion:
        return None, None
    scorer = registry.load_reward_scorer(f"models:/{name}/{champion}", paths.registry_cache, spec.training.device)
    return champion, _measured(scorer, spec, held_out)[0]


def _scores_table(examples: Sequence[StepExample], scores: Sequence[Sequence[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"kind": e.kind, "bad_step": e.bad_step, "question": e.question(),
                          "steps": e.steps, "labels": e.labels, "scores": [round(s, 4) for s in ss],
                          "lowest": min(range(len(ss)), key=ss.__getitem__)}
                         for e, ss in zip(examples, scores, strict=True)])


def _kinds(figures: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("bad_step_found/"): v for k, v in figures.items() if k.startswith("bad_step_found/")}


def train_and_measure(spec: RunSpec, dataset: DatasetRef, steps: StepSet, base_model: str, paths: Paths,
                      tracking: Tracking, say: Callable[[str], None] | None = None) -> TrainedReward:
    """One MLflow run (in the domain's experiment): the reward model trained, then measured on
    held-out step labels beside the champion reward model; loss curve, per-kind bars and the
    held-out scores table logged to it. It trains in a staging directory keyed by its step data
    and settings: an attempt killed mid-way leaves checkpoints there, and the next one resumes
    from the last complete checkpoint (and `say`s so)."""
    from tasks.adapters.model.reward_model import load_reward_scorer, train_reward_model
    from tasks.adapters.tracking.plots import grouped_bars, loss_curve

    cfg, profile, training, domain = spec.reward, spec.profile, spec.training, dataset.domain
    train = _training_sample([e for _, e in read_located(Path(steps.train_path), StepExample)], cfg)
    held_out = _spread([e for _, e in read_located(Path(steps.eval_path), StepExample)], cfg.heldout_examples)
    key = content_hash({"steps": steps.sha256, "reward": cfg.model_dump(), "base": base_model})
    adapter_dir = paths.adapters / domain / f"prm-{key[:12]}"
    work_dir = staging_dir(adapter_dir)
    experiment = spec.config.tracking.experiment(domain)
    tags = {"profile": profile.name, "domain": domain, "stage": "train-reward-model", "steps_sha256": steps.sha256}
    with tracking.run(experiment, run_name=f"{domain}-{profile.name}-prm", tags=tags) as run:
        run.log_params({**flatten_params("reward", cfg), "reward.base_model": base_model,
                        "reward.train_examples": str(len(train)), "reward.heldout_examples": str(len(held_out)),
                        "reward.steps_path": steps.train_path,
                        "reward.on_policy_steps": str(steps.counts["train"].get("on_policy", 0))})
        run.log_validation(Path(steps.report.result_path).parent)
        summary = train_reward_model(base_model, train, cfg, training, work_dir, sink=run.metrics_sink(f"{PREFIX}train/"),
                                     chat_format=profile.chat_format, say=say)
        scorer = load_reward_scorer(base_model, work_dir, spec.framework.system_prompt, training.device)
        figures, scores = _measured(scorer, spec, held_out)
        del scorer
        champion, champion_figures = _champion_figures(spec, domain, held_out, paths, tracking)
        run.log_metrics({f"{PREFIX}heldout/{k}": v for k, v in figures.items()}
                        | {f"{PREFIX}champion/{k}": v for k, v in (champion_figures or {}).items()}
                        | {f"{PREFIX}final/{k}": float(v) for k, v in summary.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)})
        run.log_table(_scores_table(held_out, scores), "reward/heldout_step_scores.json")
        run.log_image(loss_curve(summary["history"], work_dir / "reward_loss.png", f"{domain}: step reward model loss"))
        bars = {f"champion v{champion}": _kinds(champion_figures)} if champion_figures else {}
        run.log_image(grouped_bars({**bars, "this model": _kinds(figures)}, work_dir / "bad_step_found.png",
                                   f"{domain}: corrupted step scored lowest, by corruption", "share of answers"))
        publish_directory(work_dir, adapter_dir, leave_out=("checkpoints",))
    return TrainedReward(run_id=run.run_id, adapter_dir=str(adapter_dir), base_model=base_model, metrics=figures,
                         champion_version=champion, champion_metrics=champion_figures,
                         summary={k: v for k, v in summary.items() if k != "history"})


def register_and_gate(spec: RunSpec, dataset: DatasetRef, trained: TrainedReward, tracking: Tracking,
                      key: str) -> RewardModel:
    """Register the reward model, record its held-out measurement, and let its gate decide
    whether it becomes the champion reward model."""
    registry = tracking.registry
    name = spec.config.tracking.reward_model(dataset.domain)
    with tracking.resume(trained.run_id) as run:
        model_uri = run.log_reward_model(Path(trained.adapter_dir), base_source=trained.base_model,
                                         log_base=spec.profile.log_base_model, system_prompt=spec.framework.system_prompt)
    version, _ = registry.register(model_uri, name, tags={
        "dataset_sha256": dataset.sha256, "run_id": trained.run_id, "profile": spec.profile.name,
        "framework": spec.framework_path, REWARD_KEY_TAG: key, EVALUATION_STATUS: "succeeded"})
    info = registry.resolve(f"models:/{name}/{version}", with_run=True)
    current = registry.version_for_alias(name, CHAMPION)
    preconditions = eligibility(info.run_status, info.tags.get(EVALUATION_STATUS))
    if current != trained.champion_version:
        preconditions.append(Check(name="champion unchanged since measurement", passed=False,
                                   detail=f"measured against v{trained.champion_version}, champion is now v{current}"))
    decision = decide_reward_model(trained.metrics, trained.champion_metrics,
                                   min_bad_step_found=spec.reward.min_bad_step_found,
                                   max_drop=spec.reward.max_bad_step_found_drop, challenger_version=version,
                                   champion_version=trained.champion_version, preconditions=preconditions,
                                   # a domain without hand-written step probes has nothing to gate on there
                                   min_out_of_framework_f1=spec.reward.min_out_of_framework_f1
                                   if spec.evaluation.step_probes else None)
    registry.record_decision(name, decision)
    aliases = registry.promote(name, version) if decision.promote else registry.aliases_now(name)
    with tracking.resume(trained.run_id) as run:
        run.set_tags({"promotion.decision": decision.verdict})
        run.log_dict(decision.model_dump(mode="json"), "promotion/decision.json")
    return RewardModel(name=name, version=version, status="trained", verdict=decision.verdict, metrics=trained.metrics,
                       champion_version=aliases.get(CHAMPION), run_id=trained.run_id,
                       aliases=sorted({"challenger", *(a for a, v in aliases.items() if v == version)}),
                       minutes=trained.summary.get("duration_s", 0.0) / 60,
                       resumed_from_step=trained.summary.get("resumed_from_step", 0))
