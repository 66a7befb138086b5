"""Review round 19: failing tests, no fix.

Since c1b6c2a a background response's (or batch's) $0 creation row is its call and the retrieval
row that bills it is a part of it (``parent_id``). The two rows differ in what the reports group
and filter by, so the call and its cost land apart: by model (1), in savings (2), in the count of
calls with usage (3) and of calls without usage (5). (4) is ba87f84's ratio fix at a larger
scale. (6) scripts/bench-spend fails before timing any report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import taddons

from addon.meter import Meter
from addon.record import CallRecord
from addon.spend import main
from addon.store import Store
from addon.usage import Usage
from tests import test_batch_hooks as batch_hooks
from tests.test_background_responses import DONE, poll, start
from tests.test_spend import call, run, write
from tests.test_spend import report as spend_report


async def one_retrieved_background_call(db: Path) -> None:
    """An o3-pro call in background mode (answered queued, model "o3-pro-2025-06-10"), then
    retrieved once, completed: 12 input and 30,000 output tokens, $2.40024."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(db))
        addon.running()
        try:
            await start(addon)
            await poll(addon, DONE)
        finally:
            addon.done()


def report(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["--db", str(db), *args, "--from", "2000-01-01", "--format", "json"])
    out, err = capsys.readouterr()
    assert code in (0, None), err
    return json.loads(out)


async def test_a_background_call_and_its_cost_are_one_model_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`spend by model` (and summary's models) of one background o3-pro call.

    The creation row's report model is its model_reported, the dated snapshot the queued answer
    names ("o3-pro-2025-06-10", no price_model: it is $0 'background'); the retrieval row's is its
    price_model "o3-pro". The call is counted on the first, its cost summed on the second, so the
    user reads two models: "o3-pro-2025-06-10" 1 call, $0, share 0.0, and "o3-pro" 0 calls,
    $2.40024, share 1.0 (summary's models: the dated one 100% of calls at $0).
    Expected: "o3-pro" 1 call, $2.40024, share 1.0, no call under another name, as before
    c1b6c2a (fa31b2f: "o3-pro" 1 call, the dated name 0 calls $0) and as README says dated
    snapshots fold into their base model."""
    db = tmp_path / "a.duckdb"
    await one_retrieved_background_call(db)
    by_model = {r["key"]: (r["calls"], r["cost_usd"]) for r in report(capsys, db, "by", "model")["rows"]}
    assert by_model.pop("o3-pro") == (1, "2.40024")
    assert sum(calls for calls, _ in by_model.values()) == 0  # no other model has the call
    summary = report(capsys, db, "summary")
    models = {m["model"]: (m["calls"], m["share"], m["cost_usd"]) for m in summary["total"]["models"]}
    assert models.pop("o3-pro") == (1, 1.0, "2.40024")
    assert sum(calls for calls, _, _ in models.values()) == 0


async def test_savings_counts_a_background_call_as_summary_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`spend savings` of one retrieved background o3-pro call reads calls 0 (total and the
    o3-pro model row, cost $2.40024) where `spend summary` reads calls 1.

    savings keeps only rows with usage (``_HAS_USAGE_SQL``): the $0 creation row, now the call,
    has none and is left out, and the retrieval row that carries the usage is a part (parent_id),
    counted in no calls. A downgrade rule on o3-pro would likewise report downgraded_calls 0 for
    it. Before c1b6c2a savings said 1 (the retrieval row was then the call).
    Expected: calls 1 in savings' total and its o3-pro row."""
    db = tmp_path / "a.duckdb"
    await one_retrieved_background_call(db)
    assert report(capsys, db, "summary")["total"]["calls"] == 1
    savings = report(capsys, db, "savings")
    [env] = savings["environments"]
    [model] = env["models"]
    assert (model["model"], model["cost_usd"]) == ("o3-pro", "2.40024")
    assert (savings["total"]["calls"], env["calls"], model["calls"]) == (1, 1, 1)


def test_a_message_batch_billed_on_two_model_rows_is_one_call_with_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`spend summary` of one Anthropic Message Batch of two models, as the meter writes it
    (test_batch_hooks: its $0 'background' creation row c1, then one results row per model, each
    with parent_id c1): calls 1, but usage_calls 2, so cost_per_call_usd is half the one call's
    cost ($0.005 of $0.01) and avg_input_tokens half its input (2,000 of 4,000).

    usage_calls counts the rows carrying usage not billed apart (count_calls_with_usage), which
    for a batch billed on one row per model is one per model, not one per call.
    Expected: usage_calls 1 (<= calls), cost_per_call_usd "0.01", avg_input_tokens 4000.0."""
    ts = datetime(2026, 11, 3, 12, tzinfo=UTC)
    base: dict[str, Any] = {
        "ts": ts,
        "session_id": "s1",
        "environment": "staging",
        "provider": "anthropic",
        "host": "api.anthropic.com",
        "api_flavor": "batch",
        "service_tier": "batch",
        "model_requested": "claude-haiku-4-5",
        "model_sent": "claude-haiku-4-5",
        "status_code": 200,
    }
    creation = CallRecord(id="c1", path="/v1/messages/batches", **base)
    creation.cost_usd, creation.price_status = Decimal(0), "background"
    results = "/v1/messages/batches/msgbatch_1/results"
    parts = []
    for n, model in ((2, "claude-haiku-4-5"), (3, "claude-sonnet-4-5")):
        part = CallRecord(id=f"c{n}", path=results, parent_id="c1", **base | {"ts": ts + timedelta(hours=1)})
        part.model_reported = part.price_model = model
        part.set_usage(Usage(input_tokens=2000, output_tokens=100))
        part.cost_usd, part.price_status = Decimal("0.005"), "priced"
        parts.append(part)
    db = tmp_path / "a.duckdb"
    writer = Store(db, "s1", flush_interval=3600, version="0.1.0")
    writer.start()
    for record in (creation, *parts):
        writer.submit(record)
    writer.close()
    total = report(capsys, db, "summary")["total"]
    assert (total["calls"], total["cost_usd"], total["input_tokens"]) == (1, "0.01", 4000)
    assert total["usage_calls"] <= total["calls"]
    assert (total["usage_calls"], total["cost_per_call_usd"], total["avg_input_tokens"]) == (
        1,
        "0.01",
        4000.0,
    )


def test_a_month_with_a_little_production_cost_never_reads_as_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ba87f84 fixed `spend ratio` reading ``1:0.0`` (as a month without production) for $0.000027
    of production against $0.0132 of non-production by rounding one_to to 4 places; with 100 such
    non-production calls ($1.32, 100 x 80,000 in / 2,000 out of gpt-4o-mini) the same production
    call gives one_to = 0.000027 / 1.32 = 0.0000205, which 4 places round to 0.0: JSON
    ``"one_to": 0.0`` and the table's ``1:0.0`` again, the walk-through's defect at a larger scale.
    Expected: one_to > 0 (e.g. 0.00002, two significant digits) and no ``1:0.0`` in the row."""
    path = tmp_path / "ratio.duckdb"
    nonprod = [
        call(n, "s", "gpt-4o-mini", Usage(input_tokens=80_000, output_tokens=2_000)) for n in range(100)
    ]
    prod = call(100, "s", "gpt-4o-mini", Usage(input_tokens=100, output_tokens=20), environment="production")
    write(path, [*nonprod, prod])
    (month,) = spend_report(capsys, "--db", str(path), "ratio")["months"]
    assert (month["nonprod_cost_usd"], month["prod_cost_usd"]) == ("1.32", "0.000027")
    assert month["one_to"] > 0
    code, out, _ = run(capsys, "--db", str(path), "ratio")
    [row] = [line for line in out.splitlines() if line.startswith("2026-11")]
    assert code == 0 and "1:0.0 " not in row + " "


async def test_a_batch_billed_without_a_usage_figure_is_still_flagged_as_without_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OpenAI batch (3 gpt-4o-mini requests) that expired: the meter writes its $0 'background'
    creation row and a retrieval row saying its cost is unknown (price_status 'no_usage', error
    batches.NO_USAGE; README: "a row says it is missing"). Since c1b6c2a that retrieval row is a
    part (parent_id), and no_usage_calls counts only a call's own row, 'background' ones aside:
    `spend summary` reads 1 call, total cost $0.000000, no_usage_calls 0, and no longer prints
    "1 call(s) without usage (aborted or unreadable), not in the cost" (fa31b2f: no_usage_calls 1
    and that line). Expected: no_usage_calls 1 and the line, so a $0 is not read as a cost."""
    db = tmp_path / "a.duckdb"
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(db))
        addon.running()
        try:
            await batch_hooks.upload(addon, batch_hooks.requests_of("gpt-4o-mini"))
            await batch_hooks.create(addon)
            await batch_hooks.poll(addon, batch_hooks.batch_object("expired"))
        finally:
            addon.done()
    total = report(capsys, db, "summary")["total"]
    assert (total["calls"], total["cost_usd"], total["usage_calls"]) == (1, "0", 0)
    assert total["no_usage_calls"] == 1
    code, out, _ = run(capsys, "--db", str(db), "summary", "--from", "2000-01-01")
    assert code == 0 and "1 call(s) without usage (aborted or unreadable), not in the cost" in out


def test_bench_spend_times_every_report(tmp_path: Path) -> None:
    """`scripts/bench-spend` (README, Speed: "times every report") stops after its header with
    status 2 and no message: it runs `spend --now ... session`, which spend refuses since 970c16a
    ("--now does not apply to session"), and its timer swallows spend's stderr. Nothing of the
    README's stated times can be checked with it. Expected: status 0 and a line per report, the
    last "slowest report: N ms (median)"."""
    root = Path(__file__).resolve().parent.parent
    env = os.environ | {"PYTHONPATH": str(root)}
    bench = [str(root / "scripts" / "bench-spend"), "--rows", "2000", "--repeat", "1"]
    done = subprocess.run(
        [sys.executable, *bench, "--keep", str(tmp_path / "bench")],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-500:] + done.stderr[-500:]
    assert "slowest report:" in done.stdout
