"""One way to print a number in a table (run summary, promotion report, `rslm models`)."""
from __future__ import annotations

import math


def fmt(value, missing: str = "—") -> str:
    """Four significant digits for floats; `missing` for None or NaN; anything else as text.

    >>> fmt(0.123456), fmt(None), fmt(float("nan"), missing="-"), fmt(3)
    ('0.1235', '—', '-', '3')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:.4g}" if isinstance(value, float) else str(value)
