"""A real ``openai`` SDK Realtime translation client for the end-to-end tests (a subprocess through
HTTPS_PROXY).

``AsyncOpenAI().realtime.translations.connect(model=...)`` over WSS, until ``session.created``;
then the steps given, in order:

- ``update:<language>[:<model>]``: a ``session.update`` (the target language, and maybe the model
  transcribing the source audio), until ``session.updated`` or an ``error`` event;
- ``audio:<seconds>``: that many seconds of audio (24 kHz mono PCM16), one append a second (a
  send that fails, the socket closed under it: ``{"event": "send_failed"}``, and no more steps);
- ``listen``: print what comes until the socket closes;
- ``close``: a ``session.close``, until ``session.closed`` and the server's close;
- ``leave``: the client closes the connection.

Prints the lines tests/clients/openai_live_client.py prints (one per received message, the close
under it, ``{"event": "done"}``; a refused handshake: ``{"event": "refused", ...}``, exit 3).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys

import openai
from openai_live_client import emit, receive_until, refused
from websockets.exceptions import InvalidStatus

SECOND = 48_000  # bytes of 24 kHz mono PCM16


async def run(args: argparse.Namespace) -> int:
    client = openai.AsyncOpenAI(max_retries=0, timeout=30.0)
    headers = json.loads(args.headers)
    try:
        async with client.realtime.translations.connect(
            model=args.model, extra_headers=headers, max_retries=0
        ) as connection:
            if await receive_until(connection, "session.created"):
                for step in args.steps:
                    kind, _, value = step.partition(":")
                    if kind == "update":
                        language, _, model = value.partition(":")
                        audio: dict[str, object] = {"output": {"language": language}}
                        if model:
                            audio["input"] = {"transcription": {"model": model}}
                        event = {
                            "type": "session.update",
                            "event_id": "event_upd",
                            "session": {"audio": audio},
                        }
                        await connection.send(event)
                        if not await receive_until(connection, "session.updated", "error"):
                            break
                    elif kind == "audio":
                        try:
                            for n in range(int(value)):
                                chunk = base64.b64encode(bytes([n % 256]) * SECOND).decode()
                                append = {"type": "session.input_audio_buffer.append", "audio": chunk}
                                await connection.send(append)
                        except Exception as exc:  # the socket closed under it
                            emit({"event": "send_failed", "error": type(exc).__name__})
                            await receive_until(connection)
                            break
                    elif kind == "listen":
                        await receive_until(connection)
                    elif kind == "close":
                        await connection.send({"type": "session.close"})
                        if await receive_until(connection, "session.closed"):
                            await receive_until(connection)  # until the server closes
                        break
                    elif kind == "leave":
                        break
                    else:
                        raise SystemExit(f"unknown step {step}")
    except InvalidStatus as exc:
        return refused(exc)
    emit({"event": "done"})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt-realtime-translate")
    ap.add_argument("--headers", default="{}", help="extra handshake headers (JSON object)")
    ap.add_argument("steps", nargs="*")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
