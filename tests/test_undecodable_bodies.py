"""A request body whose Content-Encoding cannot be undone, whatever mitmproxy raises for it.

mitmproxy raises ValueError for most (an unknown name, corrupt gzip, a text codec such as
``ascii``), but TypeError for a str-to-str codec (``rot13``): ``codecs.decode(bytes, "rot13")``
fails in ``str.translate``, and mitmproxy re-raises TypeError as it is. Either way the body cannot
be read, so where models are restricted the call is refused (its model cannot be checked), and
the row and the refusal say which encoding failed, never what the body held.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import traceback

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from addon.content_decoding import BodyNotDecodable, decode_failure
from addon.header_fields import content_of
from addon.meter import Meter
from addon.policies import parse_policies
from addon.record import CallRecord
from tests.test_meter import make_flow, run_request

MINI_ONLY = (
    "default_environment: development\n"
    "environments:\n"
    "  development:\n"
    "    models: {allow: [gpt-4o-mini], on_disallowed: block}\n"
)
PROMPT_MARK = "PROMPT-UNDECODABLE-PRIVATE"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT_MARK + " caf\u00e9"}]}


async def _rows(meter: Meter) -> list[CallRecord]:
    records: list[CallRecord] = meter.store.records  # type: ignore[union-attr]
    for _ in range(100):
        if records:
            break
        await asyncio.sleep(0.01)
    return records


def _encoded_chat(encoding: str, raw: bytes) -> http.HTTPFlow:
    flow = make_flow("https://api.openai.com/v1/chat/completions", b"")
    flow.request.headers["content-encoding"] = encoding
    flow.request.raw_content = raw
    return flow


BODY = json.dumps(CHAT, ensure_ascii=False).encode()
UNDECODABLE = [
    ("rot13", BODY, "TypeError"),  # mitmproxy raises TypeError: it used to escape the hook
    ("ascii", BODY, "UnicodeDecodeError"),  # ValueError quoting the whole body
    ("gzip", BODY, "ValueError"),  # not gzip: ValueError
    ("x-unheard-of", BODY, "LookupError"),
]


@pytest.mark.parametrize(("encoding", "raw", "cause"), UNDECODABLE, ids=[u[0] for u in UNDECODABLE])
async def test_an_undecodable_request_is_refused_where_models_are_restricted(
    meter: Meter, encoding: str, raw: bytes, cause: str
) -> None:
    """``gpt-4o`` where only ``gpt-4o-mini`` is allowed (block), under an encoding the proxy
    cannot undo. Before: with ``rot13`` the request hook raised TypeError, ``_never_raises``
    logged it and the call went upstream unchecked, with no row; the ValueError cases were
    refused. Now every one is refused 403 and has its row."""
    meter._apply(parse_policies(MINI_ONLY))
    flow = _encoded_chat(encoding, raw)
    await run_request(meter, flow)
    assert flow.response is not None, "passed unchecked"
    assert flow.response.status_code == 403
    assert PROMPT_MARK.encode() not in flow.response.content
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = await _rows(meter)
    assert (row.action, row.status_code, row.model_requested) == ("blocked", 403, None)
    expected = f"request body: content-encoding {encoding!r} not decodable ({cause})"
    assert row.error is not None and row.error.startswith(expected), row.error
    assert PROMPT_MARK not in row.to_json()


async def test_an_undecodable_request_still_passes_where_any_model_is_allowed(meter: Meter) -> None:
    """No allowlist: the call passes as sent (metering never breaks traffic) and its row says why
    it could not be read."""
    flow = _encoded_chat("rot13", BODY)
    await run_request(meter, flow)
    assert flow.response is None  # goes upstream
    assert flow.request.raw_content == BODY  # untouched
    flow.response = http.Response.make(400, b"{}", {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = await _rows(meter)
    assert row.error is not None
    assert row.error.startswith("request body: content-encoding 'rot13' not decodable (TypeError)")


@pytest.mark.parametrize(
    ("encoding", "raw", "cause"),
    [
        ("ascii", b"caf\xe9 SECRET", "UnicodeDecodeError"),
        ("utf-8", b"caf\xe9 SECRET", "UnicodeDecodeError"),
        ("utf-16", b"SECRET!", "UnicodeDecodeError"),
        ("utf-7", b"SECRET +\xff", "UnicodeDecodeError"),
        ("idna", b"\xffSECRET.x", "UnicodeDecodeError"),
        ("rot13", b"SECRET", "TypeError"),
        ("gzip", b"SECRET", "ValueError"),
        ("ascii", b"SECRET", "ValueError"),  # decodes, to str: mitmproxy refuses it
    ],
)
def test_content_of_raises_without_the_body(encoding: str, raw: bytes, cause: str) -> None:
    """Whatever mitmproxy raised, ``content_of`` raises BodyNotDecodable (a ValueError) whose text,
    traceback included, names the encoding and the error's type, no byte of the body."""
    request = tutils.treq()
    request.headers["content-encoding"] = encoding
    request.raw_content = raw
    with pytest.raises(BodyNotDecodable) as caught:
        content_of(request)
    assert str(caught.value) == f"content-encoding {encoding!r} not decodable ({cause})"
    assert caught.value.__suppress_context__  # the original (with the body) is not printed
    assert "SECRET" not in "".join(traceback.format_exception(caught.value))


def test_content_of_decodes_what_it_can() -> None:
    request = tutils.treq()
    request.headers["content-encoding"] = "gzip"
    request.raw_content = gzip.compress(b'{"a": 1}')
    assert content_of(request) == b'{"a": 1}'


def test_decode_failure_cuts_a_long_encoding_name() -> None:
    text = decode_failure("x" * 500, TypeError("SECRET body"))
    assert text == f"content-encoding {'x' * 40 + '...'!r} not decodable (TypeError)"


@pytest.mark.parametrize(("encoding", "cause"), [("rot13", "TypeError"), ("utf-16", "UnicodeDecodeError")])
async def test_an_undecodable_response_has_its_row(meter: Meter, encoding: str, cause: str) -> None:
    """A 200 answer under an encoding the proxy cannot undo. Before: ``rot13``'s TypeError escaped
    the response hook and the call had no row at all; ``utf-16``'s ValueError put the whole body
    (the completion) in ``error``. Now both rows say which encoding failed, no more."""
    flow = make_flow(
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    await run_request(meter, flow)
    flow.response = http.Response.make(200, b"", {"content-type": "application/json"})
    flow.response.headers["content-encoding"] = encoding
    flow.response.raw_content = b'{"choices": [{"message": {"content": "COMPLETION-PRIVATE"}}]}'
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = await _rows(meter)
    assert (row.status_code, row.model_requested) == (200, "gpt-4o-mini")
    assert row.error == f"response body: content-encoding {encoding!r} not decodable ({cause})"
    assert "COMPLETION-PRIVATE" not in row.to_json()
