"""A real ``boto3`` Bedrock runtime client for the end-to-end tests (run as a subprocess through HTTPS_PROXY).

``bedrock_client.py OPERATION [--model ID]`` with OPERATION one of converse, converse-stream,
invoke, invoke-stream. Prints one JSON object per line: ``{"event": "chunk", "text": ...}`` per
streamed piece of text, then ``{"event": "result", "text": ..., "usage": {...}}``, or
``{"event": "error", "code": ..., "status": ..., "message": ...}`` (exit 3). Retries are those of
boto3's defaults; ``{"event": "attempts", "n": ...}`` says how many requests the SDK made.
"""

from __future__ import annotations

import argparse
import json
import sys

import boto3
from botocore.exceptions import ClientError

PROMPT = [{"role": "user", "content": [{"text": "Say hello"}]}]


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("operation", choices=["converse", "converse-stream", "invoke", "invoke-stream"])
    ap.add_argument("--model", default="us.anthropic.claude-haiku-4-5-20251001-v1:0")
    args = ap.parse_args()
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    attempts = 0

    def count(**_: object) -> None:
        nonlocal attempts
        attempts += 1

    client.meta.events.register("before-send.bedrock-runtime", count)
    native = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello"}],
        }
    )
    try:
        if args.operation == "converse":
            res = client.converse(modelId=args.model, messages=PROMPT)
            text = res["output"]["message"]["content"][0]["text"]
            emit({"event": "result", "text": text, "usage": res["usage"]})
        elif args.operation == "converse-stream":
            res = client.converse_stream(modelId=args.model, messages=PROMPT)
            text, usage = "", None
            for event in res["stream"]:
                if "contentBlockDelta" in event:
                    piece = event["contentBlockDelta"]["delta"]["text"]
                    emit({"event": "chunk", "text": piece})
                    text += piece
                if "metadata" in event:
                    usage = event["metadata"]["usage"]
            emit({"event": "result", "text": text, "usage": usage})
        elif args.operation == "invoke":
            res = client.invoke_model(modelId=args.model, body=native)
            body = json.loads(res["body"].read())
            emit({"event": "result", "text": body["content"][0]["text"], "usage": body["usage"]})
        else:
            res = client.invoke_model_with_response_stream(modelId=args.model, body=native)
            text, metrics = "", None
            for event in res["body"]:
                inner = json.loads(event["chunk"]["bytes"])  # boto3 decodes the base64
                if inner.get("type") == "content_block_delta":
                    emit({"event": "chunk", "text": inner["delta"]["text"]})
                    text += inner["delta"]["text"]
                metrics = inner.get("amazon-bedrock-invocationMetrics", metrics)
            emit({"event": "result", "text": text, "usage": metrics})
        emit({"event": "attempts", "n": attempts})
        return 0
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        emit({"event": "attempts", "n": attempts})
        emit({"event": "error", "code": error.get("Code"), "status": status, "message": error.get("Message")})
        return 3


if __name__ == "__main__":
    sys.exit(main())
