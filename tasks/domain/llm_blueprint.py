"""Blueprints written by an LLM, one final principle at a time. Pure: prompts in, parsed and
validated entries out; the chat backend and the response cache are injected (adapters).

For each principle the LLM sees the principle's chain (explanatory -> core logic -> blocks, with
summaries and key terms), the style, and one example pattern, and answers with JSON:

    {"principle": "<id>", "blocks": [{"block": "<block id>", "patterns": [<Pattern>, ...]}, ...]}

Every block of the principle must come back with at least one pattern that passes the framework's
own Pattern validation (slots match placeholders, varying slots in every question). A reply that
fails gets a bounded number of repair turns quoting the error; then generation stops with an error
naming the principle, before anything is written.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.domain.blueprint import Blueprint, BlueprintEntry, GeneratorInfo, Provenance
from tasks.domain.errors import RslmError
from tasks.domain.framework import FinalPrinciple, Framework, Pattern
from tasks.domain.hashing import content_hash
from tasks.domain.records import Message

PROMPT_VERSION = "1"  # bump when the prompt text changes: it is part of every cache key


class BlueprintGenerationError(RslmError):
    exit_code = 1


class ReplyError(ValueError):
    """A reply that is not a valid blueprint for the principle (the message is shown to the LLM)."""


class BlockPatterns(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block: str
    patterns: list[Pattern] = Field(min_length=1)


class PrincipleReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principle: str
    blocks: list[BlockPatterns] = Field(min_length=1)


SYSTEM = (
    "You write training-data blueprints for a reasoning dataset. Reply with one JSON object and "
    "nothing else: {\"principle\": \"<principle id>\", \"blocks\": [{\"block\": \"<block id>\", \"patterns\": "
    "[{\"id\": \"<slug>\", \"questions\": [\"<paraphrase with {slot} placeholders>\", ...], \"answer\": "
    "\"<answer template>\", \"slots\": {\"<slot>\": [\"<value>\", ...]}}]}]}. Cover every block given. "
    "A slot with several values must appear in every question. Answers follow the style given.")


def principle_request(framework: Framework, principle: FinalPrinciple) -> dict:
    """What the LLM is told about one principle (JSON, so any model can read it back)."""
    blocks = []
    for explanatory in principle.explanatory:
        for core in explanatory.core_logic:
            for block in core.blocks:
                blocks.append({"block": block.id, "explanatory": explanatory.statement, "core_logic": core.statement,
                               "summary": block.summary, "key_terms": block.key_terms,
                               "example_pattern": block.patterns[0].model_dump(mode="json", exclude_none=True)})
    return {"domain": framework.domain, "style": framework.style.model_dump(mode="json"),
            "principle": {"id": principle.id, "title": principle.title, "statement": principle.statement},
            "blocks": blocks}


def principle_messages(framework: Framework, principle: FinalPrinciple) -> list[Message]:
    return [Message(role="system", content=SYSTEM),
            Message(role="user", content=json.dumps(principle_request(framework, principle), ensure_ascii=False))]


def repair_messages(messages: Sequence[Message], reply: str, error: ReplyError) -> list[Message]:
    """The conversation so far plus the bad reply and what was wrong with it."""
    return [*messages, Message(role="assistant", content=reply),
            Message(role="user", content=f"That reply was rejected: {error}. Reply again with the corrected JSON only.")]


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(reply: str) -> dict:
    """The JSON object in a reply; tolerates a ```json fence or prose around one object."""
    fenced = _FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ReplyError("no JSON object found")
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError as error:
        raise ReplyError(f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(data, dict):
        raise ReplyError("the JSON must be an object")
    return data


def _schema_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse_reply(reply: str, framework: Framework, principle: FinalPrinciple, provenance: Provenance) -> list[BlueprintEntry]:
    """Validated blueprint entries for `principle`, or ReplyError saying what is wrong."""
    try:
        parsed = PrincipleReply.model_validate(extract_json(reply))
    except ValidationError as error:
        raise ReplyError(f"schema: {_schema_problem(error)}") from None
    if parsed.principle != principle.id:
        raise ReplyError(f"principle is {parsed.principle!r}, expected {principle.id!r}")
    paths = {path[3]: (path, block) for path, block in framework.blocks() if path[0] == principle.id}
    given = [b.block for b in parsed.blocks]
    unknown = sorted(set(given) - set(paths))
    missing = [b for b in paths if b not in given]
    if unknown or missing or len(given) != len(set(given)):
        raise ReplyError(f"blocks must be exactly {sorted(paths)} once each; unknown {unknown}, missing {missing}")
    entries = []
    for item in parsed.blocks:
        path, block = paths[item.block]
        entries.append(BlueprintEntry(principle_path=list(path), summary=block.summary, key_terms=block.key_terms,
                                      patterns=item.patterns, provenance=provenance))
    return entries


Complete = Callable[[list[Message]], str]


def generate_principle(framework: Framework, principle: FinalPrinciple, complete: Complete, *, backend: str,
                       model: str, repair_attempts: int) -> list[BlueprintEntry]:
    """Ask, validate, repair up to `repair_attempts` times, or raise naming the principle."""
    messages = principle_messages(framework, principle)
    prompt_hash = content_hash({"version": PROMPT_VERSION, "messages": [m.model_dump() for m in messages]})
    error: ReplyError | None = None
    for attempt in range(1, repair_attempts + 2):
        reply = complete(messages)
        try:
            return parse_reply(reply, framework, principle, Provenance(backend=backend, model=model,
                                                                       prompt_sha256=prompt_hash, attempts=attempt))
        except ReplyError as problem:
            error = problem
            messages = repair_messages(messages, reply, problem)
    raise BlueprintGenerationError(
        f"principle {principle.id!r}: {backend} model {model!r} gave no valid blueprint after "
        f"{repair_attempts + 1} attempt(s): {error}")


def assemble(framework: Framework, entries: Sequence[BlueprintEntry], info: GeneratorInfo) -> Blueprint:
    """The blueprint, in framework order, once every principle succeeded."""
    order = {path: i for i, (path, _) in enumerate(framework.blocks())}
    ordered = sorted(entries, key=lambda e: order[tuple(e.principle_path)])
    return Blueprint(domain=framework.domain, system_prompt=framework.system_prompt, style=framework.style,
                     final_principles=framework.final_principle_ids(), generator=info, entries=ordered)


def teacher_reply(framework: Framework, principle: FinalPrinciple) -> str:
    """The framework's own patterns as a reply in the LLM's format: the answer a perfect generator
    gives, for distilling the task into a small model (and for tests)."""
    blocks = [{"block": block.id, "patterns": [p.model_dump(mode="json", exclude_none=True) for p in block.patterns]}
              for path, block in framework.blocks() if path[0] == principle.id]
    return json.dumps({"principle": principle.id, "blocks": blocks}, ensure_ascii=False)
