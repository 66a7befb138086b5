"""Keep a long WebSocket session (a voice agent) from growing the proxy's memory.

mitmproxy keeps every message of a WebSocket in ``flow.websocket.messages`` for as long as the
connection lives, for its interactive tools. A Realtime voice session streams base64 audio both
ways: ~230 MB an hour in each direction stays in the proxy. Nothing in tokometer reads a message
after its own ``websocket_message`` hook, so the earlier ones are let go as each new one arrives.
When flows are being saved (``--save-stream-file``/``-w``) they are kept, as asked.
"""

from __future__ import annotations

from mitmproxy import ctx, http


class WebSocketMemory:
    """Drops the messages of a WebSocket flow that came before the one being handled."""

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        websocket = flow.websocket
        if websocket is None or len(websocket.messages) < 2:
            return
        if getattr(ctx.options, "save_stream_file", None):
            return  # the flow file gets every message
        # The layer handling this message holds it: only the ones before it go.
        del websocket.messages[:-1]
