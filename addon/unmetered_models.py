"""Model-running requests the proxy does not meter (batch, fine-tuning...; video is metered:
addon.providers.videos): the model they
name, so that an environment restricting models can hold them to its allowlist (fail closed).

Pure functions over paths and bytes; no mitmproxy. The model is named in the path (Gemini and
Vertex AI's ``models/{model}:{method}``, Azure's deployment: each provider's ``request_model``
reads it) or by a JSON body's top-level ``model`` (Bedrock's asynchronous invocation:
``modelId``; a tuning job's ``baseModel``), or a multipart form's ``model`` field (openai-python
sends every Sora request as a form). A path that runs a default model when none is named
(``DEFAULT_MODELS``) is checked as naming it. Token counting, OpenAI's moderation, file
uploads and saving an OpenRouter preset run no billed model: never checked.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from urllib.parse import unquote

from addon.providers.openai_media import read_form
from addon.providers.values import bare_path, saves_openrouter_preset

FLAVOR = "unmetered"  # the api_flavor of the row of such a request refused
# Tuning jobs name their model baseModel (Vertex AI tuningJobs, Gemini tunedModels) or base_model.
MODEL_KEYS = ("model", "modelId", "baseModel", "base_model")
# Objects a body's model may be named in when its top level names none: an OpenAI eval run
# (POST /v1/evals/{id}/runs) samples from data_source.model.
NESTED_MODEL_OBJECTS = ("data_source",)
# (provider, bare path) -> the model the provider runs when the request names none:
# POST /v1/videos runs sora-2 (openai-python: "Defaults to sora-2").
DEFAULT_MODELS: dict[tuple[str, str], str] = {("openai", "/v1/videos"): "sora-2"}
MAX_MODEL_NAME = 200  # a longer "model" is no model's name: unreadable
# Free: token counting (Anthropic's /v1/messages/count_tokens, OpenAI's /v1/responses/input_tokens,
# Bedrock's count-tokens, Gemini and Vertex AI's :countTokens / :computeTokens, Claude on Vertex
# AI's count-tokens:rawPredict); Vertex AI's :fetchPredictOperation, the status poll of a
# long-running prediction (Veo's: google-genai's operations.get()).
_FREE_SUFFIXES = ("/count_tokens", "/count-tokens", "/input_tokens")
_FREE_METHOD = re.compile(r"(?::|%3[aA])(?:countTokens|computeTokens|fetchPredictOperation)$")
_FREE_MODEL = re.compile(r"/models/count-tokens(?::|%3[aA])")
_OPENAI_FREE_SUFFIXES = ("/moderations",)  # free on OpenAI's own API (Mistral bills its own)
# File uploads: their bytes are a file's, whatever it says (a JSON file naming a "model").
# Google's upload endpoints (/upload/v1beta/files), OpenAI's /v1/files and /v1/uploads/{id}/parts.
_UPLOAD_PREFIX = "/upload/"
_UPLOAD_SUFFIXES = ("/files", "/parts")
_JSON_OBJECT = re.compile(rb"\s*\{")  # anchored by match(): only the leading whitespace is read
_JSON_OBJECT_TEXT = re.compile(r"\s*\{")
_UTF8_BOM = b"\xef\xbb\xbf"
_NAMES_NO_MODEL = (
    "no model field in the form",
    "multipart body cut short or malformed: no model field found",
)
_BEDROCK_BIDIRECTIONAL = re.compile(r"/model/(?P<id>[^?#]+?)/invoke-with-bidirectional-stream")
_RESOURCE = "models/"  # "publishers/google/models/gemini-2.5-pro", "models/gemini-2.5-flash"
# What comes before a model's resource name: nothing ("models/..."), or a publisher. Anything
# else ("projects/p/locations/l/models/1234567890") is a Vertex AI Model Registry model (AutoML,
# custom-trained: no LLM an allowlist governs).
_PUBLISHER = re.compile(r"(?:^|/)publishers/[^/]+/$")


@dataclass(frozen=True, slots=True)
class NamedModel:
    """What a request body says of its model: ``model``, or ``problem`` when it cannot be read."""

    model: str | None = None
    problem: str | None = None


def runs_no_model(provider: str, path: str, priced_as: str | None = None) -> bool:
    """Does ``path`` (query allowed) run no billed model: token counting, OpenAI's moderation, a
    file upload, saving an OpenRouter preset (on OpenRouter, or a gateway ``priced_as`` it, which
    forwards its preset API as it is, under its base path too)?"""
    bare = bare_path(path)
    if bare.endswith(_FREE_SUFFIXES) or _FREE_METHOD.search(bare) or _FREE_MODEL.search(bare):
        return True
    if "openrouter" in (provider, priced_as) and saves_openrouter_preset(
        bare,
        under_base_path=provider != "openrouter",  # a gateway's: under its base path too
    ):
        return True
    if bare.startswith(_UPLOAD_PREFIX) or bare.endswith(_UPLOAD_SUFFIXES):
        return True
    return provider == "openai" and bare.endswith(_OPENAI_FREE_SUFFIXES)


def may_name_a_model(content: bytes | str) -> bool:
    """Cheap test: can this JSON text be an object naming a model (``model``, ``modelId``,
    ``baseModel``, ``base_model``)? A key spelled with escapes, ``"\\u006dodel"``, counts: JSON
    reads it as ``model``. Never decodes it."""
    if isinstance(content, str):
        return _JSON_OBJECT_TEXT.match(content) is not None and ("odel" in content or "\\u" in content)
    return _JSON_OBJECT.match(content) is not None and (b"odel" in content or b"\\u" in content)


def path_model(provider: str, path: str) -> str | None:
    """The model a path names that its provider's ``request_model`` does not read (it reads the
    metered operations only): Bedrock's ``/model/{id}/invoke-with-bidirectional-stream`` (Nova
    Sonic), URL-decoded."""
    if provider != "aws":
        return None
    m = _BEDROCK_BIDIRECTIONAL.fullmatch(bare_path(path))
    return unquote(m["id"]) if m is not None else None


def default_model(provider: str, path: str) -> str | None:
    """The model ``path`` (query allowed) runs when its request names none, if known."""
    return DEFAULT_MODELS.get((provider, bare_path(path)))


def resource_model(name: str) -> str | None:
    """A model named as a resource, ``publishers/google/models/gemini-2.5-pro``, by its own name;
    None for a Model Registry model (``projects/.../models/{id}``), which is no LLM."""
    if _RESOURCE not in name:
        return name
    head, model = name.rsplit(_RESOURCE, 1)
    return model if not head or _PUBLISHER.search(head) else None


def body_model(content: bytes) -> NamedModel:
    """The model a request body's JSON object names at its top level (``model``, else
    ``modelId``, ``baseModel``, ``base_model``), else in an object of ``NESTED_MODEL_OBJECTS``
    (an OpenAI eval run's ``data_source.model``, the model it samples). None when it names none
    (not JSON, no such member, ``null``, no string: Vertex AI's ``models:upload`` describes the
    model it registers in an object; a Model Registry model); a ``problem`` when that string is
    no model's name. Never raises."""
    text = _json_text(content)
    if text is None or not may_name_a_model(text):
        return NamedModel()
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return NamedModel()  # not JSON: the provider cannot read it either
    if not isinstance(obj, dict):
        return NamedModel()
    named = _object_model(obj)
    for member in NESTED_MODEL_OBJECTS:
        if named.model is not None or named.problem is not None:
            break
        if isinstance(nested := obj.get(member), dict):
            named = _object_model(nested)
    return named


def _object_model(obj: dict[str, object]) -> NamedModel:
    """The model one JSON object names by one of MODEL_KEYS (see ``body_model``)."""
    for key in MODEL_KEYS:
        value = obj.get(key)
        if not isinstance(value, str):
            continue
        if not 0 < len(value.strip()) <= MAX_MODEL_NAME:
            return NamedModel(problem=f"its {key} is not a model's name")
        return NamedModel(model=resource_model(value.strip()))
    return NamedModel()


def _json_text(content: bytes) -> bytes | str | None:
    """``content`` as ``json.loads(bytes)`` reads it (as servers do): UTF-8 bytes without their
    byte order mark, or UTF-16 / UTF-32 (told by its first bytes) decoded. None if undecodable."""
    encoding = json.detect_encoding(content)
    if encoding.startswith("utf-8"):
        return content[len(_UTF8_BOM) :] if content.startswith(_UTF8_BOM) else content
    try:
        return content.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None


def form_model(content: bytes, content_type: str) -> NamedModel:
    """The model a multipart/form-data body's ``model`` field names (``openai_media.read_form``:
    its files are never decoded). None when it has no such field; a ``problem`` when that field
    cannot be read (several, empty, a form cut short). Never raises."""
    fields = read_form(content, content_type)
    if fields.model is not None:
        return NamedModel(model=resource_model(fields.model))
    error = fields.error
    if error is None or error in _NAMES_NO_MODEL or b"model" not in content:
        return NamedModel()
    return NamedModel(problem=error)


def form_reader(content_type: str) -> functools.partial[NamedModel]:
    """``form_model`` for bodies of ``content_type`` (one argument: to run in a worker thread)."""
    return functools.partial(form_model, content_type=content_type)
