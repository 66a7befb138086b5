"""Refusals in each provider's own error format, parsed by the real openai and anthropic SDKs."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable

import anthropic
import httpx2
import openai
import pytest
from mitmproxy import http

from addon.refusals import (
    blocked_message,
    downgrade_notice,
    error_body,
    rate_limit_message,
    refusal_response,
)

BLOCKED = blocked_message("development", "gpt-4o", ["gpt-4o-mini", "claude-haiku-4-5"])
OVER_BUDGET = (
    "development budget of $150.00 per month is spent: $150.02 used since 2026-11-01 (UTC); resets in 3d 4h"
)


def test_messages() -> None:
    assert BLOCKED == (
        "model gpt-4o is not allowed in environment development "
        "(allowed there: gpt-4o-mini, claude-haiku-4-5; see policies.yaml)"
    )
    assert blocked_message("qa", "o1", []) == (
        "model o1 is not allowed in environment qa (no model is allowed there; see policies.yaml)"
    )
    assert downgrade_notice("development", "gpt-4o", "gpt-4o-mini") == (
        "downgraded gpt-4o -> gpt-4o-mini: gpt-4o is not allowed in development (policies.yaml)"
    )
    assert rate_limit_message("key ci-openai", 30, 7) == (
        "rate limit of 30 requests per minute for key ci-openai reached; retry in 7 s (policies.yaml)"
    )


def test_client_supplied_names_cannot_break_a_header() -> None:
    notice = downgrade_notice("development", "gpt-4o\r\nX-Evil: 1\u00e9", "gpt-4o-mini")
    assert notice == (
        "downgraded gpt-4o??X-Evil: 1? -> gpt-4o-mini: gpt-4o??X-Evil: 1? is not allowed in development "
        "(policies.yaml)"
    )
    notice.encode("ascii")
    long = downgrade_notice("development", "m" * 500, "gpt-4o-mini")
    assert len(long) == 2 * 120 + len(
        "downgraded  -> gpt-4o-mini:  is not allowed in development (policies.yaml)"
    )
    response = http.Response.make(200, b"", {"X-Tokometer-Notice": notice})
    assert response.headers["x-tokometer-notice"] == notice


def test_bodies_and_headers() -> None:
    r = refusal_response("openai", 403, BLOCKED, kind="blocked")
    assert r.status_code == 403
    assert json.loads(r.content) == {
        "error": {
            "message": "tokometer: " + BLOCKED,
            "type": "permission_error",
            "param": None,
            "code": "model_not_allowed",
        }
    }
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-tokometer-refused"] == "blocked"
    assert r.headers["x-should-retry"] == "false"
    assert "retry-after" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)

    r = refusal_response("openai", 429, OVER_BUDGET, kind="over_budget", retry_after=273600)
    assert json.loads(r.content)["error"] == {
        "message": "tokometer: " + OVER_BUDGET,
        "type": "insufficient_quota",
        "param": None,
        "code": "budget_exceeded",
    }
    assert (r.headers["retry-after"], r.headers["x-should-retry"]) == ("273600", "false")

    r = refusal_response("deepseek", 429, "tokometer: slow down", kind="rate_limited", retry_after=7)
    assert json.loads(r.content)["error"]["message"] == "tokometer: slow down"  # not prefixed twice
    assert json.loads(r.content)["error"]["type"] == "rate_limit_exceeded"
    assert json.loads(r.content)["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["retry-after"] == "7"
    assert "x-should-retry" not in r.headers  # the SDK may wait and retry
    assert r.headers["x-tokometer-refused"] == "rate_limited"

    assert error_body("anthropic", 403, "no", "blocked") == {
        "type": "error",
        "error": {"type": "permission_error", "message": "tokometer: no"},
    }
    assert error_body("anthropic", 429, "no", "over_budget")["error"]["type"] == "rate_limit_error"
    assert error_body("anthropic", 429, "no", "rate_limited")["error"]["type"] == "rate_limit_error"
    assert error_body("gemini", 429, "no", "over_budget") == {
        "error": {"code": 429, "message": "tokometer: no", "status": "RESOURCE_EXHAUSTED"}
    }
    assert error_body("gemini", 403, "no", "blocked")["error"]["status"] == "PERMISSION_DENIED"
    with pytest.raises(ValueError, match="unknown refusal kind"):
        error_body("openai", 403, "no", "nope")


# -- the real SDKs ---------------------------------------------------------------------------------


def transport(response: http.Response, seen: list[httpx2.Request]) -> httpx2.MockTransport:
    """Answers every request with ``response`` (as the proxy would), counting requests."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(
            response.status_code, headers=list(response.headers.items()), content=response.content
        )

    return httpx2.MockTransport(handler)


def openai_call(
    response: http.Response, seen: list[httpx2.Request], max_retries: int = 2
) -> Callable[[], object]:
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://127.0.0.1:9/v1",
        max_retries=max_retries,
        http_client=httpx2.Client(transport=transport(response, seen)),
    )
    return lambda: client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )


def anthropic_call(
    response: http.Response, seen: list[httpx2.Request], max_retries: int = 2
) -> Callable[[], object]:
    client = anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url="http://127.0.0.1:9",
        max_retries=max_retries,
        http_client=httpx2.Client(transport=transport(response, seen)),
    )
    return lambda: client.messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )


def test_openai_sdk_blocked() -> None:
    seen: list[httpx2.Request] = []
    call = openai_call(refusal_response("openai", 403, BLOCKED, kind="blocked"), seen)
    with pytest.raises(openai.PermissionDeniedError) as info:
        call()
    exc = info.value
    assert str(exc) == "Error code: 403 - tokometer: " + BLOCKED
    assert (exc.status_code, exc.type, exc.code, exc.param) == (
        403,
        "permission_error",
        "model_not_allowed",
        None,
    )
    assert len(seen) == 1


def test_openai_sdk_over_budget_is_not_retried() -> None:
    seen: list[httpx2.Request] = []
    response = refusal_response("openai", 429, OVER_BUDGET, kind="over_budget", retry_after=273600)
    with pytest.raises(openai.RateLimitError) as info:
        openai_call(response, seen, max_retries=2)()
    assert str(info.value) == "Error code: 429 - tokometer: " + OVER_BUDGET
    assert (info.value.type, info.value.code) == ("insufficient_quota", "budget_exceeded")
    assert info.value.response.headers["retry-after"] == "273600"
    assert len(seen) == 1  # x-should-retry: false


def test_openai_sdk_rate_limited() -> None:
    seen: list[httpx2.Request] = []
    message = rate_limit_message("development", 10, 7)
    response = refusal_response("openai", 429, message, kind="rate_limited", retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        openai_call(response, seen, max_retries=0)()
    assert str(info.value) == "Error code: 429 - tokometer: " + message
    assert info.value.code == "rate_limit_exceeded"
    assert len(seen) == 1


def test_anthropic_sdk_blocked_and_over_budget() -> None:
    seen: list[httpx2.Request] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(anthropic.PermissionDeniedError) as info:
            anthropic_call(refusal_response("anthropic", 403, BLOCKED, kind="blocked"), seen)()
        exc = info.value
        assert "tokometer: " + BLOCKED in str(exc)
        assert str(exc).startswith("Error code: 403 - ")
        assert (exc.status_code, exc.type) == (403, "permission_error")
        assert exc.body == {
            "type": "error",
            "error": {"type": "permission_error", "message": "tokometer: " + BLOCKED},
        }

        response = refusal_response("anthropic", 429, OVER_BUDGET, kind="over_budget", retry_after=273600)
        with pytest.raises(anthropic.RateLimitError) as info2:
            anthropic_call(response, seen, max_retries=2)()
        assert "tokometer: " + OVER_BUDGET in str(info2.value)
        assert info2.value.type == "rate_limit_error"
    assert len(seen) == 2  # one each: neither was retried


def test_boto3_reads_a_bedrock_refusal() -> None:
    """botocore's own rest-json parser and standard retry rules on the proxy's Bedrock answers:
    the message is ours, blocked and over-budget calls are not retried, rate limits are."""
    import botocore.session
    from botocore.parsers import RestJSONParser
    from botocore.retries.standard import RetryContext, StandardRetryConditions

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    cases = [
        (403, BLOCKED, "blocked", "AccessDeniedException", False),
        (429, OVER_BUDGET, "over_budget", "AccessDeniedException", False),
        (429, "slow down", "rate_limited", "ThrottlingException", True),
    ]
    for status, message, kind, code, retried in cases:
        response = refusal_response("aws", status, message, kind=kind)
        raw = {"status_code": status, "headers": dict(response.headers), "body": response.content}
        for operation in ("Converse", "ConverseStream", "InvokeModel", "InvokeModelWithResponseStream"):
            op = model.operation_model(operation)
            parsed = RestJSONParser().parse(raw, op.output_shape)
            assert parsed["Error"] == {"Code": code, "Message": "tokometer: " + message}
            context = RetryContext(
                attempt_number=1,
                operation_model=op,
                parsed_response=parsed,
                http_response=type("R", (), {"status_code": status})(),
            )
            assert StandardRetryConditions().is_retryable(context) is retried, (kind, operation)


def test_boto3_legacy_retries_leave_a_spent_budget_alone() -> None:
    """botocore's legacy retry mode (AWS_RETRY_MODE=legacy, older botocore's default) resends any
    429: a Bedrock budget refusal is a 403 AccessDeniedException, as Bedrock's own."""
    import botocore.session
    from botocore import retryhandler, translate
    from botocore.loaders import Loader
    from botocore.parsers import RestJSONParser

    from addon.refusals import budget_refusal_status

    assert (budget_refusal_status("aws"), budget_refusal_status("openai")) == (403, 429)
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    original = Loader().load_data("_retry")
    config = translate.build_retry_config(
        "bedrock-runtime", original["retry"], original.get("definitions", {}), None
    )
    handler = retryhandler.create_retry_handler(config, "bedrock-runtime")
    for status, kind, retried in ((403, "over_budget", False), (429, "rate_limited", True)):
        response = refusal_response("aws", status, "no", kind=kind)
        raw = {"status_code": status, "headers": dict(response.headers), "body": response.content}
        parsed = RestJSONParser().parse(raw, model.operation_model("Converse").output_shape)
        http_response = type("R", (), {"status_code": status, "headers": raw["headers"]})()
        delay = handler(
            response=(http_response, parsed), attempts=1, caught_exception=None, request_dict={"context": {}}
        )
        assert (delay is not None) is retried, kind
