"""Reading a user's own dataset: a JSONL file, a parquet file or a Hugging Face `datasets`
directory (`save_to_disk`). Each row needs a `messages` list; an `id` is kept, other columns are
ignored (a parquet or `datasets` table often carries extra ones) and listed. A bad row fails the
read with the file, its row number and the rule it breaks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.adapters.data.dataset_store import read_rows
from tasks.domain.errors import RslmError
from tasks.domain.hashing import sha256_bytes
from tasks.domain.records import Row, parse_records

KEPT_COLUMNS = ("id", "messages")  # metadata is replaced on import (tasks/domain/imported.py)


@dataclass(frozen=True)
class UserDataset:
    path: str
    format: str  # jsonl | parquet | hf-datasets
    rows: list[tuple[int, Row]]
    sha256: str  # of the source's bytes: names the import, so an edited file is a new dataset
    ignored_columns: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What the manifest and the dataset card say about the source."""
        return {"path": self.path, "format": self.format, "sha256": self.sha256, "rows": len(self.rows),
                "ignored_columns": self.ignored_columns}


def read_user_dataset(path: str | Path) -> UserDataset:
    source = Path(path)
    if source.is_dir():
        return _read_hf_directory(source)
    if not source.is_file():
        raise RslmError(f"{source}: dataset not found (a .jsonl or .parquet file, or a `datasets` directory)")
    if source.suffix == ".parquet":
        return _read_parquet(source)
    return UserDataset(str(source), "jsonl", read_rows(source), sha256_bytes(source.read_bytes()))


def _records(table_rows: list[dict[str, Any]], source: str, offset: int = 0) -> tuple[list[tuple[int, Any]], list[str]]:
    columns = sorted({key for record in table_rows for key in record})
    if table_rows and "messages" not in columns:
        raise RslmError(f"{source}: no `messages` column (found: {', '.join(columns) or 'none'})")
    kept = [(offset + number, {k: v for k, v in record.items() if k in KEPT_COLUMNS and v is not None})
            for number, record in enumerate(table_rows, start=1)]
    return kept, [c for c in columns if c not in KEPT_COLUMNS]


def _read_parquet(source: Path) -> UserDataset:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise RslmError(f"{source}: not a readable parquet file ({error})") from None
    payloads, ignored = _records(table.to_pylist(), str(source))
    rows = parse_records(payloads, str(source), unit="row")
    return UserDataset(str(source), "parquet", rows, sha256_bytes(source.read_bytes()), ignored)


def _read_hf_directory(source: Path) -> UserDataset:
    """A `Dataset` or a `DatasetDict` (every split, in name order; rows numbered across them)."""
    from datasets import Dataset, load_from_disk

    try:
        loaded = load_from_disk(str(source))
    except (FileNotFoundError, ValueError) as error:
        raise RslmError(f"{source}: not a Hugging Face `datasets` directory ({error})") from None
    splits = [loaded] if isinstance(loaded, Dataset) else [loaded[name] for name in sorted(loaded)]
    payloads: list[tuple[int, Any]] = []
    ignored: set[str] = set()
    for split in splits:
        found, extra = _records(split.to_list(), str(source), offset=len(payloads))
        payloads += found
        ignored.update(extra)
    rows = parse_records(payloads, str(source), unit="row")
    arrow_files = sorted(source.rglob("*.arrow"))
    digest = sha256_bytes(b"".join(f.read_bytes() for f in arrow_files))
    return UserDataset(str(source), "hf-datasets", rows, digest, sorted(ignored))
