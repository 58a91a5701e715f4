"""Stage: framework -> blueprint -> dataset files -> Great Expectations verdict. Plain functions over
the domain and the IO adapters; Prefect tasks wrap them, `rslm generate` and `rslm validate` call them."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from expectations.reasoning_dataset import SuiteSpec, flatten_rows
from tasks.adapters.data.dataset_store import DatasetRef, read_dataset_files, write_dataset, write_dataset_card
from tasks.adapters.data.gx_runner import ValidationReport, validate_frame
from tasks.adapters.data.user_dataset import read_user_dataset
from tasks.adapters.ops.atomic_files import write_text_atomically
from tasks.adapters.ops.progress import tqdm_progress
from tasks.adapters.ops.settings import Paths, resolve_path
from tasks.domain.blueprint import Blueprint, GeneratorInfo, OfflineBlueprintGenerator
from tasks.domain.config import HeldOutSet, ImportedDatasetConfig, PipelineConfig, ValidationConfig
from tasks.domain.dataset_card import dataset_card
from tasks.domain.errors import DataValidationError
from tasks.domain.expansion import DatasetBuild, assemble_dataset, build_dataset
from tasks.domain.framework import Framework
from tasks.domain.grounding import framework_grounding, grounded_rows
from tasks.domain.hashing import content_hash
from tasks.domain.imported import imported_framework, question_groups, with_import_metadata


def generate_blueprint(framework: Framework, config: PipelineConfig, paths: Paths) -> Blueprint:
    """The configured generator's blueprint (LLM answers come from, and go to, the disk cache)."""
    from tasks.adapters.model.blueprint_llm import blueprint_generator
    from tasks.adapters.tracking.runs import Tracking

    def load_registered(model_uri: str):  # llm.source as models:/NAME@ALIAS: a version in this machine's store
        return Tracking.configured().registry.load_generator(model_uri, paths.registry_cache, device=config.llm.device)

    generator = blueprint_generator(config.dataset.generator, config.llm, paths.llm_cache,
                                    tqdm_progress("blueprint (principles)", unit="principle"), load_registered)
    return generator.generate(framework)


def dataset_build(blueprint: Blueprint, config: PipelineConfig, progress=None) -> DatasetBuild:
    """The configured recipe (seed, split, caps) applied to a blueprint: rows in memory, unwritten."""
    return build_dataset(blueprint, seed=config.seed, eval_fraction=config.dataset.eval_fraction,
                         max_samples=config.dataset.max_samples, max_answer_repeats=config.dataset.max_answer_repeats,
                         max_groups_per_pattern=config.dataset.max_groups_per_pattern,
                         **({"progress": progress} if progress else {}))


def expand_dataset(framework: Framework, blueprint: Blueprint, config: PipelineConfig, root: Path) -> DatasetRef:
    """Expand, dedup, split and write; the config hash covers everything that shapes the rows."""
    build = dataset_build(blueprint, config, progress=tqdm_progress("expanding patterns"))
    grounding = framework_grounding(framework, config.dataset.grounding_passages)
    if grounding:  # after dedup and the caps, which judge questions and answers, not system turns
        build = replace(build, train=grounded_rows(build.train, blueprint.system_prompt, grounding),
                        eval=grounded_rows(build.eval, blueprint.system_prompt, grounding))
    config_hash = content_hash({"framework": framework.model_dump(mode="json"),
                                "dataset": config.dataset.model_dump(), "seed": config.seed})
    return write_dataset(build, blueprint, config_hash=config_hash, seed=config.seed, root=root)


def imported_framework_for(source: str, settings: ImportedDatasetConfig, paths: Paths) -> tuple[Framework, str]:
    """The stand-in framework of a user's dataset, written by content under RSLM_HOME (the version
    records its path, so re-evaluating the version later judges it the same way). A bad row fails
    here, by file, row and rule, before anything else runs."""
    user = read_user_dataset(resolve_path(source))
    framework = imported_framework([row for _, row in user.rows], settings, Path(user.path).name)
    text = framework.model_dump_json(indent=2)
    path = paths.imported_frameworks / f"{settings.domain}-{content_hash(text)[:12]}.json"
    if not path.is_file():
        write_text_atomically(path, text)
    return framework, str(path)


def import_dataset(framework: Framework, config: PipelineConfig, root: Path) -> DatasetRef:
    """A user's rows instead of generated ones: metadata added, then the same dedup, cap and
    split (the eval split carved from their rows) and the same files as a generated dataset."""
    user = read_user_dataset(resolve_path(config.dataset.source))
    name = Path(user.path).name
    blueprint = OfflineBlueprintGenerator().generate(framework).model_copy(
        update={"generator": GeneratorInfo(name="imported", version="1", model=f"{user.format}:{user.sha256[:12]}")})
    groups = question_groups([row for _, row in user.rows])
    rows = [with_import_metadata(row, framework, blueprint.digest(), f"{name}:{line}", group)
            for (line, row), group in zip(user.rows, groups, strict=True)]
    # no repeat caps: they undo a framework's templating; a user's rows are kept as written
    build = assemble_dataset(rows, seed=config.seed, eval_fraction=config.dataset.eval_fraction,
                             max_samples=config.dataset.max_samples)
    config_hash = content_hash({"framework": framework.model_dump(mode="json"), "source": user.sha256,
                                "dataset": config.dataset.model_dump(), "seed": config.seed})
    return write_dataset(build, blueprint, config_hash=config_hash, seed=config.seed, root=root,
                         source=user.describe())


def suite_spec(framework: Framework, validation: ValidationConfig, heldout: HeldOutSet | None = None) -> SuiteSpec:
    return SuiteSpec(max_answer_words=framework.style.max_answer_words,
                     min_answer_words=framework.style.min_answer_words,
                     banned_phrases=tuple(framework.style.banned_phrases),
                     final_principles=tuple(framework.final_principle_ids()), validation=validation,
                     heldout_questions=tuple(q.question for q in heldout.questions) if heldout else ())


def validate_files(files: list[str], framework: Framework, validation: ValidationConfig, out_dir: Path,
                   heldout: HeldOutSet | None = None) -> ValidationReport:
    """Validate train and eval files together (so a prompt in both counts as a duplicate), and
    against the domain's held-out questions (decontamination) when it has them."""
    spec = suite_spec(framework, validation, heldout)
    frame = flatten_rows(read_dataset_files(files), spec.heldout_questions)
    return validate_frame(frame, spec, out_dir)


def require_valid(report: ValidationReport) -> None:
    if not report.success:
        docs = f" (Data Docs: {report.data_docs_index})" if report.data_docs_index else ""
        raise DataValidationError(f"dataset validation failed: {report.summary()}{docs}",
                                  report.failures, report.data_docs_index)


def write_card(dataset: DatasetRef, report: ValidationReport, config: PipelineConfig) -> str:
    """The dataset card (README.md beside the JSONL): counts, sources, the validation outcome and
    the contamination figures. Written after validation, pass or fail, so a rejected dataset kept
    for inspection says why. Returns its path."""
    manifest = json.loads(Path(dataset.manifest_path).read_text(encoding="utf-8"))
    blueprint = Blueprint.model_validate_json(Path(dataset.blueprint_path).read_text(encoding="utf-8"))
    imported = manifest.get("source")
    sources = ([f"{imported['format']}:{Path(imported['path']).name} (sha256 {imported['sha256'][:12]})"] if imported
               else sorted({e.provenance.label() for e in blueprint.entries if e.provenance}) or ["framework"])
    text = dataset_card(manifest, license_id=config.dataset.license, sources=sources, validation={
        "success": report.success, "summary": report.summary(), "skipped": report.skipped,
        "contamination": report.contamination})
    return str(write_dataset_card(dataset, text))
