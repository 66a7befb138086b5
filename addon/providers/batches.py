"""Batch jobs -> their models and their usage: OpenAI's Batch API.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from addon.providers.openai_api import error_message, extract_usage
from addon.providers.openai_media import form_parts, is_form
from addon.providers.values import loads
from addon.providers.values import text as _str
from addon.usage import Metered

FLAVOR = "batch"
# The service tier of a batch's rows: priced at the batch price (genai-prices' own, else half).
TIER = "batch"
# A batch not ended yet: its usage, if any, is a running total.
RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
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

    def output_tokens(self, per_uncapped_line: int) -> int:
        """What the batch may write at most: its lines' caps, ``per_uncapped_line`` for the others."""
        return self.output_caps + self.uncapped * per_uncapped_line

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
        return cls(tuple(models), *counts, error=error if isinstance(error, str) else None)


def flavor_for_path(path: str) -> str | None:
    """``batch`` for ``POST .../v1/batches`` (query allowed), else None."""
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return FLAVOR if path.endswith("/v1/batches") else None


def is_upload_path(path: str) -> bool:
    """``POST .../v1/files``: a file upload (a batch's input file among others)."""
    return path.split("?", 1)[0].split("#", 1)[0].rstrip("/").endswith("/v1/files")


def _cap(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    for name in _CAP_NAMES:
        value = body.get(name)
        if type(value) is int and value > 0:
            return value
    return None


def scan_input(data: bytes, start: int = 0, end: int | None = None) -> BatchInput:
    """The models, requests and output caps of a JSONL input file in ``data[start:end]``. Never raises.

    A line's model is its ``body.model``. One key spelled ``model`` with a plain string value is
    taken as it is; anything else (none, several: a tool's own ``model``, escapes) is decoded.
    """
    end = len(data) if end is None else max(0, min(end, len(data)))
    start = max(0, min(start, end))
    models: dict[str, None] = {}
    lines = caps = uncapped = unreadable = 0
    error = None
    pos = start
    while pos < end:
        newline = data.find(b"\n", pos, end)
        stop = end if newline < 0 else newline
        a, pos = pos, stop + 1
        if _NOT_BLANK.search(data, a, stop) is None:
            continue
        lines += 1
        keys = 0
        for _ in _MODEL_KEY.finditer(data, a, stop):
            keys += 1
            if keys > 1:
                break
        plain = _PLAIN_MODEL.search(data, a, stop) if keys == 1 else None
        cap = None
        if plain is not None:
            model: Any = plain.group(1).decode("utf-8", "replace")
            found = _OUTPUT_CAP.search(data, a, stop)
            cap = int(found.group(1)) if found is not None else None
        else:
            obj = loads(data[a:stop])
            body = obj.get("body") if isinstance(obj, dict) else None
            model = body.get("model") if isinstance(body, dict) else None
            cap = _cap(body)
        if cap:
            caps += cap
        else:
            uncapped += 1
        if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL or "\ufffd" in model:
            unreadable += 1
        elif model not in models:
            if len(models) >= MAX_MODELS:
                unreadable += 1
                error = f"more than {MAX_MODELS} different models in the file"
            else:
                models[model] = None
    return BatchInput(
        models=tuple(sorted(models)),
        lines=lines,
        size=end - start,
        output_caps=caps,
        uncapped=uncapped,
        unreadable=unreadable,
        error=error,
    )


def read_upload(body: bytes, content_type: str) -> BatchInput | None:
    """A batch's input file uploaded as multipart/form-data (``purpose=batch``), read for its models;
    None for any other upload. Never raises."""
    if not is_form(content_type):
        return None
    walk = form_parts(body, content_type)
    purpose = None
    upload = None
    for part in walk.parts:
        if part.name == b"purpose" and not part.is_file and part.end - part.start <= 64:
            purpose = body[part.start : part.end].strip()
        elif part.name == b"file" and upload is None:
            upload = part
    if purpose != b"batch":
        return None
    if upload is None:
        return BatchInput(error="a batch upload without its file (cut short or malformed)")
    return scan_input(body, upload.start, upload.end)


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
