"""A real ``google-genai`` SDK client for the end-to-end tests (run as a subprocess through HTTPS_PROXY).

Prints one JSON object per line: ``{"event": "chunk", "text": ...}`` per stream item, then
``{"event": "result", "text": ..., "usage": {...}}``, or ``{"event": "error", ...}`` (exit 3).
"""

from __future__ import annotations

import argparse
import json
import sys

from google import genai
from google.genai import errors


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemini-2.5-flash")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE extra request header")
    args = ap.parse_args()
    headers = dict(h.split("=", 1) for h in args.header)
    client = genai.Client(api_key="AIza-test-gemini-key-0000", http_options={"headers": headers})
    try:
        if args.stream:
            text = ""
            usage = None
            for chunk in client.models.generate_content_stream(model=args.model, contents="Say hello"):
                emit({"event": "chunk", "text": chunk.text})
                text += chunk.text or ""
                usage = chunk.usage_metadata
            emit({"event": "result", "text": text, "usage": usage.model_dump() if usage else None})
        else:
            res = client.models.generate_content(model=args.model, contents="Say hello")
            emit({"event": "result", "text": res.text, "usage": res.usage_metadata.model_dump()})
        return 0
    except errors.APIError as exc:
        emit({"event": "error", "status": exc.code, "message": exc.message})
        return 3


if __name__ == "__main__":
    sys.exit(main())
