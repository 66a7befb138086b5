"""API keys: found in request headers, kept only as a short fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def key_fingerprint(key: str) -> str:
    """A short, stable, non-reversible id of an API key (12 hex digits of SHA-256)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def find_api_key(headers: Mapping[str, str], names: Iterable[str]) -> str | None:
    """The API key in the first of ``names`` present (``Bearer`` stripped)."""
    for name in names:
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if value:
            return value
    return None
