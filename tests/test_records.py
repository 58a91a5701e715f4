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
    del missing["metadata"]
    bad_role = json.loads(good(4))
    bad_role["messages"][0]["role"] = "robot"
    lines = [good(0), "{not json", json.dumps(wrong_type), json.dumps(missing), json.dumps(bad_role), "[1, 2]"]
    with pytest.raises(DatasetFormatError) as error:
        parse_jsonl(lines, "f.jsonl")
    problems = error.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert "invalid JSON" in problems[0]
    assert "messages.0.content" in problems[1]
    assert "metadata" in problems[2] and "Field required" in problems[2]
    assert "role" in problems[3]
    assert str(error.value).startswith("f.jsonl: 5 malformed line(s)")


def test_empty_file_is_an_error():
    with pytest.raises(DatasetFormatError, match="empty"):
        parse_jsonl(["", "  "], "f.jsonl")
