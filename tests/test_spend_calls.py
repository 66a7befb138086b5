"""Reports count calls, not rows: a row billed apart from its call (``parent_id``) is a part of it,
not a call, and a background response's retrieval row is a part of its $0 creation row, the call;
the m010 migration links the rows an older proxy wrote; a database an older proxy wrote (fewer
columns) still reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from addon.live_state import LiveState
from addon.migrations import MIGRATIONS, applied, migrate
from addon.record import CallRecord, billed_apart
from addon.spend import main
from addon.store import Store
from addon.usage import Usage

T0 = datetime(2026, 11, 3, 12, tzinfo=UTC)
NOV = ("--from", "2026-11-01", "--to", "2026-11-30")


def row(n: int, model: str, usage: Usage | None, **fields: Any) -> CallRecord:
    base: dict[str, Any] = {
        "id": f"c{n}",
        "ts": T0 + timedelta(seconds=n),
        "session_id": "s1",
        "environment": "development",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/responses",
        "api_flavor": "responses",
        "model_sent": model,
        "model_requested": model,
        "status_code": 200,
        "user_name": "alice",
    }
    record = CallRecord(**(base | fields))
    record.set_usage(usage)
    return record


def store(db: Path, records: list[CallRecord]) -> Path:
    writer = Store(db, "s1", flush_interval=3600, version="0.1.0")
    writer.start()
    for record in records:
        writer.submit(record)
    writer.close()
    return db


def report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main([*args, "--format", "json"])
    out, err = capsys.readouterr()
    assert code in (0, None), err
    return json.loads(out)


def image_row(parent: CallRecord, row_id: str, usage: Usage) -> CallRecord:
    child = billed_apart(
        parent,
        row_id,
        "images",
        requested="gpt-image-1",
        sent="gpt-image-1",
        reported="gpt-image-1",
        action="allowed",
        note=f"the image_generation tool's images of call {parent.id}: 1 image",
        inference_geo=None,
    )
    child.set_usage(usage)
    return child


@pytest.fixture
def calls_db(tmp_path: Path) -> Path:
    """Two calls in four rows: c1 (gpt-4o, 1,000 in / 100 out) with its image tool's row c1-img
    (gpt-image-1, 100 in / 1,000 out); a background response's creation c2 ($0, 'background'),
    the call, and the retrieval c3 that bills it (gpt-4o, 2,000 in / 200 out), a part of c2."""
    first = row(1, "gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    images = image_row(first, "c1-img", Usage(input_tokens=100, output_tokens=1000))
    creation = row(2, "gpt-4o", None)
    creation.cost_usd, creation.price_status = Decimal(0), "background"
    retrieval = row(3, "gpt-4o", Usage(input_tokens=2000, output_tokens=200))
    retrieval.parent_id = "c2"  # as the meter writes it (its pending entry names the creation row)
    return store(tmp_path / "spend.duckdb", [first, images, creation, retrieval])


def test_billed_apart_names_the_call(calls_db: Path) -> None:
    con = duckdb.connect(str(calls_db), read_only=True)
    try:
        assert con.execute("SELECT id, parent_id FROM calls ORDER BY id").fetchall() == [
            ("c1", None),
            ("c1-img", "c1"),
            ("c2", None),
            ("c3", "c2"),
        ]
    finally:
        con.close()


def test_session_by_and_summary_count_two_calls_in_four_rows(
    calls_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: session 4 calls (3 with the background row's exclusion alone), by user 4."""
    session = report(capsys, "--db", str(calls_db), "session", "s1")
    assert session["total"]["calls"] == 2
    # the images are a part of c1, a call to gpt-4o: their row has their tokens and cost, no call
    assert {m["model"]: m["calls"] for m in session["by_model"]} == {"gpt-4o": 2, "gpt-image-1": 0}
    assert session["total"]["input_tokens"] == 3100  # sums take every row
    by_user = report(capsys, "--db", str(calls_db), "by", "user", *NOV)
    assert by_user["rows"][0]["calls"] == 2
    summary = report(capsys, "--db", str(calls_db), "summary", *NOV)["total"]
    # 3,100 input tokens over 2 calls (not 3 rows with usage)
    assert (summary["calls"], summary["usage_calls"], summary["avg_input_tokens"]) == (2, 2, 1550)
    sessions = report(capsys, "--db", str(calls_db), "sessions")["sessions"]
    assert sessions[0]["calls"] == 2


def _migrated_to_m009(db: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(db))
    applied(con)
    for fn in MIGRATIONS[: [m.__name__ for m in MIGRATIONS].index("m009_answers") + 1]:
        fn(con)
        con.execute("INSERT INTO _migrations VALUES (?, now())", [fn.__name__])
    return con


def test_m010_links_the_rows_an_older_proxy_billed_apart(tmp_path: Path) -> None:
    """The rows stored before ``parent_id`` named their call in ``error`` only: the migration
    links each to its call when that call is in the table, and no other row."""
    con = _migrated_to_m009(tmp_path / "old.duckdb")
    notes = {
        "p1": None,
        "a1": "the advisor tool's tokens (usage.iterations advisor_message) of call p1",
        "d1": "the tokens of a hop that declined (server-side fallback, usage.iterations) of call p1: "
        "billed at its own model's rates",
        "i1": "the image_generation tool's images of call p1: 1 image; priced as gpt-image-1",
        "s1": "the image_generation tool's SVG author tokens (svg_usage) of call p1",
        "gone": "the advisor tool's tokens (usage.iterations advisor_message) of call p9",  # not stored
        "other": "upstream said: the image_generation tool's images of call p1",  # not at the start
    }
    for call_id, error in notes.items():
        con.execute("INSERT INTO calls (id, ts, error) VALUES (?, now(), ?)", [call_id, error])
    migrate(con)
    linked = dict(con.execute("SELECT id, parent_id FROM calls").fetchall())
    con.close()
    assert linked == {"p1": None, "a1": "p1", "d1": "p1", "i1": "p1", "s1": "p1", "gone": None, "other": None}


def test_reports_read_a_database_from_before_the_attribution_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file only m001 made (an older proxy still writes it; a report opens it read-only, so
    does not migrate it): ``by user``, ``models`` and ``session`` answer, the missing columns
    read as NULL. Before: a DuckDB Binder Error for ``by user`` and ``models``."""
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    applied(con)
    MIGRATIONS[0](con)
    con.execute("INSERT INTO _migrations VALUES ('m001_initial', now())")
    con.execute(
        "INSERT INTO calls (id, ts, session_id, environment, provider, model_sent, input_tokens, "
        "output_tokens, cost_usd, price_status, price_model) VALUES "
        "('x1', '2026-11-03 12:00:00', 's1', 'development', 'openai', 'gpt-4o', 1000, 100, 0.0035, "
        "'priced', 'gpt-4o')"
    )
    con.close()
    by_user = report(capsys, "--db", str(db), "by", "user", *NOV)
    assert [(r["key"], r["calls"], r["cost_usd"]) for r in by_user["rows"]] == [(None, 1, "0.0035")]
    policies = tmp_path / "policies.yaml"
    policies.write_text("default_environment: development\n")
    models = report(capsys, "--db", str(db), "models", "--policies", str(policies), *NOV)
    assert [(r["user"], r["model"], r["calls"]) for r in models["rows"]] == [(None, "gpt-4o", 1)]
    assert report(capsys, "--db", str(db), "session", "s1")["total"]["calls"] == 1
    con = duckdb.connect(str(db), read_only=True)
    try:  # the file is as it was
        assert "user_name" not in {r[0] for r in con.execute("DESCRIBE calls").fetchall()}
    finally:
        con.close()


def test_savings_counts_calls_and_reprices_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gpt-4o call (1,000 in / 100 out) and a declined hop's row of it on gpt-4o (3,000 in / 300
    out), downgraded to gpt-4o-mini: 1 call downgraded (before: 2), re-priced as its 2 rows:
    4,000 x $0.15 + 400 x $0.60 per 1M = $0.00084."""
    first = row(1, "gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    hop = billed_apart(
        first,
        "c1-hop",
        "responses",
        requested="gpt-4o",
        sent="gpt-4o",
        reported="gpt-4o",
        action="allowed",
        note="the tokens of a hop that declined (server-side fallback, usage.iterations) of call c1",
        inference_geo=None,
    )
    hop.set_usage(Usage(input_tokens=3000, output_tokens=300))
    db = store(tmp_path / "spend.duckdb", [first, hop])
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "default_environment: development\nenvironments:\n  development:\n    models:\n"
        "      allow: [gpt-4o-mini]\n      downgrade:\n        gpt-4o: gpt-4o-mini\n"
    )
    total = report(capsys, "--db", str(db), "savings", "--policies", str(policies), *NOV)["total"]
    assert (total["calls"], total["downgraded_calls"], total["unpriced_calls"]) == (1, 1, 0)
    assert Decimal(total["whatif_cost_usd"]) == Decimal("0.00084")
    assert Decimal(total["cost_usd"]) == Decimal("0.014")  # 4,000 x $2.50 + 400 x $10 per 1M


def test_the_status_line_counts_a_background_call_once_by_its_creation(tmp_path: Path) -> None:
    """Its creation row ($0) is the call; the retrieval row that bills it adds its cost, no call."""
    creation = row(1, "o3-pro", None)
    creation.cost_usd, creation.price_status = Decimal(0), "background"
    retrieval = row(2, "o3-pro", Usage(input_tokens=12, output_tokens=100), parent_id="c1")
    retrieval.cost_usd, retrieval.price_status = Decimal("0.0080"), "priced"
    live = LiveState(tmp_path / "live.json", "s1", clock=lambda: T0 + timedelta(minutes=1))
    live.record([creation])
    assert live.snapshot()["session"]["calls"] == 1
    live.record([retrieval])
    session = live.snapshot()["session"]
    assert (session["calls"], Decimal(session["cost_usd"])) == (1, Decimal("0.008"))
