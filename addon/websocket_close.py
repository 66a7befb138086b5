"""Closing a WebSocket from the addon with a close code and reason (mitmproxy 12 has no command).

mitmproxy relays a WebSocket in a ``WebsocketLayer`` of the client connection's layer tree, with
one wsproto connection per side. A close frame is sent by queueing a ``CloseConnection`` event on
the server side's wsproto connection, as if upstream had sent it: the layer reads it with the next
event from that side, so both sides get a close frame with that code and reason and both
connections close. The caller queues it while the hook of a message it injected to the client runs
(so every message injected before that one has gone out first): the layer reads the close right
after that message. The layer then keeps reading that event's messages: the caller drops them.

This reaches into mitmproxy's and wsproto's internals (``_events``, the layer tree): where they
are not as expected nothing is queued and False is returned, for the caller to close otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.layer import Layer
from mitmproxy.proxy.layers.websocket import WebsocketLayer
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

MAX_LAYERS = 512  # layers looked at at most (a connection has a dozen or so)


def _children(layer: Any) -> Iterator[Any]:
    """The layers ``layer`` leads to: its next or child layer, the layer its events go to, its
    context's stack, an HTTP layer's streams and connections."""
    for name in ("layer", "child_layer"):
        yield getattr(layer, name, None)
    yield getattr(getattr(layer, "_handle_event", None), "__self__", None)
    yield from getattr(getattr(layer, "context", None), "layers", ())
    for name in ("streams", "connections"):
        found = getattr(layer, name, None)
        if isinstance(found, dict):
            yield from found.values()


def websocket_layer(handler: Any, flow: http.HTTPFlow) -> WebsocketLayer | None:
    """The layer relaying ``flow``'s WebSocket in a connection handler's layer tree, or None."""
    stack: list[Any] = [getattr(handler, "layer", None)]
    seen: set[int] = set()
    while stack and len(seen) < MAX_LAYERS:
        layer = stack.pop()
        if not isinstance(layer, Layer) or id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, WebsocketLayer):
            if layer.flow is flow:
                return layer
            continue
        stack.extend(_children(layer))
    return None


def close_websocket(handler: Any, flow: http.HTTPFlow, code: int, reason: str) -> bool:
    """Queue a close (``code``, ``reason``: cut to 123 bytes by wsproto) of ``flow``'s WebSocket as
    if upstream sent it. True if queued: the layer reads it with the next event from upstream's side
    (queued in the hook of a message injected to the client: right after it); the caller drops
    every message after it."""
    layer = websocket_layer(handler, flow)
    server_ws = getattr(layer, "server_ws", None)
    events = getattr(server_ws, "_events", None)
    if server_ws is None or events is None or server_ws.state is not ConnectionState.OPEN:
        return False
    events.append(CloseConnection(code=code, reason=reason))
    return True
