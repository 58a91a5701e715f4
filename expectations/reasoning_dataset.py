"""The `reasoning_dataset` expectation suite and the flat table it runs on.

One row per conversation; each column exists so that one rule can be stated on it. Every
expectation carries `meta.rule`, the sentence a user sees when it fails.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from tasks.domain.config import ValidationConfig
from tasks.domain.contamination import NGRAM, nearest_overlap, overlap_with
from tasks.domain.records import Row
from tasks.domain.secret_patterns import SECRET_PATTERNS

SUITE_NAME = "reasoning_dataset"
ROLE_ORDER = r"^(system,)?user,assistant(,user,assistant)*$"
# A slot value that carries its own article, pasted after the template's: "the the checkout flow",
# "a the deploy role". The model learns these slips as readily as the reasons.
DOUBLED_WORDS = r"(?i)\b(?:([a-z]+)\s+\1|(?:a|an|the)\s+(?:a|an|the))\b"


@dataclass(frozen=True)
class SuiteSpec:
    """What the suite needs from a framework: the terseness bounds, the banned hedging phrases and
    the final principles every dataset must cover."""

    max_answer_words: int
    min_answer_words: int
    banned_phrases: tuple[str, ...]
    final_principles: tuple[str, ...]
    validation: ValidationConfig
    heldout_questions: tuple[str, ...] = ()  # the domain's held-out set: no row may contain one


def flatten_rows(rows: Sequence[tuple[str, int, Row]], heldout_questions: Sequence[str] = ()) -> pd.DataFrame:
    """(file, line, row) -> one flat record per conversation. `heldout_overlap`: the largest share
    of one held-out question's 8-word runs found in the row's user and assistant turns."""
    dialogue = ["\n".join(row.turns("user") + row.turns("assistant")) for _, _, row in rows]
    overlaps = overlap_with(dialogue, heldout_questions) if heldout_questions else [0.0] * len(rows)
    eval_overlaps = _eval_overlaps([row for _, _, row in rows])
    records = []
    for file, line, row in rows:
        users, answers = row.turns("user"), row.turns("assistant")
        contents = [m.content for m in row.messages]
        records.append({
            "id": row.id,
            "file": file,
            "line": line,
            # an imported row's place in the user's own file, which a failure quotes
            "origin": row.metadata.source if row.metadata and row.metadata.generator == "imported" else "",
            "split": (row.metadata.split or "") if row.metadata else "",
            "final_principle": row.metadata.final_principle if row.metadata else "",
            "has_metadata": row.metadata is not None,
            "roles": ",".join(m.role for m in row.messages),
            "empty_turns": sum(1 for c in contents if not c.strip()),
            "prompt": "\n".join(users),
            "shortest_prompt_chars": min((len(u) for u in users), default=0),
            "longest_prompt_chars": max((len(u) for u in users), default=0),
            "conversation_chars": sum(len(c) for c in contents),
            "answer_words_max": max((len(a.split()) for a in answers), default=0),
            "answer_words_min": min((len(a.split()) for a in answers), default=0),
            "answer_text": "\n".join(answers),
            "text": "\n".join(contents),
            "heldout_overlap": overlaps[len(records)],
            "eval_overlap": eval_overlaps[len(records)],
        })
    return pd.DataFrame.from_records(records)


def _split_of(row: Row) -> str:
    return (row.metadata.split or "") if row.metadata else ""


def _eval_overlaps(rows: Sequence[Row]) -> list[float]:
    """Per eval row, the share of its question's 8-word runs found in the closest single training
    row's questions (0 for training rows, and for files without a split)."""
    train = ["\n".join(r.turns("user")) for r in rows if _split_of(r) == "train"]
    evaluated = [i for i, r in enumerate(rows) if _split_of(r) == "eval"]
    shares = [0.0] * len(rows)
    if train and evaluated:
        for i, share in zip(evaluated, nearest_overlap(["\n".join(rows[i].turns("user")) for i in evaluated], train),
                            strict=True):
            shares[i] = share
    return shares


def _hedging_regexes(phrases: Sequence[str]) -> list[str]:
    return [rf"(?i)(?<!\w){re.escape(p)}(?!\w)" for p in phrases]


COVERAGE_RULE = "every final principle of the framework is represented"


def skipped_rules(frame: pd.DataFrame) -> dict[str, str]:
    """Rules that cannot be checked on these rows, each with the reason a user reads: rows in the
    plain OpenAI format carry no metadata, so which principle they teach is unknown."""
    plain = int((~frame["has_metadata"]).sum()) if "has_metadata" in frame else 0
    if not plain:
        return {}
    return {COVERAGE_RULE: f"skipped: {plain} of {len(frame)} rows are plain `messages` rows without metadata, "
                           "so the principle each one teaches is unknown"}


def build_suite(spec: SuiteSpec, skipped: dict[str, str] | None = None):
    """The expectation suite for one framework (imports GX lazily: ~2 s). Rules named in
    `skipped` are left out, and their reasons become the suite's notes (shown in Data Docs)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    v = spec.validation

    def rule(text: str) -> dict:
        return {"rule": text}

    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="id", meta=rule("every row has an id")),
        gxe.ExpectColumnValuesToBeUnique(column="id", meta=rule("row ids are unique")),
        gxe.ExpectColumnValuesToMatchRegex(column="roles", regex=ROLE_ORDER,
                                           meta=rule("roles are [system,] user, assistant, alternating, ending with assistant")),
        gxe.ExpectColumnValuesToBeBetween(column="empty_turns", min_value=0, max_value=0,
                                          meta=rule("no message has empty content")),
        gxe.ExpectColumnValuesToBeBetween(column="shortest_prompt_chars", min_value=v.min_prompt_chars,
                                          meta=rule(f"user turns have at least {v.min_prompt_chars} characters")),
        gxe.ExpectColumnValuesToBeBetween(column="longest_prompt_chars", max_value=v.max_prompt_chars,
                                          meta=rule(f"user turns have at most {v.max_prompt_chars} characters")),
        gxe.ExpectColumnValuesToBeBetween(column="conversation_chars", max_value=v.max_conversation_chars,
                                          meta=rule(f"conversations have at most {v.max_conversation_chars} characters")),
        gxe.ExpectColumnValuesToBeUnique(column="prompt",
                                         meta=rule("prompts are unique (across train and eval: no leakage)")),
        gxe.ExpectColumnValuesToBeBetween(column="answer_words_max", max_value=spec.max_answer_words,
                                          meta=rule(f"answers are terse: at most {spec.max_answer_words} words")),
        gxe.ExpectColumnValuesToBeBetween(column="answer_words_min", min_value=spec.min_answer_words,
                                          meta=rule(f"answers have at least {spec.min_answer_words} words")),
        gxe.ExpectColumnValuesToNotMatchRegexList(column="text", regex_list=list(SECRET_PATTERNS.values()),
                                                  meta=rule("no secret-looking strings "
                                                            "(cloud keys, private keys, passwords, tokens)")),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=DOUBLED_WORDS,
                                              meta=rule("no doubled words or clashing articles ('the the', 'a the')")),
        gxe.ExpectColumnDistinctValuesToContainSet(column="final_principle", value_set=list(spec.final_principles),
                                                   meta=rule(COVERAGE_RULE)),
    ]
    if spec.heldout_questions:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(
            column="heldout_overlap", max_value=v.max_heldout_overlap,
            meta=rule(f"no row contains a held-out question (at most {v.max_heldout_overlap:.0%} of one "
                      f"question's {NGRAM}-word runs)")))
    expectations.append(gxe.ExpectColumnValuesToBeBetween(
        column="eval_overlap", max_value=v.max_eval_overlap,
        meta=rule(f"no eval question is copied into a training row (at most {v.max_eval_overlap:.0%} of its "
                  f"{NGRAM}-word runs in one)")))
    if spec.banned_phrases:
        expectations.append(gxe.ExpectColumnValuesToNotMatchRegexList(
            column="answer_text", regex_list=_hedging_regexes(spec.banned_phrases),
            meta=rule(f"answers use no hedging filler ({', '.join(spec.banned_phrases)})")))
    skipped = skipped or {}
    kept = [e for e in expectations if (e.meta or {}).get("rule") not in skipped]
    notes = [f"**Not checked:** {rule_text}: {reason}" for rule_text, reason in skipped.items()] or None
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=kept, notes=notes)
