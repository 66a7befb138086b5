"""Defects a first-time user found following README.md (29 Nov 2026); each test failed before its fix."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from addon.budgets import BudgetAlert, Scope
from addon.meter import Meter
from addon.model_rules import matches_any
from addon.notify import Notifier
from addon.policies import Budget, PolicyError, parse_policies
from addon.spend_watch import _session_text
from tests.test_meter import make_flow, run_request, sent_body

SHIPPED = Path(__file__).parents[1] / "policies.yaml"


def test_the_shipped_development_allowlist_treats_prefixed_model_ids_alike() -> None:
    """With the checkout's policies.yaml, in development through OpenRouter:
    `openai/gpt-4o-mini` is allowed (`*-mini` matches across the slash) but
    `anthropic/claude-haiku-4.5`, the cheap model the same allowlist means by `claude-haiku-*`, is
    refused 403, and `openai/gpt-4o` is refused instead of downgraded by `gpt-4o: gpt-4o-mini`.
    Bedrock's `us.anthropic.claude-haiku-4-5-20251001-v1:0` is refused the same way. README says
    only a trailing date and Gemini's `models/` are stripped, and nowhere how to allow a vendor-
    prefixed id, so a first-time user on OpenRouter or Bedrock gets their cheap Claude blocked."""
    policies = parse_policies(SHIPPED.read_text())
    allow = policies.environments["development"].models.allow
    assert matches_any(allow, "openai/gpt-4o-mini")  # passes today
    assert matches_any(allow, "anthropic/claude-haiku-4.5"), "OpenRouter's Claude Haiku 4.5 is refused"
    assert matches_any(allow, "us.anthropic.claude-haiku-4-5-20251001-v1:0"), "Bedrock's is refused"
    assert not matches_any(allow, "anthropic/claude-opus-4.1")
    assert not matches_any(allow, "us.anthropic.claude-opus-4-1-20250805-v1:0")


async def test_openrouter_calls_are_downgraded_in_openrouters_form_by_the_shipped_rules(meter: Meter) -> None:
    """`openai/gpt-4o` through OpenRouter in development: downgraded to `openai/gpt-4o-mini` (the
    id OpenRouter knows, not the bare `gpt-4o-mini`); `anthropic/claude-sonnet-4.5` to
    `anthropic/claude-haiku-4.5`; `anthropic/claude-haiku-4.5` sent as asked."""
    meter._apply(parse_policies(SHIPPED.read_text()))
    url = "https://openrouter.ai/api/v1/chat/completions"
    for asked, sent in [
        ("openai/gpt-4o", "openai/gpt-4o-mini"),
        ("anthropic/claude-sonnet-4.5", "anthropic/claude-haiku-4.5"),
        ("anthropic/claude-haiku-4.5", "anthropic/claude-haiku-4.5"),
    ]:
        flow = make_flow(url, {"model": asked, "messages": [{"role": "user", "content": "hi"}]})
        await run_request(meter, flow)
        assert flow.response is None, flow.response and flow.response.get_text()
        assert sent_body(flow)["model"] == sent
        record = meter.call_state(flow).record  # type: ignore[union-attr]
        assert (record.model_requested, record.model_sent) == (asked, sent)
        assert record.action == ("allowed" if asked == sent else "downgraded")


async def test_a_bedrock_call_to_an_allowed_model_passes_and_another_is_refused(meter: Meter) -> None:
    """Bedrock's id of Claude Haiku passes the shipped allowlist; Sonnet's would be downgraded, but
    a Bedrock request is signed (and the target's Bedrock id unknown): refused, 403."""
    meter._apply(parse_policies(SHIPPED.read_text()))
    host = "https://bedrock-runtime.us-east-1.amazonaws.com"
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    auth = {
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261129/us-east-1/bedrock/aws4_request"
    }
    haiku = make_flow(
        f"{host}/model/us.anthropic.claude-haiku-4-5-20251001-v1:0/converse", body, headers=auth
    )
    await run_request(meter, haiku)
    assert haiku.response is None
    sonnet = make_flow(
        f"{host}/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse", body, headers=auth
    )
    await run_request(meter, sonnet)
    assert sonnet.response is not None and sonnet.response.status_code == 403
    assert "not allowed" in json.loads(sonnet.response.get_content() or b"{}")["message"]


class _Hook:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.arrived = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                hook.auth.append(self.headers.get("Authorization"))
                hook.arrived.set()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[_Hook]:
    server = _Hook()
    yield server
    server.close()


def test_a_webhook_url_with_credentials_is_either_rejected_or_delivered(hook: _Hook) -> None:
    """policies.yaml accepts `webhook: https://user:pass@host/...` (basic auth, as ntfy or a
    self-hosted receiver use), but urllib cannot send to it: every notification fails and the
    proxy logs `webhook https://host notification failed (Name or service not known)`, a DNS
    error for a host that resolves. Either the file should refuse such a URL, or the POST should
    be sent (with the credentials as an Authorization header)."""
    url = f"http://alerts:s3cret@127.0.0.1:{hook.port}/hook/path"
    try:
        policies = parse_policies(f"notifications:\n  desktop: false\n  webhook: {url}\n")
    except PolicyError:
        return  # refused at validation, with a message: acceptable
    notifier = Notifier(policies.notifications, platform="linux", environ={}, which=lambda name: None)
    notifier.notify("tokometer: test", "development budget: 80% reached", kind="budget_alert", data={})
    notifier.close(5)
    assert hook.arrived.wait(2), f"the webhook never received the POST (sent: {notifier.sent})"


def test_watch_recent_burn_rate_is_not_diluted_in_a_young_session() -> None:
    """`spend watch` two minutes into a session that spent $1.00 shows
    `burn $30.00/h (last 15 min $4.00/h)`: the "last 15 minutes" rate divides by 15 minutes
    although the session (and the proxy) ran 2 of them, so it reads as if spending slowed
    7.5 times when every dollar was spent within those 15 minutes."""
    now = datetime(2026, 11, 29, 14, 0, tzinfo=UTC)
    session = {
        "session_id": "20261129T135800Z-abcd",
        "started_at": now - timedelta(minutes=2),
        "ended_at": None,
        "calls": 10,
        "refused_calls": 0,
        "cost": Decimal("1.00"),
        "cost_last_15m": Decimal("1.00"),
    }
    text = _session_text(session, now).plain
    assert "burn $30.00/h" in text, text
    assert "last 15 min $4.00/h" not in text, text


def test_a_budget_alert_names_the_cap_the_file_gives() -> None:
    """With `budget: {usd: 0.015, period: day, alert_at: [0.5]}` the proxy logs (and notifies)
    `development budget: 50% of $0.02 per day reached: $0.01 used ...`: the cap is rounded to
    cents once it is a cent or more (under a cent it is kept exact, `$0.006`), so the message names
    a cap the file does not have, and `spend budgets` / `spend watch` show `0.015/day` beside it."""
    alert = BudgetAlert(
        scope=Scope("environment", "development"),
        budget=Budget(usd=Decimal("0.015"), period="day", alert_at=(0.5,)),
        fraction=0.5,
        spent=Decimal("0.0081"),
        period_start=datetime(2026, 11, 29, tzinfo=UTC),
    )
    message = alert.message()
    assert "$0.015 per day" in message, message
