"""Defects a first-time user met following README.md (second walk-through, 29 Nov 2026).

The walk: ``scripts/proxy`` (it made .venv), a temporary HOME, database and policies.yaml, the fake
provider behind ``--map-remote`` and ``ssl_insecure``, and real clients (openai and anthropic SDKs,
curl) through ``eval "$(scripts/shell-env ...)"``. A client in another network namespace stood in
for a container (a proxy on a veth address: "connection not found in /proc/net").

1. With ``users:`` limits and no ``attribution.unidentified_user``, that client's gpt-4o-mini call
   (a model development allows) was refused 403 with the right message, but with the OpenAI error
   ``code`` ``model_not_allowed``: a program branching on the code is told its model is refused.
2. ``spend watch`` and ``spend statusline`` wrote $0.013267 as ``$0.01`` while writing $0.007424 as
   ``$0.0074`` in the same frame; README (Budgets) says amounts are shown as the reports and
   ``spend watch`` show them, "up to four decimals under a dollar, ``$0.0354``" (the watch's own
   session line and the per-call log do so: ``$0.0133``).
3. ``spend ratio`` for a month of $0.013267 non-production and $0.000027 production printed
   ``1:0.0`` (and JSON ``"one_to": 0.0``): a month with production cost read as one without,
   and ``one_to`` rounded to 2 places where README (JSON output) says ratios are rounded to 4.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from rich.console import Console

from addon.client_process import ClientProcess
from addon.meter import Meter
from addon.policies import parse_policies
from addon.spend_watch import render, statusline_text
from addon.usage import Usage
from tests.test_meter import CHAT_URL, make_flow, run_request
from tests.test_spend import call, report, run, write

# What lookup_client_process answered for the client in another network namespace.
NOT_FOUND = ClientProcess(problem="connection not found in /proc/net (not a local client?)")


async def test_an_unidentified_users_refusal_does_not_say_the_model_is_not_allowed(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's policies: development allows ``*-mini``; root has a $5 monthly budget. A call of
    gpt-4o-mini from the namespace was answered 403 ``{"code": "model_not_allowed"}`` although the
    model is allowed and the message (rightly) says the user could not be identified."""
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    models: {allow: ['*-mini']}\n"
            "users:\n  root: {budget: {usd: 5, period: month}}\n"
        )
    )
    monkeypatch.setattr("addon.meter.lookup_client_process", lambda *args, **kwargs: NOT_FOUND)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow(CHAT_URL, body)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert isinstance(flow.response, http.Response)
    assert flow.response.status_code == 403
    error = json.loads(flow.response.content or b"{}")["error"]
    assert "user could not be identified" in error["message"]
    assert "attribution.unidentified_user" in error["message"]
    # Before: "model_not_allowed", the code of a model the allowlist refuses.
    assert error["code"] != "model_not_allowed"


def frame_text(renderable: Any, width: int = 100) -> str:
    """What ``spend watch --once`` prints for a frame."""
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_watch_shows_a_spend_between_a_cent_and_a_dollar_to_four_decimals() -> None:
    """The walk's frame: development $0.013267 today (its $150 monthly budget the same), user root
    $0.007424 of $5. Before: ``$0.01`` for development beside ``$0.0074`` for root."""
    now = datetime(2026, 11, 29, 17, 31, 20, tzinfo=UTC)
    data: dict[str, Any] = {
        "now": now,
        "db": "/tmp/spend.duckdb",
        "session": None,
        "today": [
            {"environment": "development", "cost": Decimal("0.013267"), "calls": 14, "unpriced_calls": 0}
        ],
        "budgets": [
            {
                "scope": "environment",
                "name": "development",
                "usd": "150",
                "period": "month",
                "spent_usd": Decimal("0.013267"),
                "used": 0.0001,
                "status": "ok",
                "unpriced_calls": 0,
            },
            {
                "scope": "user",
                "name": "root",
                "usd": "5",
                "period": "month",
                "spent_usd": Decimal("0.007424"),
                "used": 0.0015,
                "status": "ok",
                "unpriced_calls": 0,
            },
        ],
        "recent": [],
    }
    text = frame_text(render(data, tz=UTC))
    [development] = [line for line in text.splitlines() if line.strip().startswith("development")]
    [root] = [line for line in text.splitlines() if line.strip().startswith("user root")]
    assert "$0.0074" in root  # under a cent: four decimals (as before)
    assert development.split()[1:2] == ["$0.0133"]  # Today
    assert "$0.0133" in development.split()[3:5]  # Spent
    assert "$0.01 " not in development + " "


def test_statusline_shows_todays_spend_between_a_cent_and_a_dollar_to_four_decimals() -> None:
    """``dev · $0.01 today · 14 calls`` for $0.013267, where $0.007424 read ``$0.0074``."""
    line: dict[str, Any] = {"status": "on", "environment": "development", "today_usd": "0.013267"}
    line["calls"] = 14
    line["budget"] = None
    assert statusline_text(line, color=False) == "dev · $0.0133 today · 14 calls"
    earlier = {**line, "today_usd": "0.007424", "calls": 9}
    assert statusline_text(earlier, color=False) == "dev · $0.0074 today · 9 calls"


def test_ratio_of_a_month_with_a_little_production_cost_is_not_shown_as_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Non-production gpt-4o-mini 80,000 in / 2,000 out ($0.0132), production 100 / 20 ($0.000027):
    1:x with x = 0.000027 / 0.0132 = 0.0020. Before: ``"one_to": 0.0`` and ``1:0.0`` in the table,
    as a month without production reads."""
    path = tmp_path / "walk.duckdb"
    write(
        path,
        [
            call(1, "s", "gpt-4o-mini", Usage(input_tokens=80_000, output_tokens=2_000)),
            call(2, "s", "gpt-4o-mini", Usage(input_tokens=100, output_tokens=20), environment="production"),
        ],
    )
    (month,) = report(capsys, "--db", str(path), "ratio")["months"]
    assert (month["nonprod_cost_usd"], month["prod_cost_usd"]) == ("0.0132", "0.000027")
    assert month["ratio"] == round(0.0132 / 0.000027, 4)
    assert month["one_to"] == round(0.000027 / 0.0132, 4) == 0.002
    code, out, _ = run(capsys, "--db", str(path), "ratio")
    [row] = [line for line in out.splitlines() if line.startswith("2026-11")]
    assert code == 0 and "1:0.0 " not in row + " "
