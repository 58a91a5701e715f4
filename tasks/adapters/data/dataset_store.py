"""Datasets on disk: written atomically into a content-addressed directory, read back strictly."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.adapters.ops.atomic_files import write_text_atomically
from tasks.domain.blueprint import Blueprint
from tasks.domain.errors import RslmError
from tasks.domain.expansion import DatasetBuild
from tasks.domain.hashing import sha256_bytes
from tasks.domain.records import Row, parse_jsonl

TRAIN_FILE = "reasoning_dataset.jsonl"
EVAL_FILE = "reasoning_dataset.eval.jsonl"
BLUEPRINT_FILE = "blueprint.json"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class DatasetRef:
    """Where a written dataset lives and what identifies it."""

    directory: str
    train_path: str
    eval_path: str
    blueprint_path: str
    manifest_path: str
    sha256: str
    domain: str
    blueprint_hash: str

    def to_dict(self) -> dict:
        return asdict(self)


def _jsonl(rows: list[Row]) -> bytes:
    return "".join(row.to_json() + "\n" for row in rows).encode("utf-8")


def write_dataset(build: DatasetBuild, blueprint: Blueprint, *, config_hash: str, seed: int,
                  root: Path, source: dict | None = None) -> DatasetRef:
    """Write train/eval JSONL, the blueprint and a manifest into `root/<domain>/<sha12>/`.
    `source` describes a user's dataset the rows were imported from (None: generated).
    Files go to a temporary directory first and are renamed into place, so a reader never sees
    a half-written dataset; an identical dataset already there is reused."""
    train_bytes, eval_bytes = _jsonl(build.train), _jsonl(build.eval)
    sha = sha256_bytes(train_bytes)
    target = root / blueprint.domain / sha[:12]
    manifest = {
        "domain": blueprint.domain,
        "sha256": sha,
        "eval_sha256": sha256_bytes(eval_bytes),
        "blueprint_hash": blueprint.digest(),
        "config_hash": config_hash,
        "generator": blueprint.generator.model_dump(),
        "seed": seed,
        "rows": {"generated": build.generated, "train": len(build.train), "eval": len(build.eval),
                 "exact_duplicates": build.dedup.exact_duplicates, "near_duplicates": build.dedup.near_duplicates,
                 "repeated_answers": build.dedup.repeated_answers},
        "counts_per_principle": build.counts,
        "files": {"train": TRAIN_FILE, "eval": EVAL_FILE, "blueprint": BLUEPRINT_FILE},
        **({"source": source} if source else {}),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not (target / MANIFEST_FILE).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        try:
            (staging / TRAIN_FILE).write_bytes(train_bytes)
            (staging / EVAL_FILE).write_bytes(eval_bytes)
            (staging / BLUEPRINT_FILE).write_text(blueprint.model_dump_json(indent=2), encoding="utf-8")
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            os.replace(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (target / MANIFEST_FILE).exists():  # a concurrent writer may have won the rename
                raise
    return dataset_ref(target)


CARD_FILE = "README.md"  # the dataset card, written after validation (a dataset's files stay as built)


def write_dataset_card(dataset: DatasetRef, text: str) -> Path:
    """The card beside the dataset, replaced whole (a reader never sees half of it)."""
    return write_text_atomically(Path(dataset.directory) / CARD_FILE, text)


def dataset_files(paths: list[str]) -> list[str]:
    """Files as given; a dataset directory stands for the train and eval files in it."""
    found: list[str] = []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(str(path))
            continue
        inside = [str(path / name) for name in (TRAIN_FILE, EVAL_FILE) if (path / name).is_file()]
        if not inside:
            raise RslmError(f"{path}: a directory with neither {TRAIN_FILE} nor {EVAL_FILE} in it")
        found += inside
    return found


def dataset_ref(directory: Path) -> DatasetRef:
    manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    return DatasetRef(
        directory=str(directory), train_path=str(directory / TRAIN_FILE), eval_path=str(directory / EVAL_FILE),
        blueprint_path=str(directory / BLUEPRINT_FILE), manifest_path=str(directory / MANIFEST_FILE),
        sha256=manifest["sha256"], domain=manifest["domain"], blueprint_hash=manifest["blueprint_hash"],
    )


def read_dataset_files(files: list[str]) -> list[tuple[str, int, Row]]:
    """Rows of every file with their file and line; malformed lines fail here, by line number."""
    return [(str(f), line, row) for f in files for line, row in read_rows(f)]


def file_sha256(path: str | Path) -> str:
    return sha256_bytes(Path(path).read_bytes())


def read_rows(path: str | Path) -> list[tuple[int, Row]]:
    """(line, Row) pairs; malformed lines raise DatasetFormatError naming each line."""
    path = Path(path)
    if not path.is_file():
        raise RslmError(f"{path}: file not found")
    with path.open(encoding="utf-8", errors="replace") as handle:
        return parse_jsonl(handle, str(path))
