"""A real ``openai`` SDK client for the image and audio end-to-end tests (run through HTTPS_PROXY).

Prints one JSON object per line, flushed at once: ``{"event": "item", "type": ..., "usage": ...}`` per
stream event, ``{"event": "result", ...}`` at the end, ``{"event": "raw", "sha256": ..., "length": ...}``
for ``--raw`` (the stream's bytes as the client received them), and ``{"event": "error", "status": N,
"message": ...}`` (exit code 3) on an API error.
"""

from __future__ import annotations

import argparse
import hashlib
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
    ap.add_argument("mode", choices=["generate", "edit", "transcribe", "respond", "video"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--file", help="edit: the image; transcribe: the audio")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--partial-images", type=int, default=0)
    ap.add_argument("--response-format", default=None)
    ap.add_argument("--raw", action="store_true", help="a stream's raw bytes (hashed), not its events")
    ap.add_argument("--tool", default=None, help="respond: the image_generation tool (JSON)")
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE extra request header")
    ap.add_argument("--seconds", default=None, help="video: its seconds")
    ap.add_argument("--size", default=None, help="video: its size")
    args = ap.parse_args()

    headers = dict(h.split("=", 1) for h in args.header)
    client = openai.OpenAI(max_retries=0, timeout=30.0)
    kwargs: dict[str, Any] = {"model": args.model, "extra_headers": headers}
    if args.stream:
        kwargs["stream"] = True
    try:
        if args.mode == "generate":
            if args.partial_images:
                kwargs["partial_images"] = args.partial_images
            call = client.images.with_streaming_response.generate if args.raw else client.images.generate
            result = call(prompt="a lighthouse at dusk", **kwargs)
        elif args.mode == "edit":
            with open(args.file, "rb") as image:
                result = client.images.edit(image=image, prompt="add a red hat", **kwargs)
        elif args.mode == "video":  # client.videos.create: a multipart form, --file its input_reference
            video: dict[str, Any] = {k: v for k, v in (("seconds", args.seconds), ("size", args.size)) if v}
            if args.file:
                with open(args.file, "rb") as reference:
                    job = client.videos.create(prompt="a cat", input_reference=reference, **video, **kwargs)
            else:
                job = client.videos.create(prompt="a cat", **video, **kwargs)
            emit(
                {
                    "event": "result",
                    "job": job.model_dump(include={"id", "model", "seconds", "size", "status"}),
                }
            )
            return 0
        elif args.mode == "respond":  # a Responses call with the image_generation tool
            tool = {"type": "image_generation", **json.loads(args.tool or "{}")}
            result = client.responses.create(input="draw a lighthouse", tools=[tool], **kwargs)
            if not args.stream:
                images = [
                    o.model_dump(exclude={"result"})
                    for o in result.output
                    if o.type == "image_generation_call"
                ]
                usage = result.usage.model_dump(exclude_none=True) if result.usage else None
                emit({"event": "result", "usage": usage, "images": images})
                return 0
        else:
            if args.response_format:
                kwargs["response_format"] = args.response_format
            with open(args.file, "rb") as audio:
                result = client.audio.transcriptions.create(file=audio, **kwargs)
        if args.raw:
            with result as response:
                data = b"".join(response.iter_bytes())
            emit({"event": "raw", "sha256": hashlib.sha256(data).hexdigest(), "length": len(data)})
            return 0
        if args.stream:
            n = 0
            for item in result:
                usage = getattr(item, "usage", None)
                emit(
                    {
                        "event": "item",
                        "type": item.type,
                        "usage": usage.model_dump(exclude_none=True) if usage else None,
                    }
                )
                n += 1
            emit({"event": "result", "items": n})
            return 0
        if isinstance(result, str):  # response_format text, srt, vtt
            emit({"event": "result", "text": result})
            return 0
        usage = getattr(result, "usage", None)
        emit({"event": "result", "usage": usage.model_dump(exclude_none=True) if usage else None})
        return 0
    except openai.APIStatusError as exc:
        message = exc.body.get("message") if isinstance(exc.body, dict) else str(exc.body)
        emit({"event": "error", "status": exc.status_code, "message": message, "kind": type(exc).__name__})
        return 3


if __name__ == "__main__":
    sys.exit(main())
