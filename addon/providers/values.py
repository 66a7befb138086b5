"""Reading values out of decoded provider JSON, the same way in every parser."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
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


# mitmproxy's Fragmentizer.FRAGMENT_SIZE: a changed WebSocket message goes out in pieces this long.
WS_PIECE = 4000


def rewritten_value(data: bytes, key: str, old: str, new: str, wanted: Any) -> bytes:
    """The JSON text ``data`` with the string ``old`` of ``key`` replaced by ``new``: ``wanted``, the
    object it then decodes to, encoded as it must go out in a WebSocket message.

    Only the value changes (every other byte as sent) when ``"key": <old>`` is found exactly once
    as ``json.dumps`` writes ``old`` and the result decodes to ``wanted``; otherwise ``wanted`` is
    written out again. mitmproxy sends a changed text message in pieces of ``WS_PIECE`` bytes,
    each decoded on its own: a character of several bytes cut by a piece's end would arrive as
    U+FFFD. Past one piece, a message with non-ASCII text is therefore written out again as
    escaped (ASCII) JSON.
    """
    name, value = (re.escape(json.dumps(text).encode()) for text in (key, old))
    pair = re.compile(name + rb"\s*:\s*(" + value + rb")")
    found = list(pair.finditer(data))
    if len(found) == 1:
        start, end = found[0].span(1)
        spliced = data[:start] + json.dumps(new).encode() + data[end:]
        if (len(spliced) <= WS_PIECE or spliced.isascii()) and loads(spliced) == wanted:
            return spliced
    return json.dumps(wanted).encode()


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unreserved_decoded(escape: re.Match[str]) -> str:
    char = chr(int(escape[1], 16))
    return char if char in _UNRESERVED else escape[0]


def without_dot_segments(route: str) -> str:
    """RFC 3986 5.2.4: ``.`` and ``..`` segments resolved (``..`` never climbs above the root)."""
    segments = route.split("/")
    kept: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and len(kept) > 1:
                kept.pop()
            if i == last:
                kept.append("")  # "/a/b/." and "/a/b/.." end with a slash
            continue
        kept.append(segment)
    return "/".join(kept)


def normal_path(path: str) -> str:
    """``path`` as any server reads it (RFC 3986 6.2.2): unreserved characters percent-encoded in
    its route decoded (``%63hat`` is ``chat``), ``.`` and ``..`` segments resolved. The query is
    untouched. Returns ``path`` itself (the same object) when there is nothing to normalise, so
    ``normal_path(p) is p`` says the path was sent as servers read it."""
    route, mark, query = path.partition("?")
    if "%" not in route and "/." not in route:
        return path
    normal = _ESCAPE.sub(_unreserved_decoded, route) if "%" in route else route
    if "/." in normal:
        normal = without_dot_segments(normal)
    return path if normal == route else normal + mark + query


# A WebSocket server event of a ``*.delta`` type (audio, text: most of a session's bytes), told by
# its type in the message's first bytes.
_DELTA_TYPE = re.compile(rb'"type"\s*:\s*"[\w.]*\.delta"')
_TYPE_HEAD = 256  # how far into a message its type is looked for


def is_delta(data: bytes) -> bool:
    """Is this server message a ``*.delta`` event (by its type, in its first bytes)?"""
    return _DELTA_TYPE.search(data, 0, _TYPE_HEAD) is not None


def may_hold(data: bytes, needles: Iterable[bytes]) -> bool:
    """Cheap test (C speed) of a server message: no delta, and one of ``needles`` in it."""
    return not is_delta(data) and any(needle in data for needle in needles)


def has_escape(data: bytes) -> bool:
    """Does this JSON text hold a ``\\u`` escape (which can spell any key or type)? A one-byte search
    first: base64 audio has no backslash, and ``b"\\u" in data`` alone costs ~18 µs on 12 KB."""
    return b"\\" in data and b"\\u" in data


def bare_path(path: str) -> str:
    """A request path without its query string, fragment or trailing slashes."""
    return path.split("?", 1)[0].split("#", 1)[0].rstrip("/")


# OpenRouter's preset API: POST /api/v1/presets/{slug}/chat/completions (/responses, /messages) saves
# an inference body's config as a preset version and answers the preset (OpenRouter's API reference,
# Presets): nothing runs, nothing is billed. Only that shape: the slug "URL-safe" (the reference),
# read strictly as one segment of letters, digits, "_", "." and "-" (not dots alone). Any other path
# under /api/v1/presets/ is read as any path is: "/api/v1/presets/x/..\..\chat/completions" is
# /api/v1/chat/completions to a WHATWG URL parser (a backslash is a slash in an https URL).
OPENROUTER_PRESETS_API = re.compile(
    r"/api/v1/presets/(?!\.+/)[A-Za-z0-9_.-]+/(?:chat/completions|responses|messages)", re.ASCII
)
# The same behind a gateway that serves OpenRouter under a base path (LiteLLM's pass-through
# /openrouter/..., an AI gateway's /v1/{account}/{gateway}/openrouter/...), as its chat calls are
# read there (by suffix): whatever comes before, the path ends in those literal segments.
_OPENROUTER_PRESETS_API_UNDER_BASE = re.compile(r".*?" + OPENROUTER_PRESETS_API.pattern, re.ASCII | re.DOTALL)


def saves_openrouter_preset(path: str, *, under_base_path: bool = False) -> bool:
    """Is ``path`` (as read: dots resolved, slashes merged; query allowed) OpenRouter's preset API,
    which runs no model? Only its documented shape, ``/api/v1/presets/{slug}/chat/completions``
    (``/responses``, ``/messages``); ``under_base_path`` (a gateway's), after any base path."""
    pattern = _OPENROUTER_PRESETS_API_UNDER_BASE if under_base_path else OPENROUTER_PRESETS_API
    return pattern.fullmatch(bare_path(path)) is not None


def flavor_by_suffix(path: str, suffixes: Iterable[tuple[str, str]]) -> str | None:
    """The flavor of the first ``(suffix, flavor)`` the bare ``path`` ends with, else None."""
    path = bare_path(path)
    return next((flavor for suffix, flavor in suffixes if path.endswith(suffix)), None)


@dataclass(frozen=True, slots=True)
class SocketPaths:
    """Where a provider serves a WebSocket API at fixed paths (the handshake: ``GET`` with an
    upgrade): OpenAI's Responses over WebSocket, OpenAI Live."""

    paths: frozenset[str]

    def matches(self, path: str) -> bool:
        """Is ``path`` (without its query, doubled slashes merged) one of them?"""
        return path.rstrip("/") in self.paths
