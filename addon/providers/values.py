"""Reading values out of decoded provider JSON, the same way in every parser."""

from __future__ import annotations

import json
from typing import Any


def loads(data: bytes) -> Any:
    """``json.loads`` that returns None instead of raising (every parser decodes through here)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def token_count(value: Any) -> int:
    """A token count: ints as they are, floats truncated, anything else (null, bool, NaN, inf) 0."""
    if type(value) is int:
        return value
    if type(value) is float and value == value and abs(value) != float("inf"):
        return int(value)
    return 0


def text(value: Any) -> str | None:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value else None
