"""Stage: a validated dataset -> preference pairs (train and held-out) -> Great Expectations verdict.
The pairs are what DPO refines the SFT adapter with (issue 16); the held-out ones measure how
often a model ranks chosen above rejected, per rejection kind."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from expectations.preference_pairs import build_suite, flatten_pairs
from tasks.adapters.data.dataset_store import DatasetRef, read_rows
from tasks.adapters.data.gx_runner import ValidationReport, run_suite
from tasks.adapters.data.preference_store import EVAL_FILE, TRAIN_FILE, read_located_preferences, write_preferences
from tasks.domain.config import HeldOutSet, PipelineConfig
from tasks.domain.errors import DataValidationError
from tasks.domain.framework import Framework
from tasks.domain.hashing import content_hash
from tasks.domain.preferences import build_pairs, reasons_by_pattern
from tasks.domain.records import Row
from tasks.stages.record_set import CheckedRecords

PreferenceSet = CheckedRecords  # the pairs DPO trains on and is measured with


def build_preferences(dataset: DatasetRef, framework: Framework, config: PipelineConfig, root: Path,
                      heldout: HeldOutSet | None = None) -> PreferenceSet:
    """Pairs from the dataset's training rows (to train on) and from its eval rows (to measure
    with), written whole, then read back and validated: what is checked is the file DPO will read,
    so a pairs file changed on disk fails by its line. The caller refuses a failed report."""
    train_rows = [row for _, row in read_rows(dataset.train_path)]
    eval_rows = [row for _, row in read_rows(dataset.eval_path)]
    settings = config.preferences
    train = build_pairs(train_rows, framework, seed=config.seed, kinds=settings.kinds, per_row=settings.per_row)
    held_out = build_pairs(eval_rows, framework, seed=config.seed + 1, kinds=settings.kinds, per_row=settings.per_row)
    key = content_hash({"preferences": settings.model_dump(), "seed": config.seed, "framework": framework.model_dump()})
    counts = {"train": dict(Counter(p.kind for p in train)), "eval": dict(Counter(p.kind for p in held_out))}
    target = write_preferences(root / dataset.domain / f"{dataset.sha256[:12]}-{key[:8]}", train, held_out, {
        "domain": dataset.domain, "dataset_sha256": dataset.sha256, "settings": settings.model_dump(),
        "seed": config.seed, "counts": counts, "files": {"train": TRAIN_FILE, "eval": EVAL_FILE}})
    report = check_pairs(target / TRAIN_FILE, framework, config, PairContext.of(train_rows, eval_rows, heldout),
                         target / "validation")
    return CheckedRecords.written(target, TRAIN_FILE, EVAL_FILE, counts, report, unit="pairs")


@dataclass(frozen=True)
class PairContext:
    """What a pair is checked against: the training reasons ("another pattern" draws only on
    them), and the eval-split and held-out questions no prompt may hold."""

    pool: dict[str, list[str]]
    eval_questions: list[str]
    heldout_questions: list[str]

    @classmethod
    def of(cls, train_rows: Sequence[Row], eval_rows: Sequence[Row], heldout: HeldOutSet | None) -> PairContext:
        return cls(reasons_by_pattern(train_rows), ["\n".join(r.turns("user")) for r in eval_rows],
                   [q.question for q in heldout.questions] if heldout else [])


def check_pairs(path: Path, framework: Framework, config: PipelineConfig, context: PairContext,
                out_dir: Path) -> ValidationReport:
    """The `reasoning_preferences` suite over a pairs file; failures name the pair and its line.
    A malformed line fails before the suite, naming file and line."""
    located = read_located_preferences(path)
    if not located:
        raise DataValidationError(f"{path}: no preference pairs to train on", [])
    frame = flatten_pairs([pair for _, pair in located], framework, context.pool, context.eval_questions,
                          context.heldout_questions, located=(str(path), [line for line, _ in located]))
    return run_suite(frame, build_suite(framework, config.validation), out_dir)


def require_valid_pairs(report: ValidationReport) -> None:
    if not report.success:
        docs = f" (Data Docs: {report.data_docs_index})" if report.data_docs_index else ""
        raise DataValidationError(f"preference pairs failed validation: {report.summary()}{docs}",
                                  report.failures, report.data_docs_index)
