"""MLflow tracking: one experiment per domain, one run per pipeline execution, the adapter as a
pyfunc model registered under `<prefix>-<domain>` (see registry.py). Only derived config values are
logged as params; nothing here reads or writes credentials.

`Tracking` is the store, built once per flow or command and passed down; `TrackedRun` is the
handle a stage logs through while its run is open."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tasks.adapters.ops.processes import is_gone, this_process
from tasks.adapters.ops.settings import REPO_ROOT
from tasks.adapters.tracking.mlflow_store import bind_store
from tasks.adapters.tracking.registry import ModelRegistry
from tasks.domain.frozen import Frozen

MODEL_ARTIFACT = "adapter"


def _mlflow():
    import mlflow

    return mlflow


class Tracking(Frozen):
    """An MLflow store: its URI, and where a local store keeps artifacts."""

    uri: str
    artifact_root: Path

    @classmethod
    def configured(cls) -> Tracking:
        """The store this machine is configured for (`MLFLOW_TRACKING_URI`, else `$RSLM_HOME`)."""
        from tasks.adapters.ops.settings import paths, tracking_uri

        return cls(uri=tracking_uri(), artifact_root=paths().mlflow_artifacts)

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(uri=self.uri)

    def ensure_experiment(self, name: str) -> str:
        """The experiment's id. With a local store it is created with artifacts under the artifact
        root (not ./mlruns); against a tracking server the server decides (its
        --artifacts-destination, e.g. S3), so clients need no storage credentials."""
        mlflow = _mlflow()
        bind_store(self.uri)
        existing = mlflow.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        if self.uri.startswith(("http://", "https://")):
            return mlflow.create_experiment(name)
        return mlflow.create_experiment(name, artifact_location=self.artifact_root.resolve().as_uri() + f"/{name}")

    @contextmanager
    def run(self, experiment: str, *, run_name: str | None = None, tags: dict[str, str] | None = None,
            parent_run_id: str | None = None) -> Iterator[TrackedRun]:
        """Start a run (nested under `parent_run_id` when given), tagged with the process that runs
        it. A failure inside marks it FAILED; a killed process leaves it RUNNING until
        `reconcile_dead_runs` finds the process gone."""
        experiment_id = self.ensure_experiment(experiment)
        owner = {OWNER_TAGS[key]: value for key, value in this_process().items()}
        with _mlflow().start_run(experiment_id=experiment_id, run_name=run_name, tags={**(tags or {}), **owner},
                                 parent_run_id=parent_run_id, nested=parent_run_id is not None) as run:
            yield TrackedRun(run.info.run_id)

    def check_reachable(self, timeout: float = 5.0) -> None:
        """A tracking server that does not answer fails the run now, in one line naming it, rather
        than after minutes of retries in the middle of training. Local stores always answer."""
        if not self.uri.startswith(("http://", "https://")):
            return
        import urllib.error
        import urllib.request

        from tasks.domain.errors import RslmError
        from tasks.domain.stack import redact

        try:
            with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status == 200:
                    return
                problem = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            problem = str(getattr(error, "reason", error))
        raise RslmError(f"MLflow at {redact(self.uri)} is not reachable ({problem}): start it (make up) "
                        "or unset MLFLOW_TRACKING_URI to use the local store")

    def reconcile_dead_runs(self, experiment: str) -> list[str]:
        """Runs of `experiment` left RUNNING by a process of this machine that no longer exists
        (killed, or the machine restarted) are marked KILLED, with the reason as a tag. Returns
        their ids. Runs of other machines and of live processes are left alone."""
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("sqlite:///") and not Path(self.uri.removeprefix("sqlite:///")).exists():
            return []  # no store yet, so no run in it (and looking would create one)
        client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        killed = []
        for run in client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'", max_results=200):
            owner = {key: run.data.tags.get(tag, "") for key, tag in OWNER_TAGS.items()}
            if not is_gone(owner):
                continue
            client.set_tag(run.info.run_id, "rslm.killed_reason",
                           f"process {owner['pid']} on {owner['host']} ended without closing the run "
                           f"(killed, or the machine stopped); found by process {os.getpid()}")
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
        return killed

    @contextmanager
    def resume(self, run_id: str) -> Iterator[TrackedRun]:
        """Reopen a run to add to it (registration, evaluation, the promotion decision). Callers open
        it only once their results exist, so a failed evaluation never marks training FAILED."""
        bind_store(self.uri)
        with _mlflow().start_run(run_id=run_id) as run:
            yield TrackedRun(run.info.run_id)

    def download_artifact(self, run_id: str, artifact_path: str, dst: Path) -> Path | None:
        """A run's artifact as a local file, or None when the run has no such artifact."""
        from mlflow.exceptions import MlflowException

        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(_mlflow().artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                               dst_path=str(dst), tracking_uri=self.uri))
        except (MlflowException, OSError):
            return None


OWNER_TAGS = {"host": "rslm.host", "pid": "rslm.pid", "started": "rslm.pid_started"}  # the process running the run


@dataclass(frozen=True)
class TrackedRun:
    """The open run a stage logs into (only while its `Tracking.run`/`resume` block is open)."""

    run_id: str

    def log_params(self, params: dict[str, str]) -> None:
        _mlflow().log_params({k: v[:6000] for k, v in params.items()})

    def metrics_sink(self, prefix: str = "train/"):
        """A callback for the trainer: per-step metrics into this run, from any thread (a
        distributed training's metrics arrive on the thread reading its launcher's output, where
        MLflow's thread-local active run is unset: the run is named, never implied)."""
        mlflow = _mlflow()
        run_id = self.run_id

        def sink(metrics: dict[str, float], step: int) -> None:
            # queued and sent in the background: a slow or absent server never stalls a training
            # step; the queue is flushed when the run closes, and a failure surfaces there
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=step, synchronous=False,
                               run_id=run_id)

        return sink

    def log_dataset(self, frame, *, source: str, name: str, sha256: str, context: str) -> None:
        """The dataset as an MLflow dataset input (MLflow computes its digest) plus our sha256 tag."""
        mlflow = _mlflow()
        mlflow.log_input(mlflow.data.from_pandas(frame, source=source, name=name), context=context)
        mlflow.set_tag(f"dataset.{context}.sha256", sha256)

    def log_validation(self, result_dir: Path) -> None:
        _mlflow().log_artifacts(str(result_dir), artifact_path="validation")

    def log_dict(self, data: dict, artifact_file: str) -> None:
        _mlflow().log_dict(data, artifact_file)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        _mlflow().log_metrics(metrics)

    def log_file(self, path: Path, artifact_path: str) -> None:
        _mlflow().log_artifact(str(path), artifact_path=artifact_path)

    def log_image(self, path: Path, artifact_path: str = "plots") -> None:
        self.log_file(path, artifact_path)

    def log_table(self, frame, artifact_file: str) -> None:
        """A per-example table (MLflow shows it in the run's Evaluation/Artifacts views)."""
        _mlflow().log_table(frame, artifact_file=artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        _mlflow().log_text(text, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        _mlflow().set_tags(tags)

    def log_adapter_model(self, adapter_dir: Path, *, base_source: str, log_base: bool, system_prompt: str,
                          grounding=None) -> str:
        """Log base + adapter as a pyfunc chat model in this run; returns its model URI. A grounded
        model's passages and `k` go in its model config beside the system prompt."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

        from tasks.adapters.model.inference import DEFAULT_MAX_NEW_TOKENS
        from tasks.adapters.tracking import pyfunc_model

        signature = ModelSignature(inputs=Schema([ColSpec("string", "prompt")]), outputs=Schema([ColSpec("string")]),
                                   params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]))
        return self._log_pyfunc(pyfunc_model.__file__, adapter_dir, base_source, log_base, signature,
                                {"system_prompt": system_prompt, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
                                 **({"grounding": grounding.model_dump(mode="json")} if grounding else {})})

    def log_reward_model(self, adapter_dir: Path, *, base_source: str, log_base: bool, system_prompt: str) -> str:
        """Log base + reward adapter (LoRA and token head) as a pyfunc scorer; returns its model URI."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        from tasks.adapters.tracking import pyfunc_reward_model

        signature = ModelSignature(inputs=Schema([ColSpec("string", "question"), ColSpec("string", "answer")]),
                                   outputs=Schema([ColSpec("string")]))
        return self._log_pyfunc(pyfunc_reward_model.__file__, adapter_dir, base_source, log_base, signature,
                                {"system_prompt": system_prompt})

    def _log_pyfunc(self, code_file: str, adapter_dir: Path, base_source: str, log_base: bool, signature,
                    config: dict) -> str:
        mlflow = _mlflow()
        artifacts = {"adapter": str(adapter_dir)}
        if log_base:
            artifacts["base_model"] = str(base_source)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=code_file,  # models from code: no pickle in the registry
            artifacts=artifacts,
            model_config={"base_model": str(base_source), **config},
            code_paths=[str(REPO_ROOT / "tasks")],  # the model loads wherever the pinned libraries are installed
            pip_requirements=["torch==2.13.0", "transformers==5.24.0", "peft==0.21.2", "accelerate==1.15.0",
                              "safetensors==0.8.0", "sentencepiece==0.2.3", "mlflow==3.17.2", "pydantic>=2.10"],
            signature=signature,
        )
        return info.model_uri

    def log_blueprint_provenance(self, blueprint_path: Path) -> None:
        """Which generator, model and prompts wrote the blueprint the dataset came from."""
        mlflow = _mlflow()
        blueprint = json.loads(blueprint_path.read_text(encoding="utf-8"))
        generator = blueprint["generator"]
        from tasks.domain.blueprint import Provenance

        sources = sorted({Provenance.model_validate(e["provenance"]).label()
                          for e in blueprint["entries"] if e.get("provenance")})
        mlflow.log_params({"blueprint.generator": generator["name"], "blueprint.generator_version": generator["version"],
                           "blueprint.model": str(generator.get("model"))})
        fallback = "user dataset" if generator["name"] == "imported" else "framework"
        mlflow.set_tag("blueprint.sources", (",".join(sources) or fallback)[:5000])
        mlflow.log_artifact(str(blueprint_path), artifact_path="dataset")
