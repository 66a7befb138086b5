"""Review round 22 (privacy): failing tests for prompt, completion and credential text that reaches
a row, a refusal body or stderr.

A body whose Content-Encoding names a text codec (``ascii``, ``utf-8``, ``utf-16``, ``idna``...) that cannot
decode it makes mitmproxy raise ``ValueError("UnicodeDecodeError when decoding ... : " + repr(e))``,
and the repr of a ``UnicodeDecodeError`` holds the WHOLE body it failed on. Four places put that
text on the row's ``error`` (and from there into refusal bodies and the call log): the response
(``response body not decodable``), a multipart upload (``upload not decodable``), an Anthropic
Message Batch (``body not decodable``) and a Realtime WebRTC offer (``the offer is not
decodable``). ``addon.upstream_proxy`` prints a proxy URL it cannot chain to as it was given,
``user:password@`` included.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from addon.record import CallRecord
from addon.upstream_proxy import upstream_from_env
from tests.test_meter import make_flow, run_request

PROMPT_MARK = "PROMPT-R22-PRIVATE"
PROMPT = PROMPT_MARK + " caf\u00e9 please keep this private"  # non-ASCII, as many prompts are
COMPLETION_MARK = "COMPLETION-R22-PRIVATE"
BOUNDARY = "r22boundary"
# The models these calls name are allowed: only an unreadable model is refused.
RESTRICTED = (
    "default_environment: development\n"
    "environments:\n"
    "  development:\n"
    "    models: {allow: [gpt-4o-mini, claude-haiku-4-5, gpt-image-1, whisper-1, gpt-realtime]}\n"
)


def _with_encoding(flow: http.HTTPFlow, body: bytes, content_type: str, encoding: str) -> http.HTTPFlow:
    """``flow``'s request carrying ``body`` as sent, under a Content-Encoding it does not decode with."""
    flow.request.headers["content-type"] = content_type
    flow.request.headers["content-encoding"] = encoding
    flow.request.raw_content = body
    return flow


def _form(fields: dict[str, str]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


async def _rows(meter: Meter) -> list[CallRecord]:
    records: list[CallRecord] = meter.store.records  # type: ignore[union-attr]
    for _ in range(100):
        if records:
            break
        await asyncio.sleep(0.01)
    return records


async def _answer(meter: Meter, flow: http.HTTPFlow, status: int = 500) -> None:
    """The upstream's answer to a call the proxy let through (the row is written then)."""
    if flow.response is None:
        flow.response = http.Response.make(status, b"{}", {"content-type": "application/json"})
        meter.responseheaders(flow)
        await meter.response(flow)


@pytest.mark.parametrize("encoding", ["ascii", "utf-8"])
async def test_an_undecodable_response_puts_no_completion_on_the_row(meter: Meter, encoding: str) -> None:
    """A chat completion answered 200 with ``Content-Encoding: {encoding}`` (a misconfigured
    server or gateway) and a completion with an "é" in it (Latin-1 bytes: neither ASCII nor
    UTF-8). Expected: the row says the body could not be decoded, no more.
    Actual: ``error`` is "response body not decodable: UnicodeDecodeError when decoding ... :
    UnicodeDecodeError('ascii', b'{"id": ... "content": "COMPLETION-R22-PRIVATE caf\\xe9 ..."
    ...')": the whole response body, completion included, in the database and the journal."""
    flow = make_flow(
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    await run_request(meter, flow)
    completion = {
        "id": "chatcmpl-r22",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": COMPLETION_MARK + " caf\u00e9"}}
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13},
    }
    body = json.dumps(completion, ensure_ascii=False).encode("latin-1")
    flow.response = http.Response.make(200, b"", {"content-type": "application/json"})
    flow.response.headers["content-encoding"] = encoding
    flow.response.raw_content = body
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = await _rows(meter)
    assert (row.api_flavor, row.status_code) == ("chat", 200)
    assert COMPLETION_MARK not in row.to_json(), row.error


@pytest.mark.parametrize(
    ("url", "model"),
    [
        ("https://api.openai.com/v1/images/edits", "gpt-image-1"),
        ("https://api.openai.com/v1/audio/transcriptions", "whisper-1"),
    ],
    ids=["image-edit", "transcription"],
)
async def test_an_undecodable_upload_puts_no_prompt_on_the_row(meter: Meter, url: str, model: str) -> None:
    """An image edit (its ``prompt`` field) or a transcription (its ``prompt``, text to guide the
    model) sent as a multipart upload under ``Content-Encoding: ascii``, the prompt with an "é".
    Expected: the row says the upload could not be decoded. Actual: ``error`` is "upload not
    decodable: UnicodeDecodeError ... b'--r22boundary\\r\\n ... name="prompt"\\r\\n\\r\\n
    PROMPT-R22-PRIVATE caf\\xc3\\xa9 ...'": every field of the form, the prompt included."""
    form = _form({"model": model, "prompt": PROMPT})
    flow = _with_encoding(make_flow(url, b""), form, f"multipart/form-data; boundary={BOUNDARY}", "ascii")
    await run_request(meter, flow)
    await _answer(meter, flow)
    [row] = await _rows(meter)
    assert row.host == "api.openai.com" and row.status_code == 500
    assert PROMPT_MARK not in row.to_json(), row.error


def _message_batch() -> http.HTTPFlow:
    """An Anthropic Message Batch of one request, under ``Content-Encoding: ascii``, its prompt
    with an "é" (UTF-8)."""
    body = {
        "requests": [
            {
                "custom_id": "r22",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": PROMPT}],
                },
            }
        ]
    }
    flow = make_flow("https://api.anthropic.com/v1/messages/batches", b"")
    del flow.request.headers["authorization"]
    flow.request.headers["x-api-key"] = "sk-ant-api03-r22"
    flow.request.headers["anthropic-version"] = "2023-06-01"
    return _with_encoding(flow, json.dumps(body, ensure_ascii=False).encode(), "application/json", "ascii")


async def test_an_undecodable_message_batch_puts_no_prompt_on_the_row(meter: Meter) -> None:
    """Expected: the row says the batch could not be read. Actual: ``error`` is "0 of 0 requests of
    the batch have no readable params.model, ... (body not decodable: UnicodeDecodeError ...
    b'{"requests": [{... "content": "PROMPT-R22-PRIVATE caf\\xc3\\xa9 ..."}]}}]}' ...)": every
    prompt of the batch (a batch holds up to 100,000 requests; the row keeps 1,000 characters)."""
    flow = _message_batch()
    await run_request(meter, flow)
    await _answer(meter, flow)
    [row] = await _rows(meter)
    assert row.provider == "anthropic" and row.status_code == 500
    assert PROMPT_MARK not in row.to_json(), row.error


async def test_an_undecodable_message_batch_is_refused_without_echoing_its_prompts(meter: Meter) -> None:
    """Where models are restricted the batch is refused (its models cannot be read): fine. The 403's
    message quotes the whole decode error, so the refusal body (and the row's error) carries the
    batch's prompts: "tokometer: model (unreadable) is not allowed ... (body not decodable:
    UnicodeDecodeError ... \\"content\\": \\"PROMPT-R22-PRIVATE caf\\\\xc3\\\\xa9 ...\\"...)".
    A refusal may name the model, never the prompt."""
    meter._apply(parse_policies(RESTRICTED))
    flow = _message_batch()
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert PROMPT_MARK.encode() not in flow.response.content, flow.response.content[:400]


async def test_an_undecodable_realtime_offer_is_refused_without_echoing_its_session(meter: Meter) -> None:
    """A WebRTC offer (``POST /v1/realtime/calls``, a form of its SDP and its session) under
    ``Content-Encoding: ascii``, its session's instructions with an "é". Refused where models are
    restricted (its model cannot be read): fine. The 403 says "(the offer is not decodable:
    UnicodeDecodeError ... b'--r22boundary ... name=\\"session\\" ... \\"instructions\\":
    \\"PROMPT-R22-PRIVATE ...": the SDP and the session's instructions (its system prompt)."""
    meter._apply(parse_policies(RESTRICTED))
    session = {"type": "realtime", "model": "gpt-realtime", "instructions": PROMPT}
    form = _form({"sdp": "v=0", "session": json.dumps(session, ensure_ascii=False)})
    flow = make_flow("https://api.openai.com/v1/realtime/calls", b"")
    flow = _with_encoding(flow, form, f"multipart/form-data; boundary={BOUNDARY}", "ascii")
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert PROMPT_MARK.encode() not in flow.response.content, flow.response.content[:600]


@pytest.mark.parametrize(
    "value",
    [
        "socks5h://alice:Pr0xy-R22-s3cret@proxy.corp.example:1080",  # SOCKS: not chained, said so
        "http://alice:Pr0xy-R22-s3cret@proxy.corp.example:99999",  # a port that is none
    ],
    ids=["socks", "bad-port"],
)
def test_a_company_proxy_password_is_never_printed(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/proxy runs ``addon.upstream_proxy`` on the shell's HTTPS_PROXY, and keeps a chained
    proxy's credentials out of ps (TOKOMETER_UPSTREAM_AUTH). A proxy it cannot chain to is reported
    on stderr (the proxy's terminal, and any log it is redirected to) with the URL as given:
    "tokometer: HTTPS_PROXY=socks5h://alice:Pr0xy-R22-s3cret@proxy.corp.example:1080 is not an
    HTTP proxy mitmproxy can chain to". Expected: the host (and user) at most, never the password."""
    assert upstream_from_env({"HTTPS_PROXY": value}) is None
    err = capsys.readouterr().err
    assert "proxy.corp.example" in err  # it did say why (positive control)
    assert "Pr0xy-R22-s3cret" not in err, err
