"""Regexes for strings that look like credentials. A dataset row matching any of them is rejected:
a model must never learn (or leak) a key. Kept strict enough that prose *about* secrets passes."""
from __future__ import annotations

import re

SECRET_PATTERNS: dict[str, str] = {
    "aws-access-key-id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "aws-secret-access-key": r"(?i)aws_?secret_?access_?key\s*[=:]\s*\S{20,}",
    "private-key-block": r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----",
    "password-assignment": r"(?i)\b(?:password|passwd|pwd)\s*[=:]\s*['\"]?[^\s'\"]{4,}",
    "github-token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "slack-token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "generic-api-key": r"(?i)\b(?:api[_-]?key|secret[_-]?key|access[_-]?token)\s*[=:]\s*['\"]?[A-Za-z0-9/+_\-]{16,}",
}


def find_secrets(text: str) -> list[str]:
    """Names of the secret patterns that match `text`.

    >>> find_secrets("use a vault for secrets")
    []
    >>> find_secrets("AKIAABCDEFGHIJKLMNOP")
    ['aws-access-key-id']
    """
    return [name for name, pattern in SECRET_PATTERNS.items() if re.search(pattern, text)]
