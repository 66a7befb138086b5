"""A long WebSocket session does not keep every message in the proxy's memory."""

from __future__ import annotations

from pathlib import Path

from mitmproxy.addons import save
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage

from addon.websocket_memory import WebSocketMemory


def _audio(from_client: bool) -> WebSocketMessage:
    delta = b'{"type":"response.output_audio.delta","delta":"' + b"A" * 4096 + b'"}'
    return WebSocketMessage(1, from_client, delta)


def test_earlier_messages_are_let_go_the_current_one_stays() -> None:
    trim = WebSocketMemory()
    flow = tflow.twebsocketflow()
    with taddons.context(trim):
        for i in range(1_000):
            message = _audio(from_client=i % 2 == 0)
            flow.websocket.messages.append(message)
            trim.websocket_message(flow)
            assert flow.websocket.messages[-1] is message  # what later addons and the layer see
        assert len(flow.websocket.messages) == 1


def test_messages_are_kept_when_flows_are_saved(tmp_path: Path) -> None:
    trim = WebSocketMemory()
    flow = tflow.twebsocketflow()
    before = len(flow.websocket.messages)
    with taddons.context(trim, save.Save()) as tctx:
        tctx.configure(trim, save_stream_file=str(tmp_path / "flows"))
        for _ in range(10):
            flow.websocket.messages.append(_audio(from_client=False))
            trim.websocket_message(flow)
    assert len(flow.websocket.messages) == before + 10
