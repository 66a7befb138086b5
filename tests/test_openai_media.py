"""OpenAI image generation and audio transcription: parsers, form reading and prices (no proxy)."""

from __future__ import annotations

import base64
import itertools
import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.policies import parse_policies
from addon.pricing import Pricer, price_record
from addon.providers import DEFAULT_REGISTRY, openai_api, openai_media, registry_for
from addon.providers.openai_media import (
    FROM_DURATION,
    NO_IMAGE_USAGE,
    PLAIN_TEXT,
    StreamParser,
    flavor_for_path,
    image_tool_tokens,
    image_tool_usage,
    input_images,
    parse_response,
    read_form,
    reserved_image_tokens,
    reserved_input_image_tokens,
)
from addon.record import CallRecord
from addon.sse import SSEDecoder
from addon.token_estimate import estimate_usage
from addon.usage import ToolImages, Usage

WHEN = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
IMAGE_USAGE = {
    "input_tokens": 50,
    "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
    "output_tokens": 4160,
    "total_tokens": 4210,
}
TOKENS_USAGE = {
    "type": "tokens",
    "input_tokens": 120,
    "input_token_details": {"text_tokens": 20, "audio_tokens": 100},
    "output_tokens": 30,
    "total_tokens": 150,
}


def b64(size: int) -> str:
    """Random base64 text of about ``size`` characters (an image's, for parsing purposes)."""
    return base64.b64encode(os.urandom(size * 3 // 4)).decode()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def sse(obj: dict[str, Any], named: bool = True) -> bytes:
    head = f"event: {obj['type']}\n".encode() if named else b""
    return head + b"data: " + dumps(obj) + b"\n\n"


def image_stream(kind: str = "image_generation", image: int = 2000, usage: Any = IMAGE_USAGE) -> bytes:
    """Two partial images then the completed event, as OpenAI streams a gpt-image answer."""
    common = {"background": "opaque", "created_at": 1, "output_format": "png", "quality": "high"}
    parts = [
        sse({"type": f"{kind}.partial_image", "b64_json": b64(image), "partial_image_index": i, **common})
        for i in range(2)
    ]
    done = {"type": f"{kind}.completed", "b64_json": b64(image), "size": "1024x1024", **common}
    if usage is not None:
        done["usage"] = usage
    return b"".join([*parts, sse(done)])


def transcript_stream(usage: Any = TOKENS_USAGE, named: bool = False) -> bytes:
    deltas = [sse({"type": "transcript.text.delta", "delta": w}, named) for w in ("Hel", "lo ", "{there}")]
    done = {"type": "transcript.text.done", "text": "Hello {there}"}
    if usage is not None:
        done["usage"] = usage
    return b"".join([*deltas, sse(done, named)])


def feed(flavor: str, data: bytes, cuts: list[int]) -> StreamParser:
    """The stream read as the proxy reads it: SSE-framed, cut at ``cuts``."""
    parser, decoder = StreamParser(flavor), SSEDecoder()
    bounds = [0, *cuts, len(data)]
    for a, b in itertools.pairwise(bounds):
        for event in decoder.feed(data[a:b]):
            parser.feed(event)
    for event in decoder.close():
        parser.feed(event)
    return parser


def form(parts: list[tuple[str, bytes, str | None]], boundary: str = "b0undary-xyz") -> tuple[bytes, str]:
    """A multipart/form-data body (name, value, filename) and its content type."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        ctype = "Content-Type: application/octet-stream\r\n" if filename else ""
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{ctype}\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def calc(model: str, **counts: float) -> Decimal:
    """What genai-prices says OpenAI bills for these counts."""
    return calc_price(
        GPUsage(**counts), model, provider_id="openai", genai_request_timestamp=WHEN
    ).total_price


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "flavor"),
    [
        ("/v1/images/generations", "images"),
        ("/v1/images/edits", "images"),
        ("/v1/images/variations?x=1", "images"),
        ("/v1/audio/transcriptions", "transcription"),
        ("/v1/audio/translations/", "transcription"),
        ("/v1/audio/speech", None),  # TTS: binary audio, no usage, not metered
        ("/v1/images", None),
        ("/v1/chat/completions", "chat"),
    ],
)
def test_openai_meters_image_and_transcription_paths(path: str, flavor: str | None) -> None:
    openai = DEFAULT_REGISTRY.for_host("api.openai.com")
    assert openai is not None and openai.flavor_for_path(path) == flavor
    # other OpenAI-compatible providers keep their own paths: no images, no audio
    groq = DEFAULT_REGISTRY.for_host("api.groq.com")
    assert groq is not None and groq.flavor_for_path("/openai/v1/audio/transcriptions") is None
    assert flavor_for_path("/v1/responses") is None


def test_a_custom_openai_compatible_host_meters_them_too() -> None:
    """A gateway in front of OpenAI (``api: openai``) forwards these paths as OpenAI answers them."""
    policies = parse_policies('providers:\n  gateway: {url: "https://llm.internal.example", api: openai}\n')
    gateway = registry_for(policies).for_host("llm.internal.example", 443)
    assert gateway is not None and gateway.name == "gateway"
    assert gateway.flavor_for_path("/v1/audio/transcriptions") == "transcription"
    m = gateway.parse_response("transcription", b'{"text":"x","usage":{"type":"duration","seconds":3}}', {})
    assert m.usage == Usage(audio_seconds=3)


# ---------------------------------------------------------------- whole answers


def test_a_gpt_image_answer_counts_its_output_as_image_tokens() -> None:
    body = dumps({"created": 1, "data": [{"b64_json": b64(400)}], "usage": IMAGE_USAGE})
    m = parse_response("images", body)
    assert m.error is None and m.model is None
    assert m.usage == Usage(
        input_tokens=50, input_image_tokens=10, output_tokens=4160, output_image_tokens=4160
    )


def test_an_output_breakdown_splits_text_from_image_tokens() -> None:
    usage = {**IMAGE_USAGE, "output_tokens_details": {"text_tokens": 60, "image_tokens": 4100}}
    m = parse_response("images", dumps({"created": 1, "usage": usage}))
    assert m.usage == Usage(
        input_tokens=50, input_image_tokens=10, output_tokens=4160, output_image_tokens=4100
    )


def test_a_large_image_answer_is_metered_without_decoding_its_images(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = openai_media.loads
    monkeypatch.setattr(openai_media, "loads", lambda data: decoded.append(len(data)) or real(data))
    body = dumps(
        {"created": 1, "data": [{"b64_json": b64(3_000_000)} for _ in range(2)], "usage": IMAGE_USAGE}
    )
    m = parse_response("images", body)
    assert m.usage == Usage(
        input_tokens=50, input_image_tokens=10, output_tokens=4160, output_image_tokens=4160
    )
    assert len(body) > 6_000_000 and decoded and max(decoded) < 300  # only the usage member


@pytest.mark.parametrize("size", [100, 300_000])
def test_a_dalle_answer_has_no_usage_and_says_why(size: int) -> None:
    body = dumps({"created": 1, "data": [{"b64_json": b64(size), "revised_prompt": 'a "usage": {} b'}]})
    m = parse_response("images", body)
    assert (m.usage, m.error) == (None, NO_IMAGE_USAGE)


def test_a_usage_key_in_a_prompt_is_not_taken_for_usage() -> None:
    # A revised prompt ending in "usage, then a colon: the fast search gives up, the full parse decides.
    body = dumps({"created": 1, "data": [{"b64_json": b64(100_000), "revised_prompt": 'x "usage'}], "n": 1})
    body = body.replace(b'"n":1', b'"k":"usage\\": 7"')
    m = parse_response("images", body)
    assert (m.usage, m.error) == (None, NO_IMAGE_USAGE)


@pytest.mark.parametrize(
    ("body", "usage", "error"),
    [
        (
            b'{"text":"hi","usage":' + dumps(TOKENS_USAGE) + b"}",
            Usage(120, 0, 0, 30, input_audio_tokens=100),
            None,
        ),
        (b'{"text":"hi","usage":{"type":"duration","seconds":61}}', Usage(audio_seconds=61), None),
        (b'{"text":"hi","usage":{"type":"duration","seconds":12.5}}', Usage(audio_seconds=12.5), None),
        (b'{"text":"hi","duration":8.0,"segments":[]}', Usage(audio_seconds=8), FROM_DURATION),
        (b"Hello there.\n", None, PLAIN_TEXT),
        (b"1\n00:00:00,000 --> 00:00:01,000\nHello\n", None, PLAIN_TEXT),
        (b"WEBVTT\n\n00:00.000 --> 00:01.000\nHello\n", None, PLAIN_TEXT),
        (b"{curly} transcript\n", None, PLAIN_TEXT),
        (b'{"text":"hi"}', None, "no usage in the answer"),
        (b'{"text":"hi","usage":{"type":"duration","seconds":-3}}', None, "no usage in the answer"),
        (b'{"text":"hi","usage":{"type":"duration","seconds":true}}', None, "no usage in the answer"),
        (b"", None, "empty response body"),
    ],
)
def test_transcription_answers(body: bytes, usage: Usage | None, error: str | None) -> None:
    m = parse_response("transcription", body)
    assert (m.usage, m.error) == (usage, error)


def test_a_tokens_usage_caps_its_audio_part_at_the_input() -> None:
    usage = {
        "type": "tokens",
        "input_tokens": 5,
        "input_token_details": {"audio_tokens": 9},
        "output_tokens": 1,
    }
    m = parse_response("transcription", dumps({"text": "", "usage": usage}))
    assert m.usage == Usage(input_tokens=5, output_tokens=1, input_audio_tokens=5)


# ---------------------------------------------------------------- streams


@pytest.mark.parametrize("kind", ["image_generation", "image_edit"])
def test_an_image_stream_split_anywhere_meters_the_same(kind: str) -> None:
    data = image_stream(kind, image=300)
    expected = Usage(input_tokens=50, input_image_tokens=10, output_tokens=4160, output_image_tokens=4160)
    for cut in range(1, len(data)):
        parser = feed("images", data, [cut])
        assert parser.done and parser.result().usage == expected, cut
    assert feed("images", data, list(range(1, len(data)))).result().usage == expected  # byte by byte


def test_a_large_image_stream_never_decodes_a_partial_image(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = openai_media.loads
    monkeypatch.setattr(openai_media, "loads", lambda data: decoded.append(len(data)) or real(data))
    data = image_stream(image=2_000_000)
    parser = feed("images", data, list(range(16384, len(data), 16384)))
    assert parser.result().usage == Usage(50, 0, 0, 4160, input_image_tokens=10, output_image_tokens=4160)
    assert decoded and max(decoded) < 300


def test_an_image_stream_without_event_names_is_read_by_its_types() -> None:
    named = image_stream(image=100_000)
    nameless = b"".join(line + b"\n" for line in named.split(b"\n") if not line.startswith(b"event:"))[:-1]
    assert b"event:" not in nameless
    assert feed("images", nameless, [7, 70_000]).result().usage == feed("images", named, []).result().usage


def test_an_image_stream_cut_before_completed_has_no_usage_and_says_so() -> None:
    data = image_stream(image=500)
    cut = data[: data.index(b"event: image_generation.completed")]
    m = feed("images", cut, [33]).result()
    assert m.usage is None and m.error == "no usage in stream (it ended before its completed event)"


@pytest.mark.parametrize("named", [False, True])
def test_a_transcription_stream_split_anywhere_meters_the_same(named: bool) -> None:
    data = transcript_stream(named=named)
    for cut in range(1, len(data)):
        parser = feed("transcription", data, [cut])
        assert parser.done and parser.result().usage == Usage(120, 0, 0, 30, input_audio_tokens=100), cut


def test_a_stream_error_event_is_the_rows_error() -> None:
    deltas = transcript_stream(usage=None).rsplit(b"data: ", 1)[0]
    error = {"type": "error", "error": {"type": "server_error", "code": "x", "message": "boom"}}
    m = feed("transcription", deltas + sse(error, named=False), [5]).result()
    assert (m.usage, m.error) == (None, "x: boom")


@pytest.mark.parametrize(
    "event",
    [
        b"data: [DONE]\n\n",
        b"data: {\n\n",
        b": ping\n\n",
        b"event: image_generation.completed\ndata: nope\n\n",
    ],
)
def test_stream_garbage_never_raises_and_says_what_it_saw(event: bytes) -> None:
    m = feed("images", event * 3, [2]).result()
    assert m.usage is None and m.error is not None


# ---------------------------------------------------------------- multipart uploads


def test_the_model_field_is_found_after_a_large_file_without_decoding_it() -> None:
    image = os.urandom(3_000_000)
    body, ctype = form(
        [("image", image, "cat.png"), ("model", b"gpt-image-1", None), ("prompt", b"a hat", None)]
    )
    fields = read_form(body, ctype)
    assert (fields.model, fields.error) == ("gpt-image-1", None)
    assert fields.text_bytes == len(b"gpt-image-1") + len(b"a hat")


def test_a_file_that_contains_a_model_part_does_not_fool_the_reader() -> None:
    fake_part = b'\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n'
    body, ctype = form([("model", b"gpt-image-1-mini", None), ("image", fake_part * 3, "x.png")])
    assert read_form(body, ctype).model == "gpt-image-1-mini"
    body, ctype = form([("image", fake_part, "x.png")])
    assert read_form(body, ctype).model is None


@pytest.mark.parametrize(
    ("parts", "ctype_suffix", "model", "error"),
    [
        ([("model", b"whisper-1", None), ("stream", b"true", None)], "", "whisper-1", None),
        ([("model", b"whisper-1", None)], '; charset="x"', "whisper-1", None),
        ([("model", b"a", None), ("model", b"a", None)], "", "a", None),
        ([("model", b"a", None), ("model", b"b", None)], "", None, "2 different model fields in the form"),
        ([("prompt", b"x", None)], "", None, "no model field in the form"),
        ([("model", b"gpt-image-1", "model.txt")], "", None, "no model field in the form"),
        ([("model", b"", None)], "", None, "the form's model field is empty, too long or not UTF-8"),
        ([("model", b"\xff\xfe", None)], "", None, "the form's model field is empty, too long or not UTF-8"),
    ],
)
def test_form_fields(parts: list, ctype_suffix: str, model: str | None, error: str | None) -> None:
    body, ctype = form(parts)
    fields = read_form(body, ctype + ctype_suffix)
    assert fields.model == model
    assert fields.error is None if error is None else fields.error.startswith(error)


def test_a_quoted_boundary_a_cut_body_and_no_boundary() -> None:
    body, _ = form([("model", b"gpt-image-1", None)], boundary="a b:c")
    assert read_form(body, 'multipart/form-data; boundary="a b:c"').model == "gpt-image-1"
    cut, ctype = form([("image", b"x" * 100, "a.png"), ("model", b"gpt-image-1", None)])
    fields = read_form(cut[:120], ctype)
    assert (
        fields.model is None and fields.error == "multipart body cut short or malformed: no model field found"
    )
    assert read_form(body, "multipart/form-data").error.startswith("multipart body without a boundary")


def test_an_image_forms_reservation_fields_are_read_as_often_as_given() -> None:
    body, ctype = form(
        [
            ("n", b"3", None),
            ("image", b"n=9 quality=high" * 100, "n"),  # a file named like a field: not read
            ("quality", b" low ", None),
            ("quality", b"medium", None),
            ("size", b"1024x1024" * 10, None),  # longer than any size: not a value the API takes
            ("model", b"gpt-image-1", None),
        ]
    )
    fields = read_form(body, ctype)
    assert fields.fields == {"n": ("3",), "quality": ("low", "medium")}
    assert reserved_image_tokens("gpt-image-1", fields.fields) == 3 * 1584  # medium, the largest size


# ---------------------------------------------------------------- image reservations


@pytest.mark.parametrize(
    ("model", "request_fields", "tokens"),
    [
        ("gpt-image-1", {"quality": "high", "size": "1536x1024"}, 6208),
        ("gpt-image-1-mini-2025-10-06", {"quality": "medium", "size": "1024x1024"}, 1056),
        ("gpt-image-1", {"n": 0}, 6240),  # an n the API refuses: one image
        ("gpt-image-1", {"n": 50, "quality": "low", "size": "1024x1024"}, 10 * 272),  # at most 10
        ("gpt-image-1", {"n": True, "quality": ["low"], "size": 1024}, 10 * 6240),  # not values: the most
        ("gpt-image-1", {"n": "+3", "quality": "low", "size": "1024x1024"}, 10 * 272),  # a server may read 3
        ("gpt-image-1", {"n": 3.0, "quality": "low", "size": "1024x1024"}, 10 * 272),
        ("gpt-image-1", {"n": "0" * 5000 + "3", "quality": "low", "size": "1024x1024"}, 10 * 272),
        (
            "gpt-image-1.5",
            {"stream": True, "partial_images": "2.0", "quality": "low", "size": "1024x1024"},
            272 + 300,
        ),
        ("gpt-image-1", {"n": "2", "quality": "hd", "size": "1792x1024"}, 2 * 6240),
        (
            "gpt-image-1.5",
            {"stream": "true", "partial_images": "9", "quality": "low", "size": "1024x1024"},
            572,
        ),
        ("gpt-image-1.5", {"stream": "True", "partial_images": ("1", "2")}, 6240 + 200),
        ("gpt-image-1.5", {"stream": False, "partial_images": 3, "quality": "low", "size": "1024x1024"}, 272),
        ("gpt-image-1.5", {"stream": True, "partial_images": -5, "quality": "low", "size": "1024x1024"}, 272),
        (
            "gpt-image-1.5",
            {"n": ("1", "4"), "quality": ("low", "high"), "size": ("1024x1024",)},
            4 * 4160,
        ),
        (
            "gpt-image-1.5",
            {"n": ("1", "4", "x"), "quality": ("low", "high"), "size": ("1024x1024",)},
            10 * 4160,
        ),
        ("dall-e-3", {"quality": "hd"}, None),  # billed per image: genai-prices has no price
        ("gpt-image-2", {"quality": "low", "size": "1024x1024", "n": 2}, 2 * 6240),  # no table: the largest
        ("chatgpt-image-latest", {}, None),
        ("gpt-image-10", {}, 6240),
        (None, {}, None),
        ("gpt-image-1", None, None),
        ("gpt-image-1", [], None),
    ],
)
def test_reserved_image_tokens(model: str | None, request_fields: Any, tokens: int | None) -> None:
    assert reserved_image_tokens(model, request_fields) == tokens


# An input image of a GPT image model before gpt-image-2 (the images and vision guide, "GPT Image 1"):
# 65 + 129 per 512px tile once scaled to fit 2048x2048 and its shortest side to 512px, so 4 tiles
# (581 tokens) at most; input_fidelity high adds 4,160 (square) or 6,240 (other): 6,240 reserved.
@pytest.mark.parametrize(
    ("model", "request_fields", "images", "tokens"),
    [
        ("gpt-image-1", {}, 1, 581),
        ("gpt-image-1", {"input_fidelity": "low"}, 3, 3 * 581),
        ("gpt-image-1", {"input_fidelity": "high"}, 1, 581 + 6240),
        ("gpt-image-1.5-2025-12-16", {"input_fidelity": ("low", " High ")}, 2, 2 * (581 + 6240)),
        ("gpt-image-1-mini", {"input_fidelity": "high"}, 2, 2 * 581),  # mini does not take it
        ("gpt-image-1", {"input_fidelity": "high"}, 40, 16 * (581 + 6240)),  # 16 images at most
        ("gpt-image-1", {"input_fidelity": ["high"]}, 1, 581),  # not a value the API takes
        ("gpt-image-1", None, 2, 2 * 581),
        ("gpt-image-1", {}, 0, 0),  # a generation: no input image
        ("gpt-image-1", {}, -3, 0),
        ("gpt-image-1", {}, True, 0),
        ("gpt-image-2", {"input_fidelity": "high"}, 1, 0),  # another formula
        ("dall-e-2", {}, 1, 0),
        (None, {}, 1, 0),
    ],
)
def test_reserved_input_image_tokens(
    model: str | None, request_fields: Any, images: Any, tokens: int
) -> None:
    assert reserved_input_image_tokens(model, request_fields, images) == tokens


# A Responses request's image_generation tool: one image of its quality and size (the largest when auto
# or absent, or for a model without a table: the default, gpt-image-2.6-sunburst, when it names none),
# 100 per partial image, times max_tool_calls.
@pytest.mark.parametrize(
    ("body", "reserved"),
    [
        (
            {
                "tools": [
                    {
                        "type": "image_generation",
                        "model": "gpt-image-1",
                        "quality": "high",
                        "size": "1024x1024",
                    }
                ]
            },
            ("gpt-image-1", 4160),
        ),
        ({"tools": [{"type": "image_generation"}]}, ("gpt-image-2.6-sunburst", 6240)),
        ({"tools": [{"type": "image_generation", "model": " "}]}, ("gpt-image-2.6-sunburst", 6240)),
        (
            {
                "tools": [
                    {"type": "web_search"},
                    {
                        "type": "image_generation",
                        "model": "gpt-image-1-mini",
                        "quality": "low",
                        "size": "1024x1024",
                        "partial_images": 2,
                    },
                ],
                "max_tool_calls": 3,
            },
            ("gpt-image-1-mini", 3 * (272 + 200)),
        ),
        (
            {
                "tools": [{"type": "image_generation", "model": "gpt-image-1.5", "quality": "medium"}],
                "max_tool_calls": 0,
                "tool_choice": {"type": "image_generation"},
            },
            ("gpt-image-1.5", 1584),
        ),
        (
            {
                "tools": [
                    {
                        "type": "image_generation",
                        "model": "gpt-image-1",
                        "quality": "low",
                        "size": "1024x1024",
                    }
                ],
                "max_tool_calls": True,
            },
            ("gpt-image-1", 272),
        ),
        ({"tools": [{"type": "image_generation"}], "tool_choice": "none"}, None),
        ({"tools": [{"type": "image_generation", "model": "gpt-image-2"}]}, ("gpt-image-2", 6240)),
        (  # a model unknown here (an Azure deployment): the largest image at gpt-image-1's rate
            {"tools": [{"type": "image_generation", "model": "my-images", "quality": "low"}]},
            ("gpt-image-1", 6240),
        ),
        (
            {
                "tools": [
                    {
                        "type": "image_generation",
                        "model": "gpt-image-1",
                        "quality": "low",
                        "size": "1024x1024",
                    }
                ],
                "max_tool_calls": 10**9,
            },
            ("gpt-image-1", 10 * 272),
        ),
        ({"tools": [{"type": "function", "name": "image_generation"}]}, None),
        ({"tools": {"type": "image_generation"}}, None),
        ({"tools": ["image_generation", None, 3]}, None),
        ({"model": "gpt-4o-mini", "input": "hi"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_image_tool_tokens(body: Any, reserved: tuple[str, int] | None) -> None:
    assert image_tool_tokens(body) == reserved


def test_an_edits_input_images_are_counted_from_its_form_or_its_json() -> None:
    """A form's image files (``image`` or ``image[]``; not its mask, nor a text field so named),
    a JSON edit's ``images``; at least one for an edit, none for a generation."""
    body, ctype = form(
        [
            ("image[]", b"\x89PNG" * 100, "a.png"),
            ("image[]", b"\x89PNG" * 100, "b.png"),
            ("mask", b"\x89PNG" * 100, "mask.png"),
            ("image", b"not a file", None),
            ("input_fidelity", b"high", None),
            ("model", b"gpt-image-1", None),
        ]
    )
    fields = read_form(body, ctype)
    assert (fields.image_files, fields.fields["input_fidelity"]) == (2, ("high",))
    edits = "/v1/images/edits"
    assert input_images(edits, None, fields) == 2
    assert input_images(edits + "?x=1", None, read_form(*form([("model", b"gpt-image-1", None)]))) == 1
    images = [{"image_url": "https://example.com/a.png"}, {"file_id": "file-1"}, {"file_id": "file-2"}]
    assert input_images(edits, {"model": "gpt-image-1", "images": images}, None) == 3
    assert input_images(edits, {"image": "data:image/png;base64,iVBO"}, None) == 1
    assert input_images(edits, {"images": "nonsense"}, None) == 1
    assert input_images(edits, None, None) == 1
    assert input_images("/v1/images/generations", {"images": images}, None) == 0


# ---------------------------------------------------------------- prices and rows


@pytest.mark.parametrize(
    ("model", "counts"),
    [
        ("gpt-image-1", {"input_tokens": 50, "input_image_tokens": 10, "output_tokens": 4160}),
        ("gpt-image-1.5", {"input_tokens": 50, "input_image_tokens": 10, "output_tokens": 4160}),
        ("gpt-image-1-mini", {"input_tokens": 300, "input_image_tokens": 250, "output_tokens": 1056}),
    ],
)
def test_a_gpt_image_call_costs_what_openai_bills(model: str, counts: dict[str, int]) -> None:
    usage = {**IMAGE_USAGE, "input_tokens": counts["input_tokens"], "output_tokens": counts["output_tokens"]}
    usage["input_tokens_details"] = {"text_tokens": 0, "image_tokens": counts["input_image_tokens"]}
    m = parse_response("images", dumps({"created": 1, "usage": usage}))
    record = row("images", model, m.usage)
    price_record(record)
    # OpenAI bills every output token of these models as an image token
    billed = calc(model, **counts, output_image_tokens=counts["output_tokens"])
    assert record.price_status == "priced" and record.cost_usd == billed
    assert record.output_image_tokens == counts["output_tokens"]


def test_gpt_image_15_output_is_priced_at_its_image_rate() -> None:
    record = row(
        "images", "gpt-image-1.5", Usage(input_tokens=50, output_tokens=4160, output_image_tokens=4160)
    )
    price_record(record)
    # $5/M text input, $32/M image output (its text output rate is $10/M)
    assert record.cost_usd == Decimal(50) * 5 / 10**6 + Decimal(4160) * 32 / 10**6 == Decimal("0.13337")


@pytest.mark.parametrize("model", ["gpt-4o-transcribe", "gpt-4o-mini-transcribe"])
def test_a_token_billed_transcription_costs_what_openai_bills(model: str) -> None:
    record = row(
        "transcription", model, parse_response("transcription", dumps({"usage": TOKENS_USAGE})).usage
    )
    price_record(record)
    assert record.cost_usd == calc(model, input_tokens=120, input_audio_tokens=100, output_tokens=30)
    assert (record.input_tokens, record.input_audio_tokens, record.output_tokens) == (120, 100, 30)


@pytest.mark.parametrize("seconds", [61, 12.5])
def test_whisper_is_priced_per_second_at_genai_prices_hourly_rate(seconds: float) -> None:
    record = row("transcription", "whisper-1", Usage(audio_seconds=seconds))
    price_record(record)
    assert record.cost_usd == calc("whisper-1", audio_seconds=seconds)
    assert record.cost_usd == Decimal(str(seconds)) * Decimal("0.36") / 3600  # $0.006 a minute
    assert (record.audio_seconds, record.input_tokens, record.output_tokens) == (seconds, 0, 0)
    assert record.price_status == "priced" and record.usage_source == "reported"
    again = CallRecord.from_json(record.to_json())
    assert again.audio_seconds == seconds and again.usage == record.usage


def test_seconds_of_a_model_without_an_hourly_price_are_not_priced_zero() -> None:
    record = row("transcription", "gpt-4o-transcribe", Usage(audio_seconds=30))
    price_record(record)
    assert (record.cost_usd, record.price_status) == (None, "unknown_model")
    assert record.price_source == "genai-prices 0.2.3 (no price per hour of audio)"


def test_a_prices_entry_prices_tokens_never_seconds() -> None:
    pricer = Pricer(parse_policies('prices:\n  "whisper-*": {input: 1, output: 1}\n').prices)
    record = row("transcription", "whisper-1", Usage(audio_seconds=60))
    pricer(record)
    assert record.cost_usd == Decimal("0.006") and record.price_source == "genai-prices 0.2.3"


def test_a_prices_entry_with_an_hourly_price_prices_seconds() -> None:
    """A model billed by the second that genai-prices does not know (gpt-live-1.1 in 0.2.3) gets its
    price from ``usd_per_hour``; an entry with only that price leaves token calls to genai-prices."""
    pricer = Pricer(
        parse_policies(
            "prices:\n"
            '  "gpt-live-1.1": {usd_per_hour: 3.60}\n'
            '  "whisper-*": {input: 1, output: 2, usd_per_hour: 0.72}\n'
            '  "gpt-4o-mini-transcribe": {usd_per_hour: 0.5}\n'
        ).prices
    )
    live = row("live", "gpt-live-1.1", Usage(audio_seconds=12.5))
    pricer(live)
    assert (live.cost_usd, live.price_status) == (Decimal("12.5") * Decimal("3.60") / 3600, "priced")
    assert (live.price_source, live.price_model) == ("policies.yaml prices", "gpt-live-1.1")
    whisper = row("transcription", "whisper-1", Usage(audio_seconds=60))
    pricer(whisper)
    assert whisper.cost_usd == Decimal("0.012")  # the entry's $0.72 an hour, not genai-prices' $0.36
    tokens = row("transcription", "gpt-4o-mini-transcribe", Usage(input_tokens=1000, output_tokens=100))
    pricer(tokens)  # the entry has no token prices: genai-prices prices the tokens
    assert tokens.price_source == "genai-prices 0.2.3" and tokens.cost_usd is not None


@pytest.mark.parametrize(
    ("flavor", "model", "source"),
    [
        ("images", "dall-e-3", "genai-prices 0.2.3: dall-e-3 is billed per image, a price it does not have"),
        (
            "images",
            "gpt-image-1",
            "genai-prices 0.2.3: no usage reported (image calls are never estimated offline)",
        ),
        (
            "transcription",
            "whisper-1",
            "genai-prices 0.2.3: no usage reported (audio calls are never estimated offline)",
        ),
    ],
)
def test_a_media_call_without_usage_is_unpriced_and_says_why(flavor: str, model: str, source: str) -> None:
    for pricing in (price_record, Pricer()):
        record = row(flavor, model, None)
        pricing(record)
        assert (record.cost_usd, record.price_status, record.price_source) == (None, "no_usage", source)
        assert record.usage_source == "none" and record.input_tokens is None


@pytest.mark.parametrize("flavor", ["images", "transcription"])
def test_the_offline_estimate_never_counts_images_or_audio(flavor: str) -> None:
    with pytest.raises(ValueError, match="not estimated offline"):
        estimate_usage(flavor, {"model": "gpt-image-1", "prompt": "a cat " * 100}, None, "gpt-image-1")


def row(flavor: str, model: str, usage: Usage | None) -> CallRecord:
    record = CallRecord(
        id="x", ts=WHEN, session_id="s", environment="development", provider="openai",
        host="api.openai.com", path=f"/v1/{flavor}", api_flavor=flavor, model_sent=model, status_code=200,
    )  # fmt: skip
    record.set_usage(usage)
    return record


def test_a_line_that_only_starts_with_the_boundary_makes_the_form_unreadable() -> None:
    """RFC 2046: a delimiter line is the boundary then only whitespace (or ``--``, the last one).
    ``--BOUNDARYx`` inside a part is content to a server's parser (werkzeug's: the model below is
    gpt-image-1); the reader took it for a delimiter, so a form could show it an allowed model in
    a text field's content and hide the one upstream reads in the headers of a made-up "file".
    Parsers disagree on such lines (werkzeug takes one in the preamble as the first delimiter):
    no client's random boundary starts a line of content, so the model counts as unreadable."""
    b = "b0undary-xyz"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi\r\n'
        f'--{b}x\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1-mini\r\n'
        f'--{b}x\r\nContent-Disposition: form-data; name="f"; filename="a.png"\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n'
        f"--{b}--\r\n"
    ).encode()
    ctype = f"multipart/form-data; boundary={b}"
    fields = read_form(body, ctype)
    assert fields.model is None and fields.error is not None and "boundary" in fields.error
    preamble = f'x--{b}x\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1-mini\r\n'
    fields = read_form(preamble.encode() + body.replace(f"--{b}x".encode(), b"--other"), ctype)
    assert fields.model is None and fields.error is not None and "boundary" in fields.error
    # Transport padding after a delimiter is allowed, and a preamble without the boundary.
    padded, ctype = form([("model", b"whisper-1", None)])
    padded = b"preamble\r\n" + padded.replace(f"--{b}\r\n".encode(), f"--{b} \t\r\n".encode())
    assert read_form(padded, ctype).model == "whisper-1"


def test_a_part_with_two_content_dispositions_makes_the_form_unreadable() -> None:
    """Parsers differ on a part naming itself twice (werkzeug takes the first Content-Disposition,
    Starlette's the last): the reader took the first, so a form could hide a model field behind a
    first ``name="prompt"``, for a server reading the last, next to an allowed one."""
    b = "b0undary-xyz"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1-mini\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="prompt"\r\n'
        f'content-disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n'
        f"--{b}--\r\n"
    ).encode()
    fields = read_form(body, f"multipart/form-data; boundary={b}")
    assert fields.model is None and fields.error is not None and "Content-Disposition" in fields.error


def test_an_upload_walked_only_in_part_names_no_model() -> None:
    """A model field read before the walk stopped short (a part's headers past what it reads, a
    form with no closing delimiter) may not be the only one: a server reading on may take a later
    model field (a form's last value, as Starlette's does). The WebRTC offer's reader already says
    so; an image or transcription upload trusted the first."""
    boundary = "b0undary-xyz"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1-mini'.encode()
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n'.encode()
        + b"X-Pad: " + b"a" * 9000 + b"\r\n"
        + b"\r\nx"
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1'.encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip
    found = read_form(body, f"multipart/form-data; boundary={boundary}")
    assert found.model is None and found.error is not None and "cut short or malformed" in found.error
    whole, ctype = form([("model", b"gpt-image-1-mini", None), ("prompt", b"a cat", None)])
    cut = whole[: whole.rindex(b"--b0undary-xyz--")] + (
        b'--b0undary-xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1'
    )
    found = read_form(cut, ctype)
    assert found.model is None and found.error is not None and "cut short or malformed" in found.error


# --- the Responses image_generation tool's images: read from the answer, counted as OpenAI bills ---

TOOL_USAGE = {
    "image_gen": {
        "input_tokens": 49,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 49},
        "output_tokens": 272,
        "output_tokens_details": {"image_tokens": 272, "text_tokens": 0},
        "total_tokens": 321,
        "cached_tokens": 9,
    },
    "web_search": {"num_requests": 0},
}


def image_call(
    status: str = "completed", quality: Any = "high", size: Any = "1024x1024", **more: Any
) -> dict:
    return {
        "id": f"ig_{status}",
        "type": "image_generation_call",
        "status": status,
        "quality": quality,
        "size": size,
        "result": b64(300) if status == "completed" else None,
        **more,
    }


def tool_response(output: list[dict], **more: Any) -> dict[str, Any]:
    text = {"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text"}]}
    usage = {"input_tokens": 300, "output_tokens": 100}
    answer = {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-4o-mini"}
    return {**answer, "output": [*output, text], "usage": usage, **more}


def test_an_answers_image_calls_are_read_with_the_quality_and_size_each_used() -> None:
    """Each image_generation_call that wrote an image (completed, or carrying its image while it
    says "generating", as answers have been seen to) with the quality and size it says it used; a
    failed one (a moderation block) wrote none; the tool's model as the answer echoes its tools."""
    answer = tool_response(
        [
            image_call(),
            image_call("generating", "low", "1536x1024", result=b64(100)),
            image_call("failed", error={"code": "moderation_blocked"}),
        ],
        tools=[{"type": "web_search"}, {"type": "image_generation", "model": "gpt-image-1-mini"}],
    )
    found = openai_api.tool_images_of(answer)
    assert found == ToolImages(
        images=(("high", "1024x1024"), ("low", "1536x1024")), failed=1, model="gpt-image-1-mini"
    )
    assert found.billed
    metered = openai_api.parse_response("responses", dumps(answer))
    assert metered.tool_images == found and metered.usage == Usage(input_tokens=300, output_tokens=100)
    # tool_usage.image_gen (newer API versions): the tokens the tool was billed, as reported
    reported = openai_api.tool_images_of(tool_response([image_call()], tool_usage=TOOL_USAGE))
    assert reported is not None and reported.usage == Usage(
        input_tokens=49, output_tokens=272, output_image_tokens=272
    )
    assert reported.cached_tokens == 9 and reported.model is None
    # nothing of the tool: none; only failed calls: read, but nothing billed
    assert openai_api.tool_images_of(tool_response([])) is None
    assert openai_api.parse_response("chat", dumps({"choices": [], "usage": {}})).tool_images is None
    failed = openai_api.tool_images_of(tool_response([image_call("failed")]))
    assert failed is not None and failed.failed == 1 and not failed.billed


def sse_of(events: list[tuple[str, dict]], named: bool = True) -> bytes:
    return b"".join(
        (f"event: {kind}\n".encode() if named else b"") + b"data: " + dumps({"type": kind, **data}) + b"\n\n"
        for kind, data in events
    )


def image_tool_stream(partials: int, *, final: bool = True, size: int = 2000) -> list[tuple[str, dict]]:
    at = {"item_id": "ig_1", "output_index": 0}
    said = {"quality": "medium", "size": "1536x1024", "output_format": "png"}
    events: list[tuple[str, dict]] = [("response.created", {"response": {"model": "gpt-4o-mini"}})]
    events += [("response.image_generation_call.in_progress", at)]
    events += [
        ("response.image_generation_call.partial_image", {**at, "partial_image_b64": b64(size), **said})
        for _ in range(partials)
    ]
    events += [("response.image_generation_call.completed", at)]
    events += [("response.output_text.delta", {"delta": "Here it is."})]
    if final:
        answer = tool_response([image_call(quality="medium", size="1536x1024")])
        events += [("response.completed", {"response": answer})]
    return events


@pytest.mark.parametrize("named", [True, False])
def test_a_streams_partial_images_are_counted_and_never_decoded(
    named: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = sse_of(image_tool_stream(2, size=300_000), named)
    decoded: list[int] = []
    real = openai_api.loads
    monkeypatch.setattr(openai_api, "loads", lambda data: decoded.append(len(data)) or real(data))
    parser, decoder = openai_api.StreamParser("responses"), SSEDecoder()
    for piece in (body[i : i + 7919] for i in range(0, len(body), 7919)):  # split anywhere
        for event in decoder.feed(piece):
            parser.feed(event)
    found = parser.result().tool_images
    assert found == ToolImages(images=(("medium", "1536x1024"),), partial_images=2)
    assert max(decoded) < 300_000  # the partial images' events were never decoded


def test_a_stream_cut_before_its_final_event_counts_the_images_that_completed() -> None:
    """The client hung up after the image was written: its completion went by, the answer never will."""
    decoder = SSEDecoder()
    parser = openai_api.StreamParser("responses")
    for event in decoder.feed(sse_of(image_tool_stream(1, final=False))):
        parser.feed(event)
    found = parser.result().tool_images
    assert found == ToolImages(images=(("medium", "1536x1024"),), partial_images=1, from_events=True)


TOOL = openai_media.ImageTool(0, None, quality="low", size="auto")


@pytest.mark.parametrize(
    ("found", "model", "tool", "usage", "source", "note"),
    [
        (  # reported fewer output tokens than the table counts (a call's record skipped): the count
            ToolImages(
                images=(("high", "1024x1024"), ("low", "1024x1024")),
                usage=Usage(input_tokens=49, output_tokens=272, output_image_tokens=272),
            ),
            "gpt-image-1.5",
            None,
            Usage(input_tokens=49, output_tokens=4432, output_image_tokens=4432),
            "estimated",
            "the response's tool_usage.image_gen reports 272 output tokens, fewer than its images count "
            "(4432), as the API may skip a call's usage record: 2 image(s) (high 1024x1024, low 1024x1024) "
            "counted from OpenAI's per-image table; its input tokens as reported",
        ),
        (  # as many as the table or more: as reported
            ToolImages(
                images=(("low", "1024x1024"),),
                usage=Usage(input_tokens=49, output_tokens=300, output_image_tokens=280),
            ),
            "gpt-image-1-mini",
            None,
            Usage(input_tokens=49, output_tokens=300, output_image_tokens=280),
            "reported",
            "usage as the response's tool_usage.image_gen reports it",
        ),
        (  # reported, for a model without a table: taken as it is (the largest image is no bill)
            ToolImages(
                images=(("high", "1024x1024"),),
                usage=Usage(input_tokens=49, output_tokens=272, output_image_tokens=272),
                cached_tokens=9,
            ),
            "gpt-image-2",
            None,
            Usage(input_tokens=49, output_tokens=272, output_image_tokens=272),
            "reported",
            "usage as the response's tool_usage.image_gen reports it (9 cached input tokens counted at "
            "the uncached rate)",
        ),
        (  # the table: the quality and size each call used, 100 per partial image
            ToolImages(images=(("high", "1024x1024"), ("medium", "1536x1024")), partial_images=2),
            "gpt-image-1",
            TOOL,
            Usage(output_tokens=4160 + 1568 + 200, output_image_tokens=4160 + 1568 + 200),
            "estimated",
            "2 image(s), 2 partial image(s) (high 1024x1024, medium 1536x1024) counted from OpenAI's "
            "per-image table, 100 tokens per partial image; the response reports no tool_usage, so the "
            "image model's input tokens are not counted",
        ),
        (  # not said by the call: the tool's quality (low), then the largest size (1024x1536)
            ToolImages(images=((None, "auto"),), usage=Usage(), from_events=True),
            "gpt-image-1-mini-2025-10-06",
            TOOL,
            Usage(output_tokens=408, output_image_tokens=408),
            "estimated",
            "1 image(s) (low 1024x1536) counted from OpenAI's per-image table: a quality or size not "
            "said, the largest counted; the response reports no tool_usage, so the image model's input "
            "tokens are not counted; read from the stream's image events (it ended before its final event)",
        ),
        (  # a model without OpenAI's table: each image as the largest tabled one (before: $0, uncounted)
            ToolImages(images=(("high", "1024x1024"), ("low", None)), partial_images=1),
            "gpt-image-2",
            None,
            Usage(output_tokens=2 * 6240 + 100, output_image_tokens=2 * 6240 + 100),
            "estimated",
            "2 image(s), 1 partial image(s) of gpt-image-2, which OpenAI bills by a formula this proxy "
            "does not have, and the response reports no tool_usage: each image counted as the largest in "
            "OpenAI's table (6240 tokens) at gpt-image-2's rate, 100 tokens per partial image, as its "
            "reservation does: a floor, not its bill",
        ),
    ],
)
def test_the_tools_images_are_counted_as_openai_bills_them(
    found: ToolImages,
    model: str,
    tool: openai_media.ImageTool | None,
    usage: Usage | None,
    source: str,
    note: str,
) -> None:
    assert openai_media.image_tool_usage(found, model, tool) == (usage, source, note)


def test_a_requests_image_tools_and_their_rewrite() -> None:
    body = {
        "model": "gpt-4o-mini",
        "tools": [
            {"type": "function", "name": "f", "model": "x"},
            {"type": "image_generation", "model": " gpt-image-1 ", "quality": "high"},
            {"type": "image_generation"},
            {"type": "image_generation", "model": 42},
            {"type": "image_generation", "model": ""},
        ],
    }
    tools = openai_media.image_tools(body)
    assert [(t.index, t.model, t.readable, t.runs) for t in tools] == [
        (1, "gpt-image-1", True, "gpt-image-1"),
        (2, None, True, "gpt-image-2.6-sunburst"),  # none named: its default (openai SDK 3.57's types)
        (3, None, False, None),
        (4, None, False, None),
    ]
    assert tools[0].quality == "high" and openai_media.image_tools({"tools": "x"}) == ()
    # quality and size kept as short strings only: a waiting WebSocket response holds them (before,
    # any JSON, a megabyte list included, outside MAX_KEPT_BYTES)
    big = {"type": "image_generation", "quality": ["x" * 1000] * 1000, "size": "9" * 100_000}
    [kept] = openai_media.image_tools({"tools": [big]})
    assert (kept.quality, kept.size) == (None, None)
    # the SVG author model (tools[i].svg.model): read, or unreadable (not an object, not a name)
    svg = {"type": "image_generation", "output_format": "svg"}
    authors = openai_media.image_tools(
        {"tools": [svg | {"svg": {"model": " o3 "}}, svg | {"svg": []}, svg | {"svg": {"model": 1}}, svg]}
    )
    assert [(t.svg_model, t.svg_readable) for t in authors] == [
        ("o3", True),
        (None, False),
        (None, False),
        (None, True),
    ]
    authored = openai_media.with_image_tool_models(
        {"tools": [svg | {"svg": {"model": "o3", "x": 1}}]}, {}, {0: "o4"}
    )
    assert authored["tools"][0] == svg | {"svg": {"model": "o4", "x": 1}}
    with pytest.raises(ValueError):
        openai_media.with_image_tool_models({"tools": [svg]}, {}, {0: "o4"})
    rewritten = openai_media.with_image_tool_models(body, {1: "gpt-image-1-mini", 2: "gpt-image-1-mini"})
    assert rewritten["tools"][1] == {
        "type": "image_generation",
        "model": "gpt-image-1-mini",
        "quality": "high",
    }
    assert rewritten["tools"][2] == {"type": "image_generation", "model": "gpt-image-1-mini"}
    assert rewritten["tools"][0] == body["tools"][0] and body["tools"][2] == {"type": "image_generation"}
    with pytest.raises(ValueError):
        openai_media.with_image_tool_models(body, {0: "x", 9: "y"})


def test_a_tool_images_row_costs_what_openai_bills() -> None:
    """1 high 1024x1024 image of gpt-image-1 and 2 partial images: 4,360 image output tokens at $40
    per 1M, $0.1744; the row is priced at the tool's model, not the call's text model."""
    usage, _, _ = openai_media.image_tool_usage(
        ToolImages(images=(("high", "1024x1024"),), partial_images=2), "gpt-image-1", None
    )
    record = row("images", "gpt-image-1", usage)
    Pricer()(record)
    assert (record.cost_usd, record.price_model) == (Decimal("0.1744"), "gpt-image-1")


def test_a_tools_model_name_over_200_characters_is_unreadable() -> None:
    """Before, a tool's model or svg.model of any length was read (and kept while its response ran)."""
    long = "gpt-image-1" + "x" * 190
    tools = [
        {"type": "image_generation", "model": long, "svg": {"model": "o3" + "x" * 199}},
        {"type": "image_generation", "model": long[:200], "svg": {"model": "o3" + "x" * 198}},
    ]
    over, at_bound = openai_media.image_tools({"tools": tools})
    assert (over.model, over.readable, over.runs, over.svg_model, over.svg_readable) == (
        None,
        False,
        None,
        None,
        False,
    )
    assert (at_bound.model, at_bound.svg_model) == (long[:200], "o3" + "x" * 198)
    echoed = {"object": "response", "output": [image_call()], "tools": [tools[0]]}
    assert openai_api.tool_images_of(echoed).model is None  # type: ignore[union-attr]


def test_an_answers_svg_author_tokens_are_read_per_model() -> None:
    """Each image call's svg_usage (its SVG author model's tokens), summed per model; reasoning
    added to the output only when total_tokens says it was counted beside it. Before: not read."""
    usage = {
        "model": "o3",
        "input_tokens": 100,
        "output_tokens": 500,
        "reasoning_tokens": 300,
        "total_tokens": 600,
    }
    beside = {
        "model": "gpt-5",
        "input_tokens": 10,
        "output_tokens": 20,
        "reasoning_tokens": 5,
        "total_tokens": 35,
    }
    answer = tool_response(
        [
            image_call(svg_usage=usage),
            image_call(svg_usage=usage | {"input_tokens": 1}),
            image_call(svg_usage=beside),
            image_call(svg_usage={"model": 3, "input_tokens": 9}),
            image_call(svg_usage=[]),
        ]
    )
    found = openai_api.tool_images_of(answer)
    assert found is not None and found.svg == (
        ("o3", Usage(input_tokens=101, output_tokens=1000, reasoning_tokens=600)),
        ("gpt-5", Usage(input_tokens=10, output_tokens=25, reasoning_tokens=5)),
    )


def test_a_reported_zero_with_partial_images_only_never_raises() -> None:
    """No finished image, two partial ones, a model without a table, tool_usage reporting no output:
    its note divided by the number of images (0)."""
    found = ToolImages(images=(), partial_images=2, usage=Usage(input_tokens=5, output_tokens=0))
    usage, source, note = image_tool_usage(found, "gpt-image-2", None)
    assert (usage.output_tokens, source) == (200, "estimated") and "any output for its 0 image(s)" in note
