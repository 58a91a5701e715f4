"""Malformed JSONL is reported by line number, all bad lines at once, never as a traceback."""
import json

import pytest

from tasks.domain.errors import DatasetFormatError
from tasks.domain.records import parse_jsonl


def good(i=0):
    return json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                       "metadata": {"domain": "d", "principle_path": ["p"], "pattern_id": "x", "group": "g",
                                    "blueprint_hash": "h"}})


def test_valid_lines_parse_with_line_numbers():
    rows = parse_jsonl([good(0), "", good(1)], "f.jsonl")
    assert [(line, row.id) for line, row in rows] == [(1, "r0"), (3, "r1")]


def test_every_kind_of_bad_line_is_named():
    wrong_type = json.loads(good(2))
    wrong_type["messages"][0]["content"] = 42
    missing = json.loads(good(3))
    del missing["metadata"]["pattern_id"]  # metadata is optional; half of it is not
    bad_role = json.loads(good(4))
    bad_role["messages"][0]["role"] = "robot"
    lines = [good(0), "{not json", json.dumps(wrong_type), json.dumps(missing), json.dumps(bad_role), "[1, 2]"]
    with pytest.raises(DatasetFormatError) as error:
        parse_jsonl(lines, "f.jsonl")
    problems = error.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert "invalid JSON" in problems[0]
    assert "messages.0.content" in problems[1]
    assert "metadata.pattern_id" in problems[2] and "Field required" in problems[2]
    assert "role" in problems[3]
    assert str(error.value).startswith("f.jsonl: 5 malformed line(s)")


def test_empty_file_is_an_error():
    with pytest.raises(DatasetFormatError, match="empty"):
        parse_jsonl(["", "  "], "f.jsonl")


def test_plain_messages_rows_get_a_stable_id_and_are_refused_where_metadata_is_needed():
    from tasks.domain.records import require_metadata

    plain = {"messages": [{"role": "user", "content": "Why pin images by digest?"},
                          {"role": "assistant", "content": "1. Reproducible: the same bytes every deploy."}]}
    (line, row), = parse_jsonl([json.dumps(plain)], "mine.jsonl")
    again, = parse_jsonl([json.dumps(plain)], "other.jsonl")
    assert row.metadata is None and row.id.startswith("msg-") and again[1].id == row.id
    require_metadata([("ours.jsonl", 1, parse_jsonl([good(0)], "ours.jsonl")[0][1])], "training")  # ours pass
    with pytest.raises(DatasetFormatError, match=r"mine.jsonl: 1 malformed line\(s\): line 7: a plain `messages` "
                                                 r"row without metadata; training needs"):
        require_metadata([("mine.jsonl", 7, row)], "training")
