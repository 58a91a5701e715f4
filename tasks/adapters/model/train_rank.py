"""One rank of a launched training (`python -m tasks.adapters.model.train_rank SPEC`, started by
torchrun or accelerate through `distributed.launch_job`): the SFT training (`training.train_lora`)
or the DPO refinement (`preference_training.train_dpo`). The launcher sets RANK, LOCAL_RANK and
WORLD_SIZE; the Trainer reads them and trains with DDP. Rank 0 writes the job's result."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from tasks.adapters.model.distributed import MetricsSink, print_metrics
from tasks.domain.config import RefineConfig, TrainingConfig
from tasks.domain.preferences import PreferencePair
from tasks.domain.records import Row, parse_jsonl


def _read(path: str, record) -> list:
    """The records `launch_job` wrote, through the one JSONL parser (a bad line is named). An empty
    file is an empty split here (a training without eval rows), not an error as in a user's dataset."""
    text = Path(path).read_text(encoding="utf-8")
    return [parsed for _, parsed in parse_jsonl(text.splitlines(), path, record)] if text.strip() else []


def _sft(spec: dict, cfg: TrainingConfig, sink: MetricsSink | None) -> dict:
    from tasks.adapters.model.training import train_in_this_process

    summary = train_in_this_process(
        spec["base_source"], _read(spec["rows"]["train"], Row), _read(spec["rows"]["eval"], Row), cfg,
        Path(spec["out_dir"]), Path(spec["resume"]) if spec["resume"] else None, sink=sink,
        chat_format=spec["chat_format"])
    return asdict(summary)


def _dpo(spec: dict, cfg: TrainingConfig, sink: MetricsSink | None) -> dict:
    from tasks.adapters.model.preference_training import train_dpo_in_this_process

    return train_dpo_in_this_process(
        spec["base_source"], spec["sft_adapter"], _read(spec["rows"]["pairs"], PreferencePair),
        RefineConfig.model_validate(spec["refine"]), cfg, Path(spec["out_dir"]), sink, spec["chat_format"])


JOBS: dict[str, Callable[[dict, TrainingConfig, MetricsSink | None], dict]] = {"sft": _sft, "dpo": _dpo}


def _rank(argv: Sequence[str]) -> None:
    import torch

    spec = json.loads(Path(argv[0]).read_text())
    cfg = TrainingConfig.model_validate(spec["training"])
    if torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is then this rank's GPU
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    result = JOBS[spec["job"]](spec, cfg, print_metrics if rank_zero else None)
    if rank_zero:
        Path(spec["result"]).write_text(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> None:
    # `record` writes a raised exception where the launcher's failure report finds it
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_rank)(list(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
