"""A real ``openai`` SDK client for the batch end-to-end tests (run through HTTPS_PROXY).

Uploads a JSONL input file (``client.files.create(purpose="batch")``), creates a batch from it
(``client.batches.create``, with ``--creation-header`` on that call only) and polls it
(``client.batches.retrieve``) ``--polls`` times; ``--cancel`` cancels it after the first poll,
``--list-after N`` lists the batches (``client.batches.list``) after N polls. Prints one JSON object
per line: ``{"event": "file" | "created" | "polled" | "cancelled" | "listed", "data": ...}``,
and ``{"event": "error", "status": N, "message": ...}`` (exit code 3) on an API error.
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
    """Run the batch as the arguments say."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", help="the JSONL input file to upload")
    ap.add_argument("--input-file-id", help="create from this file id instead (no upload)")
    ap.add_argument("--polls", type=int, default=3)
    ap.add_argument("--cancel", action="store_true")
    ap.add_argument("--list-after", type=int, default=None, help="list the batches after this many polls")
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE header on every request")
    ap.add_argument("--creation-header", action="append", default=[], help="NAME=VALUE on the creation only")
    args = ap.parse_args()

    headers = dict(h.split("=", 1) for h in args.header)
    creation = headers | dict(h.split("=", 1) for h in args.creation_header)
    client = openai.OpenAI(max_retries=0, timeout=30.0)
    try:
        file_id = args.input_file_id
        if file_id is None:
            with open(args.file, "rb") as requests:
                uploaded = client.files.create(file=requests, purpose="batch", extra_headers=headers)
            emit({"event": "file", "data": uploaded.model_dump()})
            file_id = uploaded.id
        batch = client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers=creation,
        )
        emit({"event": "created", "data": batch.model_dump()})
        for n in range(args.polls):
            if args.list_after == n:
                page = client.batches.list(limit=20, extra_headers=headers)
                emit({"event": "listed", "data": [b.model_dump() for b in page.data]})
            if args.cancel and n == 1:
                cancelled = client.batches.cancel(batch.id, extra_headers=headers)
                emit({"event": "cancelled", "data": cancelled.model_dump()})
            polled = client.batches.retrieve(batch.id, extra_headers=headers)
            emit({"event": "polled", "status": polled.status, "data": polled.model_dump()})
    except openai.APIStatusError as exc:
        emit({"event": "error", "status": exc.status_code, "message": str(exc.message)})
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
