"""AWS Bedrock runtime (``bedrock-runtime.{region}.amazonaws.com``) responses -> normalised usage.

Pure functions over bytes; no mitmproxy. Four operations, the model id (URL-encoded:
a foundation model, an inference profile like ``us.anthropic...-v1:0``, or an ARN) in
the path: ``/model/{modelId}/converse``, ``/converse-stream``, ``/invoke``,
``/invoke-with-response-stream``.

Where the counts are:

- Converse: ``usage: {inputTokens, outputTokens, totalTokens, cacheReadInputTokens,
  cacheWriteInputTokens, cacheDetails}``. ``inputTokens`` EXCLUDES the cache reads and writes
  (AWS's prompt-caching guide: total input = inputTokens + cacheRead + cacheWrite), so the
  normalised input is the sum of the three. ``cacheDetails`` splits the writes by TTL
  (``[{ttl: "5m" | "1h", inputTokens}]``): the ``1h`` ones are priced higher.
- InvokeModel: the response headers ``X-Amzn-Bedrock-Input-Token-Count``,
  ``-Output-Token-Count``, ``-Cache-Read-Input-Token-Count``,
  ``-Cache-Write-Input-Token-Count`` (input again without the cache); else the model's
  native body (Anthropic, Nova, OpenAI, Llama, Titan shapes).
- ConverseStream: the ``metadata`` event's ``usage`` (same shape as Converse).
- InvokeModelWithResponseStream: ``chunk`` events carry base64 ``bytes`` of the model's
  native events; the last one adds ``amazon-bedrock-invocationMetrics``
  ``{inputTokenCount, outputTokenCount, cacheReadInputTokenCount, cacheWriteInputTokenCount}``.

An Anthropic model's InvokeModel body is the Messages body as it is, ``usage.iterations`` included
(in a stream, on the final ``message_delta``): read by ``anthropic_api.read_iterations``, as the
Anthropic API's are. AWS documents compaction there (InvokeModel only, not Converse), whose tokens
the top-level usage leaves out; advisor and fallback entries are read the same way if sent. When
the iterations say more than the top-level usage, the body's counts plus theirs stand, not the
headers' or the invocation metrics' (which AWS does not say include them).

No response names the model the way the request did (an Anthropic body says
``claude-3-5-haiku-20241022``, losing the ``us.``/``global.`` profile that sets the
price), so ``Metered.model`` is None: price with ``pricing_model(request_model(path))``.
Requests are SigV4-signed over path and body: never rewrite them (refuse instead).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from addon.aws_eventstream import EventMessage, EventStreamDecoder, EventStreamError
from addon.providers import anthropic_api, openai_api
from addon.providers.openai_api import TextCollector
from addon.providers.values import loads
from addon.providers.values import text as _str
from addon.providers.values import token_count as _int
from addon.usage import Iterations, Metered, Usage

FLAVORS: tuple[str, ...] = ("converse", "converse_stream", "invoke", "invoke_stream")
STREAM_FLAVORS = frozenset({"converse_stream", "invoke_stream"})
STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
KEY_HEADERS: tuple[str, ...] = ("authorization",)

_HOST = re.compile(
    r"^bedrock-runtime(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?$"
)
_OPERATIONS = {
    "converse": "converse",
    "converse-stream": "converse_stream",
    "invoke": "invoke",
    "invoke-with-response-stream": "invoke_stream",
}
_PATH = re.compile(
    r"^/model/(?P<id>[^?#]+?)/(?P<op>converse|converse-stream|invoke|invoke-with-response-stream)$"
)
_ARN_MODEL_KINDS = frozenset({"foundation-model", "inference-profile"})
_CONTEXT_SUFFIX = re.compile(r"^(?P<base>.+:\d+):[^:]+$")  # "...-v1:0:200k" -> "...-v1:0"
_BYTES = re.compile(rb'"bytes"\s*:\s*"([A-Za-z0-9+/=\s]*)"')
_METRICS = b'"amazon-bedrock-invocationMetrics"'
_SIGV4_CREDENTIAL = re.compile(r"Credential=([A-Z0-9]+)/")
_HEADER_COUNTS = (
    ("x-amzn-bedrock-input-token-count", "input"),
    ("x-amzn-bedrock-output-token-count", "output"),
    ("x-amzn-bedrock-cache-read-input-token-count", "cache_read"),
    ("x-amzn-bedrock-cache-write-input-token-count", "cache_write"),
)
_MAX_ERROR = 300


# --- hosts, paths, model ids ----------------------------------------------------------------


def is_bedrock_host(host: str) -> bool:
    """Is ``host`` (no port) a Bedrock runtime endpoint (any region, FIPS, China)?"""
    return _HOST.match(host.lower().rstrip(".")) is not None


def region_of(host: str) -> str | None:
    """The AWS region of a Bedrock runtime host."""
    m = _HOST.match(host.lower().rstrip("."))
    return m["region"] if m else None


def allow_host_pattern(port: int = 443) -> str:
    """An anchored ``allow_hosts`` regex for every Bedrock runtime host on ``port``."""
    return rf"^bedrock-runtime(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?:{port}$"


def _match(path: str) -> re.Match[str] | None:
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return _PATH.match(path)


def flavor_for_path(path: str) -> str | None:
    """``converse``, ``converse_stream``, ``invoke`` or ``invoke_stream``; None for anything else.

    ``count-tokens``, ``async-invoke``, guardrails and the bidirectional stream are not metered.
    """
    m = _match(path)
    return _OPERATIONS[m["op"]] if m else None


def request_model(path: str, body: Any = None) -> str | None:
    """The model id of the request path, URL-decoded (``us.anthropic.claude-...-v1:0``, or an ARN)."""
    m = _match(path)
    return unquote(m["id"]) if m else None


def pricing_model(model_id: str) -> str:
    """The name genai-prices knows a Bedrock model by, under provider ``aws``.

    genai-prices matches Bedrock ids as they are, geography prefixes included
    (``us.``/``eu.``/``apac.``/``global.``...: global profiles cost less than regional
    ones), so only an ARN is reduced to its model or profile id, and a context-window
    suffix (``...-v1:0:200k``) dropped. Application inference profiles and provisioned
    models are opaque ids: returned unchanged (they will not price).
    """
    model = unquote(model_id.strip())
    if model.startswith("arn:"):
        parts = model.split(":", 5)
        if len(parts) == 6:
            kind, _, rest = parts[5].partition("/")
            if kind in _ARN_MODEL_KINDS and rest:
                model = rest
    m = _CONTEXT_SUFFIX.match(model)
    return m["base"] if m and not model.startswith("arn:") else model


def credential_of(authorization: str) -> str | None:
    """The stable part of a Bedrock ``Authorization`` header, to fingerprint the key.

    SigV4 (``AWS4-HMAC-SHA256 Credential=AKIA.../date/region/bedrock/aws4_request, ...``)
    signs every request differently: only the access key id identifies the caller.
    A Bedrock API key (``Bearer ABSK...``) is the token itself.
    """
    m = _SIGV4_CREDENTIAL.search(authorization)
    if m:
        return m.group(1)
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


# --- usage ------------------------------------------------------------------------------------


def converse_usage(usage: Any) -> Usage | None:
    """Normalise a Converse / ConverseStream ``usage`` (or a Nova native one): input + cache = all input."""
    if not isinstance(usage, dict) or not ("inputTokens" in usage or "outputTokens" in usage):
        return None
    cache_read = _int(usage.get("cacheReadInputTokens", usage.get("cacheReadInputTokenCount")))
    cache_write = _int(usage.get("cacheWriteInputTokens", usage.get("cacheWriteInputTokenCount")))
    written, one_hour = _cache_details(usage.get("cacheDetails"))
    cache_write = cache_write or written
    return Usage(
        input_tokens=_int(usage.get("inputTokens")) + cache_read + cache_write,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=_int(usage.get("outputTokens")),
        cache_write_1h_tokens=min(one_hour, cache_write),
    )


def _cache_details(details: Any) -> tuple[int, int]:
    """(all cache writes, those kept one hour) of Converse's ``cacheDetails`` ([{ttl, inputTokens}])."""
    written = one_hour = 0
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict):
                count = max(0, _int(detail.get("inputTokens")))
                written += count
                one_hour += count if detail.get("ttl") == "1h" else 0
    return written, one_hour


def metrics_usage(metrics: Any) -> Usage | None:
    """Normalise ``amazon-bedrock-invocationMetrics`` (input count without the cache)."""
    if not isinstance(metrics, dict) or not ("inputTokenCount" in metrics or "outputTokenCount" in metrics):
        return None
    cache_read = _int(metrics.get("cacheReadInputTokenCount"))
    cache_write = _int(metrics.get("cacheWriteInputTokenCount"))
    return Usage(
        input_tokens=_int(metrics.get("inputTokenCount")) + cache_read + cache_write,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=_int(metrics.get("outputTokenCount")),
    )


def header_usage(headers: Mapping[str, str]) -> Usage | None:
    """Normalise InvokeModel's ``X-Amzn-Bedrock-*-Token-Count`` response headers, if present."""
    counts: dict[str, int] = {}
    for name, key in _HEADER_COUNTS:
        value = _header(headers, name)
        text = value.strip() if value is not None else ""
        # isascii: "²" is a digit to isdigit() but not to int(); 18 digits: no absurd numbers.
        if text.isascii() and text.isdigit() and len(text) <= 18:
            counts[key] = int(text)
    if "input" not in counts and "output" not in counts:
        return None
    cache_read = counts.get("cache_read", 0)
    cache_write = counts.get("cache_write", 0)
    return Usage(
        input_tokens=counts.get("input", 0) + cache_read + cache_write,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=counts.get("output", 0),
    )


def native_usage(obj: dict[str, Any]) -> Usage | None:
    """Usage from a model's native InvokeModel body: Anthropic, Nova, OpenAI, Llama or Titan shape."""
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if "input_tokens" in usage or "output_tokens" in usage:
            return anthropic_api.extract_usage(usage)
        if "inputTokens" in usage or "outputTokens" in usage:
            return converse_usage(usage)
        found = openai_api.extract_usage(usage)
        if found is not None:
            return found
    if "prompt_token_count" in obj or "generation_token_count" in obj:  # Llama
        return Usage(
            input_tokens=_int(obj.get("prompt_token_count")),
            output_tokens=_int(obj.get("generation_token_count")),
        )
    if "inputTextTokenCount" in obj:  # Titan text / embeddings
        results = obj.get("results")
        output = (
            sum(_int(r.get("tokenCount")) for r in results if isinstance(r, dict))
            if isinstance(results, list)
            else 0
        )
        return Usage(input_tokens=_int(obj.get("inputTextTokenCount")), output_tokens=output)
    return None


# --- complete bodies --------------------------------------------------------------------------


def parse_response(flavor: str, body: bytes, headers: Mapping[str, str] | None = None) -> Metered:
    """Usage and error of a complete, content-decoded body and its headers. Never raises.

    A stream flavor's body read whole (binary event stream) is parsed as the stream it is.
    """
    headers = headers or {}
    stripped = body.lstrip()
    if flavor in STREAM_FLAVORS and stripped[:1] != b"{" and body:
        return _parse_stream_body(flavor, body)
    usage = header_usage(headers) if flavor in ("invoke", "invoke_stream") else None
    if not stripped:
        if usage is not None:
            return Metered(usage=usage)
        return Metered(error=_error_from_headers(headers) or "empty response body")
    obj = loads(body)
    if not isinstance(obj, dict):
        if usage is not None:
            return Metered(usage=usage)
        return Metered(
            error="response body is not JSON" if obj is None else "response body is not a JSON object"
        )
    iterations = None
    if flavor in ("invoke", "invoke_stream"):
        with_iterations, iterations = anthropic_iterations(obj.get("usage"), None, _str(obj.get("model")))
        if iterations is not None:
            usage = with_iterations  # the body's breakdown beats the headers' counts
    if usage is None:
        usage = converse_usage(obj.get("usage")) if flavor.startswith("converse") else native_usage(obj)
    error = None
    if usage is None:
        error = _error_of(obj, headers) or "no usage in response"
    text = None if usage is not None else "".join(_body_texts(obj)) or None
    tier = service_tier_of(obj) or (_header(headers, "x-amzn-bedrock-service-tier") or "").lower() or None
    return Metered(usage=usage, error=error, output_text=text, service_tier=tier, iterations=iterations)


def anthropic_iterations(
    usage: Any, counts: dict[str, int] | None, model: str | None
) -> tuple[Usage | None, Iterations | None]:
    """An Anthropic ``usage`` object's ``usage.iterations`` read (``anthropic_api.read_iterations``):
    the call's usage with them, and what they say besides; (None, None) when there are none, or
    they say nothing more than the top-level usage. ``counts``: the stream's merged Anthropic counts
    (else the top-level usage is read from ``usage``). Never raises."""
    if not isinstance(usage, dict) or not isinstance(usage.get("iterations"), list):
        return None, None
    if counts is None and not ("input_tokens" in usage or "output_tokens" in usage):
        return None, None  # not Anthropic's shape
    if counts is not None:
        top: Usage | None = anthropic_api.usage_from_counts(counts)
    else:
        top = anthropic_api.extract_usage(usage)
    found, iterations = anthropic_api.read_iterations(usage, top, model)
    return (found, iterations) if iterations is not None else (None, None)


def service_tier_of(obj: dict[str, Any]) -> str | None:
    """Converse's ``serviceTier.type`` (priority, default, flex, reserved): the tier that served it."""
    tier = obj.get("serviceTier")
    kind = tier.get("type") if isinstance(tier, dict) else None
    return kind.lower() if isinstance(kind, str) and kind else None


def _parse_stream_body(flavor: str, body: bytes) -> Metered:
    decoder = EventStreamDecoder()
    parser = StreamParser(flavor)
    try:
        messages = decoder.feed(body)
    except EventStreamError as e:
        for message in e.messages:
            parser.feed(message)
        result = parser.result()
        if result.usage is None:
            result.error = str(e)
        return result
    for message in messages:
        parser.feed(message)
    return parser.result()


def _error_of(obj: dict[str, Any], headers: Mapping[str, str]) -> str | None:
    """An AWS JSON error (``{"message"}`` + ``x-amzn-ErrorType``), or a native model error."""
    message = obj.get("message") or obj.get("Message")
    kind = _error_type(headers)
    if isinstance(message, str) and message:
        return (f"{kind}: {message}" if kind else message)[:_MAX_ERROR]
    err = obj.get("error")
    if err:
        return anthropic_api.error_message(err)
    return kind


def _error_from_headers(headers: Mapping[str, str]) -> str | None:
    return _error_type(headers)


def _error_type(headers: Mapping[str, str]) -> str | None:
    """``ValidationException`` from ``x-amzn-ErrorType: ValidationException:http://...``."""
    value = _header(headers, "x-amzn-errortype")
    return (value.split(":", 1)[0].strip() or None) if value else None


def _body_texts(obj: dict[str, Any]) -> list[str]:
    """The completion text of a Converse body or a native InvokeModel body."""
    output = obj.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    if isinstance(message, dict):  # Converse (and Nova native)
        return _converse_content_texts(message.get("content"))
    return _native_texts(obj)


def _converse_content_texts(content: Any) -> list[str]:
    out: list[str] = []
    if not isinstance(content, list):
        return out
    for block in content:
        if not isinstance(block, dict):
            continue
        if isinstance(text := block.get("text"), str) and text:
            out.append(text)
        if text := _text_at(block, "reasoningContent", "reasoningText", "text"):
            out.append(text)
        tool = block.get("toolUse")
        if isinstance(tool, dict) and "input" in tool:
            out.append(json.dumps(tool["input"], ensure_ascii=False))
    return out


def _native_texts(obj: dict[str, Any]) -> list[str]:
    """Text of a native body or native stream event (Anthropic, OpenAI, Llama, Titan, Mistral, Nova,
    Cohere: Command R's ``text``, Command's ``generations``, every one of them)."""
    out: list[str] = []
    kind = obj.get("type")
    if kind == "message":  # Anthropic body
        out.extend(anthropic_api._content_texts(obj.get("content")))
    elif kind == "content_block_delta":  # Anthropic stream
        delta = obj.get("delta")
        if isinstance(delta, dict):
            out.extend(
                v for k in ("text", "thinking", "partial_json") if isinstance(v := delta.get(k), str) and v
            )
    out.extend(openai_api._choice_texts(obj.get("choices")))
    for key in ("generation", "outputText", "completion", "text"):  # Llama, Titan, Claude v2, Cohere
        if isinstance(value := obj.get(key), str) and value:
            out.append(value)
    for key in ("results", "outputs", "generations"):  # Titan, Mistral, Cohere Command (each one)
        items = obj.get(key)
        if isinstance(items, list):
            out.extend(t for item in items if (t := _text_at(item, "outputText") or _text_at(item, "text")))
    if text := _text_at(obj, "contentBlockDelta", "delta", "text"):  # Nova native stream
        out.append(text)
    return out


def _text_at(obj: Any, *keys: str) -> str | None:
    """The non-empty string at ``obj[k1][k2]...``, or None."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj if isinstance(obj, str) and obj else None


# --- streams ----------------------------------------------------------------------------------


class StreamParser:
    """Feed the decoded event-stream messages of one ConverseStream / InvokeModelWithResponseStream.

    ConverseStream: only the ``metadata`` event (one per stream) is JSON-decoded.
    InvokeModelWithResponseStream: each ``chunk``'s base64 is decoded and substring-tested;
    only inner events carrying usage (invocation metrics, Anthropic ``message_start`` /
    ``message_delta``) are JSON-decoded. Text is decoded only when no usage came.
    """

    __slots__ = (
        "_bad",
        "_counts",
        "_done",
        "_error",
        "_final",
        "_iterations",
        "_metrics",
        "_model",
        "_native",
        "_seen",
        "_text",
        "_tier",
        "_usage",
        "flavor",
    )

    def __init__(self, flavor: str = "converse_stream") -> None:
        self.flavor = flavor
        self._usage: Usage | None = None  # from ConverseStream's metadata
        self._tier: str | None = None  # the service tier its metadata names
        self._metrics: Usage | None = None  # from amazon-bedrock-invocationMetrics
        self._counts: dict[str, int] = {}  # Anthropic native counts (a fallback)
        self._seen = False
        self._final = False  # Anthropic's final message_delta or message_stop: the output count is the call's
        self._native: Usage | None = None  # another native event's usage (Nova, OpenAI shapes; a fallback)
        self._iterations: Any = None  # the last Anthropic usage with usage.iterations (final message_delta)
        self._model: str | None = None  # the model Anthropic's message_start echoes
        self._error: str | None = None
        self._done = False
        self._bad = 0
        self._text = TextCollector(_event_texts)

    @property
    def done(self) -> bool:
        """The final event came (ConverseStream ``metadata``, or the invocation metrics)."""
        return self._done

    def feed(self, message: EventMessage) -> None:
        """Take one decoded event-stream message."""
        kind = message.message_type
        if kind in ("exception", "error"):
            self._error = _stream_error(message)
            return
        event = message.event_type
        payload = message.payload
        if event == "chunk":
            self._feed_chunk(payload)
        elif event == "contentBlockDelta":
            self._text.add(payload)
        elif event == "metadata":
            obj = loads(payload)
            if not isinstance(obj, dict):
                self._bad += 1
                return
            usage = converse_usage(obj.get("usage"))
            if usage is not None:
                self._usage = usage
            self._tier = service_tier_of(obj) or self._tier
            self._done = True

    def result(self) -> Metered:
        """Usage seen so far (None if none) and an error if any; the text only when no usage, or
        when the output count is Anthropic's message_start placeholder or a running count (before
        the final ``message_delta`` or ``message_stop``: ``output_partial``)."""
        usage = self._usage or self._metrics
        partial = False
        with_iterations, iterations = (
            anthropic_iterations(self._iterations, self._counts, self._model) if self._seen else (None, None)
        )
        if iterations is not None:  # the iterations say more than the metrics: the counts and theirs
            usage, partial = with_iterations, not self._final
        if usage is None and self._seen:
            usage = anthropic_api.usage_from_counts(self._counts)
            partial = not self._final
        if usage is None:
            usage = self._native
        error = self._error
        if usage is None and error is None:
            error = (
                f"no usage in stream ({self._bad} event(s) not JSON)" if self._bad else "no usage in stream"
            )
        text = self._text.text() if usage is None or partial else None
        return Metered(
            usage=usage,
            error=error,
            output_text=text,
            service_tier=self._tier,
            output_partial=partial,
            iterations=iterations,
        )

    def _feed_chunk(self, payload: bytes) -> None:
        m = _BYTES.search(payload)
        if m is None:
            self._bad += 1
            return
        try:
            inner = base64.b64decode(m.group(1))
        except (binascii.Error, ValueError):
            self._bad += 1
            return
        has_metrics = _METRICS in inner
        if not (has_metrics or b'"usage"' in inner or b'"error"' in inner):
            if b'"message_stop"' in inner and _event_type(inner) == "message_stop":
                self._final = True  # Anthropic's turn ended: the last message_delta's count stands
                return
            self._text.add(inner)
            return
        obj = loads(inner)
        if not isinstance(obj, dict):
            self._bad += 1
            return
        if has_metrics:
            usage = metrics_usage(obj.get("amazon-bedrock-invocationMetrics"))
            if usage is not None:
                self._metrics = usage
                self._done = True
        kind = obj.get("type")
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            self._seen |= anthropic_api.merge_usage(self._counts, obj["message"].get("usage"))
            self._model = _str(obj["message"].get("model")) or self._model
        elif kind == "message_delta":
            taken = anthropic_api.merge_usage(self._counts, obj.get("usage"))
            self._seen |= taken
            if taken and isinstance(obj["usage"].get("iterations"), list):
                self._iterations = obj["usage"]  # the whole list each time: the last one stands
            self._final |= taken and anthropic_api.is_final_delta(obj)
        elif kind == "message_stop":
            self._final = True
        elif kind == "error":
            self._error = anthropic_api.error_message(obj.get("error") or obj) or "error event"
        else:
            metadata = obj.get("metadata")  # Nova's native stream ends with metadata.usage
            native = native_usage(metadata if isinstance(metadata, dict) else obj)
            if native is not None:
                self._native = native
            self._text.add(inner)


def _event_type(data: bytes) -> str | None:
    """The ``type`` of a JSON event (None if not a JSON object)."""
    obj = loads(data)
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


def _stream_error(message: EventMessage) -> str:
    """``throttlingException: Too many requests`` from an exception / error message."""
    headers = message.headers
    kind = headers.get(":exception-type") or headers.get(":error-code")
    text = headers.get(":error-message")
    if not isinstance(text, str):
        obj = loads(message.payload)
        text = obj.get("message") or obj.get("Message") if isinstance(obj, dict) else None
    kind = kind if isinstance(kind, str) and kind else None
    text = text if isinstance(text, str) and text else None
    return (f"{kind}: {text}" if kind and text else kind or text or "exception event")[:_MAX_ERROR]


def _event_texts(data: bytes) -> list[str]:
    """Text of a ConverseStream ``contentBlockDelta`` payload or a native stream event."""
    obj = loads(data)
    if not isinstance(obj, dict):
        return []
    delta = obj.get("delta")
    if "contentBlockIndex" in obj and isinstance(delta, dict):  # ConverseStream
        out = [t] if isinstance(t := delta.get("text"), str) and t else []
        tool = delta.get("toolUse")
        if isinstance(tool, dict) and isinstance(t := tool.get("input"), str) and t:
            out.append(t)
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(t := reasoning.get("text"), str) and t:
            out.append(t)
        return out
    return _native_texts(obj)


# --- helpers ----------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by lower-case name from any mapping (mitmproxy's Headers are case-insensitive)."""
    value = headers.get(name)
    if value is None:
        for key, v in headers.items():
            if key.lower() == name:
                return v
    return value
