"""Preference pairs on disk: `reasoning_preferences.jsonl` (to train on), its `.eval.jsonl` twin
(to measure preference accuracy with, never trained on) and a manifest with their provenance,
published whole into `<root>/<domain>/<dataset sha12>-<settings key>/`."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from tasks.adapters.ops.atomic_files import publish_directory, staging_dir, write_text_atomically
from tasks.domain.preferences import PreferencePair
from tasks.domain.records import parse_jsonl

M = TypeVar("M", bound=BaseModel)

TRAIN_FILE = "reasoning_preferences.jsonl"
EVAL_FILE = "reasoning_preferences.eval.jsonl"
MANIFEST_FILE = "manifest.json"


def _jsonl(records: Sequence[BaseModel]) -> str:
    return "".join(json.dumps(r.model_dump(mode="json"), ensure_ascii=False) + "\n" for r in records)


def write_record_set(target: Path, files: dict[str, Sequence[BaseModel]], manifest: dict) -> Path:
    """JSONL files and their manifest, built in a staging directory and published whole; an
    existing identical set (its manifest is written last) is kept."""
    if (target / MANIFEST_FILE).is_file():
        return target
    staging = staging_dir(target)
    staging.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        (staging / name).write_text(_jsonl(records), encoding="utf-8")
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return publish_directory(staging, target)


def write_preferences(target: Path, train: list[PreferencePair], held_out: list[PreferencePair],
                      manifest: dict) -> Path:
    return write_record_set(target, {TRAIN_FILE: train, EVAL_FILE: held_out}, manifest)


def read_located(path: Path, model: type[M]) -> list[tuple[int, M]]:
    """(line number, record) from a JSONL file (none from an empty one); bad lines are named by
    number, as for rows. The numbers let a failed check name the line to fix."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return []
    return parse_jsonl(text.splitlines(), str(path), model=model)


def read_located_preferences(path: Path) -> list[tuple[int, PreferencePair]]:
    return read_located(path, PreferencePair)


def read_preferences(path: Path) -> list[PreferencePair]:
    return [pair for _, pair in read_located_preferences(path)]


def write_pairs(path: Path, pairs: list[PreferencePair]) -> Path:
    """One pairs file, never half-written."""
    return write_text_atomically(path, _jsonl(pairs))
