"""Real SDK clients of Vertex AI for the end-to-end tests (run as a subprocess through HTTPS_PROXY).

``gemini``: google-genai with ``vertexai=True`` and OAuth credentials holding a fake token;
``claude``: ``anthropic.AnthropicVertex`` with a fake access token. ``--stream`` streams,
``--count`` counts tokens first. Prints one JSON object per line: ``{"event": "chunk", "text"}``
per stream item, then ``{"event": "result", "text": ...}``, or ``{"event": "error", ...}`` (exit 3).
"""

from __future__ import annotations

import argparse
import json
import sys

import anthropic
import google.oauth2.credentials
from google import genai
from google.genai import errors

PROJECT = "tokometer-test-project"


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def gemini(args: argparse.Namespace) -> None:
    credentials = google.oauth2.credentials.Credentials(token="fake-oauth-token")  # type: ignore[no-untyped-call]
    client = genai.Client(vertexai=True, project=PROJECT, location=args.region, credentials=credentials)
    if args.count:
        emit(
            {
                "event": "count",
                "n": client.models.count_tokens(model=args.model, contents="Say hello").total_tokens,
            }
        )
    if args.stream:
        text = ""
        for chunk in client.models.generate_content_stream(model=args.model, contents="Say hello"):
            emit({"event": "chunk", "text": chunk.text})
            text += chunk.text or ""
        emit({"event": "result", "text": text})
    else:
        res = client.models.generate_content(model=args.model, contents="Say hello")
        emit({"event": "result", "text": res.text})


def claude(args: argparse.Namespace) -> None:
    client = anthropic.AnthropicVertex(
        region=args.region, project_id=PROJECT, access_token="fake-oauth-token"
    )
    messages = [{"role": "user", "content": "Say hello"}]
    if args.count:
        emit(
            {
                "event": "count",
                "n": client.messages.count_tokens(model=args.model, messages=messages).input_tokens,
            }
        )
    if args.stream:
        text = ""
        with client.messages.stream(model=args.model, max_tokens=100, messages=messages) as stream:
            for piece in stream.text_stream:
                emit({"event": "chunk", "text": piece})
                text += piece
        emit({"event": "result", "text": text})
    else:
        res = client.messages.create(model=args.model, max_tokens=100, messages=messages)
        emit({"event": "result", "text": "".join(b.text for b in res.content if b.type == "text")})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("family", choices=["gemini", "claude"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--region", default="us-central1")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--count", action="store_true")
    args = ap.parse_args()
    args.model = args.model or (
        "gemini-2.5-flash" if args.family == "gemini" else "claude-sonnet-4-5@20250929"
    )
    try:
        (gemini if args.family == "gemini" else claude)(args)
        return 0
    except errors.APIError as exc:
        emit({"event": "error", "status": exc.code, "message": exc.message})
        return 3
    except anthropic.APIStatusError as exc:
        emit({"event": "error", "status": exc.status_code, "message": str(exc)})
        return 3


if __name__ == "__main__":
    sys.exit(main())
