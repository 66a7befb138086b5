"""Batch jobs -> their models and their usage: OpenAI's Batch API, Anthropic's Message Batches.

Pure functions over bytes; no mitmproxy.

- ``POST /v1/files`` (multipart, ``purpose=batch``) uploads the JSONL input file, one request a
  line (``{"custom_id", "method", "url", "body": {"model", ...}}``). ``read_upload`` reads each
  line's model and output cap without keeping anything of the file: a few regex searches a line,
  a JSON decode only of a line they cannot settle.
- ``POST /v1/batches`` (``{"input_file_id", "endpoint", "completion_window"}``) answers the Batch
  object (``status: validating``); ``GET /v1/batches/{id}`` and ``POST .../cancel`` answer it as
  it stands, ``GET /v1/batches`` a page of them. Once it has ended (``completed``, ``cancelled``,
  ``expired``) its ``usage`` holds what was billed, at half the synchronous price (``service_tier``
  "batch").
- Anthropic: ``POST /v1/messages/batches`` carries its requests inline (``{"requests": [{"custom_id",
  "params": {"model", "max_tokens", ...}}]}``: ``read_inline`` reads them one at a time); the
  Message Batch object (``processing_status``: ``in_progress``, ``canceling``, ``ended``) carries
  no usage. Its results, ``GET /v1/messages/batches/{id}/results`` (JSONL, possibly gigabytes),
  do: ``ResultsReader`` sums the usage of the ``succeeded`` lines per model as they pass, decoding
  only each line's usage object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from addon.providers import advisors, anthropic_api
from addon.providers.openai_api import error_message, extract_usage
from addon.providers.openai_media import form_parts, is_form
from addon.providers.values import bare_path, loads
from addon.providers.values import text as _str
from addon.usage import Metered, Usage, add_usages

FLAVOR = "batch"
# The service tier of a batch's rows: priced at the batch price (genai-prices' own, else half).
TIER = "batch"
# A batch not ended yet: its usage, if any, is a running total.
RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling", "canceling"})
ENDED = frozenset({"completed", "cancelled", "expired", "failed"})
MAX_MODELS = 64  # distinct models remembered of one input file (more: the rest count as unreadable)
MAX_MODEL = 256
MAX_ID = 200
NO_USAGE = (
    "the batch reports no usage (OpenAI fills it in only for batches created after 7 September 2025): "
    "its cost is unknown"
)

# A key that decodes to "model", however it is spelled: JSON can only write a letter as itself or
# as \u00XX. In a JSON string a quote is escaped, so this only matches a key of the line's JSON.
_MODEL_KEY = re.compile(rb'"(?:m|\\u006[dD])(?:o|\\u006[fF])(?:d|\\u0064)(?:e|\\u0065)(?:l|\\u006[cC])"\s*:')
_PLAIN_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_OUTPUT_CAP = re.compile(
    rb'"(?:max_completion_tokens|max_tokens|max_output_tokens)"\s*:\s*([0-9]{1,9})(?![0-9.eE])'
)
_CAP_NAMES = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_NOT_BLANK = re.compile(rb"\S")


@dataclass(frozen=True, slots=True)
class BatchInput:
    """What an input file says, never its content: its models and its size."""

    models: tuple[str, ...] = ()  # sorted, distinct
    lines: int = 0  # requests (non-blank lines)
    size: int = 0  # bytes of the file
    output_caps: int = 0  # the sum of the lines' max-tokens settings
    uncapped: int = 0  # lines without one
    unreadable: int = 0  # lines whose model could not be read
    error: str | None = None
    # (model, lines of that model without a cap), by model: a part of ``uncapped`` (the rest:
    # lines whose model could not be read, or a file remembered before this was kept)
    uncapped_by_model: tuple[tuple[str, int], ...] = ()
    # Models its requests run besides their own (a Message Batch request's advisor tool and
    # server-side fallbacks), sorted, distinct; and why they cannot all be read, if they cannot.
    also_runs: tuple[str, ...] = ()
    also_unreadable: str | None = None
    # What those runs may bill, by model, as a plain call reserves them: (model, bytes of request
    # read (each consultation and each fallback hop reads its request again), output tokens of
    # their caps, runs without a cap (each what the model usually writes)), sorted by model.
    also_billed: tuple[tuple[str, int, int, int], ...] = ()
    # The requests of each model: (model, bytes of its requests, output tokens of their caps,
    # requests without a cap), sorted by model, so that each is reserved at its own model's price;
    # empty in an entry kept before it was (the batch then reserved at its dearest model).
    by_model: tuple[tuple[str, int, int, int], ...] = ()

    def output_tokens(self, per_uncapped_line: int, reserved: Callable[[str], int] | None = None) -> int:
        """What the batch may write: its lines' caps, and for each line without one what an
        uncapped call to its model reserves (``reserved(model)``: the p90 of its recent outputs),
        never under ``per_uncapped_line``; a line whose model is not known, the most any of the
        batch's models reserves. Without ``reserved``, ``per_uncapped_line`` a line."""
        if reserved is None or not self.uncapped:
            return self.output_caps + self.uncapped * per_uncapped_line
        total, counted = self.output_caps, 0
        for model, lines in self.uncapped_by_model:
            total += lines * max(per_uncapped_line, reserved(model))
            counted += lines
        rest = max(0, self.uncapped - counted)
        if rest:
            most = max((reserved(model) for model in self.models), default=per_uncapped_line)
            total += rest * max(per_uncapped_line, most)
        return total

    def to_entry(self) -> dict[str, Any]:
        """A JSON object to remember it by (no content of the file)."""
        return {
            "models": list(self.models),
            "lines": self.lines,
            "size": self.size,
            "output_caps": self.output_caps,
            "uncapped": self.uncapped,
            "unreadable": self.unreadable,
            "error": self.error,
            "uncapped_by_model": dict(self.uncapped_by_model),
            "by_model": {model: [size, caps, uncapped] for model, size, caps, uncapped in self.by_model},
        }

    @classmethod
    def from_entry(cls, entry: Any) -> BatchInput | None:
        """Read back ``to_entry``'s object; None when it is not one."""
        if not isinstance(entry, dict):
            return None
        models = entry.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            return None
        counts = [entry.get(name, 0) for name in ("lines", "size", "output_caps", "uncapped", "unreadable")]
        if not all(type(n) is int and n >= 0 for n in counts) or "lines" not in entry:
            return None
        error = entry.get("error")
        by_model = entry.get("uncapped_by_model")  # absent in an entry kept before it was
        known = tuple(
            sorted(
                (model, lines)
                for model, lines in (by_model.items() if isinstance(by_model, dict) else ())
                if model in models and type(lines) is int and lines > 0
            )
        )
        sized = entry.get("by_model")  # absent in an entry kept before it was
        by_model = tuple(
            sorted(
                (model, *counts)
                for model, counts in (sized.items() if isinstance(sized, dict) else ())
                if model in models
                and isinstance(counts, list)
                and len(counts) == 3
                and all(type(n) is int and n >= 0 for n in counts)
            )
        )
        return cls(
            tuple(models),
            *counts,
            error=error if isinstance(error, str) else None,
            uncapped_by_model=known,
            by_model=by_model,
        )


def flavor_for_path(path: str) -> str | None:
    """``batch`` for ``POST .../v1/batches`` (query allowed), else None."""
    return FLAVOR if bare_path(path).endswith("/v1/batches") else None


def is_upload_path(path: str) -> bool:
    """``POST .../v1/files``: a file upload (a batch's input file among others)."""
    return bare_path(path).endswith("/v1/files")


def _cap(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    for name in _CAP_NAMES:
        value = body.get(name)
        if type(value) is int and value > 0:
            return value
    return None


@dataclass(slots=True)
class _Requests:
    """The requests of a batch as they are read one by one: models, caps, the unreadable."""

    where: str  # "file" or "batch", for the error
    models: dict[str, None] = field(default_factory=dict)
    lines: int = 0
    caps: int = 0
    uncapped: int = 0
    unreadable: int = 0
    error: str | None = None
    uncapped_by_model: dict[str, int] = field(default_factory=dict)
    also_runs: dict[str, None] = field(default_factory=dict)
    also_unreadable: str | None = None
    also_billed: dict[str, list[int]] = field(default_factory=dict)
    by_model: dict[str, list[int]] = field(default_factory=dict)  # model -> [bytes, caps, uncapped]

    def _bill(self, model: str, size: int, cap: int | None, runs: int = 1) -> None:
        """Count ``runs`` runs of ``model``, each reading ``size`` and writing up to ``cap``."""
        counts = self.also_billed.get(model)
        if counts is None:
            if len(self.also_billed) > MAX_MODELS:  # not all read then: refused where restricted
                return
            counts = self.also_billed[model] = [0, 0, 0]
        counts[0] += size * runs
        if cap:
            counts[1] += cap * runs
        else:
            counts[2] += runs

    def also(self, params: Any, size: int = 0) -> None:
        """Note the models a Message Batch request's ``params`` (``size`` characters) run besides
        its ``model``: its advisor tools' and its server-side ``fallbacks``' (the first reason one
        cannot be read kept), and what they may bill, as a plain call reserves it: each
        consultation (its ``max_uses``, else ``ADVISOR_USES_RESERVED``) and each fallback hop reads
        the request and writes up to its cap; a ``fallbacks`` not read whole (``"default"``) one hop
        more at the request's model."""
        if not isinstance(params, dict):
            return
        found = advisors.advisor_tools(params)
        listed = anthropic_api.fallback_models(params)
        models = [tool.model for tool in found.tools] + list(listed.models if listed is not None else ())
        problem = found.error or (listed.error if listed is not None else None)
        if problem is not None and self.also_unreadable is None:
            self.also_unreadable = f"request {self.lines} of the batch: {problem}"
        for tool in found.tools:
            self._bill(tool.model, size, tool.max_tokens, advisors.reserved_uses(tool))
        if listed is not None:
            caps = anthropic_api.fallback_max_tokens(params)
            for i, model in enumerate(listed.models):
                self._bill(model, size, caps.get(i) or _cap(params))
            own = params.get("model")
            if listed.error is not None and isinstance(own, str) and own in self.models:
                self._bill(own, size, _cap(params))
        for model in models:
            if model not in self.also_runs:
                if len(self.also_runs) >= MAX_MODELS:
                    self.also_unreadable = self.also_unreadable or (
                        f"its requests' advisor tools and fallbacks name more than {MAX_MODELS} models"
                    )
                    return
                self.also_runs[model] = None

    def add(self, model: Any, cap: int | None, size: int = 0) -> None:
        """Count one request (``size`` bytes) asking for ``model`` (unreadable unless a plain, short
        string)."""
        self.lines += 1
        if cap:
            self.caps += cap
        else:
            self.uncapped += 1
        if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL:
            self.unreadable += 1
            return
        if model not in self.models:
            if len(self.models) >= MAX_MODELS:
                self.unreadable += 1
                self.error = f"more than {MAX_MODELS} different models in the {self.where}"
                return
            self.models[model] = None
        if not cap:
            self.uncapped_by_model[model] = self.uncapped_by_model.get(model, 0) + 1
        counts = self.by_model.setdefault(model, [0, 0, 0])
        counts[0] += size
        if cap:
            counts[1] += cap
        else:
            counts[2] += 1

    def result(self, size: int, error: str | None = None) -> BatchInput:
        return BatchInput(
            models=tuple(sorted(self.models)),
            lines=self.lines,
            size=size,
            output_caps=self.caps,
            uncapped=self.uncapped,
            unreadable=self.unreadable,
            error=error or self.error,
            uncapped_by_model=tuple(sorted(self.uncapped_by_model.items())),
            also_runs=tuple(sorted(self.also_runs)),
            also_unreadable=self.also_unreadable,
            also_billed=tuple(sorted((model, c[0], c[1], c[2]) for model, c in self.also_billed.items())),
            by_model=tuple(sorted((model, c[0], c[1], c[2]) for model, c in self.by_model.items())),
        )


def scan_input(data: bytes, start: int = 0, end: int | None = None) -> BatchInput:
    """The models, requests and output caps of a JSONL input file in ``data[start:end]``. Never raises.

    A line's model is its ``body.model``. One key spelled ``model`` with a plain string value is
    taken as it is; anything else (none, several: a tool's own ``model``, escapes) is decoded.
    """
    end = len(data) if end is None else max(0, min(end, len(data)))
    start = max(0, min(start, end))
    requests = _Requests("file")
    pos = start
    while pos < end:
        newline = data.find(b"\n", pos, end)
        stop = end if newline < 0 else newline
        a, pos = pos, stop + 1
        if _NOT_BLANK.search(data, a, stop) is None:
            continue
        keys = 0
        for _ in _MODEL_KEY.finditer(data, a, stop):
            keys += 1
            if keys > 1:
                break
        plain = _PLAIN_MODEL.search(data, a, stop) if keys == 1 else None
        if plain is not None:
            model: Any = plain.group(1).decode("utf-8", "replace")
            found = _OUTPUT_CAP.search(data, a, stop)
            cap = int(found.group(1)) if found is not None else None
        else:
            obj = loads(data[a:stop])
            body = obj.get("body") if isinstance(obj, dict) else None
            model = body.get("model") if isinstance(body, dict) else None
            cap = _cap(body)
        if isinstance(model, str) and "\ufffd" in model:  # not UTF-8: not the name OpenAI reads
            model = None
        requests.add(model, cap, stop - a)
    return requests.result(end - start)


def read_upload(body: bytes, content_type: str) -> BatchInput | None:
    """A batch's input file uploaded as multipart/form-data (``purpose=batch``), read for its models;
    None for any other upload. Never raises."""
    if not is_form(content_type):
        return None
    walk = form_parts(body, content_type)
    if walk.error is not None:  # a form parsers may read differently: OpenAI may see another file
        return BatchInput(error=walk.error)
    purposes = [
        body[p.start : p.end].strip() for p in walk.parts if p.name == b"purpose" and p.end - p.start <= 64
    ]
    files = [part for part in walk.parts if part.name == b"file"]
    if b"batch" not in purposes:
        return None
    if len(purposes) > 1 or len(files) > 1:
        return BatchInput(
            error="a batch upload with several purpose or file parts (parsers differ on which one counts)"
        )
    if not files:
        return BatchInput(error="a batch upload without its file (cut short or malformed)")
    return scan_input(body, files[0].start, files[0].end)


def uploaded_file_id(body: bytes) -> str | None:
    """The id of an uploaded file, from the upload's answer (``{"id": "file-...", "object": "file"}``)."""
    obj = loads(body) if body.lstrip()[:1] == b"{" else None
    file_id = obj.get("id") if isinstance(obj, dict) else None
    return file_id if isinstance(file_id, str) and 0 < len(file_id) <= MAX_ID else None


def input_file_id(body: dict[str, Any] | None) -> str | None:
    """The ``input_file_id`` a batch is created from."""
    file_id = body.get("input_file_id") if body else None
    return file_id if isinstance(file_id, str) and 0 < len(file_id) <= MAX_ID else None


def parse_batch(body: bytes) -> Metered:
    """A Batch object: its id, status, model and usage (at the batch tier). Never raises."""
    if not body.strip():
        return Metered(error="empty response body")
    obj = loads(body)
    if not isinstance(obj, dict):
        return Metered(error="response body is not a JSON object")
    return batch_metered(obj)


def parse_list(body: bytes) -> list[Metered]:
    """The Batch objects of a ``GET /v1/batches`` answer (``{"object": "list", "data": [...]}``),
    each read as ``parse_batch`` reads one; those without an id are left out. Never raises."""
    obj = loads(body) if body.lstrip()[:1] == b"{" else None
    data = obj.get("data") if isinstance(obj, dict) and obj.get("object") == "list" else None
    if not isinstance(data, list):
        return []
    found = (batch_metered(item) for item in data if isinstance(item, dict))
    return [metered for metered in found if metered.response_id is not None]


def batch_metered(obj: dict[str, Any]) -> Metered:
    """A decoded Batch object, read."""
    batch_id = _str(obj.get("id"))
    if obj.get("object") != "batch" or batch_id is None:
        return Metered(error=error_message(obj.get("error")) or "not a Batch object")
    status = _str(obj.get("status"))
    usage = extract_usage(obj.get("usage"))
    error = None
    if status == "failed":
        errors = obj.get("errors")
        data = errors.get("data") if isinstance(errors, dict) else None
        first = data[0] if isinstance(data, list) and data else None
        detail = error_message(first) if isinstance(first, dict) else None
        error = f"batch failed: {detail}" if detail else "batch failed"
    elif usage is None and status in ENDED:
        error = NO_USAGE
    return Metered(
        usage=usage,
        model=_str(obj.get("model")),
        error=error,
        service_tier=TIER,
        response_id=batch_id,
        response_status=status,
    )


def outcome(metered: Metered) -> Literal["wait", "bill", "drop"]:
    """What a Batch object means for its bill: ``wait`` (running, or no batch to go by), ``bill``
    (ended with tokens used, or ended without a usage figure: a row says the cost is unknown),
    ``drop`` (ended having used nothing: failed, or cancelled before any work)."""
    status = metered.response_status
    if status is None or status not in ENDED:
        return "wait"
    usage = metered.usage
    if usage is not None:
        return "bill" if usage.input_tokens or usage.output_tokens else "drop"
    return "drop" if status == "failed" else "bill"


# --- Anthropic Message Batches ---------------------------------------------------------------

_WHITESPACE = " \t\r\n"
_DECODER = json.JSONDecoder()


def anthropic_flavor_for_path(path: str) -> str | None:
    """``batch`` for ``POST .../v1/messages/batches`` (query allowed), else None."""
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return FLAVOR if path.endswith("/v1/messages/batches") else None


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def read_inline(body: bytes) -> BatchInput:
    """A Message Batch's requests (``{"requests": [{"custom_id", "params": {...}}]}``): their models
    and output caps. Never raises.

    The body (up to 256 MB) is walked one request at a time, each decoded alone and let go, so
    it is never held decoded whole.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return BatchInput(size=len(body), error="request body is not UTF-8 JSON")
    requests = _Requests("batch")
    error = None
    try:
        pos = _skip(text, 0)
        if text[pos] != "{":
            raise ValueError("not an object")
        pos = _skip(text, pos + 1)
        while text[pos] != "}":
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip(text, pos)
            if text[pos] != ":":
                raise ValueError("no colon")
            pos = _skip(text, pos + 1)
            if key != "requests":
                _, pos = _DECODER.raw_decode(text, pos)
            else:
                if text[pos] != "[":
                    raise ValueError("requests is not a list")
                pos = _skip(text, pos + 1)
                while text[pos] != "]":
                    start = pos
                    item, pos = _DECODER.raw_decode(text, pos)
                    params = item.get("params") if isinstance(item, dict) else None
                    model = params.get("model") if isinstance(params, dict) else None
                    requests.add(model, _cap(params), pos - start)  # characters: about its bytes
                    requests.also(params, pos - start)
                    pos = _skip(text, pos)
                    if text[pos] == ",":
                        pos = _skip(text, pos + 1)
                    elif text[pos] != "]":
                        raise ValueError("no comma")
                pos += 1
            pos = _skip(text, pos)
            if text[pos] == ",":
                pos = _skip(text, pos + 1)
            elif text[pos] != "}":
                raise ValueError("no comma")
    except (ValueError, IndexError, RecursionError):
        error = "request body is not JSON, or cut short"
    return requests.result(len(body), error)


def parse_message_batch(body: bytes) -> Metered:
    """A Message Batch object: its id and ``processing_status`` (it carries no usage). Never raises."""
    obj = loads(body) if body.lstrip()[:1] == b"{" else None
    if not isinstance(obj, dict):
        return Metered(error="response body is not a JSON object")
    batch_id = _str(obj.get("id"))
    if obj.get("type") != "message_batch" or batch_id is None:
        return Metered(error=anthropic_api.error_message(obj.get("error")) or "not a Message Batch object")
    status = _str(obj.get("processing_status"))
    return Metered(service_tier=TIER, response_id=batch_id, response_status=status)


# "usage": an object of at most two levels (Anthropic's cache_creation, server_tool_use).
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')
_SUCCEEDED = re.compile(rb'"type"\s*:\s*"succeeded"')
_NOT_BILLED = re.compile(rb'"type"\s*:\s*"(?:errored|canceled|expired)"')
MAX_LINE = 32 * 1024 * 1024  # a results line longer than this is not read (it is passed on all the same)


class ResultsReader:
    """The results of a Message Batch (JSONL), fed as they arrive (split anywhere): per model
    (and inference geo), the summed usage of its ``succeeded`` requests. ``errored``,
    ``canceled`` and ``expired`` requests are not billed. A few microseconds a line: the line's
    usage object is found from its end and decoded alone; a line that quick reading cannot
    settle is decoded whole."""

    __slots__ = ("_counts", "_partial", "_skipping", "_usages", "lines", "succeeded", "unreadable")

    def __init__(self) -> None:
        self._partial = bytearray()
        self._skipping = False  # inside a line longer than MAX_LINE
        self._counts: dict[tuple[str, str | None], dict[str, int]] = {}
        # What requests with usage.iterations spent, normalised per line (their models may differ).
        self._usages: dict[tuple[str, str | None], Usage] = {}
        self.lines = 0
        self.succeeded = 0
        self.unreadable = 0

    def feed(self, data: bytes) -> None:
        """Take the next piece of the (decoded) results."""
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if self._partial or self._skipping:
                self._partial += data[start:newline]
                self._end_partial()
            else:
                self._line(data, start, newline)
            start = newline + 1
        if start < len(data) and not self._skipping:
            self._partial += data[start:]
            if len(self._partial) > MAX_LINE:
                self._partial.clear()
                self._skipping = True

    def close(self) -> None:
        """The results ended: a last line without a newline is read too."""
        if self._partial or self._skipping:
            self._end_partial()

    def _end_partial(self) -> None:
        if self._skipping:
            self.lines += 1
            self.unreadable += 1
            self._skipping = False
        else:
            line = bytes(self._partial)
            self._line(line, 0, len(line))
        self._partial.clear()

    def _line(self, data: bytes, a: int, b: int) -> None:
        if _NOT_BLANK.search(data, a, b) is None:
            return
        self.lines += 1
        at = data.rfind(b'"usage"', a, b)
        if at < 0:  # errored, canceled, expired: nothing billed (a reply always has usage)
            if _NOT_BILLED.search(data, a, b) is None:
                self.unreadable += 1
            return
        usage: Any = None
        model: Any = None
        found = _USAGE_OBJECT.match(data, at)
        # The message's own model: Anthropic writes it before the content (whose tool inputs may
        # hold a "model" of their own) and the usage. These lines are the provider's, not a user's.
        plain = _PLAIN_MODEL.search(data, a, at)
        if found is not None and plain is not None and _SUCCEEDED.search(data, a, at) is not None:
            usage = loads(found.group(1))
            model = plain.group(1).decode("utf-8", "replace")
        if not (isinstance(usage, dict) and ("input_tokens" in usage or "output_tokens" in usage)):
            obj = loads(data[a:b])
            result = obj.get("result") if isinstance(obj, dict) else None
            if not isinstance(result, dict) or result.get("type") != "succeeded":
                if not isinstance(result, dict):
                    self.unreadable += 1
                return
            message = result.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            model = message.get("model") if isinstance(message, dict) else None
        counts: dict[str, int] = {}
        if not anthropic_api.merge_usage(counts, usage) or not isinstance(model, str) or not model:
            self.unreadable += 1
            return
        self.succeeded += 1
        geo = anthropic_api.inference_geo_of(usage)
        key = (model[:MAX_MODEL], geo)
        if isinstance(usage.get("iterations"), list) and usage["iterations"]:
            self._iterations_line(usage, counts, model, geo)
            return
        total = self._counts.get(key)
        if total is None:
            self._counts[key] = counts
        else:  # Anthropic's counts, summed as they are: normalised once, at the end
            for name, value in counts.items():
                total[name] = total.get(name, 0) + value

    def _iterations_line(
        self, usage: dict[str, Any], counts: dict[str, int], model: str, geo: str | None
    ) -> None:
        """A succeeded request whose ``usage.iterations`` say more than its top-level usage (a
        compaction's tokens, left out of it; an advisor's, billed at the advisor's rates; the hops of
        a server-side fallback chain, each at its own model's): each model's tokens counted under
        it, as a plain Messages call's rows are (``anthropic_api.read_iterations``)."""
        top, found = anthropic_api.read_iterations(usage, anthropic_api.usage_from_counts(counts), model)
        served = found.served_by if found is not None and found.served_by else model
        parts: list[tuple[str, Usage]] = [(served, top)] if top is not None else []
        if found is not None:
            parts += [(advisor or model, tokens) for advisor, tokens in found.advisors]
            parts += list(found.declined)
        for named, tokens in parts:
            key = (named[:MAX_MODEL], geo)
            known = self._usages.get(key)
            self._usages[key] = tokens if known is None else add_usages(known, tokens)

    def usage_by_model(self) -> dict[tuple[str, str | None], Usage]:
        """(model, inference geo) -> the summed usage of its succeeded requests (and of the
        advisors and declined hops their ``usage.iterations`` name)."""
        found = {key: anthropic_api.usage_from_counts(counts) for key, counts in self._counts.items()}
        for key, usage in self._usages.items():
            found[key] = add_usages(found[key], usage) if key in found else usage
        return found
