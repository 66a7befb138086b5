"""A real ``openai`` SDK Realtime client for the end-to-end tests (a subprocess through HTTPS_PROXY).

``AsyncOpenAI().realtime.connect(model=...)`` over WSS, then the steps given, in order:

- ``transcribe:MODEL``: a ``session.update`` turning on input transcription, until ``session.updated``
  (or an ``error`` event: the update was refused, the session goes on);
- ``transcribe-only:MODEL``: the ``session.update`` of a transcription session (``--model ""`` and
  ``--query '{"intent": "transcription"}'``) naming its transcription model, until ``session.updated``;
- ``speak``: two ``input_audio_buffer.append`` (64 KB of base64 each) and a commit, until the
  transcription's ``completed`` event;
- ``respond``: a ``response.create``, until its ``response.done``;
- ``respond-then-leave``: a ``response.create``, until its first audio delta, then the client
  closes the connection.

A step also ends when the connection closes (after an ``error`` event: or 5 s later). Prints one JSON line per
received message (``type``, ``sha256`` of its exact bytes, ``size``; ``data`` for small ones), then
``{"event": "closed"}`` if the server closed, ``{"event": "done", "notice": ...}`` at the end; on a
refused handshake ``{"event": "refused", "status": N, "body": ...}`` (exit code 3).
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
    """Print each message until one of type ``ends`` (True), or the close (False). After an
    ``error`` event it waits (up to 5 s) for the server to close the socket."""
    failed = False
    while True:
        try:
            data = await asyncio.wait_for(connection.recv_bytes(), 5.0 if failed else 30.0)
        except ConnectionClosed as exc:
            emit({"event": "closed", "code": exc.rcvd.code if exc.rcvd else None})
            return False
        except TimeoutError:
            emit({"event": "still open"})
            return False
        event = json.loads(data)
        line = {"event": "recv", "type": event.get("type"), "sha256": hashlib.sha256(data).hexdigest()}
        line["size"] = len(data)
        if len(data) < 8192:
            line["data"] = event
        emit(line)
        if event.get("type") in ends:
            return True
        failed = failed or event.get("type") == "error"


async def run(args: argparse.Namespace) -> int:
    headers = json.loads(args.headers)
    query = json.loads(args.query)
    client = openai.AsyncOpenAI(max_retries=0, timeout=30.0)
    try:
        model = args.model or openai.omit  # "": none in the URL (a transcription session)
        manager = client.realtime.connect(model=model, extra_headers=headers, extra_query=query)
        connection = await manager.enter()
    except InvalidStatus as exc:
        response = exc.response
        emit(
            {
                "event": "refused",
                "status": response.status_code,
                "body": response.body.decode(errors="replace"),
            }
        )
        return 3
    notice = connection._connection.response.headers.get("X-Tokometer-Notice")  # the 101's headers
    try:
        if not await receive_until(connection, "session.created"):
            return 0
        for step in args.steps:
            name, _, value = step.partition(":")
            if name == "transcribe":
                await connection.session.update(
                    session={
                        "type": "realtime",
                        "instructions": args.instructions,
                        "audio": {"input": {"transcription": {"model": value}}},
                    }
                )
                ok = await receive_until(connection, "session.updated", "error")  # refused: go on
            elif name == "transcribe-only":  # a transcription session's configuration
                await connection.session.update(
                    session={"type": "transcription", "audio": {"input": {"transcription": {"model": value}}}}
                )
                ok = await receive_until(connection, "session.updated", "error")
            elif name == "speak":
                audio = base64.b64encode(bytes(range(256)) * 192).decode()  # 64 KB of base64
                await connection.input_audio_buffer.append(audio=audio)
                await connection.input_audio_buffer.append(audio=audio)
                await connection.input_audio_buffer.commit()
                ok = await receive_until(connection, "conversation.item.input_audio_transcription.completed")
            elif name == "respond":
                await connection.response.create()
                ok = await receive_until(connection, "response.done")
            elif name == "respond-then-leave":
                await connection.response.create()
                ok = await receive_until(connection, "response.output_audio.delta")
                break
            else:
                raise SystemExit(f"unknown step {step}")
            if not ok:
                break
    finally:
        await connection.close()
    emit({"event": "done", "notice": notice})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt-realtime")
    ap.add_argument("--headers", default="{}", help="extra handshake headers (JSON object)")
    ap.add_argument("--query", default="{}", help="extra query parameters (JSON object)")
    ap.add_argument("--instructions", default="Be brief.", help="the session's instructions (transcribe)")
    ap.add_argument("steps", nargs="*")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
