"""A real ``anthropic`` SDK client for the Message Batches end-to-end tests (through HTTPS_PROXY).

Creates a Message Batch of ``--request MODEL`` requests (``client.messages.batches.create``, with
``--creation-header`` on that call only; a ``--fail MODEL`` request is one the fake answers
``errored``), polls it (``retrieve``) ``--polls`` times, then reads its results
(``client.messages.batches.results``) ``--downloads`` times. Prints one JSON object per line:
``{"event": "created" | "polled" | "results", ...}``, and ``{"event": "error", "status": N,
"message": ...}`` (exit code 3) on an API error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anthropic


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON line and flush it."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    """Run the batch as the arguments say."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--request", action="append", default=[], help="a request for this model")
    ap.add_argument("--fail", action="append", default=[], help="a request the fake answers errored")
    ap.add_argument("--polls", type=int, default=2)
    ap.add_argument("--downloads", type=int, default=1)
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE header on every request")
    ap.add_argument("--creation-header", action="append", default=[], help="NAME=VALUE on the creation only")
    args = ap.parse_args()

    headers = dict(h.split("=", 1) for h in args.header)
    creation = headers | dict(h.split("=", 1) for h in args.creation_header)
    requests = [
        {
            "custom_id": f"{kind}-{i}",
            "params": {"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": f"Q{i}"}]},
        }
        for kind, models in (("ok", args.request), ("fail", args.fail))
        for i, model in enumerate(models)
    ]
    client = anthropic.Anthropic(max_retries=0, timeout=30.0)
    try:
        batch = client.messages.batches.create(requests=requests, extra_headers=creation)  # type: ignore[arg-type]
        emit({"event": "created", "data": batch.model_dump()})
        for _ in range(args.polls):
            polled = client.messages.batches.retrieve(batch.id, extra_headers=headers)
            emit({"event": "polled", "status": polled.processing_status})
        for _ in range(args.downloads):
            kinds = [r.result.type for r in client.messages.batches.results(batch.id, extra_headers=headers)]
            emit({"event": "results", "types": sorted(kinds)})
    except anthropic.APIStatusError as exc:
        emit({"event": "error", "status": exc.status_code, "message": str(exc.message)})
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
