"""What the WebSocket hook tests share (tests/test_*_hooks.py): a Meter with a collecting store,
handshake flows, opening a session through the hooks, and messages said on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_websocket import dumps
from mitmproxy import http
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from wsproto.frame_protocol import Opcode

import addon.meter as meter_module
from addon.meter import Meter
from addon.record import CallRecord


class CollectingStore:
    """Stands in for addon.store.Store: keeps submitted records."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def journal(self, record: CallRecord) -> bool:
        return True

    def submit(self, record: CallRecord) -> None:
        self.records.append(record)

    def request_refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def metered(tmp_path: Path) -> Iterator[Meter]:
    """For a ``meter`` fixture: the addon in a taddons context, its store a ``CollectingStore``."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = CollectingStore()  # type: ignore[assignment]
        yield addon


def injected_events(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """For an ``injected`` fixture: the events the proxy injects to the client (decoded), the
    socket kept open (closing it fails the test)."""
    sent: list[dict[str, Any]] = []

    def call(command: str, flow: http.HTTPFlow, to_client: bool, payload: bytes, is_text: bool) -> None:
        assert (command, to_client, is_text) == ("inject.websocket", True, True)
        sent.append(json.loads(payload))

    monkeypatch.setattr(meter_module.ctx.master.commands, "call", call)
    monkeypatch.setattr(meter, "_close_websocket", lambda *a: pytest.fail("the socket must stay open"))
    return sent


def closes_asked(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """For a ``closes`` fixture: the closes the addon asks for, (flow, code, reason); none is made."""
    found: list[tuple[Any, ...]] = []

    def close(flow: http.HTTPFlow, code: int | None = None, reason: str | None = None) -> bool:
        found.append((flow, code, reason))
        return True

    monkeypatch.setattr(meter, "_close_websocket", close)
    return found


def reads_of(monkeypatch: pytest.MonkeyPatch, module: Any, *names: str) -> list[bytes]:
    """The messages ``module``'s readers ``names`` are given from now on (each still reads them):
    what the hooks decode, for tests that audio passes unread."""
    read: list[bytes] = []
    for name in names:
        original = getattr(module, name)

        def counting(data: bytes, original: Any = original) -> Any:
            read.append(data)
            return original(data)

        monkeypatch.setattr(module, name, counting)
    return read


def records(meter: Meter) -> list[CallRecord]:
    return meter.store.records  # type: ignore[union-attr]


def handshake_flow(
    host: str, path: str, headers: dict[str, str], more: dict[str, str] | None, timestamp: float
) -> http.HTTPFlow:
    """A WebSocket flow as it is at requestheaders: the GET (``headers``, then ``more``), no answer yet."""
    flow = tflow.twebsocketflow()
    flow.request.scheme, flow.request.host, flow.request.port = "https", host, 443
    flow.request.headers["host"] = host
    flow.request.path = path
    for name, value in [*headers.items(), *(more or {}).items()]:
        flow.request.headers[name] = value
    flow.request.timestamp_start = timestamp
    flow.response, flow.websocket = None, None
    return flow


async def open_session(meter: Meter, flow: http.HTTPFlow, status: int = 101) -> None:
    """requestheaders, request, then upstream's answer (101: the socket opens)."""
    meter.requestheaders(flow)
    await meter.request(flow)
    if flow.response is None:
        flow.response = http.Response.make(status, b"", {"upgrade": "websocket", "connection": "upgrade"})
        if status == 101:
            flow.websocket = WebSocketData()
    meter.responseheaders(flow)
    await meter.response(flow)


async def say(
    meter: Meter, flow: http.HTTPFlow, data: bytes, *, client: bool, text: bool
) -> WebSocketMessage:
    """A message on the socket, through the websocket_message hook."""
    message = WebSocketMessage(Opcode.TEXT if text else Opcode.BINARY, client, data)
    flow.websocket.messages.append(message)  # type: ignore[union-attr]
    await meter.websocket_message(flow)
    return message


async def server_says(meter: Meter, flow: http.HTTPFlow, event: dict[str, Any] | bytes) -> WebSocketMessage:
    """An OpenAI event (compact JSON) or raw bytes from the server, in a text frame."""
    return await say(
        meter, flow, event if isinstance(event, bytes) else dumps(event), client=False, text=True
    )


async def client_says(meter: Meter, flow: http.HTTPFlow, event: dict[str, Any] | bytes) -> WebSocketMessage:
    """An OpenAI event (compact JSON) or raw bytes from the client, in a text frame."""
    return await say(meter, flow, event if isinstance(event, bytes) else dumps(event), client=True, text=True)
