"""Bad input is refused before anything runs, with one line naming what is wrong."""
import os
import subprocess
import sys

import pytest

from tasks.adapters.data.dataset_store import EVAL_FILE, TRAIN_FILE, dataset_files
from tasks.adapters.ops.config_files import load_pipeline_config, load_profile, resolve_run
from tasks.domain.errors import ConfigError, RslmError

from conftest import REPO


@pytest.mark.parametrize("steps", [0, -2])
def test_max_steps_must_be_a_count_or_epochs(steps):
    config = load_pipeline_config(overrides={"profile": "tiny", "training_overrides": {"max_steps": steps}})
    with pytest.raises(ConfigError, match=f"max_steps must be at least 1, or -1 to train for num_epochs; got {steps}"):
        resolve_run(config)
    resolve_run(config.model_copy(update={"training_overrides": {"max_steps": -1}}))  # epochs: accepted


def test_an_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'nonexistent': known profiles are .*smollm2-135m.*tiny"):
        load_profile("nonexistent")


def test_a_dataset_directory_stands_for_its_files(tmp_path):
    (tmp_path / TRAIN_FILE).write_text("{}\n")
    (tmp_path / EVAL_FILE).write_text("{}\n")
    assert dataset_files([str(tmp_path)]) == [str(tmp_path / TRAIN_FILE), str(tmp_path / EVAL_FILE)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RslmError, match="a directory with neither"):
        dataset_files([str(empty)])


@pytest.mark.parametrize("args, message", [
    (["pipeline", "--max-steps", "0"], "max_steps must be at least 1"),
    (["pipeline", "--profile", "nonexistent"], "unknown profile 'nonexistent'"),
    (["chat", "hello", "--adapter", "."], "not an adapter directory"),
])
def test_cli_errors_are_one_line(args, message, tmp_path):
    env = {**os.environ, "RSLM_HOME": str(tmp_path)}
    env.pop("RSLM_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and message in done.stderr, done.stderr
    assert not list(tmp_path.rglob("*.safetensors")), "nothing was trained"
