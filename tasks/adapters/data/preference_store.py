"""Preference pairs on disk: `reasoning_preferences.jsonl` (to train on), its `.eval.jsonl` twin
(to measure preference accuracy with, never trained on) and a manifest with their provenance,
published whole into `<root>/<domain>/<dataset sha12>-<settings key>/`."""
from __future__ import annotations

import json
from pathlib import Path

from tasks.adapters.ops.atomic_files import publish_directory, staging_dir, write_text_atomically
from tasks.domain.preferences import PreferencePair
from tasks.domain.records import parse_jsonl

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


def read_located_preferences(path: Path) -> list[tuple[int, PreferencePair]]:
    """(line number, pair) from a JSONL file (none from an empty one); bad lines are named by
    number, as for rows. The numbers let a failed check name the line to fix."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return []
    return parse_jsonl(text.splitlines(), str(path), model=PreferencePair)


def read_preferences(path: Path) -> list[PreferencePair]:
    return [pair for _, pair in read_located_preferences(path)]


def write_pairs(path: Path, pairs: list[PreferencePair]) -> Path:
    """One pairs file, never half-written."""
    return write_text_atomically(path, _jsonl(pairs))
