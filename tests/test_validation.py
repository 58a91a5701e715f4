"""Great Expectations: a good dataset passes; each broken rule is reported with the row ids;
`rslm validate` exits non-zero on bad data and registers nothing."""
import pytest
from click.testing import CliRunner

from flows.cli import cli
from tasks.domain.config import ValidationConfig
from tasks.domain.errors import DataValidationError
from tasks.domain.records import Message
from tasks.stages.build_dataset import require_valid, validate_files

from conftest import write_rows

pytestmark = pytest.mark.integration


def with_messages(row, messages):
    return row.model_copy(update={"messages": messages})


def test_good_dataset_passes_and_builds_data_docs(tmp_path, small_build, devops_framework):
    files = [str(write_rows(tmp_path / "train.jsonl", small_build.train)),
             str(write_rows(tmp_path / "eval.jsonl", small_build.eval))]
    report = validate_files(files, devops_framework, ValidationConfig(), tmp_path / "out")
    assert report.success, report.summary()
    assert report.rows == len(small_build.train) + len(small_build.eval)
    assert report.data_docs_index and (tmp_path / "out/data_docs/index.html").exists()
    require_valid(report)


def test_each_broken_rule_names_its_rows(tmp_path, small_build, devops_framework):
    rows = list(small_build.train)
    system, user, answer = rows[0].messages[:3]
    rows[1] = with_messages(rows[1], [rows[1].messages[0], Message(role="user", content="q?" * 5),
                                      Message(role="assistant", content="word " * 80)])
    rows[2] = with_messages(rows[2], [*rows[2].messages[:2],
                                      Message(role="assistant", content="Use key AKIAABCDEFGHIJKLMNOP for it, friend.")])
    rows[3] = with_messages(rows[3], [rows[3].messages[0], rows[3].messages[2], rows[3].messages[1]])
    rows[4] = with_messages(rows[4], [*rows[4].messages[:2],
                                      Message(role="assistant", content="Maybe it works; I think so, more or less fine.")])
    rows[5] = with_messages(rows[5], [rows[5].messages[0], user, rows[5].messages[2]])  # same prompt as row 0
    rows[6] = with_messages(rows[6], [*rows[6].messages[:-1], Message(
        role="assistant",
        content="1. Decoupling: the the web app deploys dark. 2. Scope: a leaked a deploy role reaches one bucket.")])
    broken = rows[:7]
    dropped = next(p for p in devops_framework.final_principle_ids()
                   if p not in {r.metadata.final_principle for r in broken})
    rows = broken + [r for r in rows[7:] if r.metadata.final_principle != dropped]
    path = write_rows(tmp_path / "bad.jsonl", rows)
    report = validate_files([str(path)], devops_framework, ValidationConfig(), tmp_path / "out")
    assert not report.success
    by_rule = {f["expectation"] + ":" + (f["column"] or ""): f for f in report.failures}
    assert by_rule["expect_column_values_to_be_between:answer_words_max"]["row_ids"] == [small_build.train[1].id]
    assert small_build.train[2].id in by_rule["expect_column_values_to_not_match_regex_list:text"]["row_ids"]
    assert small_build.train[3].id in by_rule["expect_column_values_to_match_regex:roles"]["row_ids"]
    assert small_build.train[4].id in by_rule["expect_column_values_to_not_match_regex_list:answer_text"]["row_ids"]
    duplicated = set(by_rule["expect_column_values_to_be_unique:prompt"]["row_ids"])
    assert duplicated == {small_build.train[0].id, small_build.train[5].id}
    assert dropped in by_rule["expect_column_distinct_values_to_contain_set:final_principle"]["detail"]
    doubled = by_rule["expect_column_values_to_not_match_regex:text"]
    assert small_build.train[6].id in doubled["row_ids"] and "doubled words" in doubled["rule"]
    assert small_build.train[0].id not in doubled["row_ids"]
    assert any("bad.jsonl:" in label for f in report.failures for label in f["rows"]), "rows are located by file:line"
    with pytest.raises(DataValidationError, match="answers are terse"):
        require_valid(report)


def test_cli_validate_rejects_malformed_jsonl_by_line(tmp_path, rslm_home, small_build):
    path = tmp_path / "broken.jsonl"
    path.write_text(small_build.train[0].to_json() + "\n{oops\n" + '{"id": 5}\n')
    result = CliRunner().invoke(cli, ["validate", str(path)], standalone_mode=True)
    assert result.exit_code != 0
    assert "line 2: invalid JSON" in str(result.exception) and "line 3" in str(result.exception)
    assert not (rslm_home / "mlflow.db").exists(), "nothing tracked or registered"


def test_cli_validate_exit_code_and_row_ids_in_a_subprocess(tmp_path, rslm_home, small_build):
    import subprocess
    import sys

    rows = list(small_build.train[:50]) + list(small_build.eval)
    rows[0] = with_messages(rows[0], [*rows[0].messages[:2],
                                      Message(role="assistant", content="-----BEGIN RSA PRIVATE KEY----- abc def ghi")])
    path = write_rows(tmp_path / "secret.jsonl", rows)
    result = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and rows[0].id in error_lines[0] and "secret" in error_lines[0]
    assert "Traceback" not in result.stderr


def _plain_rows(rows) -> list[str]:
    """Rows as a user brings them: OpenAI `messages` and nothing else (no id, no metadata)."""
    import json

    return [json.dumps({"messages": [m.model_dump() for m in row.messages]}) for row in rows]


def test_plain_messages_rows_validate_with_the_metadata_rule_skipped_and_said(tmp_path, small_build,
                                                                              devops_framework):
    path = tmp_path / "reasoning_dataset.jsonl"
    path.write_text("\n".join(_plain_rows(small_build.train + small_build.eval)) + "\n")
    report = validate_files([str(path)], devops_framework, ValidationConfig(), tmp_path / "out")
    assert report.success, report.summary()
    reason = report.skipped["every final principle of the framework is represented"]
    assert reason.startswith(f"skipped: {len(small_build.train + small_build.eval)} of ") and "without metadata" in reason
    assert "not checked: every final principle" in report.summary()
    docs = "".join(p.read_text(errors="replace") for p in (tmp_path / "out" / "data_docs").rglob("*.html"))
    assert "Not checked" in docs and "without metadata" in docs, "the skipped rule is shown in Data Docs"
    # the other rules still apply to plain rows: a hedged answer is caught and named by file:line
    import json

    hedged = json.loads(_plain_rows(small_build.train[:1])[0])
    hedged["messages"][-1]["content"] += " It depends."
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(_plain_rows(small_build.train[1:30]) + [json.dumps(hedged)]) + "\n")
    failed = validate_files([str(bad)], devops_framework, ValidationConfig(), tmp_path / "out2")
    assert not failed.success and any("bad.jsonl:30" in row for f in failed.failures for row in f["rows"])


def test_plain_messages_rows_print_in_both_chat_formats_with_derived_ids(tmp_path, rslm_home, small_build):
    import json

    from tasks.domain.records import derived_id

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(_plain_rows(small_build.train[:3])) + "\n")
    runner = CliRunner()
    ids = [derived_id([m.model_dump() for m in row.messages]) for row in small_build.train[:3]]
    for chat_format, marker in (("mistral", "[INST]"), ("chatml", "<|im_start|>user")):
        done = runner.invoke(cli, ["format", str(path), "--chat-format", chat_format])
        assert done.exit_code == 0, done.output
        printed = [json.loads(line) for line in done.output.splitlines()]
        assert [p["id"] for p in printed] == ids and all(marker in p["prompt"] for p in printed)
        assert printed[0]["completion"].strip().startswith(small_build.train[0].turns("assistant")[-1])
    validated = runner.invoke(cli, ["validate", str(path)])
    assert validated.exit_code == 0, validated.output  # three rows cover few principles: that rule is skipped, and said
    assert "not checked: every final principle of the framework is represented" in validated.output


def test_a_row_holding_a_heldout_question_fails_decontamination_and_the_default_data_passes(
        tmp_path, small_build, devops_framework):
    """The held-out questions are the one test no framework pattern wrote: planting one in a
    training answer fails validation, naming the row; the shipped dataset shares no 8-word run."""
    from tasks.adapters.ops.config_files import load_heldout, load_pipeline_config

    heldout = load_heldout(load_pipeline_config().evaluation, "devops")
    clean = [str(write_rows(tmp_path / "train.jsonl", small_build.train)),
             str(write_rows(tmp_path / "eval.jsonl", small_build.eval))]
    report = validate_files(clean, devops_framework, ValidationConfig(), tmp_path / "out", heldout)
    assert report.success, report.summary()
    assert report.contamination["heldout_questions"] == len(heldout.questions) == 20
    assert report.contamination["rows_over_heldout_threshold"] == 0 and report.contamination["heldout_overlap_max"] < 0.5

    planted = small_build.train[:40]
    victim = planted[17]
    answer = victim.turns("assistant")[-1]
    leaked = with_messages(victim, [*victim.messages[:-1], Message(
        role="assistant", content=answer.replace("2. ", f"2. As in '{heldout.questions[3].question}': ", 1))])
    path = write_rows(tmp_path / "planted.jsonl", [*planted[:17], leaked, *planted[18:]])
    failed = validate_files([str(path)], devops_framework, ValidationConfig(), tmp_path / "out2", heldout)
    (failure,) = [f for f in failed.failures if f["column"] == "heldout_overlap"]
    assert failure["rows"] == [f"{victim.id} (planted.jsonl:18)"] and "held-out question" in failure["rule"]
    assert failed.contamination["heldout_overlap_max"] == 1.0 and failed.contamination["rows_over_heldout_threshold"] == 1


def test_an_eval_question_pasted_into_training_fails_and_the_shipped_splits_pass(tmp_path, small_build, devops_framework):
    """Eval questions share template runs with training by design (siblings with other slot
    values); one copied into a training prompt is a leak, named by its eval row."""
    clean = [str(write_rows(tmp_path / "train.jsonl", small_build.train)),
             str(write_rows(tmp_path / "eval.jsonl", small_build.eval))]
    report = validate_files(clean, devops_framework, ValidationConfig(), tmp_path / "out")
    assert report.success, report.summary()
    figures = report.contamination
    assert figures["eval_questions"] == len(small_build.eval) and figures["eval_questions_over_threshold"] == 0
    assert 0.5 < figures["eval_overlap_max"] <= 0.95 and figures["eval_questions_over_half"] > 0, figures

    target = small_build.eval[5]
    victim = small_build.train[9]
    question = f"Context from the runbook: {target.turns('user')[-1]} Answer for our setup."
    leaked = with_messages(victim, [Message(role=m.role, content=question if m.role == "user" else m.content)
                                    for m in victim.messages])
    train = [*small_build.train[:9], leaked, *small_build.train[10:]]
    paths = [str(write_rows(tmp_path / "leaky.jsonl", train)), clean[1]]
    failed = validate_files(paths, devops_framework, ValidationConfig(), tmp_path / "out2")
    (failure,) = [f for f in failed.failures if f["column"] == "eval_overlap"]
    assert failure["rows"] == [f"{target.id} (eval.jsonl:6)"] and "eval question is copied" in failure["rule"]
    assert failed.contamination["eval_overlap_max"] == 1.0 and failed.contamination["eval_questions_over_threshold"] == 1
