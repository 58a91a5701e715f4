"""A user's own dataset in place of a generated one (`dataset.source`): their rows get the metadata
every later stage relies on, and a one-principle framework stands in for the one they did not
write, so validation, training, evaluation and the registry run unchanged.

What the stand-in framework carries, and where it comes from:
- domain, word caps, banned phrases: `dataset.imported` in the pipeline config;
- system prompt: the config's, else the rows' most common system turn;
- key terms (the key-term coverage metric): the config's, else the answers' most frequent
  content words.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from tasks.domain.config import ImportedDatasetConfig
from tasks.domain.errors import ConfigError
from tasks.domain.expansion import near_duplicate_key
from tasks.domain.framework import Framework
from tasks.domain.metrics import stem, words
from tasks.domain.records import Message, Row, RowMetadata

PRINCIPLE = "imported"  # the one final principle every imported row belongs to
_STOPWORDS = frozenset("""a an the and or but if then else of to in on at by for with from into onto over
under about as is are was were be been being it its this that these those there here you your we our
they their he she his her i me my not no yes do does did done can could should would will may might must
so than too very just also only more most less least such each any all some one two three which what who
whom whose why how when where while because since until both either neither per via vs""".split())


def system_prompt_for(rows: Sequence[Row], settings: ImportedDatasetConfig) -> str:
    """The configured system prompt, else the rows' most common system turn (ties: the first seen)."""
    if settings.system_prompt:
        return settings.system_prompt
    seen = Counter(turn for row in rows for turn in row.turns("system")[:1])
    if not seen:
        raise ConfigError("dataset.imported.system_prompt is not set and no row has a system turn: "
                          "say in the config how the model should answer")
    return seen.most_common(1)[0][0]


def frequent_terms(answers: Sequence[str], count: int = 6) -> list[str]:
    """The content words that most answers use (document frequency; ties alphabetical).

    >>> frequent_terms(["1. Latency drops.", "1. Latency and cost drop.", "Cost is fixed."], 2)
    ['cost', 'drop']

    Folded to the stem key-term coverage matches on, so "policies" becomes a term that finds them:

    >>> from tasks.domain.metrics import key_term_coverage
    >>> terms = frequent_terms(["1. Narrow policies.", "2. Review policies."], 1)
    >>> terms, key_term_coverage("1. Audit the policies.", terms)
    (['policy'], 1.0)
    """
    frequency: Counter[str] = Counter()
    for answer in answers:
        frequency.update({stem(w) for w in words(answer) if len(w) > 2 and w not in _STOPWORDS
                          and not w.replace(".", "").isdigit()})
    return [w for w, _ in sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))[:count]]


def _literal(text: str) -> str:
    """Text as a str.format template that renders to itself."""
    return text.replace("{", "{{").replace("}", "}}")


def imported_framework(rows: Sequence[Row], settings: ImportedDatasetConfig, source_name: str) -> Framework:
    """The stand-in framework: one principle whose one pattern is the first row, so it still reads
    (and expands) as a framework; the answers are judged by the style given in the config."""
    first = next((r for r in rows if r.turns("user") and r.turns("assistant")), None)
    if first is None:
        raise ConfigError(f"{source_name}: no row has both a user and an assistant turn")
    key_terms = list(settings.key_terms) or frequent_terms([r.turns("assistant")[-1] for r in rows]) or ["answer"]
    pattern = {"id": "imported-row", "questions": [_literal(first.turns("user")[0])],
               "answer": _literal(first.turns("assistant")[0])}
    block = {"id": "imported-block", "summary": f"answers as written in {source_name}", "key_terms": key_terms,
             "patterns": [pattern]}
    chain = {"id": PRINCIPLE, "title": f"Rows imported from {source_name}",
             "statement": "The user's own conversations; no framework was given.",
             "explanatory": [{"id": "imported-explanatory", "statement": "As written by the user.",
                              "core_logic": [{"id": "imported-core", "statement": "As written by the user.",
                                              "blocks": [block]}]}]}
    return Framework.model_validate({
        "domain": settings.domain, "description": f"A user's own dataset ({source_name}).",
        "layers": ["imported rows", "-", "-", "-"], "system_prompt": system_prompt_for(rows, settings),
        "style": {"tone": "as in the user's rows", "max_answer_words": settings.max_answer_words,
                  "min_answer_words": settings.min_answer_words, "banned_phrases": list(settings.banned_phrases)},
        "principles": [chain]})


def question_groups(rows: Sequence[Row]) -> list[str]:
    """One group per underlying question, so the split never puts it on both sides: rows asking
    the same question (up to case, spacing and filler) or giving the same answer (paraphrases of
    one question share their answer) are linked, and linked rows form a group.

    >>> from tasks.domain.records import Message as M
    >>> row = lambda q, a: Row(id=q, messages=[M(role="user", content=q), M(role="assistant", content=a)])
    >>> question_groups([row("Why?", "1. A."), row("Why so?", "1. A."), row("Why not?", "1. B."), row("why", "1. C.")])
    ['q:10cff4034ced', 'q:10cff4034ced', 'q:573bec29adab', 'q:10cff4034ced']
    """
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        answer = " ".join(" ".join(row.turns("assistant")).casefold().split())
        for key in (("question", near_duplicate_key(row)), ("answer", answer)):
            parent[root(i)] = root(first_with.setdefault(key, i))
    return ["q:" + hashlib.sha1(near_duplicate_key(rows[root(i)]).encode("utf-8")).hexdigest()[:12]
            for i in range(len(rows))]


def with_import_metadata(row: Row, framework: Framework, blueprint_hash: str, origin: str, group: str) -> Row:
    """The row as our pipeline writes rows: the system prompt first (when it has no system turn,
    so training sees what inference will send) and metadata naming where it came from (`origin`,
    the user's `file:line`, which validation failures quote) and its split group (from
    `question_groups`). Metadata the row brought is replaced: its principles are not this
    framework's."""
    messages = list(row.messages)
    if not row.turns("system"):
        messages = [Message(role="system", content=framework.system_prompt), *messages]
    metadata = RowMetadata(domain=framework.domain, principle_path=[PRINCIPLE], pattern_id="imported-row",
                           group=group, blueprint_hash=blueprint_hash, generator="imported",
                           source=origin)
    return Row(id=row.id, messages=messages, metadata=metadata)
