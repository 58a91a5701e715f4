"""What a stage that writes labelled records for a dataset hands on: the files (training and
held-out), how many of each kind, the Great Expectations verdict on the training file, and that
file's sha256 (what a model trained on it is keyed by). Preference pairs and step labels are both one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.adapters.data.dataset_store import file_sha256
from tasks.adapters.data.gx_runner import ValidationReport


@dataclass(frozen=True)
class CheckedRecords:
    directory: str
    train_path: str
    eval_path: str
    counts: dict[str, dict[str, int]]  # split -> kind -> records
    report: ValidationReport
    sha256: str
    unit: str = "records"  # what one record is, for summaries: "pairs", "step-labelled answers"

    @classmethod
    def written(cls, directory: Path, train_file: str, eval_file: str, counts: dict[str, dict[str, int]],
                report: ValidationReport, unit: str) -> CheckedRecords:
        return cls(str(directory), str(directory / train_file), str(directory / eval_file), counts, report,
                   file_sha256(str(directory / train_file)), unit)

    def summary(self) -> str:
        train = self.counts["train"]
        return (f"{sum(train.values())} training {self.unit} ({', '.join(f'{k} {n}' for k, n in sorted(train.items()))}), "
                f"{sum(self.counts['eval'].values())} held out; validation: {self.report.summary()}")
