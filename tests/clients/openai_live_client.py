"""A real ``openai`` SDK Live client for the end-to-end tests (a subprocess through HTTPS_PROXY).

``AsyncOpenAI().live.connect()`` over WSS; ``session.start`` (``--model``, ``--instructions``,
``--delegate``: a Responses backend), until ``session.started`` (or an ``error`` event and the
close: the start was refused). With ``--fork SESSION_ID``: ``live.forks.connect(session_id=...)``
instead, whose ``session.start`` carries overrides only (``--delegate``; the model is inherited).
Then the steps given, in order:

- ``audio``: two ``session.input_audio.append`` events (32 KB of base64 each), until the next
  ``session.usage.updated`` (or the close);
- ``close``: a ``session.close``, until ``session.closed`` and the server's close;
- ``leave``: the client closes the connection.

Prints one JSON line per received message (``type``, ``sha256`` of its exact bytes, ``size``;
``data`` for small ones), ``{"event": "closed", "code", "reason"}`` when the socket closed under it,
then ``{"event": "done"}``; a refused handshake: ``{"event": "refused", "status", "body"}`` (exit 3).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
from typing import Any

import openai
from websockets.exceptions import ConnectionClosed, InvalidStatus


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def receive_until(connection: Any, *ends: str) -> bool:
    """Print each message until one of type ``ends`` (True), or the close (False)."""
    while True:
        try:
            data = await asyncio.wait_for(connection.recv_bytes(), 20.0)
        except ConnectionClosed as exc:
            emit(
                {
                    "event": "closed",
                    "code": exc.rcvd.code if exc.rcvd else None,
                    "reason": exc.rcvd and exc.rcvd.reason,
                }
            )
            return False
        event = connection.parse_event(data)  # the SDK's own typing of the event
        line: dict[str, Any] = {
            "event": "recv",
            "type": event.type,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        line["size"] = len(data)
        if len(data) < 8192:
            line["data"] = json.loads(data)
        emit(line)
        if event.type in ends:
            return True


async def run(args: argparse.Namespace) -> int:
    client = openai.AsyncOpenAI(max_retries=0, timeout=30.0)
    session: dict[str, Any] = {}
    if not args.fork:
        session = {"model": args.model, "instructions": args.instructions}
        session["audio"] = {"format": {"type": "audio/pcm", "rate": 24000}}
    if args.delegate:
        session["delegation"] = {"type": "responses", "responses": {"model": args.delegate}}
    headers = json.loads(args.headers)
    if args.fork:
        connecting: Any = client.live.forks.connect(
            session_id=args.fork, extra_headers=headers, max_retries=0
        )
    else:
        connecting = client.live.connect(extra_headers=headers)
    try:
        async with connecting as connection:
            await connection.send({"type": "session.start", "event_id": "event_start", "session": session})
            if await receive_until(connection, "session.started"):
                for step in args.steps:
                    if step == "audio":
                        chunk = base64.b64encode(bytes(range(256)) * 96).decode()
                        for _ in range(2):
                            await connection.send({"type": "session.input_audio.append", "audio": chunk})
                        if not await receive_until(connection, "session.usage.updated"):
                            break
                    elif step == "close":
                        await connection.send({"type": "session.close"})
                        if await receive_until(connection, "session.closed"):
                            await receive_until(connection)  # until the server closes
                        break
                    elif step == "leave":
                        break
                    else:
                        raise SystemExit(f"unknown step {step}")
    except InvalidStatus as exc:
        return refused(exc)
    emit({"event": "done"})
    return 0


def refused(exc: InvalidStatus) -> int:
    """Say that the handshake was answered without an upgrade (its status and body); exit code 3."""
    response = exc.response
    emit({"event": "refused", "status": response.status_code, "body": response.body.decode(errors="replace")})
    return 3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt-live-1")
    ap.add_argument("--headers", default="{}", help="extra handshake headers (JSON object)")
    ap.add_argument("--instructions", default="Be brief.")
    ap.add_argument("--delegate", default=None, help="a Responses backend model to delegate to")
    ap.add_argument("--fork", default=None, help="fork this stored session instead of starting one")
    ap.add_argument("steps", nargs="*")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
