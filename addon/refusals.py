"""Answers the proxy gives instead of forwarding a call, in each provider's own error format.

SDKs then raise their usual error (openai ``PermissionDeniedError`` / ``RateLimitError``,
anthropic the same names, boto3 a ``ClientError`` with the Bedrock error code) with our
message in ``str(exc)``. The body message always
starts with ``tokometer:`` so a developer knows who refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mitmproxy import http

from addon.model_rules import unmatched_reason

REFUSAL_KINDS = ("blocked", "over_budget", "rate_limited")
REFUSED_HEADER = "X-Tokometer-Refused"
NOTICE_HEADER = "X-Tokometer-Notice"
_PREFIX = "tokometer: "
_MAX_NAME = 120

# kind -> (OpenAI error type, OpenAI error code)
_OPENAI_TYPES = {
    "blocked": ("permission_error", "model_not_allowed"),
    "over_budget": ("insufficient_quota", "budget_exceeded"),
    "rate_limited": ("rate_limit_exceeded", "rate_limit_exceeded"),
}
# OpenAI codes of blocked calls whose model may well be allowed: a program branching on
# ``model_not_allowed`` must not be told to change a model that is not the problem.
USER_NOT_IDENTIFIED = "user_not_identified"
API_KEYS_DISAGREE = "api_keys_disagree"
_ANTHROPIC_TYPES = {
    "blocked": "permission_error",
    "over_budget": "rate_limit_error",
    "rate_limited": "rate_limit_error",
}
# Bedrock's error codes (``x-amzn-ErrorType``), which botocore reads to choose the exception and
# whether to retry: its standard retry mode retries ThrottlingException and a 429 whose code the
# operation does not model, but not a modeled AccessDeniedException (every runtime operation models
# it). Its legacy mode (AWS_RETRY_MODE=legacy, older botocore's default) retries any 429: a spent
# budget is answered 403 there, as Bedrock itself answers AccessDeniedException.
_AWS_CODES = {
    "blocked": "AccessDeniedException",
    "over_budget": "AccessDeniedException",
    "rate_limited": "ThrottlingException",
}
# Google's canonical status names (Gemini's error body)
_GOOGLE_STATUS = {403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}


def _clean(text: str, limit: int = _MAX_NAME) -> str:
    """Printable ASCII on one line, at most ``limit`` characters (model names come from clients)."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def error_body(
    provider: str, status: int, message: str, kind: str, *, final: bool = True, code: str | None = None
) -> dict[str, object]:
    """The JSON error object a ``provider`` would send (anything OpenAI-compatible gets OpenAI's);
    not ``final``: a wait (Bedrock names the throttle, as its header does). ``code``: OpenAI's
    ``code`` for a refusal that is not about the model (a blocked call's is ``model_not_allowed``)."""
    if kind not in REFUSAL_KINDS:
        raise ValueError(f"unknown refusal kind {kind!r}")
    if not message.startswith(_PREFIX):
        message = _PREFIX + message
    if provider == "anthropic":
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES[kind], "message": message}}
    if provider == "aws":  # Bedrock (restJson): botocore takes the message from ``message``
        return {"__type": _AWS_CODES[kind] if final else _AWS_CODES["rate_limited"], "message": message}
    if provider in ("gemini", "google", "vertex"):
        return {
            "error": {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
        }
    error_type, kind_code = _OPENAI_TYPES[kind]
    return {"error": {"message": message, "type": error_type, "param": None, "code": code or kind_code}}


def budget_refusal_status(provider: str, *, final: bool = True) -> int:
    """The status a spent budget is answered with: 429, or 403 for Bedrock (see ``_AWS_CODES``);
    a budget only filled by calls in flight (``final`` False) 429 everywhere, a throttle."""
    return 403 if provider == "aws" and final else 429


def refusal_response(
    provider: str,
    status: int,
    message: str,
    *,
    kind: str,
    retry_after: int | None = None,
    final: bool = True,
    code: str | None = None,
) -> http.Response:
    """A complete response refusing the call (``kind``: blocked | over_budget | rate_limited;
    ``code``: OpenAI's error code where the kind's own would mislead, see ``error_body``).

    Headers: JSON content type, ``X-Tokometer-Refused: <kind>``, ``Retry-After`` when
    given, and ``x-should-retry: false`` for blocked and over-budget calls so the SDKs do
    not retry something that cannot succeed before the period ends (Bedrock's error code
    does that for boto3). Not ``final``: an over-budget refusal that calls in flight cause (room
    comes back as they finish) lets the SDKs retry, and is a throttle on Bedrock.
    """
    body = json.dumps(error_body(provider, status, message, kind, final=final, code=code)).encode()
    headers = {"content-type": "application/json", REFUSED_HEADER: kind}
    if provider == "aws":
        headers["x-amzn-ErrorType"] = _AWS_CODES[kind] if final else _AWS_CODES["rate_limited"]
    if retry_after is not None:
        headers["retry-after"] = str(max(0, int(retry_after)))
    if kind in ("blocked", "over_budget") and final:
        headers["x-should-retry"] = "false"
    return http.Response.make(status, body, headers)


def blocked_message(environment: str, model: str, allowed_patterns: Sequence[str]) -> str:
    """Why a model was refused, naming the environment and what it allows."""
    allowed = ", ".join(_clean(p, 60) for p in allowed_patterns[:20])
    if len(allowed_patterns) > 20:
        allowed += f", ... ({len(allowed_patterns)} patterns)"
    what = f"allowed there: {allowed}" if allowed_patterns else "no model is allowed there"
    why = unmatched_reason(model)  # an OpenRouter alias or preset: why no rule matched, what to do
    return (
        f"model {_clean(model)} is not allowed in environment {_clean(environment, 60)} "
        f"({what}; see policies.yaml)" + (f" ({_clean(why, 600)})" if why else "")
    )


def several_keys_message(conflict: str) -> str:
    """Why a call carrying API keys that disagree about its environment was refused."""
    return f"{_clean(conflict, 300)}; send one API key (policies.yaml)"


def unidentified_user_message(why: str | None = None) -> str:
    """Why a call whose user cannot be identified was refused where users have limits; ``why``:
    the lookup's own account (``ClientProcess.problem``: "no /proc and psutil is not installed")."""
    cause = (
        _clean(why, 200) if why else "a client in a container or on another host, or not visible to the proxy"
    )
    return (
        f"{_PREFIX}the calling process's user could not be identified ({cause}) and policies.yaml "
        "limits users; set attribution.unidentified_user to the user such calls count as"
    )


def not_identified_in_time_message(retry_after: int) -> str:
    """Why a call was answered 503: its calling process's lookup had not answered in time."""
    return (
        f"{_PREFIX}the calling process was not identified in time (its lookup is slow: a loaded "
        f"host?) and policies.yaml limits users; retry in {retry_after} s"
    )


def not_identified_in_time_response(provider: str, message: str, retry_after: int) -> http.Response:
    """A 503 with ``Retry-After``: the call may be retried (the SDKs retry a 503), unlike a 403.
    The provider's own format for an unavailable service; ``X-Tokometer-Refused: blocked``."""
    if not message.startswith(_PREFIX):
        message = _PREFIX + message
    headers = {
        "content-type": "application/json",
        REFUSED_HEADER: "blocked",
        "retry-after": str(max(0, int(retry_after))),
        "x-should-retry": "true",
    }
    body: dict[str, object]
    if provider == "anthropic":
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
    elif provider == "aws":
        body = {"__type": "ServiceUnavailableException", "message": message}
        headers["x-amzn-ErrorType"] = "ServiceUnavailableException"
    elif provider in ("gemini", "google", "vertex"):
        body = {"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}
    else:
        body = {
            "error": {
                "message": message,
                "type": "server_error",
                "param": None,
                "code": "user_not_identified",
            }
        }
    return http.Response.make(503, json.dumps(body).encode(), headers)


def downgrade_notice(environment: str, requested: str, sent: str) -> str:
    """The ``X-Tokometer-Notice`` header of a downgraded call: one ASCII line."""
    requested, sent = _clean(requested), _clean(sent)
    return (
        f"downgraded {requested} -> {sent}: {requested} is not allowed in "
        f"{_clean(environment, 60)} (policies.yaml)"
    )


def rate_limit_message(scope_label: str, requests_per_minute: int, retry_after: int) -> str:
    """Why a call was refused for its rate, e.g. for scope ``development`` or ``key ci-openai``."""
    return (
        f"rate limit of {requests_per_minute} requests per minute for {_clean(scope_label, 60)} reached; "
        f"retry in {retry_after} s (policies.yaml)"
    )
