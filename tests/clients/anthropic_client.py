"""A real ``anthropic`` SDK client for the end-to-end tests (run as a subprocess through HTTPS_PROXY).

Prints one JSON object per line, flushed at once (same shapes as ``openai_client.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anthropic


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON line and flush it."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    """Run one Messages call as the arguments say."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="claude-haiku-4-5")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--abort-after", type=int, default=0, help="close the stream after N events")
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE extra request header")
    ap.add_argument("--input", default="Say hello")
    ap.add_argument("--auth-token", help="an OAuth token (Authorization: Bearer) instead of the API key")
    args = ap.parse_args()

    headers = dict(h.split("=", 1) for h in args.header)
    if args.auth_token:  # as Claude Code logged in to a plan: the token only, no x-api-key
        os.environ.pop("ANTHROPIC_API_KEY", None)
        client = anthropic.Anthropic(auth_token=args.auth_token, max_retries=0, timeout=30.0)
    else:
        client = anthropic.Anthropic(max_retries=0, timeout=30.0)
    try:
        call = client.messages.create(
            model=args.model,
            max_tokens=256,
            messages=[{"role": "user", "content": args.input}],
            stream=args.stream,
            extra_headers=headers,
        )
        if not args.stream:
            emit({"event": "result", "data": call.model_dump()})
            return 0
        n = 0
        for event in call:
            emit({"event": "chunk", "data": event.model_dump()})
            n += 1
            if args.abort_after and n >= args.abort_after:
                call.close()
                emit({"event": "aborted", "after": n})
                return 0
        emit({"event": "result", "data": {"items": n}})
        return 0
    except anthropic.APIStatusError as exc:
        emit({"event": "error", "status": exc.status_code, "body": exc.body})
        return 3


if __name__ == "__main__":
    sys.exit(main())
