"""The one base for typed configuration: immutable, and an unknown or misspelt key is an error."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
