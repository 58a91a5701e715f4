"""Preference pairs on disk: `reasoning_preferences.jsonl` (to train on), its `.eval.jsonl` twin
(to measure preference accuracy with, never trained on) and a manifest with their provenance,
published whole into `<root>/<domain>/<dataset sha12>-<settings key>/`."""
from __future__ import annotations

import json
from pathlib import Path

from tasks.adapters.ops.atomic_files import publish_directory, staging_dir
from tasks.domain.errors import DatasetFormatError
from tasks.domain.preferences import PreferencePair

TRAIN_FILE = "reasoning_preferences.jsonl"
EVAL_FILE = "reasoning_preferences.eval.jsonl"
MANIFEST_FILE = "manifest.json"


def _jsonl(pairs: list[PreferencePair]) -> str:
    return "".join(json.dumps(p.model_dump(mode="json"), ensure_ascii=False) + "\n" for p in pairs)


def write_preferences(target: Path, train: list[PreferencePair], held_out: list[PreferencePair],
                      manifest: dict) -> Path:
    """Build in a staging directory and publish it whole; an existing identical set is kept."""
    if (target / MANIFEST_FILE).is_file():
        return target
    staging = staging_dir(target)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / TRAIN_FILE).write_text(_jsonl(train), encoding="utf-8")
    (staging / EVAL_FILE).write_text(_jsonl(held_out), encoding="utf-8")
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return publish_directory(staging, target)


def read_preferences(path: Path) -> list[PreferencePair]:
    """Pairs from a JSONL file; a bad line is named by its number."""
    from pydantic import ValidationError

    pairs, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pairs.append(PreferencePair.model_validate_json(line))
        except ValidationError as error:
            problems.append(f"line {number}: {error.errors()[0]['loc']}: {error.errors()[0]['msg']}")
    if problems:
        raise DatasetFormatError(str(path), problems)
    return pairs
