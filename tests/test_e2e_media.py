"""End to end: image generation and audio transcription with the real openai SDK.

openai SDK (HTTPS_PROXY) -> mitmdump + tokometer -> the fake OpenAI over HTTPS; rows asserted in
DuckDB, costs against genai-prices' own calc_price. One proxy serves the module (each test's rows
carry its own feature label), to keep the file near 15 s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import ProxyProcess
from fakeprovider import DEFAULT_USAGE, FakeProvider
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from test_e2e import run_client, tag

from addon.providers.openai_media import FORM_NOT_REWRITTEN, PLAIN_TEXT

POLICIES = """
default_environment: development
environments:
  development:
    models:
      allow: [gpt-image-1-mini, gpt-image-1.5, gpt-4o-transcribe, gpt-4o-mini-transcribe, whisper-1,
              gpt-4o-mini]
      downgrade: {gpt-image-1: gpt-image-1-mini}
"""
IMAGE_USAGE = DEFAULT_USAGE["images"]  # 50 input (10 image), 4160 output
TOKENS_USAGE = DEFAULT_USAGE["transcription"]  # 120 input (100 audio), 30 output
LARGE_IMAGE = 1_500_000  # base64 characters of each partial and final image in a stream


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("media"), fake_provider.port, policies=POLICIES)
    try:
        p.start()
        yield p
    finally:
        p.cleanup()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    image, audio = folder / "photo.png", folder / "memo.wav"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2_000_000))  # an upload of megabytes
    audio.write_bytes(b"RIFF" + os.urandom(300_000))
    return {"image": image, "audio": audio}


def sdk(proxy: ProxyProcess, label: str, *args: str, **fake: Any) -> tuple[int, list[dict]]:
    """The openai SDK through the proxy; its rows carry ``label`` as their feature."""
    headers = [f"X-Test-Tag={label}", "X-Metering-Tags=" + json.dumps({"feature": label})]
    headers += [f"X-Fake-{k.replace('_', '-').title()}={v}" for k, v in fake.items()]
    return run_client(proxy, "openai_media_client.py", *args, headers=headers)


def rows_of(proxy: ProxyProcess, label: str) -> list[dict[str, Any]]:
    return proxy.rows("SELECT * FROM calls WHERE feature = ? ORDER BY ts", [label])


def billed(model: str, **counts: float) -> Decimal:
    """What genai-prices says OpenAI bills for these counts, the way OpenAI reports them."""
    return calc_price(GPUsage(**counts), model, provider_id="openai").total_price


def image_bill(model: str) -> Decimal:
    # every output token of a GPT image model is an image token (gpt-image-1.5: $32/M, not $10/M)
    return billed(model, input_tokens=50, input_image_tokens=10, output_tokens=4160, output_image_tokens=4160)


def test_image_generation_plain_and_streamed(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    label = tag()
    code, events = sdk(proxy, label, "generate", "--model", "gpt-image-1.5")
    assert code == 0 and events[-1]["usage"] == IMAGE_USAGE
    args = ("generate", "--model", "gpt-image-1.5", "--stream", "--partial-images", "2")
    code, events = sdk(proxy, label, *args, "--raw", image_bytes=LARGE_IMAGE)
    assert code == 0
    code, items = sdk(proxy, label, *args, image_bytes=LARGE_IMAGE)
    assert code == 0 and [e.get("type") for e in items[:-1]] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    sent = fake_provider.requests_for(label)
    assert [r.json["model"] for r in sent] == ["gpt-image-1.5"] * 3
    assert "x-metering-tags" not in sent[0].headers
    # the client got exactly the bytes the fake sent: three events of ~1.5 MB each
    assert len(sent[1].sent) > 3 * LARGE_IMAGE
    assert (events[0]["length"], events[0]["sha256"]) == (
        len(sent[1].sent),
        hashlib.sha256(sent[1].sent).hexdigest(),
    )
    rows = rows_of(proxy, label)
    assert [(r["api_flavor"], r["path"], r["streamed"], r["aborted"]) for r in rows] == [
        ("images", "/v1/images/generations", False, False),
        ("images", "/v1/images/generations", True, False),
        ("images", "/v1/images/generations", True, False),
    ]
    for r in rows:
        assert (r["model_requested"], r["model_sent"], r["action"], r["status_code"]) == (
            "gpt-image-1.5",
            "gpt-image-1.5",
            "allowed",
            200,
        )
        assert (r["input_tokens"], r["input_image_tokens"], r["output_tokens"], r["output_image_tokens"]) == (
            50,
            10,
            4160,
            4160,
        )
        assert r["cost_usd"] == image_bill("gpt-image-1.5") == Decimal("0.13340")
        assert (r["price_status"], r["usage_source"], r["error"]) == ("priced", "reported", None)


def test_a_json_generation_is_downgraded(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    label = tag()
    code, events = sdk(proxy, label, "generate", "--model", "gpt-image-1")
    assert code == 0 and events[-1]["usage"] == IMAGE_USAGE
    [sent] = fake_provider.requests_for(label)
    assert sent.json["model"] == "gpt-image-1-mini"  # the fake saw the rewritten model
    [row] = rows_of(proxy, label)
    assert (row["action"], row["model_requested"], row["model_sent"]) == (
        "downgraded",
        "gpt-image-1",
        "gpt-image-1-mini",
    )
    assert row["cost_usd"] == image_bill("gpt-image-1-mini") and row["price_model"] == "gpt-image-1-mini"


def test_an_image_edit_upload_is_metered_and_a_disallowed_one_refused(
    proxy: ProxyProcess, fake_provider: FakeProvider, files: dict[str, Path]
) -> None:
    label = tag()
    code, events = sdk(proxy, label, "edit", "--model", "gpt-image-1-mini", "--file", str(files["image"]))
    assert code == 0 and events[-1]["usage"] == IMAGE_USAGE
    [sent] = fake_provider.requests_for(label)
    assert sent.form["model"] == b"gpt-image-1-mini" and sent.form["image"] == files["image"].read_bytes()
    refused = tag()
    code, events = sdk(proxy, refused, "edit", "--model", "gpt-image-1", "--file", str(files["image"]))
    assert code == 3 and (events[-1]["status"], events[-1]["kind"]) == (403, "PermissionDeniedError")
    assert events[-1]["message"].startswith("tokometer:") and FORM_NOT_REWRITTEN in events[-1]["message"]
    assert fake_provider.requests_for(refused) == []  # never contacted
    [row] = rows_of(proxy, label)
    assert (row["path"], row["model_sent"], row["input_tokens"], row["output_image_tokens"]) == (
        "/v1/images/edits",
        "gpt-image-1-mini",
        50,
        4160,
    )
    assert row["cost_usd"] == image_bill("gpt-image-1-mini")
    [row] = rows_of(proxy, refused)
    assert (row["action"], row["model_requested"], row["model_sent"], row["status_code"]) == (
        "blocked",
        "gpt-image-1",
        None,
        403,
    )
    assert row["cost_usd"] == 0 and row["price_status"] == "not_billed" and FORM_NOT_REWRITTEN in row["error"]


def test_transcriptions_by_tokens_by_seconds_as_text_and_streamed(
    proxy: ProxyProcess, fake_provider: FakeProvider, files: dict[str, Path]
) -> None:
    label = tag()
    audio = ("--file", str(files["audio"]))
    duration = {"type": "duration", "seconds": 61}
    assert sdk(proxy, label, "transcribe", "--model", "gpt-4o-transcribe", *audio)[0] == 0
    whisper = ("transcribe", "--model", "whisper-1", *audio)
    assert (
        sdk(proxy, label, *whisper, "--response-format", "verbose_json", usage=json.dumps(duration))[0] == 0
    )
    code, events = sdk(proxy, label, *whisper, "--response-format", "text")
    assert code == 0 and events[-1]["text"] == "The quick brown fox.\n"
    code, items = sdk(proxy, label, "transcribe", "--model", "gpt-4o-mini-transcribe", *audio, "--stream")
    assert code == 0 and items[-2] == {"event": "item", "type": "transcript.text.done", "usage": TOKENS_USAGE}
    sent = fake_provider.requests_for(label)
    assert [r.form["model"] for r in sent] == [
        b"gpt-4o-transcribe",
        b"whisper-1",
        b"whisper-1",
        b"gpt-4o-mini-transcribe",
    ]
    rows = rows_of(proxy, label)
    assert [
        (r["model_sent"], r["streamed"], r["input_tokens"], r["input_audio_tokens"], r["output_tokens"])
        for r in rows
    ] == [
        ("gpt-4o-transcribe", False, 120, 100, 30),
        ("whisper-1", False, 0, None, 0),
        ("whisper-1", False, None, None, None),
        ("gpt-4o-mini-transcribe", True, 120, 100, 30),
    ]
    assert [r["audio_seconds"] for r in rows] == [None, 61, None, None]
    assert [r["api_flavor"] for r in rows] == ["transcription"] * 4
    tokens = {"input_tokens": 120, "input_audio_tokens": 100, "output_tokens": 30}
    assert [r["cost_usd"] for r in rows] == [
        billed("gpt-4o-transcribe", **tokens),
        billed("whisper-1", audio_seconds=61),  # $0.006 a minute, genai-prices' $0.36 an hour
        None,
        billed("gpt-4o-mini-transcribe", **tokens),
    ]
    assert rows[1]["cost_usd"] == Decimal("0.0061")
    assert [r["price_status"] for r in rows] == ["priced", "priced", "no_usage", "priced"]
    # plain text carries no usage, and audio is never estimated offline: the row says so
    assert (rows[2]["usage_source"], rows[2]["error"]) == ("none", PLAIN_TEXT)
    assert (
        rows[2]["price_source"]
        == "genai-prices 0.2.3: no usage reported (audio calls are never estimated offline)"
    )


def test_a_responses_calls_image_tool_is_checked_and_its_images_billed(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    """The openai SDK's responses.create with the image_generation tool. Its gpt-image-1 is not allowed
    here: the proxy writes gpt-image-1-mini in (only that value). The image it wrote, which OpenAI
    bills apart from the response's usage, is a row of its own priced at -mini's rates: counted from
    OpenAI's table (low 1024x1536: 408 tokens, 100 per partial image streamed), or as tool_usage
    reports it. Before, the tool ran gpt-image-1 unchecked and no row counted its image."""
    label = tag()
    tool = {"model": "gpt-image-1", "quality": "low", "size": "1024x1536", "partial_images": 2}
    respond = ("respond", "--model", "gpt-4o-mini", "--tool", json.dumps(tool))
    code, events = sdk(proxy, label, *respond)
    assert code == 0 and [i["quality"] for i in events[-1]["images"]] == ["low"]
    code, items = sdk(proxy, label, *respond, "--stream", image_bytes=LARGE_IMAGE)
    assert (
        code == 0
        and [e["type"] for e in items[:-1]].count("response.image_generation_call.partial_image") == 2
    )
    details = {"image_tokens": 0, "text_tokens": 60}
    tool_usage = {"image_gen": {"input_tokens": 60, "input_tokens_details": details, "output_tokens": 408}}
    assert sdk(proxy, label, *respond, tool_usage=json.dumps(tool_usage))[0] == 0
    sent = fake_provider.requests_for(label)
    for request in sent:  # upstream ran -mini: only the tool's model was rewritten
        assert request.json["model"] == "gpt-4o-mini"
        assert request.json["tools"] == [{"type": "image_generation", **tool, "model": "gpt-image-1-mini"}]
    rows = rows_of(proxy, label)
    texts = [r for r in rows if r["api_flavor"] == "responses"]
    images = [r for r in rows if r["api_flavor"] == "images"]
    assert len(texts) == len(images) == 3
    text_bill = billed("gpt-4o-mini", input_tokens=100, output_tokens=20)  # the fake's default usage
    for r in texts:
        assert (r["model_sent"], r["action"], r["input_tokens"], r["output_tokens"]) == (
            "gpt-4o-mini",
            "allowed",
            100,
            20,
        )
        assert r["cost_usd"] == text_bill and r["error"] is None
    for r in images:
        assert (r["path"], r["model_requested"], r["model_sent"], r["model_reported"], r["action"]) == (
            "/v1/responses",
            "gpt-image-1",
            "gpt-image-1-mini",
            "gpt-image-1-mini",  # the answer echoes its tools as upstream got them
            "downgraded",
        )
        assert r["price_model"] == "gpt-image-1-mini" and r["price_status"] == "priced"
    plain, reported, streamed = sorted(images, key=lambda r: (r["streamed"], r["usage_source"] == "reported"))
    assert (plain["streamed"], plain["input_tokens"], plain["output_image_tokens"]) == (False, 0, 408)
    assert plain["usage_source"] == "estimated"
    assert plain["cost_usd"] == billed("gpt-image-1-mini", output_tokens=408, output_image_tokens=408)
    assert plain["cost_usd"] == Decimal("0.003264")  # 408 tokens at $8 per 1M
    assert (streamed["streamed"], streamed["output_image_tokens"], streamed["usage_source"]) == (
        True,
        608,
        "estimated",
    )
    assert streamed["cost_usd"] == billed("gpt-image-1-mini", output_tokens=608, output_image_tokens=608)
    assert (reported["input_tokens"], reported["output_tokens"], reported["usage_source"]) == (
        60,
        408,
        "reported",
    )
    assert reported["cost_usd"] == billed(
        "gpt-image-1-mini", input_tokens=60, output_tokens=408, output_image_tokens=408
    )
    for r in (plain, streamed):
        assert "counted from OpenAI's per-image table" in r["error"]
    assert "tool_usage.image_gen" in reported["error"]
