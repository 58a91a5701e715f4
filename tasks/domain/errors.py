"""Errors a user can act on. The CLI prints `str(error)` as one line and exits non-zero."""
from __future__ import annotations


class RslmError(Exception):
    """Base class: anything raised as an RslmError is reported without a traceback."""

    exit_code = 1


class ConfigError(RslmError):
    """A config or framework file is missing, malformed or has an unknown key."""

    exit_code = 2


class DatasetFormatError(RslmError):
    """A JSONL dataset has lines that are not valid rows. `problems` holds one entry per bad line."""

    def __init__(self, path: str, problems: list[str], unit: str = "line"):
        self.path = path
        self.problems = problems
        shown = "; ".join(problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{path}: {len(problems)} malformed {unit}(s): {shown}{more}")


class DataValidationError(RslmError):
    """Great Expectations rejected a dataset. `failures` names expectations and row ids."""

    def __init__(self, summary: str, failures: list[dict], data_docs: str | None = None):
        self.failures = failures
        self.data_docs = data_docs
        super().__init__(summary)


class TokenizerRoundTripError(RslmError):
    """The Hugging Face tokenizer does not reproduce SentencePiece's own encoding (transformers 5 trap)."""


def first_line(error: BaseException, limit: int = 500) -> str:
    """An error as one line: its message's first line, or its type when it has no message
    (KeyboardInterrupt has none).

    >>> first_line(ValueError("bad\\nmore")), first_line(KeyboardInterrupt())
    ('bad', 'KeyboardInterrupt')
    """
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
