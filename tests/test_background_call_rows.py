"""How the reports count a background call's rows (README, Reports, Calls): once, on its
representative, a retrieval row once one is stored, else the creation row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from addon.record import CallRecord
from addon.spend import main
from addon.store import Store
from addon.usage import Usage

DAY = datetime(2026, 11, 3, 23, 50, tzinfo=UTC)


def row(id_: str, ts: datetime = DAY, **fields: Any) -> CallRecord:
    """An o3-pro Responses row of staging."""
    base = {"session_id": "s1", "environment": "staging", "provider": "openai", "host": "api.openai.com"}
    record = CallRecord(id=id_, ts=ts, path="/v1/responses", api_flavor="responses", **base)
    record.model_requested = record.model_sent = "o3-pro"
    record.status_code = 200
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def creation(id_: str) -> CallRecord:
    """A background call's $0 creation row, named by the dated snapshot the queued answer gives."""
    return row(id_, model_reported="o3-pro-2025-06-10", cost_usd=Decimal(0), price_status="background")


def retrieval(id_: str, parent: str, cost: str = "2.4", ts: datetime = DAY) -> CallRecord:
    """The row billing ``parent``: 100 input and 20 output tokens."""
    record = row(id_, ts, parent_id=parent, price_model="o3-pro", price_status="priced")
    record.set_usage(Usage(input_tokens=100, output_tokens=20))
    record.cost_usd = Decimal(cost)
    return record


def report(tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list[CallRecord], *args: str) -> Any:
    db = tmp_path / "a.duckdb"
    if not db.exists():
        store = Store(db, "s1", flush_interval=3600, version="0.1.0")
        store.start()
        for record in rows:
            store.submit(record)
        store.close()
    capsys.readouterr()
    code = main(["--db", str(db), *args, "--from", "2000-01-01", "--format", "json"])
    out, err = capsys.readouterr()
    assert code in (0, None), err
    return json.loads(out)


def test_a_background_call_never_retrieved_is_one_call_without_a_missing_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = report(tmp_path, capsys, [creation("c1")], "summary")["total"]
    assert (total["calls"], total["usage_calls"], total["no_usage_calls"], total["cost_usd"]) == (
        1,
        0,
        0,
        "0",
    )
    assert [(m["model"], m["calls"]) for m in total["models"]] == [("o3-pro-2025-06-10", 1)]


def test_a_background_call_counts_on_the_day_its_retrieval_bills_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [creation("c1"), retrieval("c2", "c1", ts=DAY + timedelta(hours=1))]
    by_day = report(tmp_path, capsys, rows, "by", "day")
    assert [(r["key"], r["calls"], r["cost_usd"]) for r in by_day["rows"]] == [
        ("2026-11-03", 0, "0"),
        ("2026-11-04", 1, "2.4"),
    ]
    assert (by_day["total"]["calls"], by_day["total"]["cost_usd"]) == (1, "2.4")


def test_a_retrieval_naming_no_background_row_stays_a_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a 'background' creation row gives its call to a retrieval row: a row whose parent is an
    ordinary call (or is not in the file) is a part, as before, and the call counts once."""
    own = retrieval("c1", "none", cost="1")
    own.parent_id = None
    rows = [own, retrieval("c2", "c1"), retrieval("c3", "c9")]
    total = report(tmp_path, capsys, rows, "summary")["total"]
    assert (total["calls"], total["usage_calls"], total["cost_usd"]) == (1, 1, "5.8")
