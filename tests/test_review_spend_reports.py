"""Review of the user-facing reports (scripts/spend): each test fails on a defect confirmed against
a DuckDB file built with the project's own Store (migrations, pricing), as the proxy writes it.

Prices per 1M tokens (NOTES.md): gpt-4o-mini 0.15 in / 0.60 out; claude-sonnet-4-5 3 / 15;
claude-opus-4-1 15 / 75 (genai-prices 0.2.3).
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from addon.anthropic_models import iteration_rows
from addon.policies import load_policies
from addon.record import CallRecord
from addon.spend import main
from addon.spend_watch import collect, render
from addon.store import Store, reading
from addon.usage import Iterations, Usage

T0 = datetime(2026, 11, 3, 12, tzinfo=UTC)
NOV = ("--from", "2026-11-01", "--to", "2026-11-30")


def row(n: int, env: str, model: str, usage: Usage | None, **fields: Any) -> CallRecord:
    """A finished call (OpenAI chat unless ``fields`` say otherwise) at T0 + n seconds."""
    base: dict[str, Any] = {
        "id": f"c{n}",
        "ts": T0 + timedelta(seconds=n),
        "session_id": "s1",
        "environment": env,
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "api_flavor": "chat",
        "model_sent": model,
        "model_requested": model,
        "status_code": 200,
    }
    record = CallRecord(**(base | fields))
    record.set_usage(usage)
    return record


def store(db: Path, records: list[CallRecord], session: str = "s1") -> Path:
    """The rows written (and priced) by the project's Store, as the proxy writes them."""
    writer = Store(db, session, flush_interval=3600, version="0.1.0")
    writer.start()
    for record in records:
        writer.submit(record)
    writer.close()
    return db


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    return json.loads(run(capsys, *args, "--format", "json")[1])


ANTHROPIC = {
    "provider": "anthropic",
    "host": "api.anthropic.com",
    "path": "/v1/messages",
    "api_flavor": "messages",
}


def test_an_advisor_row_is_not_a_second_call_in_cost_per_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend summary``: development made ONE Messages call (claude-sonnet-4-5, 1,000 in / 100
    out, $0.0045) whose advisor tool consulted claude-opus-4-1 (2,000 in / 200 out, $0.045,
    billed apart on a row of its own by ``iteration_rows``); production made one plain call
    ($0.0045). The user comparing dev and prod sees development "calls 2, cost per call
    $0.024750, avg input tokens 1,500", and a model mix "claude-opus-4-1 50% of calls".
    Expected: 1 call, $0.0495 per call, 3,000 input tokens per call: the billed-apart row is a
    part of its call (its ``error`` names the call), not a call of its own. Dev looks 2x cheaper
    per call than it is; the same holds for image_generation tool rows, SVG author rows and
    declined-hop rows (all ``billed_apart``), and ``spend session`` counts 3 calls for 2."""
    parent = row(
        1, "development", "claude-sonnet-4-5", Usage(input_tokens=1000, output_tokens=100), **ANTHROPIC
    )
    advisor = Iterations(advisors=(("claude-opus-4-1", Usage(input_tokens=2000, output_tokens=200)),))
    prod = row(2, "production", "claude-sonnet-4-5", Usage(input_tokens=1000, output_tokens=100), **ANTHROPIC)
    db = store(tmp_path / "spend.duckdb", [parent, *iteration_rows(parent, advisor, ["c1-advisor"]), prod])

    data = as_json(capsys, "--db", str(db), "summary", *NOV)
    dev = next(e for e in data["environments"] if e["environment"] == "development")
    assert dev["cost_usd"] == "0.0495"  # the money is right: 0.0045 + 0.045
    assert (dev["calls"], dev["cost_per_call_usd"], dev["avg_input_tokens"]) == (1, "0.0495", 3000)


BEDROCK = {
    "provider": "aws",
    "host": "bedrock-runtime.us-east-1.amazonaws.com",
    "path": "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/converse",
    "api_flavor": "converse",
}
BEDROCK_SONNET = "anthropic.claude-sonnet-4-5-20250929-v1:0"
ALLOWS_SONNET = """\
default_environment: development
environments:
  development:
    models:
      allow: [claude-sonnet-4-5*, claude-haiku-4-5*]
premium_usd_per_mtok: 100
"""


@pytest.fixture
def bedrock_db(tmp_path: Path) -> tuple[Path, Path]:
    """One development Bedrock call to Claude Sonnet 4.5 (1M in / 100k out, $4.95), which the
    allowlist allows (a plain pattern matches the Bedrock id: the proxy lets it through)."""
    call = row(
        1, "development", BEDROCK_SONNET, Usage(input_tokens=1_000_000, output_tokens=100_000), **BEDROCK
    )
    db = store(tmp_path / "spend.duckdb", [call])
    policies = tmp_path / "policies.yaml"
    policies.write_text(ALLOWS_SONNET)
    rules = load_policies(policies).environment("development").models
    assert rules.is_allowed(BEDROCK_SONNET)  # what the proxy decides for this call
    return db, policies


def test_models_does_not_flag_a_bedrock_call_the_allowlist_allows(
    bedrock_db: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend models``: the report checks the allowlist against the row's ``price_model``,
    which genai-prices writes ``regional.anthropic.claude-sonnet-4-5-20250929-v1:0`` for Bedrock;
    no rule matches that spelling, so the allowed call is shown "! not allowed" and the user is
    listed among premium users outside production (1 call, $4.95). Expected: not premium, 0
    flagged calls."""
    db, policies = bedrock_db
    data = as_json(capsys, "--db", str(db), "models", "--policies", str(policies), *NOV)
    assert [(r["premium_reasons"], r["flagged"]) for r in data["rows"]] == [([], False)]
    assert data["flagged"]["calls"] == 0


def test_savings_does_not_call_an_allowed_bedrock_call_blocked(
    bedrock_db: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend savings``: the same allowed Bedrock call is resolved by its ``price_model``
    (``regional.anthropic...``), which the rules refuse, so the report says "1 call(s) of models
    the rules would block ($4.9500)". Expected: outcome keep, 0 blocked calls, $0 blocked."""
    db, policies = bedrock_db
    data = as_json(capsys, "--db", str(db), "savings", "--policies", str(policies), *NOV)
    assert [m["outcome"] for m in data["environments"][0]["models"]] == ["keep"]
    assert (data["total"]["blocked_calls"], data["total"]["blocked_cost_usd"]) == (0, "0")


@pytest.fixture
def unpriced_prod_db(tmp_path: Path) -> Path:
    """November: development one priced gpt-4o-mini call (1M in / 100k out: $0.21); production
    three calls of a model no price list knows (gpt-9-imaginary, 1M in / 100k out each)."""
    dev = row(1, "development", "gpt-4o-mini", Usage(input_tokens=1_000_000, output_tokens=100_000))
    prod = [
        row(n, "production", "gpt-9-imaginary", Usage(input_tokens=1_000_000, output_tokens=100_000))
        for n in (2, 3, 4)
    ]
    return store(tmp_path / "spend.duckdb", [dev, *prod])


def test_ratio_says_when_calls_without_a_price_are_left_out(
    unpriced_prod_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend ratio``: production's 3 calls have no known price, so the month reads prod $0,
    "! worse than 1:2", with no word that 3 production calls are not in the cost (README, every
    report: "the table marks such a cost with * and says how many; JSON has unpriced_calls").
    Expected: the table says calls with no known price are left out, and the month's JSON has
    ``unpriced_calls``; actual: neither."""
    db = unpriced_prod_db
    _, text = run(capsys, "--db", str(db), "ratio", *NOV)
    assert "no known price" in text
    month = as_json(capsys, "--db", str(db), "ratio", *NOV)["months"][0]
    assert month["prod_cost_usd"] == "0"
    assert "unpriced_calls" in month


def test_budgets_say_when_calls_without_a_price_count_nothing(
    unpriced_prod_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend budgets``: a production budget of $1 a month shows spent $0.000000, 0%, "ok",
    with 3 calls of 1.1M tokens each on a model with no price, and nothing says so.
    Expected: the table says calls with no known price count nothing, and the budget's JSON has
    ``unpriced_calls`` (3); actual: neither."""
    policies = tmp_path / "budgets.yaml"
    policies.write_text(
        "default_environment: development\nenvironments:\n"
        "  production:\n    budget: {usd: 1, period: month}\n"
    )
    args = ("--db", str(unpriced_prod_db), "budgets", "--policies", str(policies), "--now", "2026-11-10")
    _, text = run(capsys, *args)
    assert "no known price" in text
    budget = as_json(capsys, *args)["budgets"][0]
    assert (budget["spent_usd"], budget["status"]) == ("0", "ok")
    assert budget.get("unpriced_calls") == 3


def test_watch_marks_a_session_total_that_leaves_unpriced_calls_out(tmp_path: Path) -> None:
    """``spend watch``: the session line and the "Today" row read "$0.21" for a session whose
    other 3 calls (3.3M tokens) have no known price, unmarked; the status line marks the same
    sum "+?" and every table report "*". Expected: the session's amount marked (``+?`` or ``*``);
    actual: "$0.21  4 calls". (tests/test_spend_watch.py::test_watch_frame_from_a_known_database
    pins the unmarked line for a session holding an unknown_model call.)"""
    dev = row(1, "development", "gpt-4o-mini", Usage(input_tokens=1_000_000, output_tokens=100_000))
    others = [
        row(n, "development", "gpt-9-imaginary", Usage(input_tokens=1_000_000, output_tokens=100_000))
        for n in (2, 3, 4)
    ]
    db = store(tmp_path / "spend.duckdb", [dev, *others])
    policies = tmp_path / "policies.yaml"
    policies.write_text("default_environment: development\n")
    with reading(db) as con:
        data = collect(con, db, load_policies(policies), T0 + timedelta(minutes=5))
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render(data, tz=UTC))
    session_line = next(line for line in console.export_text().splitlines() if line.startswith("Session"))
    assert "$0.21" in session_line
    assert re.search(r"\$0\.21(\+\?|\*)", session_line), session_line


def test_summary_cost_per_call_never_reads_as_zero_when_it_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend summary`` dev vs prod: development's call costs $0.000027 (gpt-4o-mini, 100 in /
    20 out), production's $1.05 (claude-sonnet-4-5, 100k in / 50k out). The "cost per call $"
    row uses one number of decimals for the row (4, as $1.05 >= $1), so development reads
    "0.0000": a paid call shown as free, the figure the dev-vs-prod comparison is for (its
    "total cost $" too). Expected: a non-zero development figure; actual "0.0000"."""
    dev = row(1, "development", "gpt-4o-mini", Usage(input_tokens=100, output_tokens=20))
    prod = row(
        2, "production", "claude-sonnet-4-5", Usage(input_tokens=100_000, output_tokens=50_000), **ANTHROPIC
    )
    db = store(tmp_path / "spend.duckdb", [dev, prod])
    data = as_json(capsys, "--db", str(db), "summary", *NOV)
    assert [e["cost_per_call_usd"] for e in data["environments"]] == ["0.000027", "1.05"]
    _, text = run(capsys, "--db", str(db), "summary", *NOV)
    line = next(line for line in text.splitlines() if line.startswith("cost per call"))
    development_cell = line.split()[4]  # "cost per call $" then development, production, total
    assert re.fullmatch(r"[0-9.,]+", development_cell) and any(d in "123456789" for d in development_cell), (
        line
    )


def test_savings_reprice_audio_tokens_at_the_targets_audio_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend savings``: one development gpt-audio call, 100k input and 100k output tokens, all
    audio ($9.60 as stored). With ``downgrade: {gpt-audio: gpt-audio-mini}`` the report re-prices
    it as TEXT tokens of gpt-audio-mini ($0.30: ``_reprice`` sums only input, cache and output
    buckets, dropping ``input_audio_tokens``/``output_audio_tokens``) and says it "would save
    $9.30". The proxy would price the same call on gpt-audio-mini at $3.00 (its audio rates), so
    the saving is $6.60: overstated by $2.70 (41%)."""
    usage = Usage(
        input_tokens=100_000, output_tokens=100_000, input_audio_tokens=100_000, output_audio_tokens=100_000
    )
    db = store(tmp_path / "spend.duckdb", [row(1, "development", "gpt-audio", usage)])
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "default_environment: development\nenvironments:\n  development:\n    models:\n"
        "      allow: [gpt-audio-mini]\n      downgrade: {gpt-audio: gpt-audio-mini}\n"
    )
    data = as_json(capsys, "--db", str(db), "savings", "--policies", str(policies), *NOV)
    (model,) = data["environments"][0]["models"]
    assert (model["outcome"], model["cost_usd"]) == ("downgrade", "9.6")
    assert (model["whatif_cost_usd"], model["savings_usd"]) == ("3", "6.6")
