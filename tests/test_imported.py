"""A user's own dataset: JSONL, parquet and `datasets` directories read alike, bad rows named by
file and row, the stand-in framework and metadata, and the whole pipeline trained from the file."""
import json
from pathlib import Path

import pytest

from tasks.domain.config import ImportedDatasetConfig
from tasks.domain.errors import ConfigError, DatasetFormatError
from tasks.domain.records import Row

from conftest import NO_FLOORS, tiny_run

SYSTEM = "Answer in at most three numbered reasons."


def plain_rows(build_rows, count: int) -> list[dict]:
    """Seed-format rows: `messages` only, without the system turn (the config supplies it)."""
    return [{"messages": [m.model_dump() for m in row.messages if m.role != "system"]} for row in build_rows[:count]]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_stand_in_framework_and_metadata(small_build):
    from tasks.domain.imported import imported_framework, question_groups, with_import_metadata

    rows = [Row.model_validate(r) for r in plain_rows(small_build.train, 40)]
    with pytest.raises(ConfigError, match="system_prompt is not set and no row has a system turn"):
        imported_framework(rows, ImportedDatasetConfig(), "user.jsonl")
    settings = ImportedDatasetConfig(domain="ops", system_prompt=SYSTEM, max_answer_words=60)
    framework = imported_framework(rows, settings, "user.jsonl")
    assert (framework.domain, framework.system_prompt, framework.style.max_answer_words) == ("ops", SYSTEM, 60)
    (_, block), = framework.blocks()
    assert len(block.key_terms) == 6 and all(t.isalpha() for t in block.key_terms), block.key_terms

    imported = with_import_metadata(rows[0], framework, "h", "user.jsonl:1", "g")
    assert imported.messages[0].content == SYSTEM and imported.messages[1:] == rows[0].messages
    assert imported.id == rows[0].id and imported.metadata.source == "user.jsonl:1"
    assert imported.metadata.generator == "imported" and imported.metadata.principle_path == ["imported"]
    louder = Row.model_validate({"messages": [{"role": "user", "content": rows[0].turns("user")[0].upper() + " "},
                                              {"role": "assistant", "content": "other"}]})
    reworded = Row.model_validate({"messages": [{"role": "user", "content": "In other words: " + rows[0].turns("user")[0]},
                                                {"role": "assistant", "content": rows[0].turns("assistant")[0]}]})
    groups = question_groups([rows[0], louder, reworded, rows[1]])
    assert groups[0] == groups[1] == groups[2] != groups[3], "one question, one side of the split"
    # A system turn the row brings is kept; the config's prompt is only added where none is.
    conversation = plain_rows(small_build.train, 1)[0]["messages"]
    own = Row.model_validate({"messages": [{"role": "system", "content": "Mine."}, *conversation]})
    assert with_import_metadata(own, framework, "h", "f:1", "g").turns("system") == ["Mine."]
    # Without a configured prompt, the rows' most common system turn is the framework's.
    assert imported_framework([own], ImportedDatasetConfig(), "f").system_prompt == "Mine."


def test_jsonl_parquet_and_datasets_directory_read_alike_and_bad_rows_are_named(small_build, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    from tasks.adapters.data.user_dataset import read_user_dataset

    records = plain_rows(small_build.train, 30)
    jsonl = read_user_dataset(write_jsonl(tmp_path / "user.jsonl", records))
    with_extra = [{**r, "source": "forum"} for r in records]
    pq.write_table(pa.Table.from_pylist(with_extra), tmp_path / "user.parquet")
    parquet = read_user_dataset(tmp_path / "user.parquet")
    DatasetDict({"train": Dataset.from_list(with_extra[:20]), "test": Dataset.from_list(with_extra[20:])}).save_to_disk(
        str(tmp_path / "hf"))
    hf = read_user_dataset(tmp_path / "hf")
    assert (jsonl.format, parquet.format, hf.format) == ("jsonl", "parquet", "hf-datasets")
    assert [r.id for _, r in jsonl.rows] == [r.id for _, r in parquet.rows]
    assert sorted(r.id for _, r in hf.rows) == sorted(r.id for _, r in jsonl.rows)
    assert parquet.ignored_columns == hf.ignored_columns == ["source"] and jsonl.ignored_columns == []

    broken = [*records[:2], {"messages": [{"role": "user", "content": None}]}, {"messages": [{"role": "robot", "content": "x"}]}]
    pq.write_table(pa.Table.from_pylist(broken), tmp_path / "broken.parquet")
    with pytest.raises(DatasetFormatError) as error:
        read_user_dataset(tmp_path / "broken.parquet")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'broken.parquet'}: 2 malformed row(s): row 3: messages.0.content")
    assert "row 4: messages.0.role" in message
    pq.write_table(pa.Table.from_pylist([{"text": "no messages here"}]), tmp_path / "wrong.parquet")
    with pytest.raises(Exception, match="no `messages` column .found: text."):
        read_user_dataset(tmp_path / "wrong.parquet")


def test_imported_rows_are_split_validated_and_an_overlong_answer_is_named_by_its_line(small_build, tmp_path, rslm_home):
    from flows.resolution import resolve_pipeline
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.adapters.ops.settings import paths
    from tasks.domain.errors import DataValidationError
    from tasks.stages.build_dataset import import_dataset, require_valid, validate_files

    records = plain_rows(small_build.train, 200)
    source = write_jsonl(tmp_path / "user.jsonl", records)
    overrides = {"dataset.source": str(source), "dataset.imported.system_prompt": SYSTEM,
                 "dataset.imported.max_answer_words": 60}
    spec = resolve_pipeline(load_pipeline_config(overrides=overrides))
    assert spec.framework.domain == "custom" and spec.evaluation.heldout is None
    assert Path(spec.framework_path).parent == paths().imported_frameworks
    dataset = import_dataset(spec.framework, spec.config, paths().datasets)
    manifest = json.loads(Path(dataset.manifest_path).read_text())
    assert manifest["source"]["format"] == "jsonl" and manifest["source"]["rows"] == 200
    assert manifest["rows"]["eval"] >= 10 and manifest["rows"]["train"] + manifest["rows"]["eval"] == 200
    train = [json.loads(line) for line in Path(dataset.train_path).read_text().splitlines()]
    assert all(r["messages"][0] == {"role": "system", "content": SYSTEM} for r in train)
    report = validate_files([dataset.train_path, dataset.eval_path], spec.framework, spec.config.validation,
                            tmp_path / "gx")
    require_valid(report)  # the user's rows pass under their own style; no rule skipped
    assert report.skipped == {}

    records[6]["messages"][-1]["content"] = "1. " + "padding " * 70
    write_jsonl(source, records)
    spec = resolve_pipeline(load_pipeline_config(overrides=overrides))
    dataset = import_dataset(spec.framework, spec.config, paths().datasets)
    report = validate_files([dataset.train_path, dataset.eval_path], spec.framework, spec.config.validation,
                            tmp_path / "gx2")
    with pytest.raises(DataValidationError, match=r"answers are terse.*from user\.jsonl:7\)"):
        require_valid(report)


@pytest.mark.slow
@pytest.mark.integration
def test_pipeline_trains_registers_and_evaluates_a_users_jsonl(prefect_harness, rslm_home, small_build, tmp_path):
    from click.testing import CliRunner

    from flows.cli import cli
    from flows.nightly_retrain import nightly_retrain

    source = write_jsonl(tmp_path / "seed.jsonl", plain_rows(small_build.train, 240))
    # What `rslm validate` and `rslm format` say about the same file, before any training.
    checked = CliRunner().invoke(cli, ["validate", str(source)])
    assert checked.exit_code == 0 and "not checked: every final principle" in checked.output, checked.output
    for chat_format, marker in (("mistral", "[INST]"), ("chatml", "<|im_start|>user")):
        shown = CliRunner().invoke(cli, ["format", str(source), "--chat-format", chat_format])
        assert shown.exit_code == 0 and marker in json.loads(shown.output.splitlines()[0])["prompt"]

    record = nightly_retrain(overrides={**tiny_run(6, **NO_FLOORS), "dataset.source": str(source),
                                        "dataset.imported.system_prompt": SYSTEM, "dataset.imported.domain": "ops"})
    assert record["status"] == "succeeded" and record["domain"] == "ops"
    assert (record["registered_model"], record["model_version"]) == ("reasoning-slm-ops", "1")
    assert record["evaluation"]["metrics"]["loss"] > 0 and record["promotion"]["verdict"] == "promoted"
    assert Path(record["framework_path"]).is_file(), "the stand-in framework the version is judged by"
    card = (Path(record["dataset_path"]).parent / "README.md").read_text()
    assert "jsonl:seed.jsonl" in card and "**passed**" in card
    again = nightly_retrain(overrides={**tiny_run(6, **NO_FLOORS), "dataset.source": str(source),
                                       "dataset.imported.system_prompt": SYSTEM, "dataset.imported.domain": "ops"})
    assert again["status"] == "unchanged", "the same file trains nothing twice"


def test_cli_pipeline_refuses_a_malformed_user_file_before_anything_starts(small_build, tmp_path, rslm_home):
    from click.testing import CliRunner

    from flows.cli import cli

    records = plain_rows(small_build.train, 5)
    records[3]["messages"][1]["role"] = "bot"
    source = write_jsonl(tmp_path / "seed.jsonl", records)
    result = CliRunner().invoke(cli, ["pipeline", "--dataset", str(source)])
    assert result.exit_code != 0
    assert str(result.exception).startswith(f"{source}: 1 malformed line(s): line 4: messages.1.role: Input should be")
    assert not (rslm_home / "adapters").exists() and not (rslm_home / "mlflow.db").exists()
    assert not list((rslm_home / "prefect").rglob("*.db")), "no Prefect server was started for it"
