"""A real ``openai`` SDK Live sideband for the end-to-end tests (a subprocess through HTTPS_PROXY).

``AsyncOpenAI().live.sideband.connect(session_id=...)`` over WSS (``/v1/live/sessions/{id}/attach``),
then the steps given, in order:

- ``update:<model>``: a ``session.update`` making ``<model>`` the delegation's Responses model,
  until ``session.updated`` or an ``error`` event;
- ``listen:<n>``: until ``n`` more ``session.usage.updated`` events (or the close);
- ``close``: a ``session.close``, until ``session.closed`` and the server's close.

Prints one JSON line per received message as tests/clients/openai_live_client.py does, then
``{"event": "done"}``; a refused handshake: ``{"event": "refused", "status", "body"}`` (exit 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import openai
from openai_live_client import emit, receive_until, refused
from websockets.exceptions import InvalidStatus


async def run(args: argparse.Namespace) -> int:
    client = openai.AsyncOpenAI(max_retries=0, timeout=30.0)
    headers = json.loads(args.headers)
    try:
        async with client.live.sideband.connect(
            session_id=args.session_id, extra_headers=headers, max_retries=0
        ) as connection:
            for step in args.steps:
                kind, _, value = step.partition(":")
                if kind == "update":
                    delegation = {"type": "responses", "responses": {"model": value}}
                    await connection.send(
                        {
                            "type": "session.update",
                            "event_id": "event_upd",
                            "session": {"delegation": delegation},
                        }
                    )
                    if not await receive_until(connection, "session.updated", "error"):
                        break
                elif kind == "listen":
                    for _ in range(int(value)):
                        if not await receive_until(connection, "session.usage.updated"):
                            break
                elif kind == "close":
                    await connection.send({"type": "session.close"})
                    if await receive_until(connection, "session.closed"):
                        await receive_until(connection)  # until the server closes
                    break
                else:
                    raise SystemExit(f"unknown step {step}")
    except InvalidStatus as exc:
        return refused(exc)
    emit({"event": "done"})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--session-id", required=True)
    ap.add_argument("--headers", default="{}", help="extra handshake headers (JSON object)")
    ap.add_argument("steps", nargs="*")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
