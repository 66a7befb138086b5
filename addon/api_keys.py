"""API keys: found in request headers, kept only as a short fingerprint."""

from __future__ import annotations

import hashlib


def key_fingerprint(key: str) -> str:
    """A short, stable, non-reversible id of an API key (12 hex digits of SHA-256)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


# hash(key) -> fingerprint of the keys seen lately: SHA-256 through OpenSSL costs ~10 µs of CPU a
# call inside the proxy (~0.5 µs in a loop). Only Python's hash of a key is kept, never the key:
# SipHash with this process's random secret, 64 bits (a wrong match is ~n²/2⁶⁴ unlikely).
_recent_fingerprints: dict[int, str] = {}
_MAX_RECENT_FINGERPRINTS = 256


def recent_key_fingerprint(key: str) -> str:
    """``key_fingerprint(key)``, remembered for the keys a proxy sees over and over."""
    digest = hash(key)
    found = _recent_fingerprints.get(digest)
    if found is None:
        found = key_fingerprint(key)
        if len(_recent_fingerprints) >= _MAX_RECENT_FINGERPRINTS:
            _recent_fingerprints.clear()
        _recent_fingerprints[digest] = found
    return found


def key_of_header(value: str) -> str | None:
    """The key a credential header's value holds (``Bearer`` stripped), or None."""
    value = value.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    elif value.lower() == "bearer":  # the scheme with no token (an SDK given an empty one)
        return None
    return value or None
