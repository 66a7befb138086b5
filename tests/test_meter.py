"""Unit tests of the addon's hooks with mitmproxy.test.taddons and tflow (no network, no process)."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from meter_helpers import (  # noqa: F401  (re-exported)
    OPENAI_KEY,
    CollectingStore,
    make_flow,
    on_kept_alive_connection,
    run_request,
)
from mitmproxy import flow as mitmflow
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

import addon.meter as meter_module
from addon.api_keys import key_fingerprint
from addon.budgets import Scope
from addon.interception import Interception
from addon.meter import PARTIAL_COST_NOTE, PARTIAL_USAGE_NOTE, Meter, _with_usage_requested
from addon.policies import parse_policies
from addon.record import CallRecord
from addon.token_estimate import count_text, estimate_input
from addon.unmetered_models import body_model
from addon.usage import Usage

FIXTURES = Path(__file__).parent / "fixtures"
CHAT_URL = "https://api.openai.com/v1/chat/completions"


def stream_response(flow: http.HTTPFlow, meter: Meter, headers: dict | None = None) -> None:
    flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream", **(headers or {})})
    flow.response.stream = False
    meter.responseheaders(flow)


def feed(flow: http.HTTPFlow, data: bytes, piece: int) -> bytes:
    """Feeds ``data`` to the stream callable in pieces; returns what the client would get."""
    out = bytearray()
    stream = flow.response.stream
    assert callable(stream)
    for i in range(0, len(data), piece):
        result = stream(data[i : i + piece])
        out += result if isinstance(result, bytes) else b"".join(result)
        assert result != b"", "an empty chunk mid-stream ends a chunked HTTP/1.1 response"
    end = stream(b"")
    out += end if isinstance(end, bytes) else b"".join(end)
    return bytes(out)


async def test_non_streaming_chat_is_metered(meter: Meter) -> None:
    flow = make_flow("https://api.openai.com/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    body = (FIXTURES / "openai_chat_reasoning.json").read_bytes()
    await run_request(meter, flow)
    flow.response = http.Response.make(200, body, {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    data = json.loads(body)["usage"]
    assert rec.provider == "openai" and rec.api_flavor == "chat" and rec.host == "api.openai.com"
    assert rec.model_requested == rec.model_sent == "gpt-4o-mini"
    assert rec.model_reported == json.loads(body)["model"]
    assert rec.input_tokens == data["prompt_tokens"]
    assert rec.cache_read_tokens == data["prompt_tokens_details"]["cached_tokens"]
    assert rec.output_tokens == data["completion_tokens"]
    assert rec.reasoning_tokens == data["completion_tokens_details"]["reasoning_tokens"]
    assert rec.usage_source == "reported" and rec.streamed is False and rec.status_code == 200
    assert rec.key_fingerprint == key_fingerprint(OPENAI_KEY) and OPENAI_KEY not in rec.to_json()
    assert rec.error is None and rec.action == "allowed" and rec.environment == "development"
    assert rec.ts.timestamp() == 1_764_321_600.0


@pytest.mark.parametrize("piece", [1, 7, 10_000])
async def test_chat_stream_gets_usage_injected_and_client_never_sees_it(meter: Meter, piece: int) -> None:
    flow = make_flow(
        "https://api.openai.com/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True, "messages": []}
    )
    await run_request(meter, flow)
    sent = json.loads(flow.request.content)
    assert sent["stream_options"] == {"include_usage": True}
    stream_response(flow, meter)
    upstream = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    client_bytes = feed(flow, upstream, piece)
    await meter.response(flow)
    events = [e for e in client_bytes.split(b"\n\n") if e]
    upstream_events = [e for e in upstream.split(b"\n\n") if e]
    # exactly one event (the usage-only chunk) is gone, everything else byte-identical
    assert len(events) == len(upstream_events) - 1
    assert all(b'"choices":[]' not in e for e in events)
    assert client_bytes == upstream.replace(upstream_events[-2] + b"\n\n", b"")
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.input_tokens, rec.output_tokens, rec.streamed, rec.aborted) == (21, 14, True, False)
    assert rec.ttft_ms is not None


async def test_stream_that_asked_for_usage_is_untouched(meter: Meter) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}, "messages": []}
    flow = make_flow("https://api.openai.com/v1/chat/completions", body)
    original = flow.request.content
    await run_request(meter, flow)
    assert flow.request.content == original
    stream_response(flow, meter)
    upstream = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    assert feed(flow, upstream, 13) == upstream
    await meter.response(flow)
    assert meter.store.records[0].input_tokens == 21  # type: ignore[union-attr]


async def test_responses_stream_never_gets_stream_options(meter: Meter) -> None:
    flow = make_flow(
        "https://api.openai.com/v1/responses", {"model": "gpt-4o", "stream": True, "input": "hi"}
    )
    original = flow.request.content
    await run_request(meter, flow)
    assert flow.request.content == original


async def test_gzip_stream_with_injection_is_forwarded_decoded(meter: Meter) -> None:
    flow = make_flow(
        "https://api.openai.com/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True, "messages": []}
    )
    await run_request(meter, flow)
    stream_response(flow, meter, {"content-encoding": "gzip"})
    assert "content-encoding" not in flow.response.headers
    upstream = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    client_bytes = feed(flow, gzip.compress(upstream), 5)
    await meter.response(flow)
    upstream_events = [e for e in upstream.split(b"\n\n") if e]
    assert client_bytes == upstream.replace(upstream_events[-2] + b"\n\n", b"")
    assert meter.store.records[0].output_tokens == 14  # type: ignore[union-attr]


async def test_gzip_stream_without_injection_passes_raw_bytes(meter: Meter) -> None:
    body = {"model": "claude-haiku-4-5", "stream": True, "max_tokens": 10, "messages": []}
    flow = make_flow("https://api.anthropic.com/v1/messages", body, headers={"x-api-key": "sk-ant-xyz"})
    await run_request(meter, flow)
    stream_response(flow, meter, {"content-encoding": "gzip"})
    upstream = gzip.compress((FIXTURES / "anthropic_stream.sse").read_bytes())
    assert feed(flow, upstream, 3) == upstream
    assert flow.response.headers["content-encoding"] == "gzip"
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert rec.provider == "anthropic" and rec.api_flavor == "messages" and rec.input_tokens > 0
    assert rec.key_fingerprint == key_fingerprint("sk-ant-xyz")


async def submitted(meter: Meter) -> list[CallRecord]:
    """The rows submitted, once the estimate running in a worker thread (if any) is done."""
    records = meter.store.records  # type: ignore[union-attr]
    for _ in range(300):
        if records:
            break
        await asyncio.sleep(0.01)
    return records


async def test_client_abort_records_usage_so_far(meter: Meter) -> None:
    """Cut before its first message_delta: message_start's input and cache counts are the
    provider's, its output_tokens (1) a placeholder. The output is counted from the text seen."""
    flow = make_flow("https://api.anthropic.com/v1/messages", {"model": "claude-haiku-4-5", "stream": True})
    await run_request(meter, flow)
    stream_response(flow, meter)
    upstream = (FIXTURES / "anthropic_stream.sse").read_bytes()
    half = upstream[: upstream.index(b"event: message_delta")]
    flow.response.stream(half)
    flow.error = tflow.terr("Client disconnected.")
    meter.error(flow)
    [rec] = await submitted(meter)
    assert meter.store.journaled == [rec.id]  # type: ignore[union-attr]  # journaled before the estimate
    assert rec.aborted is True and rec.streamed is True
    assert (rec.input_tokens, rec.cache_read_tokens, rec.cache_write_tokens) == (5925, 4800, 1100)
    seen = "Let me look that up for you \u2014 one moment."
    assert rec.output_tokens == count_text(seen, "claude-haiku-4-5") > 1
    assert rec.usage_source == "estimated" and rec.price_status is None  # priced by the store
    assert rec.error == f"Client disconnected.; {PARTIAL_USAGE_NOTE}"
    assert PARTIAL_USAGE_NOTE == "output tokens estimated: the stream ended before its final usage"


async def test_a_cut_stream_past_its_final_usage_is_reported(meter: Meter) -> None:
    flow = make_flow("https://api.anthropic.com/v1/messages", {"model": "claude-haiku-4-5", "stream": True})
    await run_request(meter, flow)
    stream_response(flow, meter)
    upstream = (FIXTURES / "anthropic_stream.sse").read_bytes()
    flow.response.stream(upstream[: upstream.index(b"event: message_stop")])
    flow.error = tflow.terr("Client disconnected.")
    meter.error(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]  # no estimate: submitted at once
    assert (rec.output_tokens, rec.usage_source, rec.error) == (91, "reported", "Client disconnected.")


async def test_a_cut_after_an_intermediate_message_delta_is_estimated(meter: Meter) -> None:
    """Review: 400 deltas after a server-tool turn's mid-turn message_delta (stop_reason null,
    output 38), then the client hangs up: the row said 38 output tokens, 'reported'."""
    from tests.test_anthropic_parser import anthropic_cut_in_second_block

    flow = make_flow("https://api.anthropic.com/v1/messages", {"model": "claude-haiku-4-5", "stream": True})
    await run_request(meter, flow)
    stream_response(flow, meter)
    flow.response.stream(anthropic_cut_in_second_block())
    flow.error = tflow.terr("Client disconnected.")
    meter.error(flow)
    [rec] = await submitted(meter)
    assert rec.output_tokens > 38 * 10, (rec.output_tokens, rec.usage_source, rec.error)
    assert rec.usage_source == "estimated" and rec.aborted is True
    assert rec.error == f"Client disconnected.; {PARTIAL_USAGE_NOTE}"


def xai_chunk(text: str, completion: int, ticks: int) -> bytes:
    """An xAI chat chunk: a running usage and running cost (cost_in_usd_ticks) on every chunk."""
    choices = [{"index": 0, "delta": {"content": text, "role": "assistant"}}]
    usage = {
        "prompt_tokens": 640,
        "completion_tokens": completion,
        "total_tokens": 640 + completion,
        "cost_in_usd_ticks": ticks,
    }
    obj = {"id": "x1", "object": "chat.completion.chunk", "model": "grok-4-0709", "choices": choices}
    return b"data: " + json.dumps({**obj, "usage": usage}).encode() + b"\n\n"


async def test_a_cut_stream_with_a_running_provider_cost_is_estimated(meter: Meter) -> None:
    """Review: xAI's running cost made the row 'provider_reported', so a cut stream was never
    estimated ('reported' at the count so far, no note). Its output is now estimated; the provider's
    cost so far stays the row's cost, a lower bound, and the error says both."""
    body = {"model": "grok-4", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow("https://api.x.ai/v1/chat/completions", body)
    await run_request(meter, flow)
    stream_response(flow, meter)
    flow.response.stream(xai_chunk("Coca", 1, 1000) + xai_chunk(" word" * 50, 51, 51000))
    flow.error = tflow.terr("Client disconnected.")
    meter.error(flow)
    [rec] = await submitted(meter)
    assert rec.provider == "x-ai"
    assert (rec.usage_source, rec.input_tokens) == ("estimated", 640)
    assert rec.output_tokens >= 51
    assert (rec.price_status, rec.cost_usd) == ("provider_reported", Decimal("0.0000051"))
    assert rec.error == f"Client disconnected.; {PARTIAL_USAGE_NOTE}; {PARTIAL_COST_NOTE}"


async def test_a_cut_stream_is_estimated_at_shutdown_too(meter: Meter) -> None:
    flow = make_flow("https://api.anthropic.com/v1/messages", {"model": "claude-haiku-4-5", "stream": True})
    await run_request(meter, flow)
    stream_response(flow, meter)
    upstream = (FIXTURES / "anthropic_stream.sse").read_bytes()
    flow.response.stream(upstream[: upstream.index(b"event: message_delta")])
    meter_module.ctx.master.should_exit.set()  # SIGTERM: done runs before the flows end
    meter.done()
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert rec.usage_source == "estimated" and rec.aborted is True
    assert rec.output_tokens == count_text("Let me look that up for you \u2014 one moment.", None)
    assert rec.input_tokens == 5925


async def test_a_stream_abandoned_before_its_final_event_leaves_nothing_behind(meter: Meter) -> None:
    """The tap's final-event callback holds the flow; once the call is finished it must let go."""
    flow = make_flow("https://api.anthropic.com/v1/messages", {"model": "claude-haiku-4-5", "stream": True})
    await run_request(meter, flow)
    stream_response(flow, meter)
    upstream = (FIXTURES / "anthropic_stream.sse").read_bytes()
    flow.response.stream(upstream[: upstream.index(b"event: message_delta")])
    flow.error = tflow.terr("Client disconnected.")
    meter.error(flow)
    [rec] = await submitted(meter)  # its output estimated (the final usage never came)
    assert meter.store.journaled == [rec.id]  # type: ignore[union-attr]  # ahead of the estimate only
    gone = weakref.ref(flow)
    del flow
    gc.collect()
    assert gone() is None and len(meter._calls) == 0


async def test_a_client_that_hangs_up_after_the_final_event_got_the_whole_answer(meter: Meter) -> None:
    flow = make_flow("https://api.anthropic.com/v1/messages", {"model": "claude-haiku-4-5", "stream": True})
    await run_request(meter, flow)
    stream_response(flow, meter)
    upstream = (FIXTURES / "anthropic_stream.sse").read_bytes()
    assert flow.response.stream(upstream) == upstream  # message_stop went by: journaled first
    [early] = meter.store.journaled  # type: ignore[union-attr]
    flow.error = tflow.terr("Client disconnected.")
    meter.error(flow)  # the body never ended
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert rec.id == early
    assert rec.aborted is False and rec.streamed is True and rec.output_tokens is not None
    assert "Client disconnected." in (rec.error or "")


@pytest.mark.parametrize(
    ("url", "method"),
    [
        ("https://example.org/v1/chat/completions", "POST"),
        ("https://api.openai.com/v1/models", "GET"),
        ("https://api.openai.com/v1/files", "POST"),
        ("https://api.anthropic.com/v1/messages/count_tokens", "POST"),
    ],
)
async def test_non_billable_requests_are_left_alone(meter: Meter, url: str, method: str) -> None:
    flow = make_flow(url, {"model": "gpt-4o", "stream": True}, method=method)
    original = flow.request.content
    await run_request(meter, flow)
    flow.response = http.Response.make(200, b"{}", {"content-type": "application/json"})
    await meter.response(flow)
    assert meter.call_state(flow) is None
    assert flow.request.content == original
    assert meter.store.records == []  # type: ignore[union-attr]


async def test_non_json_request_and_response_pass_and_say_why(meter: Meter) -> None:
    flow = make_flow("https://api.openai.com/v1/chat/completions", b"\x00not json")
    await run_request(meter, flow)
    assert flow.request.content == b"\x00not json"
    flow.response = http.Response.make(200, b"<html>oops</html>", {"content-type": "text/html"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert rec.input_tokens is None and rec.usage_source == "none"
    assert "request body is not JSON" in (rec.error or "")


async def test_upstream_error_is_recorded_unbilled_status(meter: Meter) -> None:
    flow = make_flow("https://api.openai.com/v1/chat/completions", {"model": "gpt-4o", "messages": []})
    await run_request(meter, flow)
    flow.response = http.Response.make(
        429, b'{"error":{"message":"slow down"}}', {"content-type": "application/json"}
    )
    meter.responseheaders(flow)
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert rec.status_code == 429 and rec.input_tokens is None
    assert "429" in (rec.error or "")


async def test_upstream_unreachable_is_recorded_not_billed(meter: Meter) -> None:
    flow = make_flow("https://api.openai.com/v1/chat/completions", {"model": "gpt-4o", "messages": []})
    await run_request(meter, flow)
    flow.server_conn.timestamp_tcp_setup = None  # never connected
    flow.error = tflow.terr("Connection refused")
    meter.error(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert rec.status_code is None and rec.price_status == "not_billed" and rec.cost_usd == 0


async def test_abort_after_the_request_went_out_is_estimated_not_called_free(meter: Meter) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Count the stars tonight."}]}
    flow = on_kept_alive_connection(make_flow("https://api.openai.com/v1/chat/completions", body))
    await run_request(meter, flow)
    assert flow.server_conn.timestamp_tcp_setup is not None and flow.request.timestamp_end is not None
    flow.error = tflow.terr("Client disconnected.")
    meter.error(flow)
    records = meter.store.records  # type: ignore[union-attr]
    for _ in range(300):  # the estimate runs in a worker thread, then the row is submitted
        if records:
            break
        await asyncio.sleep(0.01)
    [rec] = records
    assert meter.store.journaled == [rec.id]  # type: ignore[union-attr]  # journaled before the estimate
    assert rec.aborted is True and rec.price_status is None  # priced by the store like any call
    assert rec.usage_source == "estimated"
    assert rec.input_tokens == estimate_input("chat", body, "gpt-4o") and rec.output_tokens == 0


async def test_rewritten_body_keeps_lone_surrogates_and_the_row_tells_the_truth(meter: Meter) -> None:
    raw = (
        b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "cut \\ud83d"}]}'
    )
    flow = make_flow("https://api.openai.com/v1/chat/completions", raw)
    await run_request(meter, flow)
    sent = json.loads(flow.request.content)
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][0]["content"] == "cut \ud83d"
    assert meter.call_state(flow).injected_usage is True  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        (b'{"a":1}', b'{"a":1,"stream_options":{"include_usage":true}}'),
        (b'{ "a" : {"b": "}"} }\r\n', b'{ "a" : {"b": "}"},"stream_options":{"include_usage":true}}\r\n'),
        (b"{}", b'{"stream_options":{"include_usage":true}}'),
        (b"\n{ \t}\n", b'\n{"stream_options":{"include_usage":true}}\n'),
        (b'{"x": "{"}', b'{"x": "{","stream_options":{"include_usage":true}}'),
    ],
)
def test_usage_request_is_spliced_into_the_clients_bytes(raw: bytes, sent: bytes) -> None:
    assert _with_usage_requested(raw) == sent
    assert json.loads(sent) == {**json.loads(raw), "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-16"])
def test_a_body_json_reads_but_not_as_utf8_is_not_spliced(encoding: str) -> None:
    raw = '{"a": 1}'.encode(encoding)
    assert json.loads(raw) == {"a": 1}
    assert _with_usage_requested(raw) is None


def test_a_utf8_bom_is_kept_and_an_empty_body_is_not_spliced() -> None:
    bom = b"\xef\xbb\xbf"
    spliced = _with_usage_requested(bom + b' {"a":1}')
    assert spliced == bom + b' {"a":1,"stream_options":{"include_usage":true}}'
    assert _with_usage_requested(b"") is None
    assert _with_usage_requested(b"  ") is None


async def test_injected_usage_keeps_every_byte_the_client_sent(meter: Meter) -> None:
    """A prompt may be megabytes: the member is added, nothing re-encoded (é stays UTF-8, spacing stays)."""
    raw = '{"model" : "gpt-4o-mini",\n "stream": true, '
    raw += '"messages": [{"role": "user", "content": "é \\u00e9"}]}\n'
    flow = make_flow("https://api.openai.com/v1/chat/completions", raw.encode())
    await run_request(meter, flow)
    assert flow.request.content == raw.encode()[:-2] + b',"stream_options":{"include_usage":true}}\n'
    assert flow.request.headers["content-length"] == str(len(flow.request.content))


async def test_a_stream_options_without_usage_is_rewritten(meter: Meter) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": None, "messages": []}
    flow = make_flow("https://api.openai.com/v1/chat/completions", body)
    await run_request(meter, flow)
    assert json.loads(flow.request.content) == {**body, "stream_options": {"include_usage": True}}


def test_interception_only_provider_hosts_lazy_and_loopback() -> None:
    addon = Interception()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, allow_hosts=["^internal\\.example:443$"])
        opts = tctx.options
        assert opts.allow_hosts[0] == "^internal\\.example:443$"
        assert "^api\\.openai\\.com:443$" in opts.allow_hosts
        assert "^api\\.anthropic\\.com:443$" in opts.allow_hosts
        assert opts.connection_strategy == "lazy"
        assert opts.listen_host == "127.0.0.1"


def test_the_startup_heap_is_frozen_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full collections skip what start-up left alive (a ~55 ms stop of the loop before)."""
    import addon.meter as meter_module

    calls: list[str] = []
    monkeypatch.setattr(meter_module, "_startup_heap_frozen", False)
    monkeypatch.setattr(meter_module.gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(meter_module.gc, "freeze", lambda: calls.append("freeze"))
    meter_module.freeze_startup_heap()
    meter_module.freeze_startup_heap()
    assert calls == ["collect", "freeze"]  # garbage first, so none is kept for good; only once


def test_remembered_fingerprints_hold_no_key_and_match_sha256() -> None:
    from addon import api_keys

    keys = [f"sk-test-{i:04d}-abcdefghijklmnopqrstuvwxyz" for i in range(300)]  # more than it keeps
    for key in keys + keys[-5:]:
        assert api_keys.recent_key_fingerprint(key) == key_fingerprint(key)
    remembered = api_keys._recent_fingerprints
    assert 0 < len(remembered) <= 256
    assert all(isinstance(k, int) for k in remembered)  # Python's hash of a key, never the key
    assert not any(key in repr(remembered) for key in keys)


async def test_the_remembered_host_follows_each_requests_host_header(meter: Meter) -> None:
    """One connection, several Host headers (and none): each request goes by its own."""
    client = tflow.tclient_conn()
    seen = []
    paths = {"api.anthropic.com": "/v1/messages"}
    for host in ("api.openai.com", "api.anthropic.com", "api.openai.com", "example.com"):
        path = paths.get(host, "/v1/chat/completions")
        flow = make_flow(f"https://api.openai.com{path}", {"model": "gpt-4o-mini", "messages": []})
        flow.client_conn = client
        flow.request.headers["host"] = host
        meter.requestheaders(flow)
        state = meter.call_state(flow)
        seen.append(state.record.provider if state is not None else None)
    assert seen == ["openai", "anthropic", "openai", None]
    flow = make_flow("https://api.anthropic.com/v1/messages", {"model": "claude-haiku-4-5", "messages": []})
    assert "host" not in flow.request.headers  # no Host header: the request's own host
    meter.requestheaders(flow)
    state = meter.call_state(flow)
    assert state is not None and state.record.host == "api.anthropic.com"


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        (  # an Assistants run: no model named, not metered
            "POST",
            "https://api.openai.com/v1/threads/thread_1/runs",
            {"assistant_id": "asst_1", "stream": True},
        ),
        ("GET", "https://api.openai.com/v1/responses/resp_1?stream=true", b""),
    ],
)
async def test_a_stream_on_a_provider_host_that_is_not_metered_still_passes_as_it_comes(
    meter: Meter, method: str, url: str, body: bytes | dict
) -> None:
    """The host is intercepted because it is a provider's; mitmproxy would hold the body whole."""
    flow = make_flow(url, body, method=method)
    await run_request(meter, flow)
    assert meter.call_state(flow) is None
    stream_response(flow, meter)
    assert flow.response.stream is True
    flow = make_flow(url, body, method=method)
    await run_request(meter, flow)
    flow.response = http.Response.make(200, b"{}", {"content-type": "application/json"})
    meter.responseheaders(flow)
    assert flow.response.stream is False  # a whole body stays buffered, as mitmproxy does it


@pytest.mark.parametrize(
    ("headers", "streamed"),
    [
        ({"content-type": "application/octet-stream", "content-length": str(64 * 1024 * 1024)}, True),
        ({"content-type": "application/jsonl", "transfer-encoding": "chunked"}, True),  # size unknown
        ({"content-type": "application/json", "content-length": "2048"}, False),
    ],
)
async def test_a_large_download_on_a_provider_host_passes_as_it_comes(
    meter: Meter, headers: dict[str, str], streamed: bool
) -> None:
    """A file's content (batch results: hundreds of MB) is nothing to meter: mitmproxy held it
    whole in memory before the client got its first byte. A small JSON answer stays whole."""
    flow = make_flow("https://api.openai.com/v1/files/file-abc/content", b"", method="GET")
    await run_request(meter, flow)
    assert meter.call_state(flow) is None
    flow.response = http.Response.make(200)
    flow.response.headers.clear()
    flow.response.headers.update(headers)  # make() would set the length of its empty body
    flow.response.stream = False
    meter.responseheaders(flow)
    assert flow.response.stream is streamed


async def test_a_metered_stream_answered_with_an_error_status_is_not_held_back(meter: Meter) -> None:
    flow = make_flow(CHAT_URL, {"model": "gpt-4o-mini", "stream": True, "messages": []})
    await run_request(meter, flow)
    flow.response = http.Response.make(503, b"", {"content-type": "text/event-stream"})
    flow.response.stream = False
    meter.responseheaders(flow)
    assert flow.response.stream is True
    await meter.response(flow)
    [record] = meter.store.records  # type: ignore[union-attr]
    assert (record.status_code, record.error) == (503, "upstream answered 503")


async def test_a_stream_with_an_empty_body_was_not_aborted(meter: Meter) -> None:
    """Upstream ends the response with its headers (Content-Length: 0, HTTP/2 END_STREAM):
    mitmproxy never calls the stream callable, only the response hook."""
    flow = make_flow(
        "https://api.anthropic.com/v1/messages",
        {"model": "claude-haiku-4-5", "stream": True, "max_tokens": 5, "messages": []},
        headers={"x-api-key": "sk-ant-test-0123456789abcdefghij"},
    )
    await run_request(meter, flow)
    stream_response(flow, meter)
    await meter.response(flow)
    await asyncio.gather(*meter._estimates)
    [record] = meter.store.records  # type: ignore[union-attr]
    assert (record.streamed, record.aborted, record.status_code) == (True, False, 200)


async def test_a_gzip_stream_padded_between_members_is_metered_and_forwarded_decoded(meter: Meter) -> None:
    flow = make_flow(CHAT_URL, {"model": "gpt-4o-mini", "stream": True, "messages": []})
    await run_request(meter, flow)
    stream_response(flow, meter, {"content-encoding": "gzip"})
    assert "content-encoding" not in flow.response.headers  # injected usage: forwarded decoded
    upstream = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    wire = gzip.compress(upstream[:300]) + b"\x00\x00" + gzip.compress(upstream[300:])
    out = feed(flow, wire, 10_000)
    await meter.response(flow)
    [record] = meter.store.records  # type: ignore[union-attr]
    assert record.usage_source == "reported" and record.error is None
    assert out.startswith(b"data: ") and b"[DONE]" in out


HAIKU, SONNET = "anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-5-sonnet-20240620-v1:0"
LIMITED = f"""
environments:
  development:
    models:
      allow: [gpt-4o-mini, {HAIKU}]
      downgrade: {{gpt-4o: gpt-4o-mini, {SONNET}: {HAIKU}}}
    rate_limit: {{requests_per_minute: 1}}
"""
BEDROCK_SIGNATURE = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY000001/20261128/us-east-1/bedrock/aws4_request"


@pytest.mark.parametrize(
    ("url", "body", "headers"),
    [
        (CHAT_URL, {"messages": []}, {}),  # no model: refused where models are restricted
        (  # a downgrade the proxy cannot make: SigV4 signs the body
            f"https://bedrock-runtime.us-east-1.amazonaws.com/model/{SONNET}/converse",
            {"messages": []},
            {"authorization": BEDROCK_SIGNATURE},
        ),
    ],
)
async def test_a_call_the_proxy_refuses_after_deciding_takes_no_rate_limit_slot(
    meter: Meter, url: str, body: dict, headers: dict
) -> None:
    meter._apply(parse_policies(LIMITED))
    refused = make_flow(url, body, headers=headers)
    await run_request(meter, refused)
    assert refused.response is not None and refused.response.status_code == 403
    allowed = make_flow(CHAT_URL, {"model": "gpt-4o-mini", "messages": []})
    await run_request(meter, allowed)
    assert allowed.response is None  # the minute's one call: the refused one never went upstream
    again = make_flow(CHAT_URL, {"model": "gpt-4o-mini", "messages": []})
    await run_request(meter, again)
    assert again.response is not None and again.response.status_code == 429


async def test_a_gzip_request_reserves_on_its_decoded_size(meter: Meter) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 100, period: day}\n"))
    body = {"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": "hello " * 50000}]}
    plain = make_flow(CHAT_URL, body)
    await run_request(meter, plain)
    dev = Scope("environment", "development")
    one = meter.enforcer.budgets.reserved()[dev]
    raw = json.dumps(body).encode()
    zipped = make_flow(CHAT_URL, raw, headers={"content-encoding": "gzip"})
    zipped.request.raw_content = gzip.compress(raw)
    await run_request(meter, zipped)
    assert zipped.response is None
    assert meter.enforcer.budgets.reserved()[dev] == 2 * one  # the same prompt, the same estimate


async def test_calls_finished_without_a_store_release_their_reservations(tmp_path: Path) -> None:
    """tokometer_db switched at run time to a path that cannot be created: no store; the calls
    still pass, and what they reserved must not stay reserved for the proxy's life."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        policies = tmp_path / "policies.yaml"
        policies.write_text("environments:\n  development:\n    budget: {usd: 1, period: day}\n")
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"), tokometer_policies=str(policies))
        addon.running()
        try:
            blocked = tmp_path / "a-file"
            blocked.write_text("")
            tctx.configure(addon, tokometer_db=str(blocked / "spend.duckdb"))  # logged by mitmproxy
            assert addon.store is None
            for usage in (None, {"prompt_tokens": 1000, "completion_tokens": 100}):
                flow = make_flow(CHAT_URL, {"model": "gpt-4o", "max_tokens": 20000, "messages": []})
                flow.request.timestamp_start = datetime.now(UTC).timestamp()  # today's budget
                await run_request(addon, flow)
                assert flow.response is None and addon.enforcer.budgets.reserved()
                answer = {"model": "gpt-4o", "choices": []} | ({"usage": usage} if usage else {})
                flow.response = http.Response.make(
                    200, json.dumps(answer), {"content-type": "application/json"}
                )
                await addon.response(flow)
                await asyncio.gather(*addon._estimates)
                assert addon.enforcer.budgets.reserved() == {}
            [budget] = addon.enforcer.budgets.status(datetime.now(UTC))
            assert budget["spent"] >= Decimal("0.0035")  # 1,000 in + 100 out of gpt-4o
        finally:
            addon.done()


async def test_a_whole_gemini_answer_sent_as_sse_is_buffered_and_metered(meter: Meter) -> None:
    """:generateContent?alt=sse is no stream to tap: mitmproxy keeps the body, the parser reads it whole."""
    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent?alt=sse"
    flow = make_flow(url, {"contents": []}, headers={"x-goog-api-key": "AIza-test-0123456789"})
    await run_request(meter, flow)
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
    sse = b"data: " + json.dumps({"candidates": [], "usageMetadata": usage}).encode() + b"\r\n\r\n"
    flow.response = http.Response.make(200, sse, {"content-type": "text/event-stream"})
    flow.response.stream = False
    meter.responseheaders(flow)
    assert flow.response.stream is False
    await meter.response(flow)
    [record] = meter.store.records  # type: ignore[union-attr]
    assert (record.api_flavor, record.input_tokens, record.output_tokens) == ("generate", 10, 5)


async def test_a_blocked_gemini_prompt_stream_stays_reported(meter: Meter) -> None:
    """Review: a complete Gemini stream (a blocked prompt: one chunk, blockReason and the usage, no
    candidates; the body ends normally) was marked estimated with the partial-usage note."""
    from tests.test_gemini_parser import BLOCKED

    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    flow = make_flow(url, body, headers={"x-goog-api-key": "AIza-test-0123456789"})
    del flow.request.headers["authorization"]  # Gemini's key only
    await run_request(meter, flow)
    stream_response(flow, meter)
    flow.response.stream(b"data: " + json.dumps(BLOCKED).encode() + b"\r\n\r\n")
    flow.response.stream(b"")
    await meter.response(flow)
    [rec] = await submitted(meter)
    assert (rec.input_tokens, rec.output_tokens, rec.aborted) == (8, 0, False)
    assert (rec.usage_source, rec.error) == ("reported", None)


async def test_a_gemini_stream_ended_inside_its_finishing_chunk_is_estimated(meter: Meter) -> None:
    """Review: a body that ends inside the finishing chunk, past its "finishReason" but before its
    usage: the unparseable fragment's text made the chunk before's running count final ('reported',
    no note, the final event seen). The output is now estimated from the text seen."""
    from tests.test_gemini_parser import SSE_STREAM

    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    flow = make_flow(url, body, headers={"x-goog-api-key": "AIza-test-0123456789"})
    del flow.request.headers["authorization"]
    await run_request(meter, flow)
    stream_response(flow, meter)
    cut = SSE_STREAM.rindex(b'"finishReason"') + len(b'"finishReason": "STOP"') + 2
    flow.response.stream(SSE_STREAM[:cut])
    flow.response.stream(b"")
    await meter.response(flow)
    [rec] = await submitted(meter)
    assert (rec.usage_source, rec.error) == ("estimated", PARTIAL_USAGE_NOTE)
    assert rec.input_tokens == 27 and rec.output_tokens >= 118 + 9


async def test_a_codex_compaction_is_metered(meter: Meter) -> None:
    """POST /v1/responses/compact (Codex CLI's /compact and auto-compaction) runs the model over the
    whole history and answers with a Responses usage."""
    flow = make_flow(
        "https://api.openai.com/v1/responses/compact",
        {"model": "gpt-5-codex", "input": [{"role": "user", "content": "a long history"}]},
    )
    await run_request(meter, flow)
    answer = {
        "id": "cmp_1",
        "object": "response.compaction",
        "output": [{"type": "compaction", "encrypted_content": "..."}],
        "usage": {
            "input_tokens": 180_000,
            "input_tokens_details": {"cached_tokens": 20_000},
            "output_tokens": 4_000,
            "output_tokens_details": {"reasoning_tokens": 1_000},
        },
    }
    flow.response = http.Response.make(200, json.dumps(answer), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [record] = meter.store.records  # type: ignore[union-attr]
    assert (record.api_flavor, record.model_requested, record.usage_source) == (
        "responses",
        "gpt-5-codex",
        "reported",
    )
    assert (record.input_tokens, record.cache_read_tokens, record.output_tokens, record.reasoning_tokens) == (
        180_000,
        20_000,
        4_000,
        1_000,
    )


def finished_call(meter: Meter, i: int, model: str, output: int, **kw) -> CallRecord:
    """A finished call with reported usage, as the store's writer hands it to the listeners."""
    record = CallRecord(
        id=f"done-{model}-{i}",
        ts=datetime.now(UTC),
        session_id=meter.session_id,
        environment=kw.pop("environment", "development"),
        provider="openai",
        host="api.openai.com",
        path="/v1/chat/completions",
        api_flavor="chat",
        model_requested=model,
        model_sent=model,
        status_code=200,
    )
    record.set_usage(Usage(input_tokens=100, output_tokens=output, reasoning_tokens=output // 2))
    for name, value in kw.items():
        setattr(record, name, value)
    meter._price(record)
    return record


async def test_an_uncapped_call_reserves_its_models_recent_p90_and_a_capped_one_its_cap(meter: Meter) -> None:
    """o3 wrote 4,000 .. 6,000 output tokens in its last 21 calls here (fed as the store's writer
    feeds the budgets): a call with no output cap reserves their 90th percentile, 5,800, not
    1,000; a call with a cap reserves its cap, lower or higher."""
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 100, period: day}\n"))
    meter._on_finished([finished_call(meter, i, "o3", 4000 + 100 * i) for i in range(21)])
    dev = Scope("environment", "development")
    prompt = [{"role": "user", "content": "think hard"}]

    async def reserved(body: dict) -> Decimal:
        flow = make_flow(CHAT_URL, body)
        await run_request(meter, flow)
        assert flow.response is None
        amount = meter.enforcer.budgets.reserved()[dev]
        meter.enforcer.budgets.settle(meter.call_state(flow).record.id)
        return amount

    def input_usd(body: dict, per_million: str) -> Decimal:
        return Decimal(len(json.dumps(body)) // 4) * Decimal(per_million) / 1_000_000

    uncapped = {"model": "o3", "messages": prompt}  # o3: $2 in, $8 out per 1M
    assert await reserved(uncapped) == input_usd(uncapped, "2") + Decimal("0.0464")  # 5,800 out
    below = {**uncapped, "max_completion_tokens": 2000}
    assert await reserved(below) == input_usd(below, "2") + Decimal("0.016")  # its cap: 2,000 out
    above = {**uncapped, "max_output_tokens": 50_000}  # a cap is an upper bound: never lowered
    assert await reserved(above) == input_usd(above, "2") + Decimal("0.4")  # 50,000 out
    other = {"model": "o4-mini", "messages": prompt}  # no history: 1,000 out at $4.40/M
    assert await reserved(other) == input_usd(other, "1.1") + Decimal("0.0044")
    assert meter.enforcer.budgets.reserved() == {}


DAY_BUDGET = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
GEMINI_PRO = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro"
VERTEX_PRO = (
    "https://aiplatform.googleapis.com/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-pro"
)


async def reserved_for(meter: Meter, url: str, body: dict, headers: dict | None = None) -> Decimal:
    """What one call, let through now, reserves against development's budget (then given back)."""
    flow = make_flow(url, body, headers=headers)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is None
    amount = meter.enforcer.budgets.reserved()[Scope("environment", "development")]
    meter.enforcer.budgets.settle(meter.call_state(flow).record.id)  # type: ignore[union-attr]
    return amount


def output_usd(tokens: int, per_million: str) -> Decimal:
    return Decimal(tokens) * Decimal(per_million) / 1_000_000


async def test_n_choices_are_reserved_n_times(meter: Meter) -> None:
    """max_tokens bounds EACH choice: n=8, max_tokens=4000 may write 32,000 output tokens. The
    reservation counted 4,000 (a review's finding)."""
    meter._apply(parse_policies(DAY_BUDGET))
    prompt = [{"role": "user", "content": "hi"}]
    body = {"model": "gpt-4o", "n": 8, "max_tokens": 4000, "messages": prompt}
    one = {**body, "n": 1}
    eight = await reserved_for(meter, CHAT_URL, body)
    assert eight >= output_usd(8 * 4000, "10")  # gpt-4o: $10 per 1M output
    # the prompt is billed once: only the output is counted n times
    assert eight - await reserved_for(meter, CHAT_URL, one) == output_usd(7 * 4000, "10")


async def test_twenty_simultaneous_n_calls_overshoot_by_at_most_one_call(meter: Meter) -> None:
    """The promise: 20 simultaneous calls against a nearly spent budget overshoot it by at most one
    call's cost. $0.30 left, each call may cost $0.32 (8 x 4,000 gpt-4o output tokens): only the
    first passes. Reserving one choice ($0.04), eight passed (up to ~$2.56)."""
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 1, period: day}\n"))
    dev = Scope("environment", "development")
    meter.enforcer.budgets.record((dev,), Decimal("0.70"), datetime.now(UTC))
    body = {"model": "gpt-4o", "n": 8, "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}
    flows = [make_flow(CHAT_URL, body) for _ in range(20)]
    for flow in flows:
        flow.request.timestamp_start = datetime.now(UTC).timestamp()
        await run_request(meter, flow)
    allowed = sum(1 for flow in flows if flow.response is None)
    assert allowed == 1, f"{allowed} of 20 calls allowed with $0.30 left, each up to $0.32"


@pytest.mark.parametrize(
    ("url", "config"),
    [
        (f"{GEMINI_PRO}:generateContent", "generationConfig"),
        (f"{GEMINI_PRO}:streamGenerateContent?alt=sse", "generationConfig"),
        # the proto field's own name, which Google's JSON parsers take too
        (f"{GEMINI_PRO}:generateContent", "generation_config"),
        (f"{VERTEX_PRO}:generateContent", "generationConfig"),
        (f"{VERTEX_PRO}:streamGenerateContent", "generation_config"),
    ],
)
async def test_gemini_candidate_count_is_reserved(meter: Meter, url: str, config: str) -> None:
    """candidateCount answers, each up to maxOutputTokens, on Gemini and Vertex, streamed or not."""
    meter._apply(parse_policies(DAY_BUDGET))
    headers = {"x-goog-api-key": "AIza-test-0123456789"}
    count = "candidateCount" if config == "generationConfig" else "candidate_count"
    cap = "maxOutputTokens" if config == "generationConfig" else "max_output_tokens"
    one = {"contents": [], config: {cap: 8000, count: 1}}
    eight = {"contents": [], config: {cap: 8000, count: 8}}
    reserved = await reserved_for(meter, url, eight, headers)
    assert reserved >= output_usd(8 * 8000, "10")  # gemini-2.5-pro: $10 per 1M output
    assert reserved - await reserved_for(meter, url, one, headers) == output_usd(7 * 8000, "10")


async def test_an_uncapped_call_reserves_its_models_p90_for_each_answer(meter: Meter) -> None:
    """The history is of answers (most calls ask for one): n answers without a cap reserve n p90s."""
    meter._apply(parse_policies(DAY_BUDGET))
    meter._on_finished([finished_call(meter, i, "o3", 4000 + 100 * i) for i in range(21)])  # p90: 5,800
    body = {"model": "o3", "messages": [{"role": "user", "content": "think hard"}]}
    three = await reserved_for(meter, CHAT_URL, {**body, "n": 3})
    assert three - await reserved_for(meter, CHAT_URL, {**body, "n": 1}) == output_usd(2 * 5800, "8")


async def test_a_call_of_several_answers_says_so_on_its_row(meter: Meter) -> None:
    """The row carries the answers a call asked for (column ``answers``, NULL for one), written at
    the request: the history read back from the database at a restart divides by it."""
    body = {"model": "o3", "messages": [{"role": "user", "content": "takes"}]}
    for extra, answers in (({"n": 8}, 8), ({"n": 1}, None), ({}, None)):
        flow = make_flow(CHAT_URL, {**body, **extra})
        await run_request(meter, flow)
        assert meter.call_state(flow).record.answers == answers  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("flavor", "body", "answers"),
    [
        ("chat", {"n": 8}, 8),
        ("chat", {"n": 10**9}, 128),  # OpenAI's n: 1 to 128 (the API reference)
        ("chat", {"n": "8"}, 128),  # not a count: the most the API takes
        ("chat", {"n": 8.0}, 128),
        ("chat", {"n": True}, 128),
        ("chat", {"n": 0}, 1),  # a count the API refuses: one answer
        ("chat", {"n": None}, 1),
        ("chat", {}, 1),
        ("completions", {"n": 2, "best_of": 5}, 5),  # best_of written (and billed), n returned
        ("completions", {"best_of": 10**6}, 20),  # best_of: at most 20
        ("invoke", {"n": 4}, 4),  # Bedrock InvokeModel: the model's own body (AI21 Jamba's n)
        ("generate", {"generationConfig": {"candidateCount": 8}}, 8),
        ("stream", {"generationConfig": {"candidateCount": 10**9}}, 8),  # Gemini: 1 to 8
        ("stream", {"generation_config": {"candidate_count": 3}}, 3),  # the proto field's own name
        ("generate", {"generationConfig": {"candidateCount": "3"}}, 8),
        (
            "generate",
            {"generationConfig": {"candidateCount": 2}, "generation_config": {"candidate_count": 5}},
            5,
        ),
        ("generate", {"generationConfig": "8"}, 1),
        # no such field: one answer (Anthropic's Messages, Bedrock's Converse, OpenAI's Responses...)
        ("messages", {"n": 8}, 1),
        ("converse", {"n": 8, "inferenceConfig": {"n": 8}}, 1),
        ("responses", {"n": 8}, 1),
        ("interactions", {"n": 8, "generation_config": {"candidate_count": 8}}, 1),
        ("generate", {"n": 8}, 1),
        ("chat", {"generationConfig": {"candidateCount": 8}}, 1),
        (None, {"n": 8}, 1),
        ("chat", None, 1),
    ],
)
def test_answer_counts_are_bounded_and_read_where_the_api_takes_them(
    flavor: str | None, body: dict | None, answers: int
) -> None:
    from addon.reservation import answers_asked

    assert answers_asked(flavor, body) == answers


async def test_an_anthropic_call_is_one_answer_whatever_it_says(meter: Meter) -> None:
    """Messages has no n (the API refuses it): a body naming one reserves what it would without."""
    meter._apply(parse_policies(DAY_BUDGET))
    url, headers = "https://api.anthropic.com/v1/messages", {"x-api-key": "sk-ant-test-0123456789"}
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [], "n": 9}
    same_size = {**body, "n": 8}
    assert await reserved_for(meter, url, body, headers) == await reserved_for(meter, url, same_size, headers)
    assert await reserved_for(meter, url, body, headers) < output_usd(2000, "15")


def test_a_database_that_cannot_give_the_history_only_means_none(
    meter: Meter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The start's load never fails over the history: a problem is one warning, and uncapped
    calls reserve what was seen (here nothing: the fallback)."""
    con = duckdb.connect(str(tmp_path / "no-calls.duckdb"))  # no calls table
    try:
        meter._load_outputs(con)
    finally:
        con.close()
    assert meter.outputs.reserved("openai", "o3") == 1000
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("tokometer: no history of output tokens from ")


def test_an_unpriced_model_escaping_a_budget_is_said_once_per_scope_and_model(
    meter: Meter, caplog: pytest.LogCaptureFixture
) -> None:
    """A model no price list knows costs $0 against the budgets: the first such call with usage
    in a budgeted scope is logged, notified and stored as an event, once per (scope, provider,
    model) for the proxy's run; never for a scope without a budget, a priced call or one without
    usage."""
    from addon.notify import Notifier

    sent: list[list[str]] = []
    meter.notifier = Notifier(
        runner=lambda argv, timeout: sent.append(list(argv)) or 0,
        platform="linux",
        environ={"DISPLAY": ":0"},
        which=lambda name: f"/usr/bin/{name}",
    )
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
            "users:\n  build-bot: {budget: {usd: 5, period: week}}\n"
        )
    )
    caplog.set_level(logging.INFO, logger="tokometer")
    new = "brand-new-model-x"
    for i in range(3):  # three batches from the writer, two unpriced calls each
        batch = [finished_call(meter, 10 * i + j, new, 500, user_name="build-bot") for j in range(2)]
        assert all((r.price_status, r.cost_usd) == ("unknown_model", None) for r in batch)
        meter._on_finished(batch)
    meter._on_finished(
        [
            finished_call(meter, 40, new, 500, environment="production"),  # production has no budget
            finished_call(meter, 41, "gpt-4o-mini", 500),  # priced
            finished_call(meter, 42, "another-new-model", 0, input_tokens=None, output_tokens=None),
        ]
    )
    meter._on_finished([finished_call(meter, 50, "another-new-model", 80)])
    assert meter.notifier.wait_idle(5.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    development, bot, another = warnings
    assert development.startswith(f"tokometer: {new} (openai) has no price: its calls count $0 against the ")
    assert "development budget of $100.00 per day" in development
    assert "user build-bot budget of $5.00 per week" in bot and new in bot
    assert "development budget" in another and "another-new-model" in another
    for warning in warnings:
        assert "prices:" in warning and "policies.yaml" in warning and "scripts/spend unpriced" in warning
    events = meter.store.events  # type: ignore[attr-defined]
    assert [(e.kind, e.scope_kind, e.scope_name) for e in events] == [
        ("budget_unpriced", "environment", "development"),
        ("budget_unpriced", "user", "build-bot"),
        ("budget_unpriced", "environment", "development"),
    ]
    assert [json.loads(e.data)["model"] for e in events] == [new, new, "another-new-model"]
    assert [e.message for e in events] == [w.removeprefix("tokometer: ") for w in warnings]
    assert len(sent) == 3 and all(new in argv[-1] for argv in sent[:2]) and "another-new-model" in sent[2][-1]


async def test_a_failing_reservation_leaves_the_policy_decision_standing(
    meter: Meter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An estimate that raises (a bug, an input nobody foresaw) used to fail the whole hook: the call
    then passed unchecked, neither downgraded nor rate limited. It reserves its text alone instead."""
    import addon.reservation as reservation_module

    def broken(body: object) -> None:
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    monkeypatch.setattr(reservation_module, "image_tool_tokens", broken)
    meter._apply(
        parse_policies(
            LIMITED.replace("    rate_limit:", "    budget: {usd: 100, period: day}\n    rate_limit:")
        )
    )
    first = make_flow(CHAT_URL, {"model": "gpt-4o", "messages": []})
    with caplog.at_level(logging.ERROR, logger="tokometer"):
        await run_request(meter, first)
    assert first.response is None and json.loads(first.request.content)["model"] == "gpt-4o-mini"
    assert "reservation failed; it reserves its text alone" in caplog.text
    assert sum(meter.enforcer.budgets.reserved().values()) > 0  # its text, reserved
    second = make_flow(CHAT_URL, {"model": "gpt-4o-mini", "messages": []})
    await run_request(meter, second)
    assert second.response is not None and second.response.status_code == 429  # the minute's one call


# -- OpenRouter's `models` fallback list: every entry is held to the allowlist --------------------

OPENROUTER_CHAT = "https://openrouter.ai/api/v1/chat/completions"
OPUS = "anthropic/claude-opus-4.1"
ONLY_MINI = """
environments:
  development:
    models: {{allow: ["*-mini"], on_disallowed: {rule}, downgrade: {{"anthropic/*": openai/gpt-4o-mini}}}}
"""


def sent_body(flow: http.HTTPFlow) -> dict:
    return json.loads(flow.request.get_content() or b"{}")


async def test_an_openrouter_stream_grouped_by_its_server_is_reported_as_sent(meter: Meter) -> None:
    """Review (hypothesis, plain lane): a junk ``{"usage": false}`` event, then the finishing chunk
    in a block of text events the plain lane takes whole, then OpenRouter's trailing usage chunk, no
    ``[DONE]``. The row was 'estimated' with two notes (output estimated, the provider's cost a lower
    bound) though the usage is the call's; fed event by event it was 'reported'. Same tokens, cost."""
    events = [e for e in (FIXTURES / "openrouter_stream.sse").read_bytes().split(b"\n\n") if e]
    events = [e + b"\n\n" for e in events if not e.startswith((b":", b"data: [DONE]"))]
    chunks = [b'data: {"usage":false}\n\n' + events[0], b"".join(events[1:4]), b": keep\n\n" + events[4]]
    body = {"model": "openai/gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow(OPENROUTER_CHAT, body)
    await run_request(meter, flow)
    stream_response(flow, meter)
    for chunk in [*chunks, b""]:
        flow.response.stream(chunk)  # type: ignore[operator]
    await meter.response(flow)
    [rec] = await submitted(meter)
    assert (rec.input_tokens, rec.output_tokens, rec.usage_source, rec.error) == (31, 9, "reported", None)
    assert (rec.price_status, rec.cost_usd) == ("provider_reported", Decimal("0.00001005"))


async def test_openrouter_fallback_models_are_held_to_the_allowlist(meter: Meter) -> None:
    """OpenRouter runs the `models` list's next entry when the one before fails (an over-long
    prompt, a provider error, moderation): only `model` was checked, so claude-opus ran in an
    environment whose allowlist is `*-mini` (a review's finding). Blocked: the call is refused."""
    meter._apply(parse_policies(ONLY_MINI.format(rule="block") + "    budget: {usd: 100, period: day}\n"))
    body = {"model": "openai/gpt-4o-mini", "models": ["openai/gpt-4o-mini", OPUS], "messages": []}
    flow = make_flow(OPENROUTER_CHAT, body)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["x-tokometer-refused"] == "blocked"
    assert OPUS in flow.response.text and "models" in flow.response.text
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == ("blocked", OPUS, None)
    assert meter.enforcer.budgets.reserved() == {}


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        (OPENROUTER_CHAT, {"model": "openai/gpt-4o-mini"}),
        (OPENROUTER_CHAT, {"model": "openai/gpt-4o-mini", "route": "fallback"}),
        ("https://openrouter.ai/api/v1/responses", {"model": "openai/gpt-4o-mini", "input": "hi"}),
    ],
)
async def test_a_disallowed_fallback_model_is_downgraded_like_the_model(
    meter: Meter, url: str, extra: dict
) -> None:
    meter._apply(parse_policies(ONLY_MINI.format(rule="downgrade")))
    body = {**extra, "models": ["openai/gpt-4o-mini", OPUS, "openai/o4-mini"], "messages": []}
    flow = make_flow(url, body)
    await run_request(meter, flow)
    assert flow.response is None
    sent = sent_body(flow)
    assert sent == {**body, "models": ["openai/gpt-4o-mini", "openai/gpt-4o-mini", "openai/o4-mini"]}
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == (
        "downgraded",
        "openai/gpt-4o-mini",
        "openai/gpt-4o-mini",
    )
    notice = meter.call_state(flow).notice  # type: ignore[union-attr]
    assert notice is not None and OPUS in notice and "models" in notice


async def test_a_models_list_without_model_runs_from_its_first_entry(meter: Meter) -> None:
    """Without `model`, OpenRouter starts with the list's first entry: it is the model requested."""
    meter._apply(parse_policies(ONLY_MINI.format(rule="downgrade")))
    flow = make_flow(OPENROUTER_CHAT, {"models": [OPUS, "openai/o4-mini"], "messages": []})
    await run_request(meter, flow)
    assert flow.response is None
    assert sent_body(flow)["models"] == ["openai/gpt-4o-mini", "openai/o4-mini"]
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == (
        "downgraded",
        OPUS,
        "openai/gpt-4o-mini",
    )


@pytest.mark.parametrize(
    "models",
    [
        OPUS,
        ["openai/gpt-4o-mini", 7],
        ["openai/gpt-4o-mini", ""],
        {"first": OPUS},
        ["openai/gpt-4o-mini"] * 65,
    ],
)
async def test_a_fallback_list_that_cannot_be_read_is_refused_where_models_are_restricted(
    meter: Meter, models: object
) -> None:
    body = {"model": "openai/gpt-4o-mini", "models": models, "messages": []}
    meter._apply(parse_policies(ONLY_MINI.format(rule="downgrade")))
    flow = make_flow(OPENROUTER_CHAT, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "models" in flow.response.text
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: ['*']}\n"))
    unrestricted = make_flow(OPENROUTER_CHAT, body)
    await run_request(meter, unrestricted)
    assert unrestricted.response is None and sent_body(unrestricted) == body


async def test_a_call_with_fallbacks_reserves_its_most_expensive_model(meter: Meter) -> None:
    """It may run on any entry: its reservation is priced at the dearest (as sent, after downgrades)."""
    meter._apply(parse_policies(DAY_BUDGET))
    url = OPENROUTER_CHAT
    plain = {
        "model": "openai/gpt-4o-mini",
        "max_tokens": 1000,
        "messages": [],
        "models": ["openai/gpt-4o-mini"],
    }
    opus = {**plain, "models": ["openai/gpt-4o-mini", OPUS]}
    cheap, dear = await reserved_for(meter, url, plain), await reserved_for(meter, url, opus)
    size = len(json.dumps(opus)) // 4
    assert dear == meter.pricer.estimate("openrouter", OPUS, size, 1000) > cheap
    meter._apply(parse_policies(ONLY_MINI.format(rule="downgrade") + "    budget: {usd: 100, period: day}\n"))
    assert await reserved_for(meter, url, opus) == meter.pricer.estimate(
        "openrouter", "openai/gpt-4o-mini", size, 1000
    )


# -- legacy completions (/v1/completions): a call like chat ---------------------------------------

COMPLETIONS_URL = "https://api.openai.com/v1/completions"
COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1764321600,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


async def test_a_legacy_completion_is_metered_and_priced(meter: Meter) -> None:
    flow = make_flow(COMPLETIONS_URL, {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello"})
    await run_request(meter, flow)
    assert meter.call_state(flow) is not None
    flow.response = http.Response.make(200, json.dumps(COMPLETION), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.provider, rec.api_flavor, rec.path) == ("openai", "completions", "/v1/completions")
    assert rec.model_requested == rec.model_sent == rec.model_reported == "gpt-3.5-turbo-instruct"
    assert (rec.input_tokens, rec.output_tokens, rec.usage_source) == (5, 2, "reported")
    assert rec.error is None
    meter._price(rec)  # as the store's writer does
    assert rec.cost_usd == Decimal("0.0000115")  # $1.50 / $2 per 1M


@pytest.mark.parametrize("piece", [1, 10_000])
async def test_a_legacy_completion_stream_gets_usage_injected_and_client_never_sees_it(
    meter: Meter, piece: int
) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello", "stream": True}
    flow = make_flow(COMPLETIONS_URL, body)
    await run_request(meter, flow)
    assert json.loads(flow.request.content)["stream_options"] == {"include_usage": True}
    stream_response(flow, meter)
    upstream = (FIXTURES / "openai_completions_stream.sse").read_bytes()
    client_bytes = feed(flow, upstream, piece)
    await meter.response(flow)
    usage_only = [e for e in upstream.split(b"\n\n") if b'"choices":[]' in e]
    assert len(usage_only) == 1 and client_bytes == upstream.replace(usage_only[0] + b"\n\n", b"")
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.api_flavor, rec.input_tokens, rec.output_tokens) == ("completions", 5, 7)
    assert rec.streamed is True and rec.usage_source == "reported"
    assert rec.model_reported == "gpt-3.5-turbo-instruct:20230824-v2"


async def test_a_compatible_servers_completion_stream_is_metered_without_injection(meter: Meter) -> None:
    """Together (as vLLM and Fireworks) sends usage in its last chunk; the proxy asks nothing of
    an API whose stream_options it does not know."""
    body = {"model": "meta-llama/Llama-3.3-70B-Instruct-Turbo", "prompt": "hi", "stream": True}
    flow = make_flow("https://api.together.xyz/v1/completions", body)
    original = flow.request.content
    await run_request(meter, flow)
    assert flow.request.content == original
    stream_response(flow, meter)
    upstream = (FIXTURES / "openai_completions_stream.sse").read_bytes()
    assert feed(flow, upstream, 64) == upstream
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.provider, rec.api_flavor) == ("together", "completions")
    assert (rec.input_tokens, rec.output_tokens) == (5, 7)


async def test_a_legacy_completion_is_held_to_the_allowlist_and_reserved(meter: Meter) -> None:
    meter._apply(
        parse_policies(
            "environments:\n  development:\n"
            "    models: {allow: [davinci-002], downgrade: {gpt-3.5-turbo-instruct: davinci-002}}\n"
            "    budget: {usd: 100, period: day}\n"
        )
    )
    flow = make_flow(COMPLETIONS_URL, {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 500})
    await run_request(meter, flow)
    assert flow.response is None and json.loads(flow.request.content)["model"] == "davinci-002"
    state = meter.call_state(flow)
    assert state is not None and state.record.action == "downgraded"
    assert meter.enforcer.budgets.reserved()[Scope("environment", "development")] > 0
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: ['gpt-4o-mini']}\n"))
    blocked = make_flow(COMPLETIONS_URL, {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"})
    await run_request(meter, blocked)
    assert blocked.response is not None and blocked.response.status_code == 403


# -- model-running endpoints the proxy does not meter: held to the allowlist (fail closed) --------
# (from the review of the security promises, issue 8, finding 4: these went upstream unchecked)

RESTRICTED = """
default_environment: development
environments:
  development:
    models: {allow: ["*-mini", "gemini-*-flash*"], on_disallowed: block}
  production:
    allow_header_claims: false
"""
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models"
GEMINI_KEY = {"x-goog-api-key": "AIza-test-0123456789"}
VERTEX = "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1"


@pytest.mark.parametrize(
    ("url", "body", "refused"),
    [
        # Gemini Batch API: a forbidden model, half price but still that model
        (f"{GEMINI}/gemini-2.5-pro:batchGenerateContent", {"batch": {"input_config": {}}}, "gemini-2.5-pro"),
        # Imagen on Vertex AI
        (f"{VERTEX}/publishers/google/models/imagen-4.0-generate-001:predict", {"instances": []},
         "imagen-4.0-generate-001"),
        # (video generation, Sora's and Veo's, is metered now: tests/test_videos.py)
        ("https://api.openai.com/v1/fine_tuning/jobs", {"model": "gpt-4.1", "training_file": "f"}, "gpt-4.1"),
        # a Vertex batch job names its model as a resource
        (f"{VERTEX}/batchPredictionJobs", {"model": "publishers/google/models/gemini-2.5-pro"},
         "gemini-2.5-pro"),
        # Bedrock's asynchronous invocation (Nova Reel video): `modelId`
        ("https://bedrock-runtime.us-east-1.amazonaws.com/async-invoke", {"modelId": "amazon.nova-reel-v1:1"},
         "amazon.nova-reel-v1:1"),
    ],
)  # fmt: skip
async def test_unmetered_model_endpoints_are_held_to_the_allowlist(
    meter: Meter, url: str, body: dict, refused: str
) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow(url, body, headers=GEMINI_KEY)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403, "passed upstream unchecked"
    assert flow.response.headers["X-Tokometer-Refused"] == "blocked"
    answer = json.loads(flow.response.content)
    message = answer["message"] if "__type" in answer else answer["error"]["message"]  # Bedrock's shape
    assert "not metered" in message and refused in message
    meter.responseheaders(flow)
    await meter.response(flow)
    [rec] = meter.store.records  # type: ignore[union-attr]
    assert (rec.action, rec.model_requested, rec.model_sent) == ("blocked", refused, None)
    assert rec.api_flavor == "unmetered" and rec.environment == "development"
    assert rec.status_code == 403 and not rec.cost_usd


async def test_an_unmetered_endpoint_is_refused_not_downgraded(meter: Meter) -> None:
    """A downgrade would rewrite a request of an API the proxy does not understand: refused instead."""
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    models: {allow: [sora-2], downgrade: {sora-2-pro: sora-2}}\n"
        )
    )
    body = {"model": "sora-2-pro", "prompt": "a cat"}
    flow = make_flow("https://api.openai.com/v1/videos", body)
    original = flow.request.content
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.request.content == original
    message = json.loads(flow.response.content)["error"]["message"]
    assert "refused instead of downgraded" in message and message.startswith("tokometer: ")


@pytest.mark.parametrize(
    ("url", "body", "headers"),
    [
        # an allowed model passes unchanged
        ("https://api.openai.com/v1/fine_tuning/jobs", {"model": "gpt-4.1-mini", "training_file": "f"}, {}),
        (f"{GEMINI}/gemini-2.5-flash:batchGenerateContent", {"batch": {}}, GEMINI_KEY),
        # naming no model: as before
        ("https://api.openai.com/v1/vector_stores", {"name": "docs"}, {}),
        ("https://api.openai.com/v1/threads/thread_1/runs", {"assistant_id": "asst_1"}, {}),
        ("https://api.openai.com/v1/uploads", {"purpose": "batch", "filename": "b.jsonl", "bytes": 9}, {}),
        # token counting runs no model
        ("https://api.anthropic.com/v1/messages/count_tokens", {"model": "claude-opus-4-1"}, {}),
        ("https://api.openai.com/v1/responses/input_tokens", {"model": "o3", "input": "hi"}, {}),
        (f"{GEMINI}/gemini-2.5-pro:countTokens", {"contents": []}, GEMINI_KEY),
        (f"{VERTEX}/publishers/anthropic/models/count-tokens:rawPredict", {"model": "claude-opus-4-1"}, {}),
        # a file's bytes, uploaded: whatever it says
        ("https://generativelanguage.googleapis.com/upload/v1beta/files?upload_id=u1",
         {"model": "gemini-2.5-pro"}, {**GEMINI_KEY, "x-goog-upload-command": "upload, finalize"}),
        # OpenAI's moderation is free
        ("https://api.openai.com/v1/moderations", {"model": "omni-moderation-latest", "input": "hi"}, {}),
        # a multipart upload is never parsed
        ("https://api.openai.com/v1/files",
         b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o\r\n--b--\r\n',
         {"content-type": "multipart/form-data; boundary=b"}),
    ],
)  # fmt: skip
async def test_unmetered_requests_naming_no_disallowed_model_pass_as_before(
    meter: Meter, url: str, body: dict | bytes, headers: dict
) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow(url, body, headers=headers)
    original = (flow.request.path, flow.request.content)
    await run_request(meter, flow)
    assert flow.response is None and (flow.request.path, flow.request.content) == original
    assert meter.call_state(flow) is None  # nothing followed: no row, streams pass as they come
    flow.response = http.Response.make(200, b"{}", {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    assert meter.store.records == []  # type: ignore[union-attr]


FINE_TUNING = "https://api.openai.com/v1/fine_tuning/jobs"


async def test_unmetered_endpoints_pass_where_models_are_not_restricted(meter: Meter) -> None:
    """An environment without model rules (or a proxy without policies) checks nothing here."""
    body = {"model": "gpt-4.1", "training_file": "f"}
    for policies in ("environments:\n  development:\n    budget: {usd: 1, period: day}\n", None):
        if policies is not None:
            meter._apply(parse_policies(policies))
        flow = make_flow(FINE_TUNING, body)
        await run_request(meter, flow)
        assert flow.response is None and meter.call_state(flow) is None
    meter._apply(parse_policies(RESTRICTED + "  staging: {}\n"))
    tags = {"X-Metering-Tags": json.dumps({"env": "staging"})}
    flow = make_flow(FINE_TUNING, body, headers=tags)
    await run_request(meter, flow)
    assert flow.response is None and meter.call_state(flow) is None  # staging has no model rules


async def test_an_unmetered_model_spelled_with_escapes_or_unreadable_is_still_checked(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    escaped = make_flow("https://api.openai.com/v1/videos", b'{"\\u006dodel": "sora-2-pro", "prompt": "x"}')
    await run_request(meter, escaped)
    assert escaped.response is not None and escaped.response.status_code == 403
    odd = make_flow("https://api.openai.com/v1/videos", {"model": "sora-2-pro" * 30, "prompt": "x"})
    await run_request(meter, odd)
    assert odd.response is not None and odd.response.status_code == 403
    assert "could not be read" in json.loads(odd.response.content)["error"]["message"]


async def test_a_large_unmetered_body_is_read_off_the_event_loop(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import addon.meter as meter_module

    threads: list[object] = []
    real = asyncio.to_thread

    async def to_thread(func: object, *args: object) -> object:
        threads.append(func)
        return await real(func, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(meter_module.asyncio, "to_thread", to_thread)
    meter._apply(parse_policies(RESTRICTED))
    body = {"suffix": "x" * (meter_module.INLINE_PARSE_LIMIT + 1), "model": "gpt-4.1"}
    flow = make_flow(FINE_TUNING, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert body_model in threads, "a large body was parsed on the event loop"


async def test_an_unmetered_request_cut_before_it_was_checked_leaves_no_row(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow(FINE_TUNING, {"model": "gpt-4.1", "training_file": "f"})
    meter.requestheaders(flow)
    flow.error = mitmflow.Error("client disconnected")
    meter.error(flow)
    assert meter.call_state(flow) is None and meter.store.records == []  # type: ignore[union-attr]


async def _call_through(meter: Meter) -> int | None:
    """One gpt-4o call (1,000 in, 100 out: $0.0035) through ``meter``; the refusal's status, or
    None once it passed and its cost was counted."""
    flow = make_flow(CHAT_URL, {"model": "gpt-4o", "max_tokens": 100, "messages": []})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()  # today's budget
    await run_request(meter, flow)
    if flow.response is not None:
        return flow.response.status_code
    usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    answer = {"model": "gpt-4o", "choices": [], "usage": usage}
    flow.response = http.Response.make(200, json.dumps(answer), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    assert meter.store is not None
    assert await asyncio.to_thread(meter.store.flush)  # priced (budgets counted), stored
    return None


def _spent(meter: Meter) -> Decimal:
    [budget] = meter.enforcer.budgets.status(datetime.now(UTC))
    return budget["spent"]


async def test_two_proxies_on_one_database_share_their_budgets(tmp_path: Path) -> None:
    """The user's test: a budget with room for three calls, two through proxy A, then proxy B.
    B counts what A stored (read again when A's flush rings it), so its second call is refused;
    before, B counted only the spend loaded at its start plus its own calls, and passed three.
    An alert crossed is announced once, by one of the two proxies."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "environments:\n  development:\n    budget: {usd: 0.01, period: day, alert_at: [0.5]}\n"
    )
    db = tmp_path / "spend.duckdb"
    a, b = Meter(), Meter()
    with taddons.context(a) as tctx:
        tctx.configure(a, tokometer_db=str(db), tokometer_policies=str(policies))
        a.running()
        b.db_path = db  # a second proxy: its own store (own DuckDB instance, journal, session)
        b._apply(a.policies)
        b._open_store()
        try:
            assert await _call_through(a) is None
            assert await _call_through(a) is None
            want = Decimal("0.007")
            deadline = asyncio.get_running_loop().time() + 5
            while _spent(b) < want:  # A's flush rang B's writer, which read A's calls
                assert asyncio.get_running_loop().time() < deadline, _spent(b)
                await asyncio.sleep(0.02)
            assert _spent(b) == want
            assert await _call_through(b) is None  # $0.007 of $0.01: passes
            assert _spent(b) == Decimal("0.0105")
            assert await _call_through(b) == 429
            deadline = asyncio.get_running_loop().time() + 5
            while _spent(a) < Decimal("0.0105"):  # and A sees B's call
                assert asyncio.get_running_loop().time() < deadline, _spent(a)
                await asyncio.sleep(0.02)
            assert await _call_through(a) == 429
        finally:
            b.done()
            a.done()
    with duckdb.connect(str(db), read_only=True) as con:
        events = con.execute(
            "SELECT kind, data FROM events WHERE kind LIKE 'budget_%' ORDER BY id"
        ).fetchall()
        calls = con.execute("SELECT count(*), sum(cost_usd) FROM calls WHERE action = 'allowed'").fetchall()
    assert [(kind, json.loads(data)["fraction"]) for kind, data in events] == [
        ("budget_alert", 0.5),
        ("budget_exhausted", 1.0),
    ]
    assert calls == [(3, Decimal("0.0105"))]


async def _settled(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_two_proxies_each_write_a_live_file_and_the_status_line_combines_them(tmp_path: Path) -> None:
    """Two proxies on one database, no budget: each writes <db>.live/<session>.json; the status
    line's figure for today is the database's plus each one's unstored calls, exact (3 calls,
    $0.0105), not the sum of the files nor whichever was written last. When A stops the line still
    reads B's (before, one shared file said 'off' until B handled a call); off once both stop."""
    from addon.live_state import read_combined
    from addon.spend_watch import statusline_json

    db = tmp_path / "spend.duckdb"
    a, b = Meter(), Meter()

    def today() -> Decimal | None:
        state = read_combined(db)
        return Decimal(statusline_json(state, env="development")["today_usd"]) if state else None

    with taddons.context(a) as tctx:
        tctx.configure(a, tokometer_db=str(db))
        a.running()
        stopped: list[Meter] = []
        try:
            assert await _call_through(a) is None
            b.db_path = db
            b._open_store()  # B starts: its baseline has A's call, and A reads the database again
            assert await _call_through(a) is None
            assert await _call_through(b) is None
            assert len(list((tmp_path / "spend.duckdb.live").glob("*.json"))) == 2
            await _settled(lambda: today() == Decimal("0.0105"))
            a.done()
            stopped.append(a)
            assert statusline_json(read_combined(db))["status"] == "on"  # B still runs
            await _settled(lambda: today() == Decimal("0.0105"))  # B's file (written every 0.5 s)
            b.done()
            stopped.append(b)
            assert statusline_json(read_combined(db))["status"] == "off"
        finally:
            for meter in (a, b):
                if meter not in stopped:
                    meter.done()


QA_BUDGET = "environments:\n  qa:\n    budget: {usd: 0.001, period: day}\n"
QA = Scope("environment", "qa")
# gpt-4o-mini: $0.15 per 1M input, $0.60 per 1M output: 20 in + 10 out cost $0.000009
MINI_USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
MINI_COST = Decimal("0.000009")


def writer_round(meter: Meter, records: list[CallRecord]) -> None:
    """What the store's writer does with calls submitted since its last round: price them, then
    hand them to the listeners (Meter._on_finished among them)."""
    for record in records:
        meter._price(record)
    meter._on_finished(records)


async def finish_qa_call(meter: Meter, *, stream: bool = False, usage: bool = True) -> http.HTTPFlow:
    """One gpt-4o-mini call without max_tokens, tagged qa: sent (unless refused) and answered."""
    body: dict = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    flow = make_flow(CHAT_URL, body, headers={"x-metering-tags": '{"env":"qa"}'})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()  # today's budget
    await run_request(meter, flow)
    if flow.response is not None:
        return flow  # refused
    if stream:
        stream_response(flow, meter)
        chunk = {"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
        last = {"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": MINI_USAGE}
        data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in (chunk, last)) + b"data: [DONE]\n\n"
        feed(flow, data, 10_000)
    else:
        answer = {"id": "c", "model": "gpt-4o-mini", "choices": []} | ({"usage": MINI_USAGE} if usage else {})
        flow.response = http.Response.make(200, json.dumps(answer), {"content-type": "application/json"})
        meter.responseheaders(flow)
    await meter.response(flow)
    await asyncio.gather(*meter._estimates)  # a call without usage: estimated in a thread first
    return flow


@pytest.mark.parametrize("stream", [False, True])
async def test_back_to_back_calls_under_a_cap_pass_their_reservations_settled_as_they_finish(
    meter: Meter, stream: bool
) -> None:
    """A user's test: 5 gpt-4o-mini calls one after another, no max_tokens (each reserves 1,000
    output tokens, ~$0.0006, and costs $0.000009), under a $0.001 cap. A finished call's reservation
    lingered until the store's writer priced it (up to PRICE_INTERVAL later), so calls 3.. got
    "budget is spent" 429s at $0.000027 used. Each call's reservation now gives way to its cost as
    it finishes, before the next is decided; the writer then counts that cost once."""
    meter._apply(parse_policies(QA_BUDGET))
    tracker = meter.enforcer.budgets
    answers: list[tuple[int, str]] = []
    reserved: list[dict[Scope, Decimal]] = []
    held: list[dict[Scope, Decimal]] = []
    for _ in range(5):
        flow = await finish_qa_call(meter, stream=stream)
        assert flow.response is not None
        answers.append((flow.response.status_code, flow.response.text[:200]))
        reserved.append(tracker.reserved())
        held.append(dict(tracker._held))
    assert [status for status, _ in answers] == [200] * 5, answers
    assert reserved == [{}] * 5  # no writer round yet: each reservation gave way all the same
    assert held == [{QA: i * MINI_COST} for i in range(1, 6)]  # counted as spent meanwhile
    records = meter.store.records  # type: ignore[union-attr]
    assert len(records) == 5 and all(r.environment == "qa" and r.cost_usd == MINI_COST for r in records)
    writer_round(meter, records)
    [budget] = tracker.status(datetime.now(UTC))
    assert budget["spent"] == 5 * MINI_COST  # counted once: the hold gave way to the spend
    assert tracker._held == {} and tracker.reserved() == {}


async def test_a_call_estimated_offline_settles_at_its_estimated_cost(meter: Meter) -> None:
    """No usage in the answer: the row is estimated in a thread, then priced and settled on the
    loop as it is submitted (its reservation held until then)."""
    meter._apply(parse_policies(QA_BUDGET))
    tracker = meter.enforcer.budgets
    flow = await finish_qa_call(meter, usage=False)
    assert flow.response is not None and flow.response.status_code == 200
    [record] = meter.store.records  # type: ignore[union-attr]
    assert record.usage_source == "estimated" and record.cost_usd is not None and record.cost_usd > 0
    assert tracker.reserved() == {} and tracker._held == {QA: record.cost_usd}
    writer_round(meter, [record])
    [budget] = tracker.status(datetime.now(UTC))
    assert budget["spent"] == record.cost_usd and tracker._held == {}


async def test_spend_alerts_and_history_are_counted_once_when_the_writer_runs(meter: Meter) -> None:
    """The call was priced and settled on the loop; the writer's listener still counts its spend,
    its alerts, the live state and the output history exactly once, and releases nothing twice."""
    meter._apply(
        parse_policies("environments:\n  qa:\n    budget: {usd: 0.00002, period: day, alert_at: [0.25]}\n")
    )
    tracker = meter.enforcer.budgets
    flow = await finish_qa_call(meter)
    assert flow.response is not None and flow.response.status_code == 200
    [record] = meter.store.records  # type: ignore[union-attr]
    # another call, let through before the writer's round: its reservation must stay whole
    other = Decimal("0.0001")
    assert tracker.check((QA,), datetime.now(UTC), reserve=("other", lambda: other)) is None
    recorded: list[list[str]] = []
    meter.outputs.record = lambda records, *_: recorded.append([r.id for r in records])  # type: ignore[method-assign]
    writer_round(meter, [record])
    [budget] = tracker.status(datetime.now(UTC))
    assert budget["spent"] == MINI_COST and tracker._held == {} and tracker.reserved() == {QA: other}
    assert recorded == [[record.id]]
    events = meter.store.events  # type: ignore[union-attr]
    assert [e.kind for e in events] == ["budget_alert"]  # 25% of $0.00002: once
    writer_round(meter, [])  # a later round with nothing new: nothing more
    assert tracker.status(datetime.now(UTC))[0]["spent"] == MINI_COST and len(events) == 1


async def test_a_call_without_budgets_is_not_priced_on_the_event_loop(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pricing stays off the loop (PRICE_INTERVAL in addon.store) for every call that holds no
    reservation: no budget in force, or none for the call's scopes."""
    priced: list[str] = []
    price = meter._price
    monkeypatch.setattr(meter, "_price", lambda record: priced.append(record.id) or price(record))
    for policies in ("", "environments:\n  production:\n    budget: {usd: 1, period: day}\n"):
        meter._apply(parse_policies(policies))
        flow = await finish_qa_call(meter)
        assert flow.response is not None and flow.response.status_code == 200
    records = meter.store.records  # type: ignore[union-attr]
    assert len(records) == 2 and all(r.price_status is None for r in records)
    assert priced == []  # left to the writer
    meter._apply(parse_policies(QA_BUDGET))
    await finish_qa_call(meter)
    assert priced == [records[-1].id]  # a call that holds a reservation: priced as it finishes


async def test_back_to_back_calls_pass_with_the_stores_writer_running(tmp_path: Path) -> None:
    """The user's test with the real store: its writer prices and counts calls in rounds of its
    own (PRICE_INTERVAL) while the next calls are decided; all 5 pass, each counted once."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        policies = tmp_path / "policies.yaml"
        policies.write_text(QA_BUDGET)
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"), tokometer_policies=str(policies))
        addon.running()
        try:
            for _ in range(5):
                flow = await finish_qa_call(addon)
                assert flow.response is not None and flow.response.status_code == 200, flow.response.text
                assert addon.enforcer.budgets.reserved() == {}
            assert addon.store is not None and addon.store.flush()
            [budget] = addon.enforcer.budgets.status(datetime.now(UTC))
            assert budget["spent"] == 5 * MINI_COST
            assert addon.enforcer.budgets._held == {} and addon.enforcer.budgets.reserved() == {}
            stored = addon.store.read(
                lambda con: con.execute(
                    "SELECT count(*), sum(cost_usd) FROM calls WHERE environment = 'qa'"
                ).fetchone()
            )
            assert stored == (5, 5 * MINI_COST)
        finally:
            addon.done()


# -- review of the fail-closed check and legacy completions (tests/review_unm_reference) --------


def _refused(flow: http.HTTPFlow) -> bool:
    return flow.response is not None and flow.response.status_code == 403


def _message(flow: http.HTTPFlow) -> str:
    return json.loads(flow.response.content)["error"]["message"] if flow.response is not None else ""


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/agents/completions", {"agent_id": "ag_0123", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/fim/completions", {"model": "codestral-latest", "prompt": "def f(", "suffix": ")"}),
    ],
    ids=["agents", "fim"],
)
async def test_mistral_agents_completions_is_not_refused(meter: Meter, path: str, body: dict) -> None:
    """Mistral's Agents API (an agent, no model) and FIM are no legacy completions: the
    '/completions' suffix read them so and refused them (their model unreadable, or disallowed
    as a completion). Agents pass as before; FIM is metered as Mistral meters it (chat's usage)."""
    meter._apply(parse_policies(RESTRICTED.replace('"gemini-*-flash*"', '"gemini-*-flash*", "codestral-*"')))
    flow = make_flow(f"https://api.mistral.ai{path}", body)
    await run_request(meter, flow)
    assert flow.response is None, _message(flow)


async def test_vertex_batch_prediction_of_a_registry_model_is_not_refused(meter: Meter) -> None:
    """A Model Registry model (``projects/.../models/{numeric id}``: AutoML, XGBoost...) is no LLM
    an allowlist governs: it was read as the model "1234567890" and refused everywhere."""
    meter._apply(parse_policies(RESTRICTED))
    body = {
        "displayName": "churn-scores",
        "model": "projects/p1/locations/us-central1/models/1234567890",
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["gs://b/in.jsonl"]}},
    }
    flow = make_flow(f"{VERTEX}/batchPredictionJobs", body)
    await run_request(meter, flow)
    assert flow.response is None, _message(flow)


async def test_vertex_model_registry_upload_is_not_refused(meter: Meter) -> None:
    """``models:upload`` carries ``model`` as an object (the model registered): it names no model."""
    meter._apply(parse_policies(RESTRICTED))
    body = {
        "model": {"displayName": "churn", "artifactUri": "gs://b/model/", "containerSpec": {"imageUri": "x"}}
    }
    flow = make_flow(f"{VERTEX}/models:upload", body)
    await run_request(meter, flow)
    assert flow.response is None, _message(flow)


async def test_azure_assistant_naming_a_mapped_deployment_is_not_refused(meter: Meter) -> None:
    """On Azure the Assistants API's ``model`` is a deployment: azure_deployments says what it
    serves. One serving an allowed model passes; one serving a disallowed model is refused."""
    meter._apply(
        parse_policies(RESTRICTED + "azure_deployments:\n  team-4o-small: gpt-4o-mini\n  team-big: gpt-4.1\n")
    )
    url = "https://myres.openai.azure.com/openai/assistants?api-version=2024-05-01-preview"
    azure_key = {"api-key": "0123456789abcdef0123456789abcdef"}
    flow = make_flow(url, {"model": "team-4o-small", "instructions": "be brief"}, headers=azure_key)
    await run_request(meter, flow)
    assert flow.response is None, _message(flow)
    big = make_flow(url, {"model": "team-big", "instructions": "be brief"}, headers=azure_key)
    await run_request(meter, big)
    assert _refused(big) and "gpt-4.1" in _message(big)


async def test_vertex_fetch_predict_operation_poll_is_not_refused(meter: Meter) -> None:
    """``:fetchPredictOperation`` (google-genai's operations.get() on Vertex) reads an operation's
    status: it runs no model."""
    meter._apply(parse_policies(RESTRICTED))
    url = f"{VERTEX}/publishers/google/models/veo-3.0-generate-001:fetchPredictOperation"
    op = "projects/p1/locations/us-central1/publishers/google/models/veo-3.0-generate-001/operations/1"
    flow = make_flow(url, {"operationName": op})
    await run_request(meter, flow)
    assert flow.response is None, "a free status poll was refused"


async def test_a_legacy_completion_is_not_downgraded_to_a_chat_only_model(meter: Meter) -> None:
    """A downgrade written for chat (``gpt-*: gpt-4o-mini``) must not send a legacy completion to
    a chat-only model (OpenAI answers 404): refused, saying why. A target serving legacy
    completions is still a downgrade."""
    meter._apply(
        parse_policies(
            "environments:\n  development:\n"
            "    models: {allow: ['*-mini', '*-instruct'],\n"
            "             downgrade: {'gpt-*': gpt-4o-mini, 'davinci-*': x-instruct}}\n"
        )
    )
    flow = make_flow(COMPLETIONS_URL, {"model": "gpt-4-base", "prompt": "hi"})
    await run_request(meter, flow)
    assert _refused(flow) and json.loads(flow.request.content)["model"] == "gpt-4-base"
    assert "legacy completions" in _message(flow)
    ok = make_flow(COMPLETIONS_URL, {"model": "davinci-002", "prompt": "hi"})
    await run_request(meter, ok)
    assert ok.response is None and json.loads(ok.request.content)["model"] == "x-instruct"


async def test_sdk_videos_create_multipart_is_checked(meter: Meter) -> None:
    """openai-python's client.videos.create() always sends multipart/form-data (captured from
    openai 3.57): its ``model`` field is read like a JSON body's."""
    meter._apply(parse_policies(RESTRICTED))
    b = b"9748b138aecc3b238764d1efd61a7523"
    body = (
        b"--" + b + b'\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n'
        b"--" + b + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n'
        b"--" + b + b"--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=" + b.decode()}
    flow = make_flow("https://api.openai.com/v1/videos", body, headers=headers)
    await run_request(meter, flow)
    assert _refused(flow) and "sora-2-pro" in _message(flow)
    allowed = make_flow(
        "https://api.openai.com/v1/videos", body.replace(b"sora-2-pro", b"sora-2-mini"), headers=headers
    )
    await run_request(meter, allowed)
    assert allowed.response is None


async def test_a_video_naming_no_model_runs_the_default_and_is_checked(meter: Meter) -> None:
    """POST /v1/videos naming no model runs sora-2 (openai-python: "Defaults to sora-2")."""
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow("https://api.openai.com/v1/videos", {"prompt": "a cat", "seconds": "12"})
    await run_request(meter, flow)
    assert _refused(flow) and "sora-2" in _message(flow)
    meter._apply(parse_policies(RESTRICTED.replace('"*-mini"', '"*-mini", "sora-2"')))
    allowed = make_flow("https://api.openai.com/v1/videos", {"prompt": "a cat", "seconds": "12"})
    await run_request(meter, allowed)
    assert allowed.response is None


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (f"{VERTEX}/tuningJobs",
         {"baseModel": "gemini-2.5-pro", "supervisedTuningSpec": {"trainingDatasetUri": "gs://b/t.jsonl"}}),
        ("https://generativelanguage.googleapis.com/v1beta/tunedModels",
         {"baseModel": "models/gemini-2.5-pro", "tuningTask": {"trainingData": {}}}),
        ("https://api.example-tuning.invalid/v1/tunedModels", {"base_model": "gemini-2.5-pro"}),
    ],
    ids=["vertex-tuningJobs", "gemini-tunedModels", "snake-case"],
)  # fmt: skip
async def test_tuning_job_base_model_is_checked(meter: Meter, url: str, body: dict) -> None:
    """A tuning job names its model ``baseModel`` (Vertex tuningJobs, Gemini tunedModels)."""
    if "invalid" in url:
        url = "https://generativelanguage.googleapis.com/v1beta/tunedModels"
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow(url, body, headers=GEMINI_KEY)
    await run_request(meter, flow)
    assert _refused(flow) and "gemini-2.5-pro" in _message(flow)


@pytest.mark.parametrize(
    ("prompt", "answers"),
    [
        ([f"q{i}" for i in range(20)], 20),
        ([[1, 2, 3], [4, 5]], 2),  # lists of token ids: one prompt each
        ([1, 2, 3], 1),  # a flat list of token ids is one prompt
        ("one", 1),
    ],
    ids=["strings", "token-lists", "flat-tokens", "string"],
)
async def test_a_batched_prompt_list_is_reserved_per_prompt(
    meter: Meter, prompt: object, answers: int
) -> None:
    """A legacy completion's ``prompt`` list: each prompt gets its own answers, each up to
    max_tokens, all billed."""
    meter._apply(parse_policies(DAY_BUDGET))
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "max_tokens": 4000}
    reserved = await reserved_for(meter, COMPLETIONS_URL, body)
    assert reserved >= output_usd(answers * 4000, "2"), f"reserved {reserved} for {answers} answers"
    assert reserved < output_usd((answers + 1) * 4000, "2")


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: b"\xef\xbb\xbf" + text.encode(),  # a UTF-8 byte order mark
        lambda text: text.encode("utf-16-le"),  # json.loads(bytes) reads UTF-16/32 too
        lambda text: text.encode("utf-16"),  # with its BOM
    ],
    ids=["utf8-bom", "utf16-le", "utf16-bom"],
)
async def test_an_unmetered_body_the_metered_path_would_read_is_checked(meter: Meter, encode) -> None:
    """A body with a BOM, or in UTF-16, which json.loads(bytes) (and so a provider) reads, is checked."""
    meter._apply(parse_policies(RESTRICTED))
    text = json.dumps({"model": "sora-2-pro", "prompt": "a cat"})
    assert json.loads(encode(text))["model"] == "sora-2-pro"
    flow = make_flow("https://api.openai.com/v1/videos", encode(text))
    await run_request(meter, flow)
    assert _refused(flow) and "sora-2-pro" in _message(flow)


async def test_bedrock_bidirectional_stream_path_model_is_checked(meter: Meter) -> None:
    """InvokeModelWithBidirectionalStream (Nova Sonic) names its model in the path; its body (an
    event stream) names none."""
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow(
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.nova-sonic-v1:0/invoke-with-bidirectional-stream",
        b"\x00\x00\x00\x10binary-event-stream",
        headers={"content-type": "application/vnd.amazon.eventstream"},
    )
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "amazon.nova-sonic-v1:0" in json.loads(flow.response.content)["message"]


async def test_eval_run_naming_its_sampling_model_is_checked(meter: Meter) -> None:
    """An OpenAI eval run samples from ``data_source.model`` (billed at that model's rates)."""
    meter._apply(parse_policies(RESTRICTED))
    source = {"type": "completions", "model": "o3", "source": {"type": "file_id", "id": "file_1"}}
    flow = make_flow("https://api.openai.com/v1/evals/eval_1/runs", {"name": "r", "data_source": source})
    await run_request(meter, flow)
    assert _refused(flow) and "o3" in _message(flow)
    mini = make_flow(
        "https://api.openai.com/v1/evals/eval_1/runs", {"data_source": {**source, "model": "o4-mini"}}
    )
    await run_request(meter, mini)
    assert mini.response is None
    jsonl = make_flow("https://api.openai.com/v1/evals/eval_1/runs", {"data_source": {"type": "jsonl"}})
    await run_request(meter, jsonl)
    assert jsonl.response is None  # samples nothing: names no model


DEV_BUDGET = "environments:\n  development:\n    budget: {usd: %s, period: day}\n"


async def test_a_call_taken_over_at_a_script_reload_is_counted_once(tmp_path: Path) -> None:
    """mitmproxy reloads the script while a call is in flight: the new instance (a new session id)
    finishes it. Its row keeps the old instance's session id, so the new tracker counts it as its
    own (the listener) AND, once stored, as another session's (refresh_others): $0.0035 counted
    as $0.007 for the rest of the period (a Realtime session taken over the same way: every
    response after the reload)."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(DEV_BUDGET % "1")
    db = tmp_path / "spend.duckdb"
    a, b = Meter(), Meter()
    with taddons.context(a) as tctx:
        tctx.configure(a, tokometer_db=str(db), tokometer_policies=str(policies))
        a.running()
        flow = make_flow(CHAT_URL, {"model": "gpt-4o", "max_tokens": 100, "messages": []})
        flow.request.timestamp_start = datetime.now(UTC).timestamp()
        await run_request(a, flow)
        assert flow.response is None  # allowed, in flight
        a.done()  # a script reload (mitmproxy not exiting): the call is handed over
        b.db_path = db
        b._apply(a.policies)
        b.running()  # the reloaded script's instance takes the call over
        try:
            assert b.session_id != a.session_id
            usage = {"prompt_tokens": 1000, "completion_tokens": 100}
            answer = {"model": "gpt-4o", "choices": [], "usage": usage}
            flow.response = http.Response.make(200, json.dumps(answer), {"content-type": "application/json"})
            b.responseheaders(flow)
            await b.response(flow)
            assert b.store is not None
            assert await asyncio.to_thread(b.store.flush)
            with duckdb.connect(":memory:") as con:  # the database says $0.0035, once
                con.execute(f"ATTACH '{db}' AS d (READ_ONLY)")
                stored = con.execute("SELECT count(*), sum(cost_usd) FROM d.calls").fetchall()
                con.execute("DETACH d")
            assert stored == [(1, Decimal("0.0035"))]
            assert _spent(b) == Decimal("0.0035")  # before the fix: 0.0070 (own + others)
        finally:
            b.done()


async def test_a_budget_added_by_a_reload_counts_what_other_proxies_stored(tmp_path: Path) -> None:
    """Two proxies, no budget yet. A spends $0.007 and stores it (B is rung and reads the
    database again, but only for its live file: refresh_others is skipped without a budget, and
    the signal is consumed). policies.yaml then gets a $0.005 budget: B still counts the others'
    spend of its start ($0), so its next call passes a cap spent already by stored calls. README:
    a shared budget holds "to within the calls another proxy has not stored yet"."""
    db = tmp_path / "spend.duckdb"
    a, b = Meter(), Meter()
    with taddons.context(a) as tctx:
        tctx.configure(a, tokometer_db=str(db))
        a.running()
        b.db_path = db
        b._open_store()
        try:
            assert await _call_through(a) is None
            assert await _call_through(a) is None
            assert b.live is not None

            def b_read_it() -> bool:
                env = b.live.snapshot()["today"]["environments"].get("development", {})  # type: ignore[union-attr]
                return Decimal(env.get("cost_usd", "0")) == Decimal("0.007")

            await _settled(b_read_it)  # B was rung and read A's calls
            b._apply(parse_policies(DEV_BUDGET % "0.005"))  # the reload adds a budget
            # B's writer reads the others' spend again at once (before the fix: never, $0)
            await _settled(lambda: _spent(b) == Decimal("0.007"))
            assert await _call_through(b) == 429
        finally:
            b.done()
            a.done()


async def test_a_lone_proxy_does_not_re_read_other_proxies_spend_after_each_flush(tmp_path: Path) -> None:
    """The common case: one proxy, a budget. No other writer runs and none signalled, yet every
    flush runs refresh_others (a GROUPING SETS scan of the month's rows plus the events query),
    today_baseline (another scan) and a live-file rewrite, with the file attached read-write
    (readers wait meanwhile): new per-flush work that can only find what the proxy already knows."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(DEV_BUDGET % "1")
    db = tmp_path / "spend.duckdb"
    a = Meter()
    with taddons.context(a) as tctx:
        tctx.configure(a, tokometer_db=str(db), tokometer_policies=str(policies))
        a.running()
        try:
            budgets = a.enforcer.budgets
            refreshed: list[int] = []
            original = budgets.refresh_others

            def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
                refreshed.append(1)
                return original(*args, **kwargs)

            budgets.refresh_others = counting  # type: ignore[method-assign]
            for _ in range(3):
                assert await _call_through(a) is None
            assert not list((db.parent / (db.name + ".journal")).glob("*.wake"))[1:]  # alone
            assert refreshed == []  # before the fix: one refresh per flush, [1, 1, 1]
        finally:
            a.done()


GATEWAY_DOWNGRADE = """
default_environment: development
environments:
  development:
    models:
      allow: ["*-mini", claude-haiku-*]
      downgrade:
        gpt-4o: gpt-4o-mini
        claude-sonnet-*: claude-haiku-4-5
providers:
  openrouter: {url: "http://localhost:4000", api: openai}
"""


async def test_a_downgrade_target_is_written_as_the_host_names_it(meter: Meter) -> None:
    """The form of a plain target is the host's: OpenRouter's own ids (dotted, vendor-prefixed),
    and the target as written on any other host, here Together and a providers: gateway (even
    one named like OpenRouter): their prefixed ids say nothing of how they name the target."""
    meter._apply(parse_policies(GATEWAY_DOWNGRADE.replace("openrouter:", "litellm:")))
    cases = (
        (
            "https://openrouter.ai/api/v1/chat/completions",
            "anthropic/claude-sonnet-4",
            "anthropic/claude-haiku-4.5",
        ),
        ("https://openrouter.ai/api/v1/chat/completions", "openai/gpt-4o", "openai/gpt-4o-mini"),
        ("https://api.together.xyz/v1/chat/completions", "openai/gpt-4o", "gpt-4o-mini"),
        ("http://localhost:4000/v1/chat/completions", "anthropic/claude-sonnet-4.5", "claude-haiku-4-5"),
    )
    for url, asked, sent in cases:
        flow = make_flow(url, {"model": asked, "messages": [{"role": "user", "content": "hi"}]})
        await run_request(meter, flow)
        assert flow.response is None, (url, flow.response and flow.response.get_text())
        assert sent_body(flow)["model"] == sent, url
    meter._apply(parse_policies(GATEWAY_DOWNGRADE))  # the gateway named openrouter
    flow = make_flow("http://localhost:4000/v1/chat/completions", {"model": "openai/gpt-4o", "messages": []})
    await run_request(meter, flow)
    assert flow.response is None and sent_body(flow)["model"] == "gpt-4o-mini"
