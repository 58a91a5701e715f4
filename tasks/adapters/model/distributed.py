"""Running a training in several processes, started by an existing launcher: `torchrun`
(torch.distributed.run) or `accelerate launch`. Nothing here schedules or restarts ranks; the
launcher does, and stops the others when one fails.

The calling process (the Prefect training task, inside its device slot) writes the job to a
spec file, starts the launcher as a child and waits (`launch_job`, `run_launcher`). Each rank runs
the entry module `train_rank`: the same training as in one process (SFT, or DPO for `rslm refine`),
with the Trainer's DDP. Rank 0 alone writes the adapter and the job's result, and prints its
metrics as `RSLM_METRICS` lines (`print_metrics`), which the caller passes to its sink: the MLflow
run stays in the caller, so one training is one MLflow run.

Ranks are the launcher's children and share its process group: the caller stops the group when it
is interrupted, and on Linux the launcher is also told to stop if the caller dies (SIGKILL
included), so no rank outlives the task."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.domain.config import DistributedConfig
from tasks.domain.errors import ConfigError, RslmError

MetricsSink = Callable[[dict[str, float], int], None]
METRICS_PREFIX = "RSLM_METRICS "
RANK_MODULE = "tasks.adapters.model.train_rank"  # what each launched rank runs


def launch_command(dist: DistributedConfig, entry_module: str, spec_path: Path, device: str) -> list[str]:
    """The launcher's command line for `python -m entry_module spec_path` in each rank. One machine:
    `torchrun --standalone` (a free local port, nothing to configure). Several: each machine runs
    the same command with its own `node_rank`, meeting at `rdzv_endpoint` (c10d)."""
    entry = ["-m", entry_module, str(spec_path)]
    if dist.launcher == "accelerate":
        if device == "cpu":  # accelerate's launcher guards every multi-process path with `not args.cpu`
            raise ConfigError("training.distributed.launcher accelerate starts one process on a CPU "
                              "(huggingface/accelerate#2741): use launcher torchrun there")
        host, _, port = (dist.rdzv_endpoint or "").partition(":")
        return [sys.executable, "-m", "accelerate.commands.launch",
                *(["--config_file", dist.accelerate_config] if dist.accelerate_config else ["--multi_gpu"]),
                "--num_processes", str(dist.world_size), "--num_machines", str(dist.nnodes),
                "--machine_rank", str(dist.node_rank),
                *(["--main_process_ip", host, "--main_process_port", port] if dist.nnodes > 1 else []), *entry]
    if dist.nnodes == 1:
        where = ["--standalone"]
    else:
        where = ["--nnodes", str(dist.nnodes), "--node_rank", str(dist.node_rank),
                 "--rdzv_backend", "c10d", "--rdzv_endpoint", str(dist.rdzv_endpoint)]
    return [sys.executable, "-m", "torch.distributed.run", *where, "--nproc_per_node", str(dist.nproc_per_node),
            "--max_restarts", "0", *entry]


def rank_environment(dist: DistributedConfig, device: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The ranks' environment: on a CPU, the cores shared out (two ranks on two cores: one thread
    each; torch's default would oversubscribe them), unless the caller set OMP_NUM_THREADS."""
    env = dict(os.environ if base is None else base)
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // dist.nproc_per_node)))
    env["PYTHONUNBUFFERED"] = "1"  # metrics lines arrive as they are printed
    return env


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exit_code: int
    error: str = ""  # the rank's own exception, when it raised one


def _failures(report: str) -> list[RankFailure]:
    """Every failed rank in the launcher's report, in its order (other failures, then root cause)."""
    found = []
    for block in re.split(r"^\[\d+\]:\s*$", report.split("Failures:", 1)[-1], flags=re.M)[1:]:
        rank, code = re.search(r"rank\s*:\s*(\d+)", block), re.search(r"exitcode\s*:\s*(-?\d+)", block)
        if rank and code:
            errors = re.findall(r"^\s*(?:\w+\.)*\w*(?:Error|Exception)\b.*$", block, flags=re.M)
            found.append(RankFailure(int(rank.group(1)), int(code.group(1)), errors[-1].strip() if errors else ""))
    return found


def failed_rank(report: str) -> RankFailure | None:
    """The rank that failed first, from the launcher's failure report. Its "root cause" is the
    first error *recorded*, which is often a bystander: when a rank is killed, the others fail on
    the broken connection and are stopped with SIGTERM, and only they leave an error file. So a
    rank stopped by the launcher (SIGTERM) or failing on a lost peer is the cause only when no
    other rank is."""
    failures = _failures(report)
    def bystander(failure: RankFailure) -> bool:
        return failure.exit_code == -signal.SIGTERM or bool(_PEER_LOST.search(failure.error))
    return next((f for f in failures if not bystander(f)), failures[-1] if failures else None)


_PEER_LOST = re.compile(r"Connection (reset|closed) by peer|remote worker|peer.*(died|closed)", re.I)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _rank_error(output: str, launcher_code: int, world_size: int) -> str:
    cause = failed_rank(output)
    if cause is None:
        return f"distributed training failed: the launcher {_exit_reason(launcher_code)}"
    return (f"distributed training failed: rank {cause.rank} of {world_size} {_exit_reason(cause.exit_code)}"
            + (f" ({cause.error})" if cause.error else "") + "; the launcher stopped the other ranks")


def _linux_stop_with_parent() -> None:
    """In the launcher's child, before exec: SIGTERM when the task process dies, however it dies
    (the launcher then stops its ranks). Linux only: elsewhere the process group is what is left."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _relay(stream, sink: MetricsSink | None, echo, kept: deque) -> None:
    for line in iter(stream.readline, ""):
        if line.startswith(METRICS_PREFIX):
            if sink:
                record = json.loads(line[len(METRICS_PREFIX):])
                sink(record["metrics"], record["step"])
            continue
        kept.append(line)
        echo.write(line)
        echo.flush()


def run_launcher(command: list[str], env: dict[str, str], sink: MetricsSink | None, world_size: int) -> None:
    """Run the launcher to its end, passing rank 0's metrics lines to `sink` and the rest of its
    output through. A failure raises one line naming the rank that failed."""
    kept: deque[str] = deque(maxlen=400)  # the launcher's failure report is at the end
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True,
                               preexec_fn=_linux_stop_with_parent if sys.platform.startswith("linux") else None)
    readers = [threading.Thread(target=_relay, args=(process.stdout, sink, sys.stdout, kept), daemon=True),
               threading.Thread(target=_relay, args=(process.stderr, None, sys.stderr, kept), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        code = process.wait()
    except BaseException:  # interrupted (Ctrl-C, a stop signal turned exception): stop every rank with it
        _stop_group(process)
        raise
    for reader in readers:
        reader.join(timeout=10)
    if code != 0:
        _stop_group(process)  # the launcher stops its ranks itself; this is for a launcher that died first
        raise RslmError(_rank_error("".join(kept), code, world_size))


def launch_job(job: str, spec: dict, rows: Mapping[str, Sequence], dist: DistributedConfig, device: str,
               sink: MetricsSink | None) -> dict:
    """Run `train_rank`'s `job` ("sft" or "dpo") in `dist.world_size` processes and wait: `spec`
    and each row set (pydantic records, one JSON line each) go to a spec file the ranks read; rank
    0 writes the job's result there, and that result is returned."""
    with tempfile.TemporaryDirectory(prefix="rslm-launch-") as tmp:
        work = Path(tmp)
        files = {}
        for name, records in rows.items():
            files[name] = str(work / f"{name}.jsonl")
            Path(files[name]).write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
        result = work / "result.json"
        (work / "spec.json").write_text(json.dumps({**spec, "job": job, "rows": files, "result": str(result)}))
        run_launcher(launch_command(dist, RANK_MODULE, work / "spec.json", device), rank_environment(dist, device),
                     sink, dist.world_size)
        if not result.is_file():
            raise RslmError(f"distributed {job} training ended without rank 0's result")
        return json.loads(result.read_text())


def _stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def print_metrics(metrics: dict[str, float], step: int) -> None:
    """Rank 0's metrics sink: a line the caller's `run_launcher` passes on to its own sink."""
    print(METRICS_PREFIX + json.dumps({"metrics": metrics, "step": step}), flush=True)
