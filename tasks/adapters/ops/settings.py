"""Where state lives. `RSLM_HOME` (default `.rslm/` under the working directory) holds the MLflow
store, datasets, models, adapters and Prefect's database; `MLFLOW_TRACKING_URI` overrides the
embedded SQLite store."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def datasets(self) -> Path:
        return self.home / "datasets"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def adapters(self) -> Path:
        return self.home / "adapters"

    @property
    def validations(self) -> Path:
        return self.home / "validations"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def exports(self) -> Path:
        """`rslm export`'s default: one directory per exported version."""
        return self.home / "exports"

    @property
    def registry_cache(self) -> Path:
        """Registered model versions downloaded for local evaluation and chat (immutable)."""
        return self.home / "registry-cache"

    @property
    def llm_cache(self) -> Path:
        """LLM answers for blueprint generation, by backend, model, prompt and parameters."""
        return self.home / "llm-cache"

    @property
    def imported_frameworks(self) -> Path:
        """The stand-in frameworks of users' own datasets, by content (recorded on their versions)."""
        return self.home / "imported-frameworks"

    @property
    def evaluations(self) -> Path:
        return self.home / "evaluations"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def preferences(self) -> Path:
        """Preference pairs built from datasets, by dataset and pair settings."""
        return self.home / "preferences"

    @property
    def step_labels(self) -> Path:
        """Step-labelled answers for the process reward model, by dataset and settings."""
        return self.home / "step-labels"

    @property
    def last_run(self) -> Path:
        return self.home / "last-run.json"


def rslm_home() -> Path:
    return Path(os.environ.get("RSLM_HOME") or ".rslm").expanduser().resolve()


def paths() -> Paths:
    return Paths(rslm_home())


def tracking_uri(p: Paths | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(p or paths()).mlflow_db}"


def resolve_path(value: str | Path) -> Path:
    """A path as given if it exists (absolute or relative to the working directory), else relative
    to the repo root, so the shipped configs are found from anywhere."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (REPO_ROOT / path).resolve()
