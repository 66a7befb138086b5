"""A real ``openai`` SDK client minting Realtime sessions, for the end-to-end tests (a subprocess
through HTTPS_PROXY): one mint as the arguments say, its answer printed as one JSON line.

- ``client-secret SESSION``: ``client.realtime.client_secrets.create(session=SESSION)``;
- ``call SESSION``: ``client.realtime.calls.create(sdp=..., session=SESSION)``, the WebRTC offer
  (multipart/form-data with ``sdp`` and ``session``);
- ``beta-session BODY``: ``client.beta.realtime.sessions.create(**BODY)``;
- ``live-session SESSION``: ``client.live.create(session=SESSION, transport=...)``, an OpenAI Live
  WebRTC session (JSON: ``session`` and a ``webrtc`` transport with the SDP offer);
- ``live-accept SESSION``: ``client.live.sessions.accept("live_sip_e2e", session=SESSION)`` (SIP).

Prints ``{"event": "minted", "status": N, "notice": ...}`` or, on an API error,
``{"event": "refused", "status": N, "body": ...}`` (exit code 3).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import openai

SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["client-secret", "call", "beta-session", "live-session", "live-accept"])
    ap.add_argument("config", help="the session (JSON object), or the beta session's parameters")
    ap.add_argument("--header", action="append", default=[], help="NAME=VALUE extra request header")
    args = ap.parse_args()
    headers = dict(h.split("=", 1) for h in args.header)
    config = json.loads(args.config)
    client = openai.OpenAI(max_retries=0, timeout=30.0)
    try:
        if args.mode == "client-secret":
            raw = client.realtime.client_secrets.with_raw_response.create(
                session=config, expires_after={"anchor": "created_at", "seconds": 600}, extra_headers=headers
            )
        elif args.mode == "call":
            raw = client.realtime.calls.with_raw_response.create(
                sdp=SDP, session=config, extra_headers=headers
            )
        elif args.mode == "live-session":
            raw = client.live.with_raw_response.create(
                session=config, transport={"type": "webrtc", "sdp": SDP}, extra_headers=headers
            )
        elif args.mode == "live-accept":
            raw = client.live.sessions.with_raw_response.accept(
                "live_sip_e2e", session=config, extra_headers=headers
            )
        else:
            raw = client.beta.realtime.sessions.with_raw_response.create(**config, extra_headers=headers)
    except openai.APIStatusError as exc:
        emit({"event": "refused", "status": exc.status_code, "body": exc.response.text})
        return 3
    emit({"event": "minted", "status": raw.status_code, "notice": raw.headers.get("X-Tokometer-Notice")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
