"""The addon's hooks on image and transcription calls (mitmproxy.test.taddons and tflow, no network)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from mitmproxy import http
from test_meter import feed, make_flow, run_request, stream_response
from test_openai_media import IMAGE_USAGE, TOKENS_USAGE, form, image_stream

import addon.meter
from addon.budgets import Scope
from addon.meter import INLINE_PARSE_LIMIT, Meter
from addon.policies import parse_policies
from addon.providers.openai_media import FORM_NOT_REWRITTEN, NO_IMAGE_USAGE, PLAIN_TEXT

GENERATIONS = "https://api.openai.com/v1/images/generations"
RESPONSES = "https://api.openai.com/v1/responses"
EDITS = "https://api.openai.com/v1/images/edits"
TRANSCRIPTIONS = "https://api.openai.com/v1/audio/transcriptions"
RESTRICTED = """
environments:
  development:
    models:
      allow: [gpt-image-1-mini, gpt-4o-mini-transcribe, whisper-1]
      downgrade: {gpt-image-1: gpt-image-1-mini, gpt-4o-transcribe: gpt-4o-mini-transcribe}
"""


DEVELOPMENT = Scope("environment", "development")
BUDGET = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"


def image_bill(model: str, input_tokens: int, image_tokens: int, input_image_tokens: int = 0) -> Decimal:
    """What genai-prices says a GPT image call costs, its usage read as OpenAI reports it (every
    output token an image token; ``input_image_tokens`` a part of ``input_tokens``)."""
    usage = GPUsage(
        input_tokens=input_tokens,
        input_image_tokens=input_image_tokens,
        output_tokens=image_tokens,
        output_image_tokens=image_tokens,
    )
    return calc_price(usage, model, provider_id="openai").total_price


def upload(url: str, parts: list[tuple[str, bytes, str | None]]) -> http.HTTPFlow:
    body, ctype = form(parts)
    return make_flow(url, body, headers={"content-type": ctype})


async def answer(meter: Meter, flow: http.HTTPFlow, body: bytes, ctype: str = "application/json") -> None:
    flow.response = http.Response.make(200, body, {"content-type": ctype})
    meter.responseheaders(flow)
    await meter.response(flow)


async def test_an_image_generation_is_metered_with_its_image_tokens(meter: Meter) -> None:
    flow = make_flow(GENERATIONS, {"model": "gpt-image-1", "prompt": "a cat", "quality": "high"})
    await run_request(meter, flow)
    assert flow.response is None  # sent upstream
    await answer(
        meter, flow, json.dumps({"created": 1, "data": [{"b64_json": "iVBO"}], "usage": IMAGE_USAGE}).encode()
    )
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.provider, rec.api_flavor, rec.path) == ("openai", "images", "/v1/images/generations")
    assert rec.model_requested == rec.model_sent == "gpt-image-1" and rec.model_reported is None
    assert (rec.input_tokens, rec.input_image_tokens, rec.output_tokens, rec.output_image_tokens) == (
        50,
        10,
        4160,
        4160,
    )
    assert rec.usage_source == "reported" and rec.error is None and rec.action == "allowed"


async def test_an_upload_is_metered_by_its_form_model_without_an_estimate(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 100, period: day}\n"))
    image = os.urandom(INLINE_PARSE_LIMIT * 4)  # its form is read off the event loop
    threads: list[Any] = []
    real = asyncio.to_thread
    monkeypatch.setattr(addon.meter.asyncio, "to_thread", lambda f, *a: threads.append(f) or real(f, *a))
    flow = upload(
        EDITS, [("image", image, "a.png"), ("prompt", b"a hat", None), ("model", b"gpt-image-1", None)]
    )
    await run_request(meter, flow)
    monkeypatch.undo()
    assert flow.response is None
    assert [f.func.__name__ for f in threads if isinstance(f, functools.partial)].count("read_form") == 1
    # its budget reservation counts the text fields (bytes / 4 tokens), not the image's bytes, its
    # input image at the most one can cost (581 image tokens), and the image it asks for: no quality
    # or size given, so the largest (high, 1024x1536: 6240 tokens)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == image_bill(
        "gpt-image-1", len(b"a hatgpt-image-1") // 4 + 581, 6240, 581
    )
    await answer(meter, flow, b'{"created":1}')
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert rec.model_requested == rec.model_sent == "gpt-image-1" and rec.api_flavor == "images"
    assert rec.usage_source == "none" and rec.input_tokens is None and rec.error == NO_IMAGE_USAGE


async def test_a_disallowed_model_on_an_upload_is_refused_saying_why(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    for url, model in ((EDITS, b"gpt-image-1"), (TRANSCRIPTIONS, b"gpt-4o-transcribe")):
        flow = upload(
            url, [("file", b"\x00" * 5000, "a.bin"), ("model", model, None), ("stream", b"true", None)]
        )
        sent = flow.request.content
        await run_request(meter, flow)
        assert flow.response is not None and flow.response.status_code == 403  # upstream never contacted
        message = json.loads(flow.response.content)["error"]["message"]
        assert message.startswith("tokometer:") and FORM_NOT_REWRITTEN in message
        assert flow.request.content == sent  # not a byte changed
        await meter.response(flow)
    records = meter.store.records  # type: ignore[union-attr]
    assert [(r.action, r.model_requested, r.model_sent, r.status_code, r.streamed) for r in records] == [
        ("blocked", "gpt-image-1", None, 403, False),
        ("blocked", "gpt-4o-transcribe", None, 403, False),
    ]
    assert all(FORM_NOT_REWRITTEN in (r.error or "") for r in records)


async def test_a_json_image_request_is_downgraded_like_a_chat_call(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow(GENERATIONS, {"model": "gpt-image-1", "prompt": "a cat", "n": 1})
    await run_request(meter, flow)
    assert flow.response is None
    assert json.loads(flow.request.content) == {"model": "gpt-image-1-mini", "prompt": "a cat", "n": 1}
    await answer(meter, flow, json.dumps({"created": 1, "usage": IMAGE_USAGE}).encode())
    assert flow.response.headers["X-Tokometer-Notice"].startswith(
        "downgraded gpt-image-1 -> gpt-image-1-mini"
    )
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.action, rec.model_requested, rec.model_sent, rec.output_tokens) == (
        "downgraded",
        "gpt-image-1",
        "gpt-image-1-mini",
        4160,
    )


async def test_an_image_request_without_a_model_is_refused_where_models_are_restricted(meter: Meter) -> None:
    """OpenAI's reference asks for an explicit model now (its old default, dall-e-2, is retired):
    a request without one cannot be checked, so it fails closed under an allowlist."""
    flow = make_flow(GENERATIONS, {"prompt": "a cat"})
    await run_request(meter, flow)
    assert flow.response is None and meter.call_state(flow).record.model_requested is None
    meter._apply(parse_policies(RESTRICTED))
    for flow in (make_flow(GENERATIONS, {"prompt": "a cat"}), upload(EDITS, [("prompt", b"a cat", None)])):
        await run_request(meter, flow)
        assert flow.response is not None and flow.response.status_code == 403


@pytest.mark.parametrize(
    ("body", "ctype", "tokens", "seconds", "error"),
    [
        (
            json.dumps({"text": "hi", "usage": TOKENS_USAGE}).encode(),
            "application/json",
            (120, 100, 30),
            None,
            None,
        ),
        (
            b'{"text":"hi","usage":{"type":"duration","seconds":61}}',
            "application/json",
            (0, None, 0),
            61,
            None,
        ),
        (b"hi there\n", "text/plain; charset=utf-8", (None, None, None), None, PLAIN_TEXT),
    ],
)
async def test_a_transcription_is_metered_from_its_answer_only(
    meter: Meter, body: bytes, ctype: str, tokens: tuple, seconds: int | None, error: str | None
) -> None:
    flow = upload(TRANSCRIPTIONS, [("model", b"whisper-1", None), ("file", b"RIFF" + b"\x00" * 999, "a.wav")])
    await run_request(meter, flow)
    await answer(meter, flow, body, ctype)
    await asyncio.sleep(0)  # an offline estimate, if one were started, would run now
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.api_flavor, rec.model_sent) == ("transcription", "whisper-1")
    assert (rec.input_tokens, rec.input_audio_tokens, rec.output_tokens, rec.audio_seconds) == (
        *tokens,
        seconds,
    )
    assert rec.error == error and rec.usage_source == ("none" if error else "reported")


async def test_an_image_stream_passes_byte_for_byte_and_is_metered(meter: Meter) -> None:
    flow = make_flow(
        GENERATIONS, {"model": "gpt-image-1", "prompt": "a cat", "stream": True, "partial_images": 2}
    )
    await run_request(meter, flow)
    stream_response(flow, meter)
    data = image_stream(image=400_000)
    assert feed(flow, data, 16384) == data
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert rec.streamed is True and rec.aborted is False and rec.ttft_ms is not None
    assert (rec.input_tokens, rec.output_tokens, rec.output_image_tokens) == (50, 4160, 4160)
    assert meter.store.journaled == [rec.id]  # type: ignore[union-attr]  # at image_generation.completed


async def test_a_dalle_image_call_without_usage_gets_no_estimate(meter: Meter) -> None:
    flow = make_flow(GENERATIONS, {"model": "dall-e-3", "prompt": "a cat " * 200})
    await run_request(meter, flow)
    await answer(meter, flow, b'{"created":1,"data":[{"url":"https://x/y.png","revised_prompt":"a cat"}]}')
    await asyncio.sleep(0.05)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.usage_source, rec.input_tokens, rec.output_tokens, rec.error) == (
        "none",
        None,
        None,
        NO_IMAGE_USAGE,
    )
    assert not meter._estimates


# Image output tokens per image, from OpenAI's image generation guide ("Cost and latency", models
# prior to gpt-image-2): quality x size (1024x1024, 1024x1536, 1536x1024); a partial image of a
# stream adds 100. Without quality or size ("auto"), the largest the request allows.
@pytest.mark.parametrize(
    ("request_body", "image_tokens"),
    [
        ({"model": "gpt-image-1", "quality": "high", "size": "1024x1024"}, 4160),
        ({"model": "gpt-image-1", "quality": "high", "size": "1024x1536", "n": 3}, 3 * 6240),
        ({"model": "gpt-image-1", "quality": "low", "size": "1536x1024", "n": 10}, 10 * 400),
        ({"model": "gpt-image-1.5", "quality": "medium", "size": "1536x1024", "n": 2}, 2 * 1568),
        ({"model": "gpt-image-1.5-2025-12-16", "quality": "auto", "size": "1024x1024"}, 4160),
        ({"model": "gpt-image-1-mini", "quality": "low", "size": "auto"}, 408),
        ({"model": "gpt-image-1-mini", "quality": "medium"}, 1584),
        ({"model": "gpt-image-1"}, 6240),
        (
            {
                "model": "gpt-image-1.5",
                "quality": "high",
                "size": "1024x1024",
                "stream": True,
                "partial_images": 3,
            },
            4160 + 3 * 100,
        ),
        ({"model": "gpt-image-1.5", "quality": "low", "size": "1024x1024", "partial_images": 2}, 272),
    ],
)
async def test_an_image_generation_reserves_the_images_it_asks_for(
    meter: Meter, request_body: dict[str, Any], image_tokens: int
) -> None:
    """Its reservation is what it will cost as priced: the prompt (bytes / 4) at the text input
    rate, its images' output tokens at the model's image output rate (gpt-image-1.5: $32/M)."""
    meter._apply(parse_policies(BUDGET))
    flow = make_flow(GENERATIONS, {**request_body, "prompt": "a cat in a hat"})
    prompt_tokens = len(flow.request.content) // 4
    await run_request(meter, flow)
    assert flow.response is None
    reserved = meter.enforcer.budgets.reserved()[DEVELOPMENT]
    assert reserved == image_bill(request_body["model"], prompt_tokens, image_tokens)


async def test_an_image_edit_upload_reserves_the_images_its_form_asks_for(meter: Meter) -> None:
    """A multipart edit's n, quality and size are small text fields, read without its files."""
    meter._apply(parse_policies(BUDGET))
    fields = [("model", b"gpt-image-1-mini"), ("n", b"2"), ("quality", b"medium"), ("size", b"1024x1024")]
    flow = upload(
        EDITS,
        [("image", os.urandom(50_000), "a.png"), ("prompt", b"a hat", None)]
        + [(name, value, None) for name, value in fields],
    )
    await run_request(meter, flow)
    assert flow.response is None
    text_bytes = len(b"a hat") + sum(len(value) for _, value in fields)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == image_bill(
        "gpt-image-1-mini", text_bytes // 4 + 581, 2 * 1056, 581
    )


@pytest.mark.parametrize("fidelity", [b"low", b"high"])
async def test_an_image_edit_reserves_its_input_images(meter: Meter, fidelity: bytes) -> None:
    """Each input image is billed as image input tokens (at $10/M for gpt-image-1): 581 at most
    for one image, 6,240 more with input_fidelity high. Three high-fidelity images cost more than
    the low-quality image they are edited into: the old reservation (the output only) fell short."""
    meter._apply(parse_policies(BUDGET))
    fields = [("model", b"gpt-image-1"), ("quality", b"low"), ("size", b"1024x1024")]
    flow = upload(
        EDITS,
        [("image[]", os.urandom(20_000), f"{i}.png") for i in range(3)]
        + [("mask", os.urandom(5_000), "mask.png"), ("prompt", b"a hat", None)]
        + [(name, value, None) for name, value in [*fields, ("input_fidelity", fidelity)]],
    )
    await run_request(meter, flow)
    assert flow.response is None
    text_bytes = len(b"a hat" + fidelity) + sum(len(value) for _, value in fields)
    seen = 3 * (581 + (6240 if fidelity == b"high" else 0))
    reserved = meter.enforcer.budgets.reserved()[DEVELOPMENT]
    assert reserved == image_bill("gpt-image-1", text_bytes // 4 + seen, 272, seen)
    if fidelity == b"high":
        assert reserved > Decimal("0.2")  # 20,463 image input tokens at $10/M, 272 out at $40/M


async def test_a_json_image_edit_reserves_its_input_images(meter: Meter) -> None:
    meter._apply(parse_policies(BUDGET))
    images = [{"file_id": f"file-{i}"} for i in range(2)]
    body = {
        "model": "gpt-image-1.5",
        "prompt": "a hat",
        "images": images,
        "quality": "low",
        "size": "1024x1024",
    }
    flow = make_flow(EDITS, {**body, "input_fidelity": "high"})
    prompt_tokens = len(flow.request.content) // 4
    await run_request(meter, flow)
    seen = 2 * (581 + 6240)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == image_bill(
        "gpt-image-1.5", prompt_tokens + seen, 272, seen
    )


async def test_a_json_image_edit_sending_its_images_inline_reserves_them_as_images_not_text(
    meter: Meter,
) -> None:
    meter._apply(parse_policies(BUDGET))
    inline = "data:image/png;base64," + "A" * 1_000_000  # 750 KB of image: 250,000 "tokens" as text
    body = {
        "model": "gpt-image-1.5",
        "prompt": "a hat",
        "images": [{"image_url": inline}, {"image_url": {"url": inline}}],
        "quality": "low",
        "size": "1024x1024",
    }
    flow = make_flow(EDITS, body)
    prompt_tokens = (len(flow.request.content) - 2 * len(inline)) // 4
    await run_request(meter, flow)
    seen = 2 * 581
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == image_bill(
        "gpt-image-1.5", prompt_tokens + seen, 272, seen
    )


async def test_a_downgraded_image_request_reserves_at_the_model_sent(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED + "    budget: {usd: 100, period: day}\n"))
    flow = make_flow(GENERATIONS, {"model": "gpt-image-1", "prompt": "a cat", "quality": "high", "n": 2})
    prompt_tokens = len(flow.request.content) // 4
    await run_request(meter, flow)
    assert json.loads(flow.request.content)["model"] == "gpt-image-1-mini"
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == image_bill(
        "gpt-image-1-mini", prompt_tokens, 2 * 6240
    )


def text_bill(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    usage = GPUsage(input_tokens=input_tokens, output_tokens=output_tokens)
    return calc_price(usage, model, provider_id="openai").total_price


@pytest.mark.parametrize(
    ("tool", "extra", "image_model", "image_tokens", "output_tokens"),
    [
        ({"model": "gpt-image-1", "quality": "high", "size": "1024x1024"}, {}, "gpt-image-1", 4160, 1000),
        # none named: the default (gpt-image-2.6-sunburst), no table, no price: the largest image at
        # gpt-image-1's rate
        ({"quality": "high", "size": "1024x1024"}, {"max_output_tokens": 300}, "gpt-image-1", 6240, 300),
        (
            {"model": "gpt-image-1-mini", "quality": "low", "size": "1024x1024", "partial_images": 2},
            {"max_tool_calls": 3, "stream": True},
            "gpt-image-1-mini",
            3 * (272 + 200),
            1000,
        ),
        ({"quality": "high"}, {"tool_choice": "none"}, None, 0, 1000),  # the tool cannot be called
    ],
)
async def test_a_responses_call_with_the_image_tool_reserves_its_images(
    meter: Meter,
    tool: dict[str, Any],
    extra: dict[str, Any],
    image_model: str | None,
    image_tokens: int,
    output_tokens: int,
) -> None:
    """The image_generation tool's images are billed at its image model's image output rate, apart
    from the text model's tokens: gpt-4o-mini's reservation (bytes / 4 in, its cap or 1,000 out) and
    the images the tool may write (one a tool call, as many calls as max_tool_calls allows)."""
    meter._apply(parse_policies(BUDGET))
    body = {"model": "gpt-4o-mini", "input": "draw a cat", "tools": [{"type": "image_generation", **tool}]}
    flow = make_flow(RESPONSES, {**body, **extra})
    prompt_tokens = len(flow.request.content) // 4
    await run_request(meter, flow)
    assert flow.response is None
    expected = text_bill("gpt-4o-mini", prompt_tokens, output_tokens)
    if image_model is not None:
        expected += image_bill(image_model, 0, image_tokens)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == expected


@pytest.mark.parametrize("path", ["/v1/images//edits", "/v1/images%2Fedits", "/v1/./images/%65dits"])
async def test_an_edit_spelled_otherwise_reserves_its_input_images(meter: Meter, path: str) -> None:
    meter._apply(parse_policies(BUDGET))
    body = {
        "model": "gpt-image-1.5",
        "prompt": "a hat",
        "images": [{"file_id": "f-1"}, {"file_id": "f-2"}],
        "quality": "low",
        "size": "1024x1024",
        "input_fidelity": "high",
    }
    await run_request(meter, make_flow(EDITS, body))
    plain = meter.enforcer.budgets.reserved()[DEVELOPMENT]
    await run_request(meter, make_flow(EDITS.replace("/v1/images/edits", path), body))
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == 2 * plain
