"""The MLflow model registry: register versions, resolve `models:/` URIs, move aliases from the
champion history, record promotion decisions, and fetch a version's files for local inference.

Aliases: `challenger` (the newest registered version), `champion` (what users serve),
`previous-champion` (where `rslm rollback` goes). The history behind them is a registered-model
tag, so rollback can step back more than once."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tasks.adapters.tracking.mlflow_store import bind_store
from tasks.domain.errors import RslmError, first_line
from tasks.domain.evaluation import parse_model_uri
from tasks.domain.promotion import Decision, after_promotion, after_rollback, aliases_for, format_history, parse_history

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
HISTORY_TAG = "champion.history"


def _missing(error: Exception) -> bool:
    """MLflow saying the model, version or alias does not exist (and not: the server is down)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return False
    return error.error_code == "RESOURCE_DOES_NOT_EXIST" or (
        error.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(error))


def _server_down(error: Exception) -> bool:
    """A request to a tracking server that failed: refused, timed out, or retried out."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE") \
        and "API request to" in str(error)


def unreachable(uri: str, error: Exception) -> RslmError:
    """One line for a store that did not answer, naming it (its password hidden)."""
    from tasks.domain.stack import redact

    return RslmError(f"MLflow at {redact(uri)} did not answer: {first_line(error, 300)}")


@dataclass
class VersionInfo:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    tags: dict[str, str]
    description: str
    created_ms: int
    source: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    run_status: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


DECISION_TAG = "promotion.decision_json"  # the whole decision, so a retried promotion finishes it instead of re-deciding


def recorded_decision(info: VersionInfo) -> Decision | None:
    """The decision already recorded on this version, if any (None when absent or unreadable)."""
    from pydantic import ValidationError

    try:
        return Decision.model_validate_json(info.tags[DECISION_TAG]) if DECISION_TAG in info.tags else None
    except ValidationError:
        return None


def model_files(model_dir: Path) -> tuple[dict, dict[str, Path]]:
    """The pyfunc model's config (base model reference, system prompt, answer length) and its
    artifacts (`adapter`, and `base_model` when bundled) as local paths."""
    from mlflow.models import Model

    flavor = Model.load(str(model_dir)).flavors["python_function"]
    artifacts = {key: model_dir / spec["path"] for key, spec in (flavor.get("artifacts") or {}).items()}
    return dict(flavor.get("config") or {}), artifacts


@dataclass(frozen=True)
class ModelRegistry:
    """The registry of one MLflow store, built once per flow or command and passed down."""

    uri: str

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _info(self, mv, with_run: bool = False) -> VersionInfo:
        info = VersionInfo(name=mv.name, version=str(mv.version), run_id=mv.run_id or "", aliases=list(mv.aliases or []),
                           tags=dict(mv.tags or {}), description=mv.description or "",
                           created_ms=int(mv.creation_timestamp or 0), source=mv.source or "")
        if with_run and info.run_id:
            run = self._client().get_run(info.run_id)
            info.metrics, info.run_status = dict(run.data.metrics), run.info.status
        return info

    def register(self, model_uri: str, name: str, *, tags: dict[str, str] | None = None) -> tuple[str, list[str]]:
        """Register a new version and alias it `challenger`. It becomes champion only through the
        promotion gate (or `rslm promote`). Returns (version, aliases)."""
        import mlflow

        bind_store(self.uri)  # mlflow.register_model (which links MLflow 3's logged model) is fluent-only
        version = str(mlflow.register_model(model_uri, name, tags=tags).version)
        self._client().set_registered_model_alias(name, CHALLENGER, version)
        return version, [CHALLENGER]

    def version_for_alias(self, name: str, alias: str) -> str | None:
        try:
            return str(self._client().get_model_version_by_alias(name, alias).version)
        except Exception as error:  # noqa: BLE001 - a missing alias or model is an answer, not a failure
            if _missing(error):
                return None
            if _server_down(error):
                raise unreachable(self.uri, error) from None
            raise

    def resolve(self, uri: str, with_run: bool = False) -> VersionInfo:
        """A `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI -> that version (errors name the URI)."""
        try:
            name, alias, version = parse_model_uri(uri)
        except ValueError as error:
            raise RslmError(str(error)) from None
        client = self._client()
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except Exception as error:  # noqa: BLE001 - MLflow raises its own types for a missing version; others re-raise
            if _missing(error):
                raise RslmError(f"{uri}: no such registered model version or alias") from None
            if _server_down(error):
                raise unreachable(self.uri, error) from None
            raise
        return self._info(mv, with_run)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of `name`, newest first, with its run's metrics."""
        client = self._client()
        found = client.search_model_versions(f"name = '{name}'")
        if not found:
            raise RslmError(f"no registered model named {name!r}")
        # search results carry no aliases: take them from the registered model
        aliases = client.get_registered_model(name).aliases or {}
        infos = sorted((self._info(mv, with_run=True) for mv in found), key=lambda v: int(v.version), reverse=True)
        for info in infos:
            info.aliases = sorted(alias for alias, version in aliases.items() if str(version) == info.version)
        return infos

    def find_by_tag(self, name: str, key: str, value: str) -> list[VersionInfo]:
        """Versions of `name` whose tag `key` equals `value` (none when the model does not exist)."""
        if not value or "'" in value:
            return []
        found = self._client().search_model_versions(f"name = '{name}' and tags.`{key}` = '{value}'")
        return [self._info(mv) for mv in found]

    def history(self, name: str) -> list[str]:
        tags = self._client().get_registered_model(name).tags or {}
        return parse_history(tags.get(HISTORY_TAG), self.version_for_alias(name, CHAMPION))

    def apply_history(self, name: str, new_history: list[str]) -> dict[str, str | None]:
        """Point `champion` and `previous-champion` at what the history says, and store it."""
        client = self._client()
        targets = aliases_for(new_history)
        for alias in (PREVIOUS_CHAMPION, CHAMPION):
            if targets[alias]:
                client.set_registered_model_alias(name, alias, targets[alias])
            elif self.version_for_alias(name, alias):
                client.delete_registered_model_alias(name, alias)
        client.set_registered_model_tag(name, HISTORY_TAG, format_history(new_history))
        return targets

    def record_decision(self, name: str, decision: Decision) -> None:
        """The decision and its reasons on the challenger version: tags plus its description."""
        version = decision.challenger_version
        whole = decision.model_dump_json()
        self.set_version_tags(name, version, {"promotion.decision": decision.verdict,
                                         "promotion.against": decision.champion_version or "none",
                                         "promotion.reasons": json.dumps(decision.reasons())[:4900],
                                         **({DECISION_TAG: whole} if len(whole) <= 4900 else {})})  # tag values cap at 5000
        self._client().update_model_version(name, version, description=decision.description()[:4900])

    def aliases_now(self, name: str) -> dict[str, str | None]:
        return {alias: self.version_for_alias(name, alias) for alias in (CHAMPION, PREVIOUS_CHAMPION)}

    def promote(self, name: str, version: str) -> dict[str, str | None]:
        """`version` becomes champion; the old champion becomes previous-champion."""
        return self.apply_history(name, after_promotion(self.history(name), version))

    def rollback(self, name: str) -> dict[str, str | None]:
        """The champion steps down; the previous champion takes over (and the one before it becomes
        previous-champion). The demoted version is tagged so nobody re-promotes it by accident."""
        current = self.history(name)
        targets = self.apply_history(name, after_rollback(current))
        self._client().set_model_version_tag(name, current[-1], "promotion.rolled_back", "true")
        return targets

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        client = self._client()
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)

    def delete_version_tag(self, name: str, version: str, key: str) -> None:
        self._client().delete_model_version_tag(name, version, key)

    def download(self, info: VersionInfo, cache_root: Path) -> Path:
        """The version's MLflow model directory, downloaded once (versions are immutable)."""
        import mlflow

        target = cache_root / info.name / info.version
        if (target / "MLmodel").exists():
            return target
        staging = cache_root / info.name / f".{info.version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        bind_store(self.uri)  # a models:/ URI is resolved through the process-wide registry URI
        mlflow.artifacts.download_artifacts(artifact_uri=info.uri, dst_path=str(staging))
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
        return target

    def _parts(self, model_uri: str, cache_root: Path) -> tuple[str, Path, dict]:
        config, artifacts = model_files(self.download(self.resolve(model_uri), cache_root))
        return str(artifacts.get("base_model") or config["base_model"]), artifacts["adapter"], config

    def base_and_adapter(self, model_uri: str, cache_root: Path) -> tuple[str, Path, str]:
        """A registered version's base (bundled, else referenced), adapter and system prompt."""
        base, adapter, config = self._parts(model_uri, cache_root)
        return base, adapter, config.get("system_prompt", "")

    def load_generator(self, model_uri: str, cache_root: Path, device: str = "auto"):
        """Base + adapter of a registered version (`models:/NAME@ALIAS` or `models:/NAME/VERSION`),
        ready to answer as it was trained (its system prompt, and its grounding where it has one):
        the bundled base when the model carries one, else the base it references."""
        from tasks.adapters.model.inference import load_generator
        from tasks.domain.grounding import recorded_grounding

        base, adapter, config = self._parts(model_uri, cache_root)
        return load_generator(base, adapter, config.get("system_prompt", ""), device=device,
                              grounding=recorded_grounding(config))

    def load_reward_scorer(self, model_uri: str, cache_root: Path, device: str = "auto"):
        """A registered process reward model, ready to score answers' steps."""
        from tasks.adapters.model.reward_model import load_reward_scorer

        base, adapter, system_prompt = self.base_and_adapter(model_uri, cache_root)
        return load_reward_scorer(base, adapter, system_prompt, device=device)
