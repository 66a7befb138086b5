"""Anthropic Messages API responses -> normalised usage.

Pure functions over bytes; no mitmproxy. Anthropic's ``input_tokens`` EXCLUDES cache
reads and writes, so normalised input is the sum of the three. In streams,
``message_start`` carries input and cache counts, and every ``message_delta`` carries
CUMULATIVE counts: each count present overwrites the previous one, never adds.
``message_start``'s ``output_tokens`` is a placeholder (1), and a ``message_delta`` whose
``delta.stop_reason`` is null (sent mid-turn around server tools: web search, code execution)
carries a running count: a stream cut before the final ``message_delta`` (a stop reason) or
``message_stop`` has its output unknown (``Metered.output_partial``).
The completion text (``content_block_delta`` events) is kept raw and decoded only when
no usage came, or no final output count (``Metered.output_text``, for an offline estimate).

``usage.iterations`` (in a stream, on the final ``message_delta``) breaks the call down by
sampling iteration, each entry typed (``read_iterations``): ``message`` (the call's own model, the
turns of a server-side tool loop; the top-level usage is their sum), ``compaction`` (the context
compaction's own request: NOT in the top-level usage, per Anthropic's SDK, so added to it here, at
the call's model), ``advisor_message`` (the advisor tool's sub-inference, ``model`` the advisor:
left out of the top-level usage and billed at that model's rates, so metered on a row of its own)
and ``fallback_message`` (server-side fallback: the fallback model that served the answer, ``model``
it, whose rates then price the call; the hops that declined before it are ``message`` entries
naming their model). Unknown types are ignored, never guessed at.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from addon.model_rules import base_model
from addon.providers.fallback_lists import MAX_FALLBACK_MODELS, MAX_MODEL_NAME, Fallbacks
from addon.providers.openai_api import TextCollector
from addon.providers.values import loads
from addon.providers.values import text as _str
from addon.sse import SSEEvent
from addon.usage import Iterations, Metered, Usage, add_usages, consistent, subtract_usage

FLAVORS: tuple[str, ...] = ("messages",)

_PARSED = frozenset({"message_start", "message_delta", "error"})
_IGNORED = frozenset({"ping", "content_block_start", "content_block_stop"})
_COUNT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
_MAX_ERROR = 300
MAX_ITERATIONS = 10_000  # usage.iterations entries read (a server-side tool loop's turns, each one)
# What a hop of the call (not a compaction, not an advisor) is, in usage.iterations.
_HOPS = frozenset({"message", "fallback_message"})


def flavor_for_path(path: str) -> str | None:
    """``"messages"`` for ``.../v1/messages`` (query string allowed); None otherwise.

    ``/v1/messages/count_tokens`` and ``/v1/messages/batches...`` are not metered calls.
    """
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return "messages" if path.endswith("/v1/messages") else None


FALLBACKS = "fallbacks"  # server-side fallback's list of {"model": ...} objects, or "default"
DEFAULT_FALLBACKS = "default"


def fallback_models(body: dict[str, Any] | None) -> Fallbacks | None:
    """The models a Messages request's server-side ``fallbacks`` may run (beta
    ``server-side-fallback-2026-07-01``): a declined answer is retried on each entry's ``model`` in
    order, billed at its rates. None when the request names none (absent, null). ``"default"``
    (Anthropic's recommended fallback for the refusal's category, chosen server-side) names no
    model the proxy can check: read as a list that cannot be read whole, as is a list that is not
    one, an entry naming no model, or more than ``MAX_FALLBACK_MODELS`` entries. Read as a chain
    (``Fallbacks.chain``: each hop may bill). Never raises."""
    listed = body.get(FALLBACKS) if isinstance(body, dict) else None
    if listed is None:
        return None
    if listed == DEFAULT_FALLBACKS:
        return Fallbacks(
            error=f'its {FALLBACKS} is "{DEFAULT_FALLBACKS}" (the fallback models Anthropic picks, '
            "server-side)",
            chain=True,
        )
    if not isinstance(listed, list):
        return Fallbacks(error=f"its {FALLBACKS} list is not a list", chain=True)
    found: list[str] = []
    for i, entry in enumerate(listed):
        if i >= MAX_FALLBACK_MODELS:
            return Fallbacks(
                tuple(found),
                f"its {FALLBACKS} list has more than {MAX_FALLBACK_MODELS} entries",
                i,
                chain=True,
            )
        model = entry.get("model") if isinstance(entry, dict) else None
        if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
            return Fallbacks(
                tuple(found), f"entry {i + 1} of its {FALLBACKS} list names no model", i, chain=True
            )
        found.append(model)
    return Fallbacks(tuple(found), None, len(found), chain=True)


def fallback_max_tokens(body: dict[str, Any] | None) -> dict[int, int]:
    """The ``max_tokens`` each ``fallbacks`` entry sets for its attempt (by index; an entry without
    one uses the request's)."""
    listed = body.get(FALLBACKS) if isinstance(body, dict) else None
    if not isinstance(listed, list):
        return {}
    return {
        i: entry["max_tokens"]
        for i, entry in enumerate(listed[:MAX_FALLBACK_MODELS])
        if isinstance(entry, dict) and type(entry.get("max_tokens")) is int and entry["max_tokens"] > 0
    }


def merge_usage(counts: dict[str, int], usage: Any) -> bool:
    """Overwrite ``counts`` with every count present (non-null) in an Anthropic ``usage`` object.

    Returns whether ``usage`` was a usage object. The one place that knows the field
    names; ``thinking`` comes from ``output_tokens_details.thinking_tokens`` when sent,
    ``cache_write_1h`` from ``cache_creation.ephemeral_1h_input_tokens`` (the writes kept an
    hour, part of ``cache_creation_input_tokens``), ``web_searches`` from
    ``server_tool_use.web_search_requests``.
    """
    if not isinstance(usage, dict):
        return False
    for key in _COUNT_KEYS:
        value = _count(usage.get(key))
        if value is not None:
            counts[key] = value
    for name, holder, key in (
        ("thinking", "output_tokens_details", "thinking_tokens"),
        ("cache_write_1h", "cache_creation", "ephemeral_1h_input_tokens"),
        ("web_searches", "server_tool_use", "web_search_requests"),
    ):
        inner = usage.get(holder)
        value = _count(inner.get(key)) if isinstance(inner, dict) else None
        if value is not None:
            counts[name] = value
    return True


def usage_from_counts(counts: dict[str, int]) -> Usage:
    """Normalise merged Anthropic counts."""
    cache_write = counts.get("cache_creation_input_tokens", 0)
    cache_read = counts.get("cache_read_input_tokens", 0)
    return Usage(
        input_tokens=counts.get("input_tokens", 0) + cache_write + cache_read,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=counts.get("output_tokens", 0),
        reasoning_tokens=counts.get("thinking", 0),
        cache_write_1h_tokens=min(counts.get("cache_write_1h", 0), cache_write),
        web_searches=counts.get("web_searches", 0),
    )


def service_tier_of(usage: Any) -> str | None:
    """The tier a ``usage`` object says served the call: ``"fast"`` for fast mode (``speed``,
    priced apart), else its ``service_tier`` (``standard``, ``priority``, ``batch``)."""
    if not isinstance(usage, dict):
        return None
    if usage.get("speed") == "fast":
        return "fast"
    return _str(usage.get("service_tier"))


def inference_geo_of(usage: Any) -> str | None:
    """Where inference ran, as a ``usage`` object says (``"us"``, ``"global"``), or None."""
    return _str(usage.get("inference_geo")) if isinstance(usage, dict) else None


def extract_usage(usage: Any) -> Usage | None:
    """Normalise one Anthropic ``usage`` object, or None if it is not one."""
    counts: dict[str, int] = {}
    return usage_from_counts(counts) if merge_usage(counts, usage) else None


def read_iterations(
    usage: Any, top: Usage | None, model: str | None = None
) -> tuple[Usage | None, Iterations | None]:
    """The call's usage, ``top`` (its top-level usage, read from ``usage``; ``model`` the model its
    answer echoes), with what the entries of ``usage.iterations`` say besides: a ``compaction``
    entry's tokens added (the top-level usage leaves them out); ``advisor_message`` entries summed
    per advisor model and a ``fallback_message`` entry's model, the model that served the answer,
    returned apart (``Iterations``); and, when the top-level usage is the sum of every hop's, the
    hops of another model than the one whose answer it is (the fallback that served it, else, every
    hop having declined, the model echoed) taken off it, per model, to be priced at their own
    model's rates. Every part keeps its subsets within their totals (``_hour_writes``,
    ``consistent``). None for the iterations when they say nothing more. Never raises."""
    entries = usage.get("iterations") if isinstance(usage, dict) else None
    if top is None or not isinstance(entries, list) or not entries:
        return top, None
    served_by: str | None = None
    advisors: dict[str | None, Usage] = {}
    compaction: Usage | None = None
    hops: list[tuple[str | None, str, Usage, bool]] = []  # model, type, counts, 1-hour writes known
    for entry in entries[:MAX_ITERATIONS]:
        counts = extract_usage(entry)
        if counts is None:
            continue
        kind = entry.get("type")
        named = _str(entry.get("model"))
        if kind == "compaction":
            compaction = counts if compaction is None else add_usages(compaction, counts)
        elif kind == "advisor_message":
            advisors[named] = add_usages(advisors[named], counts) if named in advisors else counts
        elif kind in _HOPS:
            hops.append((named, kind, counts, isinstance(entry.get("cache_creation"), dict)))
            if kind == "fallback_message" and named is not None:
                served_by = named
    declined: dict[str, Usage] = {}
    serving = served_by or model  # whose answer it is: the fallback's, else the model echoed
    if serving is not None and hops and _same_counts(_total(h[2] for h in hops), top):
        hour = _hour_writes(
            top.cache_write_1h_tokens,
            [(h[2].cache_write_tokens, h[2].cache_write_1h_tokens if h[3] else None) for h in hops],
        )
        for (named, kind, counts, _known), hour_writes in zip(hops, hour, strict=True):
            if kind == "message" and named is not None and not _same_model(named, serving):
                counts = replace(counts, cache_write_1h_tokens=hour_writes)
                declined[named] = add_usages(declined[named], counts) if named in declined else counts
        declined = {named: consistent(counts) for named, counts in declined.items()}
        for counts in declined.values():
            top = subtract_usage(top, counts)
        top = consistent(top)
    if compaction is not None:
        top = add_usages(top, compaction)
    if served_by is None and not advisors and compaction is None and not declined:
        return top, None
    return top, Iterations(served_by, tuple(advisors.items()), tuple(declined.items()), compaction)


def _same_model(one: str, other: str) -> bool:
    """The same model, dated or not (``claude-opus-4-8`` and ``claude-opus-4-8-20260505``)."""
    return one == other or base_model(one) == base_model(other)


def _hour_writes(total: int, hops: list[tuple[int, int | None]]) -> list[int]:
    """The hour-long cache writes of each hop ((its cache writes, its hour-long ones or None when
    its entry has no ``cache_creation`` breakdown)), so that they sum to ``total`` (the top-level
    usage's) where they can and none exceeds its hop's writes: a hop's own breakdown stands; what is
    left of ``total`` is shared among the others in proportion to their writes."""
    shares = [min(known, writes) if known is not None else 0 for writes, known in hops]
    unknown = [i for i, (_, known) in enumerate(hops) if known is None]
    left = max(total - sum(shares), 0)
    room = sum(hops[i][0] for i in unknown)
    if not unknown or not left or not room:
        return shares
    for i in unknown:
        shares[i] = min(hops[i][0], left * hops[i][0] // room)
    rest = left - sum(shares[i] for i in unknown)
    for i in unknown:  # the rounding's remainder, where there is room
        more = min(rest, hops[i][0] - shares[i])
        shares[i] += more
        rest -= more
    return shares


def _total(usages: Any) -> Usage:
    total = Usage()
    for usage in usages:
        total = add_usages(total, usage)
    return total


def _same_counts(one: Usage, other: Usage) -> bool:
    """The same input, cache read, cache write and output counts."""
    return (one.input_tokens, one.cache_read_tokens, one.cache_write_tokens, one.output_tokens) == (
        other.input_tokens,
        other.cache_read_tokens,
        other.cache_write_tokens,
        other.output_tokens,
    )


def parse_response(flavor: str, body: bytes) -> Metered:
    """Usage, model and error of a complete, content-decoded JSON response body. Never raises."""
    if not body.strip():
        return Metered(error="empty response body")
    obj = loads(body)
    if obj is None:
        return Metered(error="response body is not JSON")
    if not isinstance(obj, dict):
        return Metered(error="response body is not a JSON object")
    usage, iterations = read_iterations(
        obj.get("usage"), extract_usage(obj.get("usage")), _str(obj.get("model"))
    )
    error = error_message(obj.get("error"))
    if usage is None and error is None:
        error = "no usage in response"
    text = None if usage is not None else "".join(_content_texts(obj.get("content"))) or None
    tier = service_tier_of(obj.get("usage"))
    return Metered(
        usage=usage,
        model=_str(obj.get("model")),
        error=error,
        output_text=text,
        service_tier=tier,
        inference_geo=inference_geo_of(obj.get("usage")),
        iterations=iterations,
    )


def is_final_delta(obj: dict[str, Any]) -> bool:
    """Is a ``message_delta`` the turn's last: not one with ``delta.stop_reason`` null, which
    Anthropic sends mid-turn (server tools) with a running output count? (One without a ``delta``
    or its ``stop_reason`` key, from a look-alike server, is taken as final.)"""
    delta = obj.get("delta")
    return not (isinstance(delta, dict) and "stop_reason" in delta and delta["stop_reason"] is None)


class StreamParser:
    """Feed the SSE events of one streamed Messages response; ``result()`` at any time."""

    __slots__ = (
        "_bad",
        "_counts",
        "_done",
        "_error",
        "_final",
        "_geo",
        "_iterations",
        "_model",
        "_seen",
        "_text",
        "_tier",
        "flavor",
    )

    def __init__(self, flavor: str = "messages") -> None:
        self.flavor = flavor
        self._counts: dict[str, int] = {}
        self._seen = False  # a usage object was seen
        self._final = False  # the final message_delta's usage was seen: its output count is the call's
        self._model: str | None = None
        self._error: str | None = None
        self._done = False
        self._bad = 0
        self._tier: str | None = None
        self._geo: str | None = None  # usage.inference_geo
        self._iterations: Any = None  # the last usage.iterations list seen (the final message_delta's)
        self._text = TextCollector(_delta_texts, keep=_is_delta)

    @property
    def done(self) -> bool:
        """``message_stop`` was seen."""
        return self._done

    def take_plain(self, block: bytes) -> bool:
        """Take a block of whole events that can only carry text (content blocks, pings), kept raw
        for a later estimate; False (nothing taken) when it may hold a message event, usage or
        an error: it is then fed event by event."""
        if b"message_" in block or b"usage" in block or b"error" in block:
            return False
        self._text.add_events(block)
        return True

    def feed(self, event: SSEEvent) -> None:
        """Take one event; only ``message_start``, ``message_delta`` and ``error`` are decoded."""
        name = event.event
        data = event.data
        if name in _IGNORED or not data:
            return
        if _is_delta(name, data):
            self._text.add(data)
            return
        if name == "message_stop" or (name is None and b'"message_stop"' in data[:64] and _is_stop(data)):
            self._done = True
            return
        if name not in _PARSED and not (b'"usage"' in data or b'"error"' in data):
            return
        obj = loads(data)
        if not isinstance(obj, dict):
            self._bad += 1
            return
        kind = obj.get("type")
        if not isinstance(kind, str):
            kind = name
        if kind == "error":
            self._error = error_message(obj.get("error") or obj) or "error event"
            return
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                model = _str(message.get("model"))
                if model is not None:
                    self._model = model
                self._take_usage(message.get("usage"))
            return
        taken = self._take_usage(obj.get("usage"))
        self._final |= taken and kind == "message_delta" and is_final_delta(obj)

    def _take_usage(self, usage: Any) -> bool:
        """Merge a usage object's counts; whether it was one."""
        taken = merge_usage(self._counts, usage)
        self._seen |= taken
        tier = service_tier_of(usage)
        if tier is not None and self._tier != "fast":  # fast mode, once said, is the price
            self._tier = tier
        self._geo = inference_geo_of(usage) or self._geo
        if taken and isinstance(usage.get("iterations"), list):
            self._iterations = usage  # the whole list each time: the last one stands
        return taken

    def result(self) -> Metered:
        """Usage seen so far (None if none), the reported model, and an error if any.

        Before the final ``message_delta`` (or ``message_stop``) the output count is
        message_start's placeholder or a running count: ``output_partial``, with the text seen for
        an estimate."""
        usage = usage_from_counts(self._counts) if self._seen else None
        usage, iterations = read_iterations(self._iterations, usage, self._model)
        partial = usage is not None and not (self._final or self._done)
        error = self._error
        if usage is None and error is None:
            error = (
                f"no usage in stream ({self._bad} event(s) not JSON)" if self._bad else "no usage in stream"
            )
        text = self._text.text() if usage is None or partial else None
        return Metered(
            usage=usage,
            model=self._model,
            error=error,
            output_text=text,
            service_tier=self._tier,
            inference_geo=self._geo,
            output_partial=partial,
            iterations=iterations,
        )


def _is_delta(name: str | None, data: bytes) -> bool:
    """A ``content_block_delta`` event (named, or nameless with its type up front)."""
    return name == "content_block_delta" or (name is None and b'"content_block_delta"' in data[:64])


def _is_stop(data: bytes) -> bool:
    """An event without an ``event:`` line (some gateways drop it) that is ``message_stop``."""
    obj = loads(data)
    return isinstance(obj, dict) and obj.get("type") == "message_stop"


def _delta_texts(data: bytes) -> list[str]:
    """The text of one ``content_block_delta`` (text, thinking, or tool input JSON)."""
    obj = loads(data)
    delta = obj.get("delta") if isinstance(obj, dict) else None
    if not isinstance(delta, dict):
        return []
    return [v for k in ("text", "thinking", "partial_json") if isinstance(v := delta.get(k), str) and v]


def _content_texts(content: Any) -> list[str]:
    """The text of a complete message's ``content`` blocks (tool inputs as JSON)."""
    out: list[str] = []
    if not isinstance(content, list):
        return out
    for block in content:
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            if isinstance(value := block.get(key), str) and value:
                out.append(value)
        if block.get("type") == "tool_use" and "input" in block:
            out.append(json.dumps(block["input"], ensure_ascii=False))
    return out


def error_message(err: Any) -> str | None:
    """A short text for an API error object (``{"type", "message"}``), a string, or None."""
    if err is None or err == {} or err == "":
        return None
    if isinstance(err, dict):
        kind = err.get("type")
        if kind == "error":
            kind = None
        message = err.get("message")
        text = f"{kind}: {message}" if kind and message else str(message or kind or err)
    else:
        text = str(err)
    return text[:_MAX_ERROR]


def _count(value: Any) -> int | None:
    """A token count, or None for null / missing / not a number."""
    if type(value) is int:
        return value
    if type(value) is float and value == value and abs(value) != float("inf"):
        return int(value)
    return None


def repeated_fallbacks(
    model: str | None, sent: str | None, listed: tuple[str, ...], rewritten: list[str]
) -> list[int]:
    """The indices of the ``fallbacks`` entries that rewriting made name the model the call now
    runs (``sent``, asked as ``model``) or an entry before them (``listed`` as asked, ``rewritten``
    as they would be sent): a fallback to the model that just declined is none (it repeats the
    refusal, and a list Anthropic does not take is a 400). Entries the client wrote so stay."""
    dropped: list[int] = []
    kept: list[str] = []
    for i, (asked, now) in enumerate(zip(listed, rewritten, strict=False)):
        itself = sent is not None and _same_model(now, sent)
        was_itself = model is not None and _same_model(asked, model)
        repeat = any(_same_model(now, other) for other in kept)
        was_repeat = any(_same_model(asked, other) for other in listed[:i])
        if (itself and not was_itself) or (repeat and not was_repeat):
            dropped.append(i)
        else:
            kept.append(now)
    return dropped


def without_fallback_entries(body: dict[str, Any], dropped: list[int]) -> dict[str, Any]:
    """A new body whose ``fallbacks`` list lacks the entries at ``dropped``; with none left, no
    ``fallbacks`` at all (the call runs its model alone)."""
    listed = body.get(FALLBACKS)
    if not isinstance(listed, list) or not dropped:
        return body
    kept = [entry for i, entry in enumerate(listed) if i not in set(dropped)]
    new = {key: value for key, value in body.items() if key != FALLBACKS}
    if kept:
        new[FALLBACKS] = kept
    return new
