"""The reasoning framework: a domain described as first principles -> explanatory principles ->
core logic -> compressed reasoning blocks, with question patterns hanging off the blocks.

Physics reads the same four layers as a curriculum (classical -> modern -> theoretical -> applied);
`layers` names them in the domain's own words. Everything is frozen and rejects unknown keys, so a
misspelt key in a YAML file is an error rather than a silently ignored setting.
"""
from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from tasks.domain.frozen import Frozen

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]
SlotValue = str | dict[str, str | int | float]


def placeholders(template: str) -> list[str]:
    """Field names used in a `str.format` template, e.g. `{split.vpc}` -> `split.vpc`.

    >>> placeholders("Why split a {split.vpc} VPC into {split.subnet} subnets in {env}?")
    ['split.vpc', 'split.subnet', 'env']
    """
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


class FollowUp(Frozen):
    """A second user turn and its answer, for multi-turn samples. May use the pattern's slots."""

    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class Pattern(Frozen):
    """A question template with slots. Every question is a paraphrase with the same answer."""

    id: Slug
    questions: list[str] = Field(min_length=1)
    answer: str = Field(min_length=1)
    # The same answer in other words (labels, order, phrasing; the same facts and slots). Each slot
    # combination is answered in one of them, chosen by its values, so paraphrases of one question
    # share an answer while no single wording is trained on every time (issue 30: a model trained on
    # one fixed wording per pattern scored that wording above the right answer to any question).
    answer_variants: list[str] = Field(default_factory=list)
    slots: dict[str, list[SlotValue]] = Field(default_factory=dict)
    follow_up: FollowUp | None = None

    def answers(self) -> list[str]:
        return [self.answer, *self.answer_variants]

    def templates(self) -> list[str]:
        texts = [*self.questions, *self.answers()]
        if self.follow_up:
            texts += [self.follow_up.question, self.follow_up.answer]
        return texts

    @model_validator(mode="after")
    def _slots_match_placeholders(self) -> "Pattern":
        used: dict[str, set[str]] = {}
        for template in self.templates():
            for field in placeholders(template):
                root, _, attribute = field.partition(".")
                used.setdefault(root, set())
                if attribute:
                    used[root].add(attribute)
        for root in used:
            if root not in self.slots:
                raise ValueError(f"pattern {self.id!r}: placeholder {{{root}}} has no slot values")
            if not self.slots[root]:
                raise ValueError(f"pattern {self.id!r}: slot {root!r} has no values")
        for root, values in self.slots.items():
            if root not in used:
                raise ValueError(f"pattern {self.id!r}: slot {root!r} is never used")
            for value in values:
                missing = used[root] - set(value) if isinstance(value, dict) else used[root]
                if missing:
                    raise ValueError(f"pattern {self.id!r}: a value of slot {root!r} lacks {sorted(missing)}")
        # A slot that varies but is absent from a question makes that question repeat with
        # different answers: contradictory training data, which dedup would then silently drop.
        varying = {root for root, values in self.slots.items() if len(values) > 1}
        for question in self.questions:
            absent = varying - {field.partition(".")[0] for field in placeholders(question)}
            if absent:
                raise ValueError(f"pattern {self.id!r}: question {question!r} does not use slot(s) "
                                 f"{sorted(absent)}, so it would repeat with different answers")
        return self

    def combinations(self) -> int:
        """How many distinct samples this pattern expands to (questions x slot values)."""
        count = len(self.questions)
        for values in self.slots.values():
            count *= len(values)
        return count


class ReasoningBlock(Frozen):
    """A compressed, reusable reasoning recipe, and the patterns that exercise it."""

    id: Slug
    summary: str = Field(min_length=1)
    key_terms: list[str] = Field(min_length=1)
    patterns: list[Pattern] = Field(min_length=1)


class CoreLogic(Frozen):
    id: Slug
    statement: str = Field(min_length=1)
    blocks: list[ReasoningBlock] = Field(min_length=1)


class ExplanatoryPrinciple(Frozen):
    id: Slug
    statement: str = Field(min_length=1)
    core_logic: list[CoreLogic] = Field(min_length=1)


class FinalPrinciple(Frozen):
    id: Slug
    title: str = Field(min_length=1)
    statement: str = Field(min_length=1)
    explanatory: list[ExplanatoryPrinciple] = Field(min_length=1)


class Style(Frozen):
    """How the assistant answers. `max_answer_words` is enforced on the dataset (terseness)."""

    tone: str = Field(min_length=1)
    max_answer_words: int = Field(ge=1, le=2000)
    min_answer_words: int = Field(default=1, ge=1)
    banned_phrases: list[str] = Field(default_factory=list)


class Framework(Frozen):
    domain: Slug
    description: str = Field(min_length=1)
    layers: list[str] = Field(min_length=4, max_length=4)
    system_prompt: str = Field(min_length=1)
    style: Style
    principles: list[FinalPrinciple] = Field(min_length=1)
    # Invented effects of "{subject}" (the question's subject) that no reason in the domain claims:
    # the process reward model's `false_effect` negatives (issue 30 part 6). Which claims teach a
    # reward model "false" rather than "unfamiliar" depends on the domain and the model, so they
    # are framework data, not code (docs/frameworks.md has what was measured). Empty: the reward
    # model gets no such negatives.
    false_effects: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _false_effects_name_the_subject(self) -> "Framework":
        for effect in self.false_effects:
            if placeholders(effect) != ["subject"]:
                raise ValueError(f"false effect {effect!r} must use the placeholder {{subject}} once and no other")
        return self

    @model_validator(mode="after")
    def _ids_unique(self) -> "Framework":
        seen: set[str] = set()
        ids = [p.id for p in self.principles]
        ids += [e.id for p in self.principles for e in p.explanatory]
        ids += [c.id for p in self.principles for e in p.explanatory for c in e.core_logic]
        ids += [b.id for _, b in self.blocks()]
        ids += [pat.id for _, b in self.blocks() for pat in b.patterns]
        for node_id in ids:
            if node_id in seen:
                raise ValueError(f"id {node_id!r} is used twice; ids must be unique across the framework")
            seen.add(node_id)
        return self

    def blocks(self) -> Iterator[tuple[tuple[str, str, str, str], ReasoningBlock]]:
        """Every reasoning block with its principle path (final, explanatory, core, block)."""
        for final in self.principles:
            for explanatory in final.explanatory:
                for core in explanatory.core_logic:
                    for block in core.blocks:
                        yield (final.id, explanatory.id, core.id, block.id), block

    def final_principle_ids(self) -> list[str]:
        return [p.id for p in self.principles]

    def combinations(self) -> int:
        return sum(pattern.combinations() for _, block in self.blocks() for pattern in block.patterns)
