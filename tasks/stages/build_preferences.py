"""Stage: a validated dataset -> preference pairs (train and held-out) -> Great Expectations verdict.
The pairs are what DPO refines the SFT adapter with (issue 16); the held-out ones measure how
often a model ranks chosen above rejected, per rejection kind."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from expectations.preference_pairs import build_suite, flatten_pairs
from tasks.adapters.data.dataset_store import DatasetRef, read_rows
from tasks.adapters.data.gx_runner import ValidationReport, run_suite
from tasks.adapters.data.preference_store import EVAL_FILE, TRAIN_FILE, write_preferences
from tasks.domain.config import HeldOutSet, PipelineConfig
from tasks.domain.framework import Framework
from tasks.domain.hashing import content_hash
from tasks.domain.preferences import build_pairs, reasons_by_pattern


@dataclass(frozen=True)
class PreferenceSet:
    directory: str
    train_path: str
    eval_path: str
    counts: dict[str, dict[str, int]]  # split -> kind -> pairs
    report: ValidationReport

    def summary(self) -> str:
        train = self.counts["train"]
        return (f"{sum(train.values())} training pairs ({', '.join(f'{k} {n}' for k, n in sorted(train.items()))}), "
                f"{sum(self.counts['eval'].values())} held-out pairs; validation: {self.report.summary()}")


def build_preferences(dataset: DatasetRef, framework: Framework, config: PipelineConfig, root: Path,
                      heldout: HeldOutSet | None = None) -> PreferenceSet:
    """Pairs from the dataset's training rows (to train on) and from its eval rows (to measure
    with), written whole and validated; the caller refuses a failed report."""
    train_rows = [row for _, row in read_rows(dataset.train_path)]
    eval_rows = [row for _, row in read_rows(dataset.eval_path)]
    settings = config.preferences
    pool = reasons_by_pattern(train_rows)  # "another pattern" draws only on training reasons
    train = build_pairs(train_rows, framework, seed=config.seed, kinds=settings.kinds, per_row=settings.per_row)
    held_out = build_pairs(eval_rows, framework, seed=config.seed + 1, kinds=settings.kinds, per_row=settings.per_row)
    key = content_hash({"preferences": settings.model_dump(), "seed": config.seed, "framework": framework.model_dump()})
    counts = {"train": dict(Counter(p.kind for p in train)), "eval": dict(Counter(p.kind for p in held_out))}
    target = write_preferences(root / dataset.domain / f"{dataset.sha256[:12]}-{key[:8]}", train, held_out, {
        "domain": dataset.domain, "dataset_sha256": dataset.sha256, "settings": settings.model_dump(),
        "seed": config.seed, "counts": counts, "files": {"train": TRAIN_FILE, "eval": EVAL_FILE}})
    eval_questions = ["\n".join(r.turns("user")) for r in eval_rows]
    frame = flatten_pairs(train, framework, pool, eval_questions,
                          [q.question for q in heldout.questions] if heldout else ())
    report = run_suite(frame, build_suite(framework, config.validation), target / "validation")
    return PreferenceSet(str(target), str(target / TRAIN_FILE), str(target / EVAL_FILE), counts, report)
