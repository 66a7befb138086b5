"""Review round 16 of the ``parent_id`` change (a row billed apart from its call is a part of it,
not a call): each test fails on a defect confirmed against a file the project's own Store wrote.

One call c1 (gpt-4o, 1,000 in / 100 out) with its image_generation tool's row c1-img (gpt-image-1,
100 in / 1,000 out): ``scripts/spend summary`` says 1 call.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from addon.live_state import LiveState, today_baseline
from addon.record import COLUMNS, CallRecord, billed_apart
from addon.spend import main
from addon.spend_watch import statusline_json
from addon.store import Store, journal_dir_of
from addon.usage import Usage

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
DAY = NOW.strftime("%Y-%m-%d")
RANGE = ("--from", DAY, "--to", DAY)


def call(n: int, model: str, usage: Usage | None, **fields: Any) -> CallRecord:
    base: dict[str, Any] = {
        "id": f"c{n}",
        "ts": NOW + timedelta(seconds=n),
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


def image_row(parent: CallRecord) -> CallRecord:
    child = billed_apart(
        parent,
        f"{parent.id}-img",
        "images",
        requested="gpt-image-1",
        sent="gpt-image-1",
        reported="gpt-image-1",
        action="allowed",
        note=f"the image_generation tool's images of call {parent.id}: 1 image",
        inference_geo=None,
    )
    child.set_usage(Usage(input_tokens=100, output_tokens=1000))
    return child


def one_call_two_rows() -> list[CallRecord]:
    first = call(1, "gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    return [first, image_row(first)]


def store(db: Path, records: list[CallRecord], session: str = "s1") -> Path:
    writer = Store(db, session, flush_interval=3600, version="0.1.0")
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


def test_statusline_counts_one_call_with_its_image_row_as_one_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The status line (``spend statusline``, from the proxy's live file) says "2 calls" today and
    in the session for what ``spend summary`` counts as 1 call: ``LiveState.record`` (and
    ``today_baseline``'s ``count(*)``, the figure a restarted proxy starts from) count every row,
    a row billed apart from its call included. Expected 1 call everywhere; actual 2."""
    records = one_call_two_rows()
    db = store(tmp_path / "spend.duckdb", records)
    assert report(capsys, "--db", str(db), "summary", *RANGE)["total"]["calls"] == 1
    live = LiveState(tmp_path / "live.json", "s1", clock=lambda: NOW + timedelta(minutes=1))
    live.record(records)
    line = statusline_json(live.snapshot(), env="development", now=NOW + timedelta(minutes=1), alive=True)
    con = duckdb.connect(str(db), read_only=True)
    try:
        baseline = today_baseline(con, NOW + timedelta(minutes=1))
    finally:
        con.close()
    assert (line["calls"], line["session_calls"], baseline["development"][1]) == (1, 1, 1)


def test_savings_counts_calls_not_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``spend savings`` still counts rows (``count(*) AS calls``): its total says 2 calls (and the
    image row is a "call" of gpt-image-1) where ``summary`` says 1 call, 1 of them priced by the
    API priced it). Expected savings total calls 1; actual 2."""
    db = store(tmp_path / "spend.duckdb", one_call_two_rows())
    policies = tmp_path / "policies.yaml"
    policies.write_text("default_environment: development\n")
    summary = report(capsys, "--db", str(db), "summary", *RANGE)["total"]
    savings = report(capsys, "--db", str(db), "savings", "--policies", str(policies), *RANGE)
    assert (summary["calls"], summary["usage_calls"]) == (1, 1)
    assert savings["total"]["calls"] == 1


def test_a_previous_versions_journal_line_replayed_is_still_a_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A proxy of the previous version is killed with an image row in its journal (a line of one
    value fewer: no ``parent_id``); this version starts (m010 has run, its backfill is over) and
    replays it: the row is stored with ``parent_id`` NULL and never linked, so ``summary`` counts
    the call twice. Expected 1 call; actual 2."""
    db = store(tmp_path / "spend.duckdb", [])  # this version made the file: m010 applied
    lines = []
    for record in one_call_two_rows():
        values = json.loads(record.to_json())
        assert len(values) == len(COLUMNS) and COLUMNS[-1] == "parent_id"
        lines.append(json.dumps(values[:-1]))  # as the previous version wrote it
    journal_dir_of(db).mkdir(exist_ok=True)
    (journal_dir_of(db) / "crashed.jsonl").write_text("\n".join(lines) + "\n")
    store(db, [], session="s2")  # the next start replays it
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM calls").fetchone() == (2,)
    finally:
        con.close()
    assert report(capsys, "--db", str(db), "summary", *RANGE)["total"]["calls"] == 1


def test_an_older_proxys_rows_in_a_migrated_file_are_still_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two proxies of different versions on one file: this one migrated it (m010), the older one
    still inserts its rows, listing its own columns (no ``parent_id``: the insert works). Its image
    row names its call in ``error`` only, and nothing links it once m010 has run: ``summary``
    counts 2 calls for its 1. Expected 1; actual 2."""
    db = store(tmp_path / "spend.duckdb", [])
    older = [c for c in COLUMNS if c != "parent_id"]
    con = duckdb.connect(str(db))
    try:
        for record in one_call_two_rows():
            values = [getattr(record, c) for c in older]
            values[older.index("ts")] = record.ts.replace(tzinfo=None)
            con.execute(
                f"INSERT INTO calls ({', '.join(older)}) VALUES ({', '.join('?' for _ in older)})", values
            )
    finally:
        con.close()
    assert report(capsys, "--db", str(db), "summary", *RANGE)["total"]["calls"] == 1


def test_a_background_response_never_retrieved_is_still_a_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A background response (``"background": true``) whose result is never fetched through the
    proxy (a webhook, a cancel, a client that gave up, or past HOLD_S: ``addon.background_responses``)
    leaves only its $0 creation row (price_status 'background'). ``_CALL_ROW_SQL`` leaves every such
    row out, so the request vanishes: ``summary`` says 0 calls (and 0 no-usage calls) for a file
    with one request in it; the previous version said 1. Expected 1 call; actual 0."""
    creation = call(1, "o3-deep-research", None)
    creation.cost_usd, creation.price_status = Decimal(0), "background"
    db = store(tmp_path / "spend.duckdb", [creation])
    total = report(capsys, "--db", str(db), "summary", *RANGE)["total"]
    assert total["calls"] == 1


def test_session_table_never_shows_a_paid_model_as_free(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend session``'s cost column is still ``money()`` per cell (6 decimals under $1), not
    ``money_column``: a session's text-embedding-3-small row of 20 tokens ($0.02 / 1M: JSON
    ``"0.0000004"``, ``spend by model`` ``0.0000004``) reads ``0.000000`` beside gpt-4o's
    0.003500. Expected a non-zero cell (0.0000004); actual 0.000000."""
    embedding = call(1, "text-embedding-3-small", Usage(input_tokens=20), path="/v1/embeddings")
    embedding.api_flavor = "embeddings"
    chat = call(2, "gpt-4o", Usage(input_tokens=1000, output_tokens=100))
    db = store(tmp_path / "spend.duckdb", [embedding, chat])
    session = report(capsys, "--db", str(db), "session", "s1")
    assert {m["model"]: m["cost_usd"] for m in session["by_model"]}["text-embedding-3-small"] == "0.0000004"
    assert main(["--db", str(db), "session", "s1"]) in (0, None)
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("text-embedding-3-small")]
    assert line.split()[-1] == "0.0000004"
