"""Gemini Live API (``BidiGenerateContent`` over WebSocket): its paths, the setup, each turn's usage.

Pure functions over bytes and strings; no mitmproxy. A session is one WebSocket:

- Developer API: ``wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.
  {v1,v1beta,v1alpha}.GenerativeService.BidiGenerateContent`` (google-genai writes ``//ws/``);
  ephemeral tokens use ``...BidiGenerateContentConstrained``. The key rides in ``x-goog-api-key``
  (browsers: ``?key=``), an ephemeral token in ``Authorization: Token auth_tokens/...`` (browsers:
  ``?access_token=``).
- Vertex AI: ``wss://{location}-aiplatform.googleapis.com/ws/google.cloud.aiplatform.v1beta1.
  LlmBidiService/BidiGenerateContent`` with an OAuth token (never read), or express mode's API key.

The model is named only in the first client message, ``{"setup": {"model": "models/..."}}``
(Vertex: ``projects/{p}/locations/{l}/publishers/google/models/{m}`` or ``publishers/google/
models/{m}``). The server's messages are JSON (binary frames on the Developer API). Each
``usageMetadata`` is the usage of one generation (a turn): its ``promptTokenCount`` is the whole
context processed again for it, so every one is billed, none is a running total.

Speed: audio arrives as base64 in messages of tens of KB, many a second, both ways. A server
message is decoded only if it holds the bytes ``"usageMetadata"`` (looked for from quote to quote:
base64 never contains one);
a turn's start is told by ``"serverContent"`` or ``"toolCall"`` in its first bytes (and no
``"turnComplete"``: a bare end of a turn starts none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from addon.providers import gemini_api
from addon.providers.values import has_escape, loads, rewritten_value
from addon.providers.values import text as _str
from addon.providers.values import token_count as _int
from addon.usage import Usage

FLAVOR = "live"
_HEAD = 64  # how far into a server message its first key is looked for
_DEV_PATH = re.compile(
    r"/+ws/google\.ai\.generativelanguage\.v\d+\w*\.GenerativeService\.BidiGenerateContent(?:Constrained)?"
)
_VERTEX_PATH = re.compile(r"/+ws/google\.cloud\.aiplatform\.v\d+\w*\.LlmBidiService/BidiGenerateContent")
# A setup's model: "models/{m}", "projects/{p}/locations/{l}/publishers/{pub}/models/{m}",
# "publishers/{pub}/models/{m}".
_MODEL = re.compile(
    r"^(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
    r"(?:publishers/[^/]+/)?models/(?P<model>.*)$"
)
_TURN_KEYS = (b'"serverContent"', b'"toolCall"')
_END_KEYS = (b'"turnComplete"', b'"generationComplete"', b'"interrupted"')
_USAGE_KEY = b'"usageMetadata"'
_USAGE_TAIL = _USAGE_KEY[1:]
_QUOTE_HOPS = 64  # quotes looked at one by one before a plain substring search


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a provider serves the Live API, and where its handshake carries credentials."""

    vertex: bool

    def matches(self, path: str) -> bool:
        """Is ``path`` (without its query) a Live handshake's?"""
        return (_VERTEX_PATH if self.vertex else _DEV_PATH).fullmatch(path.rstrip("/")) is not None

    @property
    def key_query(self) -> tuple[str, ...]:
        """Query parameters holding a credential: the key, and (Developer API) an ephemeral token.
        Vertex's ``access_token`` is an OAuth token that rotates: never read."""
        return ("key",) if self.vertex else ("key", "access_token")

    @property
    def reads_authorization(self) -> bool:
        """``Authorization`` holds an ephemeral token (Developer API); on Vertex an OAuth token."""
        return not self.vertex


DEVELOPER = Endpoint(vertex=False)
VERTEX = Endpoint(vertex=True)


def row_path(path: str) -> str:
    """The path a row keeps: no query, one leading slash (google-genai sends ``//ws/...``)."""
    return "/" + path.partition("?")[0].strip("/")


def authorization_credential(value: str) -> str | None:
    """The ephemeral token (or key) of an ``Authorization`` value: ``Token auth_tokens/...``."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() in ("token", "bearer"):
        value = rest.strip()
    return value or None


# --- the setup (the first client message) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """What a setup message names: the model id (without ``models/`` or Vertex's prefix; None if
    it names none) and, on Vertex, the project and location of its path."""

    model: str | None
    project: str | None = None
    location: str | None = None


def is_setup(data: bytes) -> bool:
    """Cheap test: may this client message be a setup? One with a ``\\u`` escape may be, however
    its bytes read (``"s\\u0065tup"`` is ``"setup"`` to any JSON parser)."""
    return b'"setup"' in data or has_escape(data)


def read_setup(data: bytes) -> Setup | None:
    """The setup in a client message; None when it is not one. Never raises."""
    obj = loads(data)
    setup = obj.get("setup") if isinstance(obj, dict) else None
    if not isinstance(setup, dict):
        return None
    raw = _str(setup.get("model"))
    if raw is None or not raw.strip():
        return Setup(None)
    m = _MODEL.match(raw.strip())
    if m is None:
        return Setup(raw.strip())
    return Setup(m["model"] or None, project=m["project"] or None, location=m["location"] or None)


def with_model(data: bytes, model: str) -> bytes:
    """The setup message ``data`` asking for ``model`` instead; ValueError when it names none.

    The model path's prefix (``models/``, Vertex's ``projects/.../models/``) is kept. Only the
    model's value changes when it can be found exactly once as ``"model": "<value>"``; otherwise
    (a writer that escapes differently, the same pair twice, non-ASCII text past one fragment) the
    message is encoded again.
    """
    obj = loads(data)
    setup = obj.get("setup") if isinstance(obj, dict) else None
    old = setup.get("model") if isinstance(setup, dict) else None
    if not isinstance(old, str) or not old.strip():
        raise ValueError("the setup names no model to rewrite")
    target = model.strip().removeprefix("models/")
    if not target:
        raise ValueError("empty model name")
    cut = old.rfind("models/")
    new = (old[: cut + len("models/")] if cut >= 0 else "") + target
    wanted = {**obj, "setup": {**setup, "model": new}}  # type: ignore[dict-item]
    return rewritten_value(data, "model", old, new, wanted)


# --- server messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnUsage:
    """One ``usageMetadata``: a turn's usage, and the tier that served it (Vertex's trafficType)."""

    usage: Usage
    service_tier: str | None = None


def might_bill(data: bytes) -> bool:
    """Cheap test: may this server message carry usage? ``b'"usageMetadata"' in data``, faster.

    A substring search walks 48 KB of base64 at ~4 bytes a nanosecond (~11 µs: every base64
    letter is in the needle's filter); ``memchr`` for the next quote skips it ~25 times faster,
    and an audio message has a dozen or so quotes, all outside its base64. A message of many
    quotes (a large tool call) falls back to the substring search after ``_QUOTE_HOPS``.
    """
    find, at = data.find, data.startswith
    i = find(b'"')
    for _ in range(_QUOTE_HOPS):
        if i < 0:
            return False
        if at(_USAGE_TAIL, i + 1):
            return True
        i = find(b'"', i + 1)
    return i >= 0 and _USAGE_KEY in data[i:]


def starts_turn(data: bytes) -> bool:
    """Cheap test: may this server message start a turn: model output, a transcription, a tool
    call, not a bare ``turnComplete`` (or ``generationComplete``, ``interrupted``) that ends one?
    Its keys come first: only the first bytes are looked at."""
    head = data[:_HEAD]
    return any(key in head for key in _TURN_KEYS) and not any(key in head for key in _END_KEYS)


def read_usage(data: bytes) -> TurnUsage | None:
    """The usage a server message carries, else None. Never raises."""
    obj = loads(data)
    meta = obj.get("usageMetadata") if isinstance(obj, dict) else None
    usage = extract_usage(meta)
    if usage is None:
        return None
    return TurnUsage(usage, gemini_api.service_tier_of(meta))


def extract_usage(meta: Any) -> Usage | None:
    """A Live ``usageMetadata`` normalised as ``gemini_api.extract_usage`` normalises Gemini's.

    The Developer API says ``responseTokenCount`` / ``responseTokensDetails`` where Vertex (and
    generateContent) say ``candidates*``. Input is ``promptTokenCount`` (cache hits included) plus
    ``toolUsePromptTokenCount``; output the response plus ``thoughtsTokenCount`` (which
    ``totalTokenCount`` leaves out). VIDEO tokens (camera frames) are counted with the images:
    every Live model genai-prices knows prices video input as it prices image input.
    """
    if not isinstance(meta, dict):
        return None
    renamed = dict(meta)
    for live, generate in (
        ("responseTokenCount", "candidatesTokenCount"),
        ("responseTokensDetails", "candidatesTokensDetails"),
    ):
        if generate not in renamed and live in renamed:
            renamed[generate] = renamed[live]
    usage = gemini_api.extract_usage(renamed)
    if usage is None:
        return None
    video = sum(
        _video_tokens(meta.get(name)) for name in ("promptTokensDetails", "toolUsePromptTokensDetails")
    )
    return replace(usage, input_image_tokens=usage.input_image_tokens + video) if video else usage


def _video_tokens(details: Any) -> int:
    if not isinstance(details, list):
        return 0
    return sum(
        _int(entry.get("tokenCount"))
        for entry in details
        if isinstance(entry, dict) and str(entry.get("modality")).upper() == "VIDEO"
    )
