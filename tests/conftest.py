"""Shared fixtures: the shipped frameworks, a small dataset, one tiny base model per session, an
isolated RSLM_HOME per test, and one Prefect test harness per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "bench"))  # the benchmarks' helpers serve the tests too

from serve_load import free_port, running_server  # noqa: E402,F401 - re-exported to the tests

# Flow tests run the tiny profile (seconds, not minutes). It answers in number salad, which the
# shipped gate rejects (test_flow proves it); tests of the gate's other mechanics switch those
# floors off.
NO_FLOORS = {f"promotion.{key}": None for key in ("min_style_adherence", "min_structured", "max_degenerate",
                                                  "min_heldout_structured", "min_heldout_gain", "min_numbers_right",
                                                  "min_heldout_choice_accuracy", "min_heldout_choice_gain",
                                                  "max_heldout_pasted", "max_heldout_stock")}


def shipped_caps() -> dict:
    """configs/pipeline.yaml's dataset repeat caps as overrides, for a run that must build the same
    rows as `rslm generate` on the shipped config (tiny_run switches them off)."""
    import yaml

    dataset = yaml.safe_load((REPO / "configs/pipeline.yaml").read_text())["dataset"]
    return {f"dataset.{key}": dataset[key] for key in ("max_answer_repeats", "max_groups_per_pattern")}


def tiny_run(steps: int, **overrides) -> dict:
    """Pipeline overrides for a quick tiny-profile run of `steps` optimizer steps, on the DevOps
    rows before the repeat caps (the gate's mechanics are tested on the dataset they were tuned on;
    the caps themselves in test_expansion, and the paste model runs with them)."""
    return {"profile": "tiny", "dataset.max_samples": 300, "dataset.max_answer_repeats": 0,
            "dataset.max_groups_per_pattern": 0,
            "training_overrides": {"max_steps": steps, "save_steps": steps, "logging_steps": 2}, **overrides}


@pytest.fixture(scope="session")
def devops_framework():
    from tasks.adapters.ops.config_files import load_framework

    return load_framework(REPO / "configs/frameworks/devops.yaml")


@pytest.fixture(scope="session")
def devops_blueprint(devops_framework):
    from tasks.domain.blueprint import OfflineBlueprintGenerator

    return OfflineBlueprintGenerator().generate(devops_framework)


@pytest.fixture(scope="session")
def small_build(devops_blueprint):
    from tasks.domain.expansion import build_dataset

    return build_dataset(devops_blueprint, seed=7, eval_fraction=0.1, max_samples=400)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, small_build) -> Path:
    """The tiny profile's model and tokenizer, built once from the small dataset."""
    from tasks.adapters.model.base_models import ensure_tiny_base
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.records import training_corpus

    profile = load_profile("tiny")
    return ensure_tiny_base(profile.tiny, training_corpus(small_build.train + small_build.eval),
                            tmp_path_factory.mktemp("models"))


@pytest.fixture
def rslm_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "rslm-home"
    monkeypatch.setenv("RSLM_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect API for the whole session (start-up costs ~10 s)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from tasks.adapters.ops.prefect_admin import LEASE_STORAGE

    os.environ["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] = LEASE_STORAGE  # as flows/environment.py sets it
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(r.to_json() + "\n" for r in rows), encoding="utf-8")
    return path


def pause_after_checkpoint(module: str, builder: str, step: int) -> str:
    """Python source that makes `module.builder` (a function returning (trainer, tokenizer, info))
    add a callback printing "saved <step>" and sleeping once checkpoint `step` is written: run
    with the training after it, then killed by `kill_once_printed`."""
    import textwrap

    return textwrap.dedent(f"""
        import time
        from transformers import TrainerCallback
        import {module} as trained_module

        class PauseAfterCheckpoint(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == {step}:
                    print("saved {step}", flush=True)
                    time.sleep(600)  # killed here

        _build = trained_module.{builder}
        def _build_with_pause(*args, **kwargs):
            trainer, tokenizer, info = _build(*args, **kwargs)
            trainer.add_callback(PauseAfterCheckpoint())
            return trainer, tokenizer, info
        trained_module.{builder} = _build_with_pause
    """)


def kill_once_printed(code: str, line: str) -> None:
    """Run `code` in a fresh interpreter, and kill -9 it as soon as it prints `line`."""
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        said = (printed.strip() for printed in iter(process.stdout.readline, ""))
        assert line in said, f"the process ended before it printed {line!r}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
