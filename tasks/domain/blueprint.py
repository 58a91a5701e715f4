"""Blueprint: the structured plan a generator derives from a framework, whose patterns are expanded
into the dataset. Generators share one small interface so LLM-backed ones can slot in beside the
deterministic offline generator without touching expansion or the flows."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import Field

from tasks.domain.framework import Framework, Frozen, Pattern, Style
from tasks.domain.hashing import content_hash


class GeneratorInfo(Frozen):
    """Which generator produced a blueprint (lands in dataset metadata and MLflow)."""

    name: str
    version: str
    model: str | None = None


class Provenance(Frozen):
    """Who wrote a blueprint entry (LLM generators): lands in every row's metadata and in MLflow."""

    backend: str
    model: str
    prompt_sha256: str
    attempts: int = 1

    def label(self) -> str:
        return f"{self.backend}:{self.model}:{self.prompt_sha256[:12]}"


class BlueprintEntry(Frozen):
    """The patterns for one reasoning block, with its full principle path."""

    principle_path: list[str] = Field(min_length=4, max_length=4)
    summary: str
    key_terms: list[str]
    patterns: list[Pattern] = Field(min_length=1)
    provenance: Provenance | None = None  # None: taken from the framework as written (offline)

    @property
    def final_principle(self) -> str:
        return self.principle_path[0]


class Blueprint(Frozen):
    domain: str
    system_prompt: str
    style: Style
    final_principles: list[str] = Field(min_length=1)
    generator: GeneratorInfo
    entries: list[BlueprintEntry] = Field(min_length=1)

    def digest(self) -> str:
        """sha256 of the blueprint's canonical JSON: the blueprint hash stored with every row."""
        return content_hash(self.model_dump(mode="json", exclude_none=True))


@runtime_checkable
class BlueprintGenerator(Protocol):
    """Turns a framework into a blueprint. Implementations must be deterministic for equal inputs
    (or cache their answers), so a blueprint hash identifies what was generated."""

    name: str

    def generate(self, framework: Framework) -> Blueprint: ...


class OfflineBlueprintGenerator:
    """Deterministic, no network: every reasoning block becomes one entry carrying the framework's
    own patterns, its principle path and key terms."""

    name = "offline"
    version = "1"

    def generate(self, framework: Framework) -> Blueprint:
        entries = [
            BlueprintEntry(principle_path=list(path), summary=block.summary,
                           key_terms=block.key_terms, patterns=block.patterns)
            for path, block in framework.blocks()
        ]
        return Blueprint(
            domain=framework.domain,
            system_prompt=framework.system_prompt,
            style=framework.style,
            final_principles=framework.final_principle_ids(),
            generator=GeneratorInfo(name=self.name, version=self.version),
            entries=entries,
        )
