"""Dataset rows in OpenAI `messages` format, and strict parsing of JSONL that names bad lines."""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.domain.errors import DatasetFormatError
from tasks.domain.hashing import content_hash

Role = Literal["system", "user", "assistant"]


class _Strict(BaseModel):
    # strict: a number where text belongs is a type error, not silently coerced
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Message(_Strict):
    role: Role
    content: str


class RowMetadata(_Strict):
    domain: str
    principle_path: list[str] = Field(min_length=1)
    pattern_id: str
    group: str  # pattern + slot values: paraphrases of one question share a group (split together)
    blueprint_hash: str
    generator: str = "offline"
    source: str | None = None  # LLM generators: backend:model:prompt-hash that wrote the pattern
    split: Literal["train", "eval"] | None = None

    @property
    def final_principle(self) -> str:
        return self.principle_path[0]


class Row(_Strict):
    """One conversation. Our own rows carry an id and metadata (domain, principle, paraphrase group);
    a user's rows in the plain OpenAI format may carry `messages` alone: the id is then derived from
    the content, and the checks that need metadata are skipped (and say so)."""

    id: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    metadata: RowMetadata | None = None

    @model_validator(mode="before")
    @classmethod
    def _id_from_content(cls, data: Any) -> Any:
        if isinstance(data, dict) and "id" not in data and isinstance(data.get("messages"), list):
            return {**data, "id": derived_id(data["messages"])}
        return data

    def turns(self, role: Role) -> list[str]:
        return [m.content for m in self.messages if m.role == role]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)


def question_turns(system_prompt: str, question: str) -> list[Message]:
    """A single question under the domain's system prompt: what the models are asked at serving time."""
    return [Message(role="system", content=system_prompt), Message(role="user", content=question)]


def derived_id(messages: list) -> str:
    """A stable id for a row that brings none: the same conversation always gets the same id.

    >>> derived_id([{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "1. Because."}])
    'msg-b811f31a70ff8f98'
    """
    return "msg-" + content_hash(messages)[:16]


def require_metadata(rows: Iterable[tuple[str, int, Row]], purpose: str) -> None:
    """Training and evaluation here still split, weigh and group rows by their metadata: plain
    `messages` rows are refused for them with the first such line named, rather than failing
    deep inside. (Validation and formatting accept them.)"""
    for file, line, row in rows:
        if row.metadata is None:
            raise DatasetFormatError(file, [f"line {line}: a plain `messages` row without metadata; {purpose} "
                                            "needs rows with metadata (domain, principle_path, pattern_id, group)"])


def training_corpus(rows: Iterable[Row]) -> list[str]:
    """Every message's text: what the tiny profile's tokenizer is trained on."""
    return [m.content for row in rows for m in row.messages]


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "row"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_jsonl(lines: Iterable[str], source: str, model: type[BaseModel] | None = None) -> list[tuple[int, Any]]:
    """Parse JSONL into (line number, Row) (or `model`). Collects every bad line before failing, so
    a user fixes them all at once. Blank lines are skipped.

    >>> parse_jsonl(['{"id": 1}'], "x.jsonl")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tasks.domain.errors.DatasetFormatError: x.jsonl: 1 malformed line(s): line 1: id: Input should be a valid string; ...
    """
    payloads: list[tuple[int, Any]] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            payloads.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            problems.append((number, f"line {number}: invalid JSON ({error.msg} at column {error.colno})"))
    return parse_records(payloads, source, problems=problems, model=model or Row)


def parse_records(payloads: Iterable[tuple[int, Any]], source: str, unit: str = "line",
                  problems: list[tuple[int, str]] | None = None, model: type[BaseModel] | None = None) -> list[tuple[int, Any]]:
    """Decoded records (from JSONL lines, parquet or `datasets` rows) into (number, Row) (or
    `model`), every bad one named by its `unit` and number, in order, before failing."""
    model = model or Row
    rows: list[tuple[int, Any]] = []
    problems = list(problems or [])
    for number, payload in payloads:
        if not isinstance(payload, dict):
            problems.append((number, f"{unit} {number}: expected a JSON object, got {type(payload).__name__}"))
            continue
        try:
            rows.append((number, model.model_validate(payload)))
        except ValidationError as error:
            problems.append((number, f"{unit} {number}: {_describe(error)}"))
    if problems:
        raise DatasetFormatError(source, [text for _, text in sorted(problems, key=lambda p: p[0])], unit=unit)
    if not rows:
        raise DatasetFormatError(source, ["no rows: the file is empty"], unit=unit)
    return rows
