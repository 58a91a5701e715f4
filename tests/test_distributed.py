"""Training in several processes (issue 31): DDP launched by torchrun, on the CPU with gloo.

Two ranks at batch 4 see, step by step, the rows one process sees at batch 8, so their adapter
must equal that process's; a rank killed mid-training fails the task with one line naming it,
leaves no rank running, and the next run resumes from the last checkpoint."""
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tasks.adapters.model.distributed import RANK_MODULE, RankFailure, failed_rank, launch_command, rank_environment
from tasks.domain.config import DistributedConfig, TrainingConfig
from tasks.domain.errors import ConfigError

from conftest import REPO, tiny_run

# Two processes and one process trained on the same rows in the same order (random order: the
# length-grouped sampler groups by the per-process batch, so it orders rows differently at batch 4
# and at batch 8) and no dropout (each rank draws its own masks). What is left is float summation
# order: the gradient all-reduce and the loss summed per rank. Measured: 1e-5 on weights of 0.2.
EQUAL_WEIGHTS = 1e-4


def _ranks_running() -> dict[int, int]:
    """{rank: pid} of the rank processes alive on this machine, read from /proc."""
    import psutil

    found = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if RANK_MODULE in " ".join(process.info["cmdline"] or []) and process.status() != psutil.STATUS_ZOMBIE:
                found[int(process.environ().get("RANK", "-1"))] = process.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _config(processes: int, batch: int, steps: int, **changes) -> TrainingConfig:
    from tasks.adapters.ops.config_files import load_profile

    tiny = load_profile("tiny").training.model_dump()
    return TrainingConfig.model_validate({
        **tiny, "max_steps": steps, "save_steps": steps, "logging_steps": 1, "batch_size": batch,
        "group_by_length": False, "lora": {**tiny["lora"], "dropout": 0.0}, "device": "cpu",
        "distributed": {"nproc_per_node": processes}, **changes})


@pytest.mark.slow
@pytest.mark.scale
def test_two_ranks_train_the_adapter_one_process_trains_at_the_same_global_batch(tiny_base, small_build, tmp_path):
    from safetensors.torch import load_file

    from tasks.adapters.model.training import train_lora

    rows = small_build.train[:96]
    logged: dict[int, list] = {1: [], 2: []}
    summaries = {}
    for processes, batch in ((1, 8), (2, 4)):
        summaries[processes] = train_lora(tiny_base, rows, [], _config(processes, batch, 12), tmp_path / str(processes),
                                          sink=lambda metrics, step, n=processes: logged[n].append((step, metrics)))
    one, two = summaries[1], summaries[2]
    assert (one.world_size, two.world_size) == (1, 2)
    assert two.tokens_seen == one.tokens_seen and two.steps == one.steps == 12, "the same rows, split between ranks"
    weights = load_file(tmp_path / "1" / "adapter_model.safetensors")
    ranked = load_file(tmp_path / "2" / "adapter_model.safetensors")
    assert weights.keys() == ranked.keys()
    assert max(float((weights[k] - ranked[k]).abs().max()) for k in weights) < EQUAL_WEIGHTS
    assert max(float(weights[k].abs().max()) for k in weights) > 100 * EQUAL_WEIGHTS, "the adapter moved"
    # rank 0's metrics reached the caller's sink, once per logging step, as one process logs them
    losses = {n: [(step, m["loss"]) for step, m in logged[n] if "loss" in m] for n in logged}
    assert [step for step, _ in losses[2]] == [step for step, _ in losses[1]] and len(losses[2]) >= 12
    assert all(abs(a - b) <= 1e-4 * a for (_, a), (_, b) in zip(losses[1], losses[2], strict=True))
    assert not _ranks_running()


@pytest.mark.slow
@pytest.mark.scale
def test_two_ranks_refine_with_dpo_as_one_process_does_at_the_same_global_batch(
        tiny_base, small_build, devops_framework, tmp_path):
    """`rslm refine --nproc-per-node 2`'s DPO: the same refined adapter as one process (an SFT
    parent without dropout, so no rank draws masks of its own), rank 0's reward figures in the sink."""
    from safetensors.torch import load_file

    from tasks.adapters.model.preference_training import train_dpo
    from tasks.adapters.model.training import train_lora
    from tasks.domain.config import RefineConfig
    from tasks.domain.preferences import build_pairs

    train_lora(tiny_base, small_build.train[:32], [], _config(1, 8, 4), tmp_path / "sft")
    pairs = build_pairs(small_build.train[:48], devops_framework, seed=3)[:48]
    logged: dict[int, list] = {1: [], 2: []}
    summaries = {processes: train_dpo(tiny_base, tmp_path / "sft", pairs,
                                      RefineConfig(max_steps=6, batch_size=batch, learning_rate=5.0e-3),
                                      _config(processes, 8, 4), tmp_path / f"dpo-{processes}",
                                      sink=lambda metrics, step, n=processes: logged[n].append(metrics))
                 for processes, batch in ((1, 8), (2, 4))}
    assert (summaries[1]["world_size"], summaries[2]["world_size"]) == (1, 2)
    assert summaries[2]["steps"] == summaries[1]["steps"] == 6
    sft, one, two = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("sft", "dpo-1", "dpo-2"))
    assert one.keys() == two.keys() == sft.keys(), "the policy alone, not TRL's reference copy"
    # DPO's Adam steps at 5e-3 turn the ranks' different summation order into weight differences of
    # up to 3.1e-4 on the 61-pattern framework's pairs (2026-12-05; below 1e-4 on the 28-pattern
    # ones): 10x EQUAL_WEIGHTS here, a tenth of the movement DPO must show below, and the reward
    # margins below agree to 1e-3.
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 10 * EQUAL_WEIGHTS
    assert max(float((one[k] - sft[k]).abs().max()) for k in one) > 100 * EQUAL_WEIGHTS, "DPO moved the adapter"
    margins = {n: [m["rewards/margins"] for m in logged[n] if "rewards/margins" in m] for n in logged}
    assert len(margins[2]) == len(margins[1]) == 6
    assert all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(margins[1], margins[2], strict=True))
    assert not _ranks_running()


def test_launch_commands_come_from_the_existing_launchers(tmp_path):
    spec = tmp_path / "spec.json"
    one_machine = launch_command(DistributedConfig(nproc_per_node=2), RANK_MODULE, spec, "cpu")
    assert one_machine[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "--max_restarts", "0", "-m", RANK_MODULE, str(spec)]
    nodes = launch_command(DistributedConfig(nproc_per_node=4, nnodes=2, node_rank=1, rdzv_endpoint="gpu-0:29400"),
                           RANK_MODULE, spec, "cuda")
    assert nodes[3:13] == ["--nnodes", "2", "--node_rank", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                           "gpu-0:29400", "--nproc_per_node", "4"]
    fsdp = launch_command(DistributedConfig(nproc_per_node=4, launcher="accelerate",
                                            accelerate_config="infra/accelerate/fsdp2.yaml"), RANK_MODULE, spec, "cuda")
    assert fsdp[1:9] == ["-m", "accelerate.commands.launch", "--config_file", "infra/accelerate/fsdp2.yaml",
                         "--num_processes", "4", "--num_machines", "1"]
    with pytest.raises(ConfigError, match="starts one process on a CPU"):
        launch_command(DistributedConfig(nproc_per_node=2, launcher="accelerate"), RANK_MODULE, spec, "cpu")
    threads = rank_environment(DistributedConfig(nproc_per_node=2), "cpu", base={})
    assert int(threads["OMP_NUM_THREADS"]) >= 1
    assert rank_environment(DistributedConfig(nproc_per_node=2), "cpu", base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"


def test_a_launch_that_cannot_work_is_refused_by_the_config():
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        DistributedConfig(nnodes=2)
    with pytest.raises(ValueError, match="node_rank 2 is not below nnodes 2"):
        DistributedConfig(nnodes=2, node_rank=2, rdzv_endpoint="h:1")
    with pytest.raises(ValueError, match="launcher: accelerate only"):
        DistributedConfig(accelerate_config="infra/accelerate/ddp.yaml")
    assert DistributedConfig(nproc_per_node=4, nnodes=2, rdzv_endpoint="h:1").world_size == 8


# torchrun's report when rank 1 was killed with -9 (2.11, abridged): its "root cause" is rank 0,
# the bystander that failed on the lost connection and was then stopped with SIGTERM.
KILLED_RANK_REPORT = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
tasks.adapters.model.distributed FAILED
------------------------------------------------------------
Failures:
[0]:
  time      : 2026-12-03_20:42:11
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 9512)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 9512
------------------------------------------------------------
Root Cause (first observed failure):
[1]:
  time      : 2026-12-03_20:42:10
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 9511)  (SIGTERM)
  error_file: /tmp/torchelastic_x/attempt_0/0/error.json
  traceback : Traceback (most recent call last):
    File "tasks/adapters/model/training.py", line 265, in train_in_this_process
  RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:9628: Connection reset by peer.
============================================================"""

RAISED_REPORT = """Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_20:24:40
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 8120)
  error_file: /tmp/torchelastic_y/attempt_0/0/error.json
  traceback : Traceback (most recent call last):
    File "tasks/adapters/model/fast_step.py", line 33, in _unwrapped
  AttributeError: 'DistributedDataParallel' object has no attribute 'base_model_prefix'
"""


def test_the_failed_rank_is_the_one_that_failed_not_the_bystander_torchrun_reports():
    from tasks.adapters.model.distributed import _rank_error

    assert failed_rank(KILLED_RANK_REPORT) == RankFailure(1, -9, "")
    assert _rank_error(KILLED_RANK_REPORT, 1, 2) == ("distributed training failed: rank 1 of 2 was killed by SIGKILL; "
                                                     "the launcher stopped the other ranks")
    assert failed_rank(RAISED_REPORT) == RankFailure(
        0, 1, "AttributeError: 'DistributedDataParallel' object has no attribute 'base_model_prefix'")
    assert "rank 0 of 2 exited with code 1 (AttributeError:" in _rank_error(RAISED_REPORT, 1, 2)
    assert failed_rank("no report at all") is None
    assert _rank_error("no report", -9, 2) == "distributed training failed: the launcher was killed by SIGKILL"


def _kill_rank_after_checkpoint(home: Path, rank: int, step: int, killed: list) -> threading.Thread:
    """A watcher that kill -9s one rank as soon as checkpoint `step` is complete on disk."""
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list(home.glob(f"adapters/**/checkpoint-{step}/trainer_state.json")):
                pid = _ranks_running().get(rank)
                if pid:
                    import os

                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.02)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.scale
def test_a_pipeline_on_two_ranks_fails_naming_a_killed_rank_then_resumes_and_registers_once(prefect_harness, rslm_home):
    """`nightly-retrain` with `training.distributed.nproc_per_node: 2`: rank 1 killed with -9 after
    checkpoint 10 fails the training task with one line naming it and leaves no rank behind;
    nothing is registered. The next run resumes from checkpoint 10 on two ranks and registers one
    version, with one MLflow training run holding rank 0's loss curve (none elsewhere)."""
    from mlflow.tracking import MlflowClient

    from flows.nightly_retrain import nightly_retrain

    overrides = tiny_run(40, training_overrides={"max_steps": 40, "save_steps": 10, "logging_steps": 2,
                                                 "distributed": {"nproc_per_node": 2}})
    killed: list[int] = []
    watcher = _kill_rank_after_checkpoint(rslm_home, 1, 10, killed)
    with pytest.raises(Exception, match=r"rank 1 of 2 was killed by SIGKILL"):
        nightly_retrain(overrides=overrides)
    watcher.join(timeout=5)
    assert killed, "rank 1 was killed mid-training"
    assert not _ranks_running(), "the launcher stopped rank 0; no rank outlives the task"
    failed = json.loads((rslm_home / "last-run.json").read_text())
    assert failed["status"] == "failed" and "rank 1 of 2 was killed by SIGKILL" in failed["error"]
    assert "\n" not in failed["error"] and failed["model_version"] is None

    record = nightly_retrain(overrides=overrides)
    assert record["status"] == "succeeded" and record["model_version"] == "1"
    training = record["training"]
    assert training["world_size"] == 2 and training["resumed_from_step"] == 10 and training["steps"] == 40
    client = MlflowClient(tracking_uri=record["mlflow_tracking_uri"])
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert [run.info.run_id for run in finished] == [record["mlflow_run_id"]], "one training run: rank 0's, via the task"
    assert {run.info.experiment_id for run in runs} == {finished[0].info.experiment_id}, "no rank opened a run of its own"
    curve = client.get_metric_history(record["mlflow_run_id"], "train/loss")
    assert len(curve) >= 15 and max(point.step for point in curve) == 40
    assert finished[0].data.params["training.distributed.nproc_per_node"] == "2"
    versions = client.search_model_versions(f"name='{record['registered_model']}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert not _ranks_running()


def _accelerate_launch_args(config: str, processes: int = 4):
    """accelerate's own reading of a config file, as `accelerate launch --config_file` does."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parsed = launch_command_parser().parse_args(["--config_file", config, "--num_processes", str(processes),
                                                 "-m", RANK_MODULE, "spec.json"])
    return _validate_launch_command(parsed)[0]


def test_the_shipped_accelerate_configs_are_read_by_accelerate_as_ddp_fsdp2_and_zero3(monkeypatch):
    """Only parsed and validated here (no GPU): the README and docs/scaling.md say so."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers.models.mistral import modeling_mistral

    for name in ("ddp", "fsdp2", "zero3"):  # unknown keys fail here: ClusterConfig takes none
        assert load_config_from_file(str(REPO / "infra/accelerate" / f"{name}.yaml")).use_cpu is False
    ddp = _accelerate_launch_args(str(REPO / "infra/accelerate/ddp.yaml"))
    assert ddp.multi_gpu and not (ddp.use_fsdp or ddp.use_deepspeed) and ddp.num_processes == 4
    fsdp = _accelerate_launch_args(str(REPO / "infra/accelerate/fsdp2.yaml"))
    assert fsdp.use_fsdp and fsdp.mixed_precision == "bf16"
    for key, value in prepare_multi_gpu_env(fsdp).items():  # what each rank's environment would hold
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT", "the adapter is gathered whole before it is saved"
    assert all(hasattr(modeling_mistral, cls) for cls in plugin.transformer_cls_names_to_wrap)
    zero3 = _accelerate_launch_args(str(REPO / "infra/accelerate/zero3.yaml"))
    assert zero3.use_deepspeed and zero3.zero_stage == 3 and zero3.zero3_save_16bit_model
    assert zero3.offload_param_device == "none" and zero3.mixed_precision == "bf16"
