"""Framework-grounded answering (issue 30 part 5): each question is asked with the framework's
principles most related to it in the system turn, in training and at inference, so the model can
lean on what the framework says instead of on the answer templates it memorised.

The passages are the framework's upper layers, each a short sentence: every final principle
(its title and statement), every explanatory principle and every core-logic statement. They are
ranked by TF-IDF cosine against the question over content words (its opening verb left out); a
passage sharing no word with the question is never put in. The registered model records its passages and `k` beside its system
prompt, so chat, serve and evaluation ask it the way it was trained; a merged, GGUF or Ollama
export carries only the fixed system prompt and answers closed-book.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from pydantic import Field

from tasks.domain.content import TfIdf, opening_verb
from tasks.domain.framework import Framework
from tasks.domain.frozen import Frozen
from tasks.domain.records import Message, Row

HEADER = "Relevant principles:"


def framework_passages(framework: Framework) -> tuple[str, ...]:
    """The framework's principles as passages, top layer first, without repeats."""
    passages: dict[str, None] = {}
    for final in framework.principles:
        passages[f"{final.title}: {final.statement}"] = None
        for explanatory in final.explanatory:
            passages[explanatory.statement] = None
            for core in explanatory.core_logic:
                passages[core.statement] = None
    return tuple(passages)


@lru_cache(maxsize=8)
def _index(passages: tuple[str, ...]) -> TfIdf:
    return TfIdf(passages)


class Grounding(Frozen):
    """What a grounded model is asked with: the passages it retrieves from and how many it puts in."""

    passages: tuple[str, ...] = Field(min_length=1)
    k: int = Field(ge=1, le=8)

    def relevant(self, question: str) -> list[str]:
        """Up to `k` passages, most similar first (ties: framework order); none that share no word.

        >>> g = Grounding(passages=("Caches trade memory for latency.", "Subnets isolate routing."), k=1)
        >>> g.relevant("Why add a cache in front of the database?"), g.relevant("Why?")
        (['Caches trade memory for latency.'], [])
        """
        similarity = _index(self.passages).similarities(question, ignore=opening_verb(question))
        ranked = sorted((i for i, s in enumerate(similarity) if s > 0), key=lambda i: (-similarity[i], i))
        return [self.passages[i] for i in ranked[:self.k]]

    def system_turn(self, system_prompt: str, question: str) -> str:
        """The system prompt with the question's principles after it (unchanged when none relate)."""
        found = self.relevant(question)
        return "\n".join([system_prompt, HEADER, *(f"- {p}" for p in found)]) if found else system_prompt

    def turns(self, system_prompt: str, question: str) -> list[Message]:
        return [Message(role="system", content=self.system_turn(system_prompt, question)),
                Message(role="user", content=question)]


def framework_grounding(framework: Framework, k: int) -> Grounding | None:
    """The framework's grounding with `k` passages per question; None for k = 0 (closed-book)."""
    passages = framework_passages(framework)
    return Grounding(passages=passages, k=k) if k and passages else None


def recorded_grounding(model_config: dict) -> Grounding | None:
    """The grounding a registered model was trained with, from its model config (None: closed-book)."""
    recorded = model_config.get("grounding")
    return Grounding.model_validate(recorded) if recorded else None


def grounded_rows(rows: Sequence[Row], system_prompt: str, grounding: Grounding) -> list[Row]:
    """Each row's system turn replaced by its first question's grounded one (the row's answer and
    every other turn kept), so training sees what inference will send."""
    grounded = []
    for row in rows:
        question = row.turns("user")[0]
        system = Message(role="system", content=grounding.system_turn(system_prompt, question))
        rest = [m for m in row.messages if m.role != "system"]
        grounded.append(row.model_copy(update={"messages": [system, *rest]}))
    return grounded
