"""Run the reasoning-dataset suite with Great Expectations and build Data Docs on disk."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from expectations.reasoning_dataset import SuiteSpec, build_suite, skipped_rules

MAX_IDS_SHOWN = 20


@dataclass
class ValidationReport:
    success: bool
    rows: int
    evaluated: int
    failures: list[dict] = field(default_factory=list)
    result_path: str | None = None
    data_docs_index: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # rule -> why it could not be checked
    contamination: dict[str, float] = field(default_factory=dict)  # held-out overlap figures (MLflow metrics)

    def summary(self) -> str:
        if self.success:
            not_checked = "".join(f"; not checked: {rule} ({reason})" for rule, reason in self.skipped.items())
            return f"{self.rows} rows passed {self.evaluated} expectations{not_checked}"
        parts = []
        for failure in self.failures:
            where = ", ".join(failure["rows"][:5]) or failure.get("detail", "")
            more = f" (+{failure['unexpected_count'] - 5} more)" if failure["unexpected_count"] > 5 else ""
            parts.append(f"{failure['expectation']} [{failure['rule']}]: {where}{more}")
        return f"{len(self.failures)} of {self.evaluated} expectations failed: " + "; ".join(parts)


def _row_label(frame: pd.DataFrame, row_id: str) -> str:
    """`id (file:line)` so a user can jump straight to the bad line; an imported row also names
    its line in the user's own file."""
    match = frame[frame["id"] == row_id]
    if match.empty or "file" not in frame:
        return str(row_id)
    first = match.iloc[0]
    origin = f", from {first['origin']}" if first.get("origin") else ""
    return f"{row_id} ({Path(first['file']).name}:{first['line']}{origin})"


def _failure(result, frame: pd.DataFrame) -> dict:
    config = result.expectation_config
    unexpected = result.result.get("unexpected_index_list") or []
    ids = list(dict.fromkeys(str(item["id"]) for item in unexpected if isinstance(item, dict) and "id" in item))
    failure = {
        "expectation": config.type,
        "column": config.kwargs.get("column"),
        "rule": (config.meta or {}).get("rule", config.type),
        "unexpected_count": int(result.result.get("unexpected_count") or len(ids)),
        "row_ids": ids[:MAX_IDS_SHOWN],
        "rows": [_row_label(frame, i) for i in ids[:MAX_IDS_SHOWN]],
    }
    if config.type == "expect_column_distinct_values_to_contain_set":
        missing = sorted(set(config.kwargs["value_set"]) - set(frame[config.kwargs["column"]]))
        failure["detail"] = f"missing {missing}"
        failure["unexpected_count"] = len(missing)
    return failure


def validate_frame(frame: pd.DataFrame, spec: SuiteSpec, out_dir: Path) -> ValidationReport:
    """Validate a flattened dataset; writes `result.json`, `suite.json` and Data Docs under out_dir."""
    skipped = skipped_rules(frame)
    report = run_suite(frame, build_suite(spec, skipped), out_dir, {"skipped_rules": skipped})
    report.skipped = skipped
    report.contamination = contamination_figures(frame, spec)
    return report


def run_suite(frame: pd.DataFrame, suite, out_dir: Path, extra: dict | None = None) -> ValidationReport:
    """Run one expectation suite over a flat table whose rows have an `id`; failures name rows
    (and their file:line where the table has those columns). Writes `result.json` (plus `extra`),
    `suite.json` and Data Docs under out_dir."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = out_dir / "data_docs"
    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(site_name="rslm", site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
    })
    batch = (context.data_sources.add_pandas("reasoning")
             .add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=suite.name, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{suite.name}-checkpoint",
        validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs", site_names=["rslm"])],
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]},
    ))
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    (result,) = outcome.run_results.values()
    failures = [_failure(r, frame) for r in result.results if not r.success]
    result_path = out_dir / "result.json"
    result_path.write_text(json.dumps({**result.describe_dict(), **(extra or {})}, indent=2, default=str))
    (out_dir / "suite.json").write_text(json.dumps(suite.to_json_dict(), indent=2, default=str))
    index = docs_dir / "index.html"
    return ValidationReport(success=bool(outcome.success), rows=len(frame), evaluated=len(result.results),
                            failures=failures, result_path=str(result_path),
                            data_docs_index=str(index) if index.exists() else None)


def contamination_figures(frame: pd.DataFrame, spec: SuiteSpec) -> dict[str, float]:
    """How close training text came to the held-out questions and to the eval split's questions
    (what was not checked has no figures)."""
    figures: dict[str, float] = {}
    if frame.empty:
        return figures
    if spec.heldout_questions:
        overlap = frame["heldout_overlap"]
        figures |= {"heldout_questions": float(len(spec.heldout_questions)), "heldout_overlap_max": float(overlap.max()),
                    "rows_sharing_heldout_ngrams": float((overlap > 0).sum()),
                    "rows_over_heldout_threshold": float((overlap > spec.validation.max_heldout_overlap).sum())}
    evaluated = frame.loc[frame["split"] == "eval", "eval_overlap"]
    if not evaluated.empty:
        figures |= {"eval_questions": float(len(evaluated)), "eval_overlap_max": float(evaluated.max()),
                    "eval_overlap_mean": round(float(evaluated.mean()), 4),
                    "eval_questions_over_half": float((evaluated > 0.5).sum()),
                    "eval_questions_over_threshold": float((evaluated > spec.validation.max_eval_overlap).sum())}
    return figures
