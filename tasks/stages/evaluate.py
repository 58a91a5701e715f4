"""Stage: a registered version and the current champion measured on the same eval split (and the
version against its own base on held-out questions); metrics, per-example tables and plots are
logged to the version's MLflow run. `rslm evaluate` calls it directly."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from tasks.adapters.data.dataset_store import TRAIN_FILE, file_sha256, read_dataset_files
from tasks.adapters.ops.settings import Paths
from tasks.adapters.tracking.registry import CHAMPION, ModelRegistry, VersionInfo
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.content import ContentPlan, content_plan
from tasks.domain.errors import RslmError, first_line
from tasks.domain.evaluation import (
    METRICS_VERSION,
    AnswerRecord,
    EvaluationResult,
    HeldOutAnswer,
    heldout_markdown,
    step_reward_against_references,
    step_reward_metrics,
    step_reward_on_flags,
)
from tasks.domain.hashing import content_hash
from tasks.domain.promotion import KEY_METRICS, comparison_markdown
from tasks.domain.records import Row, require_metadata
from tasks.domain.run_spec import EvaluationSpec

EVALUATION_STATUS = "evaluation.status"


@dataclass
class Evaluation:
    """A version measured against the champion on one eval split (what the gate decides on)."""

    name: str
    version: str
    run_id: str
    eval_path: str
    eval_sha256: str
    metrics: dict[str, float]
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None
    champion_error: str | None = None
    report_dir: str = ""
    plots: list[str] = field(default_factory=list)
    heldout_markdown: str = ""  # base vs tuned answers to the held-out questions, side by side
    reward_model: str | None = None  # the process reward model that scored the held-out answers' steps

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        return comparison_markdown(self.metrics, self.champion_metrics)


def _eval_rows(info: VersionInfo, eval_path: str | None) -> tuple[str, list[Row]]:
    path = eval_path or info.tags.get("dataset.eval_path")
    if not path:
        raise RslmError(f"{info.uri}: no eval set recorded on the version; pass --dataset DIR")
    path = str(Path(path) / "reasoning_dataset.eval.jsonl") if Path(path).is_dir() else path
    located = read_dataset_files([path])
    require_metadata(located, "evaluation")
    rows = [row for _, _, row in located]
    if not rows:
        raise RslmError(f"{path}: the eval set is empty")
    return path, rows


def _content_plan(eval_path: str, spec: EvaluationSpec) -> tuple[ContentPlan | None, str | None]:
    """The content checks' distractors and paste index, from the training rows beside the eval
    split (the rows the version learned from), and that file's sha256; (None, None) where there is
    no training file there to judge pastes by."""
    train_path = Path(eval_path).with_name(TRAIN_FILE)
    if not train_path.is_file():
        return None, None
    rows = [row for _, _, row in read_dataset_files([str(train_path)])]
    return content_plan(rows, spec.framework, spec.settings.seed), file_sha256(str(train_path))


def _cache_key(eval_sha: str, spec: EvaluationSpec, train_sha: str | None = None) -> str:
    # the framework too: its word caps and key terms are what the style metrics judge by; the
    # training rows: pastes and distractors are drawn from them
    return content_hash({"eval": eval_sha, "train": train_sha, "evaluation": spec.settings.model_dump(),
                         "probes": spec.probes.model_dump(),
                         "framework": spec.framework.model_dump(mode="json"),
                         "heldout": spec.heldout.model_dump() if spec.heldout else None,
                         "reward_model": spec.reward_model,
                         "metrics_version": METRICS_VERSION})[:16]


def _measure(info: VersionInfo, rows: list[Row], spec: EvaluationSpec, registry: ModelRegistry, paths: Paths,
             out_dir: Path, content: ContentPlan | None = None) -> EvaluationResult:
    """One version's metrics; versions are immutable, so a result for the same eval set,
    evaluation config and probes is reused (the champion is re-measured every night otherwise)."""
    from tasks.adapters.model.measurement import evaluate_generator

    cached = out_dir / "result.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        answers = [AnswerRecord(**a) for a in json.loads((out_dir / "answers.json").read_text())]
        return EvaluationResult(metrics=data["metrics"], answers=answers, paraphrases=data["paraphrases"],
                                probe_kl=data["probe_kl"], heldout=[HeldOutAnswer(**h) for h in data.get("heldout", [])])
    generator = registry.load_generator(info.uri, paths.registry_cache)
    questions = spec.heldout.questions if spec.heldout else []
    result = evaluate_generator(generator, rows, spec.framework, spec.probes.probes, spec.settings, questions, content)
    del generator
    if spec.reward_model and result.heldout:
        _score_steps(result, spec, registry, paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "answers.json").write_text(json.dumps([asdict(a) for a in result.answers], indent=1))
    # result.json last: its presence marks a complete cached evaluation
    cached.write_text(json.dumps({"metrics": result.metrics, "paraphrases": result.paraphrases,
                                  "probe_kl": result.probe_kl, "heldout": [asdict(h) for h in result.heldout]},
                                 indent=1))
    return result


def _score_steps(result: EvaluationResult, spec: EvaluationSpec, registry: ModelRegistry, paths: Paths) -> None:
    """The reward model's score of every step of the held-out answers, on the answers and as
    `heldout/step_reward` and `heldout/answer_reward`, and how it scores the reasons the content
    checks flagged (`heldout/step_reward_flag_auroc`) and the references' steps against the tuned
    answers' (`heldout/step_reward_reference_auroc`)."""
    scorer = registry.load_reward_scorer(spec.reward_model, paths.registry_cache)
    scored = scorer.score([h.question for h in result.heldout], [h.tuned for h in result.heldout],
                          spec.settings.batch_size)
    for answer, steps in zip(result.heldout, scored, strict=True):
        answer.tuned_step_scores = [round(v, 4) for v in steps.scores]
    result.metrics.update(step_reward_metrics([s.scores for s in scored]))
    result.metrics.update(step_reward_on_flags(result.heldout))
    references = [h.reference for h in result.heldout if h.reference]
    if len(references) == len(result.heldout):  # every held-out question has its reference
        reference_scores = scorer.score([h.question for h in result.heldout], references, spec.settings.batch_size)
        result.metrics.update(step_reward_against_references([s.scores for s in scored],
                                                             [s.scores for s in reference_scores]))


def _log_to_run(evaluation: Evaluation, result: EvaluationResult, tracking: Tracking) -> None:
    """Metrics (`eval/...`, the champion's as `eval_champion/...`), tables and plots on the run."""
    from tasks.adapters.tracking.plots import comparison_chart

    report = Path(evaluation.report_dir)
    chart = comparison_chart(evaluation.metrics, evaluation.champion_metrics, KEY_METRICS,
                             report / "champion_vs_challenger.png",
                             f"v{evaluation.version} vs champion "
                             f"{'v' + evaluation.champion_version if evaluation.champion_version else '(none)'}",
                             labels=("champion", f"v{evaluation.version}"))
    loss_curve = tracking.download_artifact(evaluation.run_id, "plots/loss_curve.png", report)
    evaluation.plots = [str(p) for p in (loss_curve, chart) if p]
    with tracking.resume(evaluation.run_id) as run:
        run.log_metrics({f"eval/{k}": v for k, v in evaluation.metrics.items()})
        if evaluation.champion_metrics:
            run.log_metrics({f"eval_champion/{k}": v for k, v in evaluation.champion_metrics.items()})
        if result.answers:
            run.log_table(pd.DataFrame([asdict(a) for a in result.answers]), "evaluation/answers.json")
        if result.heldout:
            run.log_table(pd.DataFrame([asdict(h) for h in result.heldout]), "evaluation/heldout_answers.json")
            run.log_text(evaluation.heldout_markdown, "evaluation/base_vs_tuned.md")
        run.log_dict({"paraphrases": result.paraphrases}, "evaluation/paraphrases.json")
        run.log_dict({"probes": result.probe_kl}, "evaluation/drift_probes.json")
        run.log_text(evaluation.markdown(), "evaluation/comparison.md")
        run.log_image(chart)
        run.set_tags({"evaluation.eval_sha256": evaluation.eval_sha256,
                           "evaluation.champion_version": evaluation.champion_version or "none",
                           "evaluation.reward_model": evaluation.reward_model or "none"})


def evaluate_version(model_uri: str, spec: EvaluationSpec, paths: Paths, tracking: Tracking,
                     eval_path: str | None = None) -> Evaluation:
    """Evaluate a registered version (and the champion, on the same eval split) and log it all to
    the version's run. A failure tags the version `evaluation.status=failed`, which bars promotion."""
    registry = tracking.registry
    info = registry.resolve(model_uri)
    try:
        path, rows = _eval_rows(info, eval_path)
        eval_sha = file_sha256(path)
        content, train_sha = _content_plan(path, spec)
        key = _cache_key(eval_sha, spec, train_sha)
        report_dir = paths.evaluations / info.name / f"v{info.version}" / key
        result = _measure(info, rows, spec, registry, paths, report_dir, content)
        evaluation = Evaluation(name=info.name, version=info.version, run_id=info.run_id, eval_path=path,
                                eval_sha256=eval_sha, metrics=result.metrics, report_dir=str(report_dir),
                                reward_model=spec.reward_model,
                                heldout_markdown=heldout_markdown(result.heldout, f"{info.name} v{info.version}: base vs tuned "
                                                                  "on held-out questions") if result.heldout else "")
        champion = registry.version_for_alias(info.name, CHAMPION)
        if champion and champion != info.version:
            evaluation.champion_version = champion
            try:
                champion_info = registry.resolve(f"models:/{info.name}/{champion}")
                evaluation.champion_metrics = _measure(champion_info, rows, spec, registry, paths,
                                                       paths.evaluations / info.name / f"v{champion}" / key,
                                                       content).metrics
            except Exception as error:  # noqa: BLE001 - the gate reports it; the challenger's numbers stand
                evaluation.champion_error = f"{type(error).__name__}: {first_line(error, 300)}"
        _log_to_run(evaluation, result, tracking)
    except BaseException as error:
        registry.set_version_tags(info.name, info.version, {
            EVALUATION_STATUS: "failed", "evaluation.error": first_line(error)})
        raise
    registry.set_version_tags(info.name, info.version, {EVALUATION_STATUS: "succeeded",
                                                        "evaluation.eval_sha256": eval_sha})
    if "evaluation.error" in info.tags:  # from an earlier, failed attempt: no longer true
        registry.delete_version_tag(info.name, info.version, "evaluation.error")
    return evaluation
