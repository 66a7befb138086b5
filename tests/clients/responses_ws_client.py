"""A real ``openai`` SDK Responses WebSocket client for the end-to-end tests (through HTTPS_PROXY).

``AsyncOpenAI().responses.connect()`` over WSS; each step is ``MODEL[@LANE]`` (a ``response.create``
on that lane, ``stream_id``), or several joined by ``+``, sent at once and awaited together (lanes
running concurrently). A step ends when each of its creates got its terminal event, or an ``error``
event on its lane. Prints one JSON line per received message (``type``, ``stream_id``, ``sha256``
of its exact bytes; ``data`` for an error), one ``{"event": "raised", ...}`` per error event the SDK
raises from ``dispatch``-style handling, then ``{"event": "done"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from typing import Any

import openai
from openai.types.responses.responses_server_event import ResponseWsError

TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    client = openai.AsyncOpenAI(max_retries=0, timeout=30.0)
    headers = json.loads(args.headers)
    async with client.responses.connect(extra_headers=headers) as connection:
        for step in args.steps:
            waiting: set[str | None] = set()
            for part in step.split("+"):
                model, _, lane = part.partition("@")
                kwargs: dict[str, Any] = {"model": model, "input": args.input}
                if lane:
                    kwargs["stream_id"] = lane
                await connection.response.create(**kwargs)
                waiting.add(lane or None)
            while waiting:
                data = await asyncio.wait_for(connection.recv_bytes(), 20.0)
                event = connection.parse_event(data)  # the SDK's own typing of the event
                lane = getattr(event, "stream_id", None)
                line = {"event": "recv", "type": event.type, "stream_id": lane}
                line["sha256"] = hashlib.sha256(data).hexdigest()
                if isinstance(event, ResponseWsError):
                    line["data"] = json.loads(data)
                    line["sdk"] = f"{type(event).__name__}: {event.error.code} {event.status}"
                emit(line)
                if event.type in TERMINAL or isinstance(event, ResponseWsError):
                    waiting.discard(lane)
    emit({"event": "done"})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--headers", default="{}", help="extra handshake headers (JSON object)")
    ap.add_argument("--input", default="Say hello.")
    ap.add_argument("steps", nargs="*")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
