"""What the fake WebSocket servers share: a WSS server on 127.0.0.1, on its own event loop in a thread.

A fake (tests/fake_realtime.py, tests/fake_gemini_live.py, tests/fake_responses_ws.py) subclasses
``FakeWebSocketServer`` and gives it ``_handle`` (one accepted connection) and, to answer a handshake
itself, ``_process_request``. The base owns the certificate, the TLS context, the thread, the loop,
``serve()`` and ``close()``, and the sessions list with its lock.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from fakeprovider import make_cert
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response


def dumps(event: dict[str, Any]) -> bytes:
    """An event as the OpenAI fakes send it (compact JSON, ``type`` first)."""
    return json.dumps(event, separators=(",", ":")).encode()


def lower_headers(headers: Headers) -> dict[str, str]:
    """A handshake's headers, names lowercased."""
    return {k.lower(): v for k, v in headers.raw_items()}


class FakeWebSocketServer:
    """The fake WSS server, on its own event loop in a thread; subclasses handle the connections."""

    def __init__(
        self,
        directory: Path,
        name: str,
        hosts: list[str],
        what: str,
        *,
        compression: Literal["deflate"] | None = None,
    ) -> None:
        """``name`` names the certificate and the thread; ``what`` the server, in the error raised
        when it does not start. ``compression="deflate"`` keeps permessage-deflate on."""
        cert, key = make_cert(directory, name, hosts)
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(cert, key)
        self._compression = compression
        self.sessions: list[Any] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{what} did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(
            self._handle,
            "127.0.0.1",
            0,
            ssl=self._ssl,
            process_request=self._process_request,
            max_size=None,
            compression=self._compression,
            ping_interval=None,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The handshake's answer: ``None`` upgrades (a fake overrides this to refuse some)."""
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def sessions_for(self, tag: str) -> list[Any]:
        with self._lock:
            return [s for s in self.sessions if s.tag == tag]
