"""A real ``openai`` SDK client for the end-to-end tests (run as a subprocess through HTTPS_PROXY).

Prints one JSON object per line, flushed at once:
``{"event": "chunk", "data": ...}`` per stream item, ``{"event": "result", "data": ...}`` at the end,
``{"event": "error", "status": N, "body": ...}`` (exit code 3) on an API error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import openai


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON line and flush it."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    """Run one call as the arguments say."""
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["chat", "responses", "embeddings", "models"])
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--include-usage", action="store_true", help="chat: stream_options.include_usage=true")
    ap.add_argument("--abort-after", type=int, default=0, help="close the stream after N items")
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE extra request header")
    ap.add_argument("--input", default="Say hello")
    ap.add_argument("--background", action="store_true", help="responses: background mode, polled to the end")
    args = ap.parse_args()

    headers = dict(h.split("=", 1) for h in args.header)
    client = openai.OpenAI(max_retries=0, timeout=30.0)
    try:
        if args.mode == "models":
            emit({"event": "result", "data": [m.id for m in client.models.list()]})
            return 0
        if args.mode == "embeddings":
            res = client.embeddings.create(model=args.model, input=args.input, extra_headers=headers)
            emit({"event": "result", "data": res.model_dump()})
            return 0
        if args.mode == "chat":
            kwargs: dict[str, Any] = {}
            if args.include_usage:
                kwargs["stream_options"] = {"include_usage": True}
            call = client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": args.input}],
                stream=args.stream,
                extra_headers=headers,
                **kwargs,
            )
        elif args.background:
            started = client.responses.create(
                model=args.model, input=args.input, background=True, extra_headers=headers
            )
            emit({"event": "started", "data": started.model_dump()})
            response = started
            while response.status in ("queued", "in_progress"):  # the SDK's own polling call
                response = client.responses.retrieve(started.id, extra_headers=headers)
                emit({"event": "polled", "status": response.status})
            emit({"event": "result", "data": response.model_dump()})
            return 0
        else:
            call = client.responses.create(
                model=args.model, input=args.input, stream=args.stream, extra_headers=headers
            )
        if not args.stream:
            emit({"event": "result", "data": call.model_dump()})
            return 0
        n = 0
        for item in call:
            emit({"event": "chunk", "data": item.model_dump()})
            n += 1
            if args.abort_after and n >= args.abort_after:
                call.close()
                emit({"event": "aborted", "after": n})
                return 0
        emit({"event": "result", "data": {"items": n}})
        return 0
    except openai.APIStatusError as exc:
        emit({"event": "error", "status": exc.status_code, "body": exc.body})
        return 3


if __name__ == "__main__":
    sys.exit(main())
