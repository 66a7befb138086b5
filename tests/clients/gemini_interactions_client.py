"""A real ``google-genai`` SDK client of the Interactions API (``client.interactions``), for the
end-to-end tests (run as a subprocess through HTTPS_PROXY).

Prints one JSON object per line: ``{"event": "<event_type>", "text": ...}`` per stream event, then
``{"event": "result", "id", "status", "text", "usage"}``, or ``{"event": "error", ...}`` (exit 3).
With ``--background`` it creates the interaction in the background and polls it until it is done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from google import genai


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _usage(found: Any) -> dict[str, Any] | None:
    return found.model_dump(exclude_none=True) if found is not None else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemini-2.5-flash")
    ap.add_argument("--agent", default=None)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--background", action="store_true")
    args = ap.parse_args()
    client = genai.Client(api_key="AIza-test-gemini-key-0000")
    target: dict[str, Any] = {"agent": args.agent} if args.agent else {"model": args.model}
    try:
        if args.stream:
            text, last = "", None
            for event in client.interactions.create(**target, input="Say hello", stream=True):
                delta = getattr(event, "delta", None)
                piece = getattr(delta, "text", None) if delta is not None else None
                emit({"event": event.event_type, "text": piece})
                text += piece or ""
                if event.event_type == "interaction.completed":
                    last = event.interaction
            emit(
                {
                    "event": "result",
                    "id": last.id if last else None,
                    "status": last.status if last else None,
                    "text": text,
                    "usage": _usage(last.usage if last else None),
                }
            )
            return 0
        found = client.interactions.create(**target, input="Say hello", background=args.background or None)
        while found.status in ("queued", "in_progress"):
            time.sleep(0.05)
            found = client.interactions.get(found.id)
        if args.background:  # read once more, as a client showing it again would
            found = client.interactions.get(found.id)
        emit(
            {
                "event": "result",
                "id": found.id,
                "status": found.status,
                "text": found.output_text,
                "usage": _usage(found.usage),
            }
        )
        return 0
    except Exception as exc:  # the SDK's errors differ by status; the test reads the status
        status = getattr(exc, "status_code", None) or getattr(exc, "code", None)
        emit({"event": "error", "type": type(exc).__name__, "status": status, "message": str(exc)[:500]})
        return 3


if __name__ == "__main__":
    sys.exit(main())
