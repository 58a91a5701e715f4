"""One rank of a launched training (`python -m tasks.adapters.model.train_rank SPEC`, started by
torchrun or accelerate for `training.train_across_processes`). The launcher sets RANK, LOCAL_RANK
and WORLD_SIZE; the Trainer reads them and trains with DDP."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tasks.adapters.model.distributed import print_metrics
from tasks.adapters.model.training import train_in_this_process
from tasks.domain.config import TrainingConfig
from tasks.domain.records import Row


def _read_rows(path: str) -> list[Row]:
    return [Row.model_validate_json(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def _rank(argv: Sequence[str]) -> None:
    import torch

    spec = json.loads(Path(argv[0]).read_text())
    cfg = TrainingConfig.model_validate(spec["training"])
    if torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is then this rank's GPU
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    train_in_this_process(spec["base_source"], _read_rows(spec["train"]), _read_rows(spec["eval"]), cfg,
                          Path(spec["out_dir"]), Path(spec["resume"]) if spec["resume"] else None,
                          sink=print_metrics if rank_zero else None, chat_format=spec["chat_format"])


def main(argv: Sequence[str] | None = None) -> None:
    # `record` writes a raised exception where the launcher's failure report finds it
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_rank)(list(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
