"""A real ``google-genai`` Live client for the end-to-end tests (a subprocess through HTTPS_PROXY).

``client.aio.live.connect(model=..., config=...)`` over WSS (Developer API with an API key and
``api_version``, or ``--vertex`` with a fake OAuth token), then the steps given, in order:

- ``text:PROMPT``: a ``clientContent`` turn, received until its usage (and ``turnComplete``);
- ``audio``: three ``realtimeInput`` audio chunks (32 KB each) and ``audioStreamEnd``, received
  likewise;
- ``leave``: a ``clientContent`` turn, received until its first audio chunk; then the client
  closes the connection.

Every message received is printed as a JSON line with the ``sha256`` of its exact bytes (read
below the SDK), ``size`` and top-level ``keys``; then ``{"event": "done"}``. A session the
server (or the proxy) closes: ``{"event": "closed", "code", "message"}``; one refused at connect:
``{"event": "refused", "code" or "status", "message"}`` (exit code 3).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from typing import Any

import google.oauth2.credentials
from google import genai
from google.genai import errors, types
from websockets.asyncio.connection import Connection
from websockets.exceptions import InvalidStatus

PROJECT = "tokometer-test-project"
KEY = "AIzaSyLiveE2EkeyTEST0000111122223333444"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


_recv = Connection.recv


async def _recording_recv(self: Connection, *args: Any, **kwargs: Any) -> Any:
    """Connection.recv, printing what arrived (below the SDK: the exact bytes of the frame)."""
    data = await _recv(self, *args, **kwargs)
    raw = data if isinstance(data, bytes) else data.encode()
    try:
        keys = sorted(json.loads(raw))
    except Exception:
        keys = []
    emit({"event": "recv", "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw), "keys": keys})
    return data


Connection.recv = _recording_recv  # type: ignore[method-assign]


async def receive_turn(session: Any, *, leave: bool = False) -> None:
    """Receive until the turn's usage came and the turn completed (or its first audio: ``leave``)."""
    usage = complete = False
    while not (usage and complete):
        async for message in session.receive():
            usage = usage or message.usage_metadata is not None
            content = message.server_content
            complete = complete or bool(content and content.turn_complete)
            if leave and content and content.model_turn:
                return


async def run(args: argparse.Namespace) -> int:
    headers = json.loads(args.headers)
    if args.vertex:
        credentials = google.oauth2.credentials.Credentials(token="fake-oauth-token")  # type: ignore[no-untyped-call]
        client = genai.Client(
            vertexai=True,
            project=PROJECT,
            location="us-central1",
            credentials=credentials,
            http_options={"headers": headers},
        )
    else:
        client = genai.Client(api_key=KEY, http_options={"api_version": "v1beta", "headers": headers})
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        system_instruction=args.instruction,
        output_audio_transcription=types.AudioTranscriptionConfig(),
    )
    try:
        async with client.aio.live.connect(model=args.model, config=config) as session:
            try:
                for step in args.steps:
                    name, _, value = step.partition(":")
                    if name in ("text", "leave"):
                        turn = types.Content(role="user", parts=[types.Part(text=value or "Hello")])
                        await session.send_client_content(turns=turn, turn_complete=True)
                        await asyncio.wait_for(receive_turn(session, leave=name == "leave"), 20)
                        if name == "leave":
                            break
                    elif name == "audio":
                        chunk = types.Blob(data=bytes(range(256)) * 128, mime_type="audio/pcm;rate=16000")
                        for _ in range(3):
                            await session.send_realtime_input(audio=chunk)
                        await session.send_realtime_input(audio_stream_end=True)
                        await asyncio.wait_for(receive_turn(session), 20)
                    else:
                        raise SystemExit(f"unknown step {step}")
            except errors.APIError as exc:  # the socket closed under the session
                emit({"event": "closed", "code": exc.code, "message": exc.message or exc.details})
                return 0
    except errors.APIError as exc:
        emit({"event": "refused", "code": exc.code, "message": exc.message or exc.details})
        return 3
    except InvalidStatus as exc:
        response = exc.response
        emit(
            {
                "event": "refused",
                "status": response.status_code,
                "message": response.body.decode(errors="replace"),
            }
        )
        return 3
    emit({"event": "done"})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemini-2.5-flash-native-audio-preview-09-2025")
    ap.add_argument("--headers", default="{}", help="extra handshake headers (JSON object)")
    ap.add_argument("--instruction", default="Be brief.", help="the session's system instruction")
    ap.add_argument("--vertex", action="store_true")
    ap.add_argument("steps", nargs="*")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
