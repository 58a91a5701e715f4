"""Files and directories published whole: a reader sees the old one or the new one, never half of either."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def staging_dir(final: Path) -> Path:
    """Where `final` is built before it is published. The same for the same `final`, so an
    interrupted build can pick up what it left (training resumes from its checkpoints there)."""
    return final.with_name(f".{final.name}.partial")


def publish_directory(staging: Path, final: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """Move `staging` to `final`, replacing what was there; `leave_out` names entries that stay
    behind (deleted), such as training checkpoints."""
    for name in leave_out:
        shutil.rmtree(staging / name, ignore_errors=True)
    previous = final.with_name(f".{final.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)
    return final


def write_text_atomically(path: Path, text: str) -> Path:
    """Write `path` through a temporary file beside it and a rename; a crash leaves the old file
    (or none), and no stray temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
