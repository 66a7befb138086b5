"""Options changed while the proxy runs (mitmweb's options, ``ctx.options.update``): nothing stale,
nothing counted twice, nothing switched off without a word. Found by an independent review; each
test fails on the code before its fix."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addon.live_state import session_live_path
from addon.meter import Meter
from addon.store import journal_dir_of
from tests.test_meter import CHAT_URL, make_flow, run_request


def call_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    with duckdb.connect(str(db), read_only=True) as con:
        return [row[0] for row in con.execute("SELECT id FROM calls").fetchall()]


async def test_a_new_database_closes_the_old_live_file(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"))
        addon.running()
        try:
            tctx.configure(addon, tokometer_db=str(tmp_path / "b.duckdb"))
            old = json.loads(session_live_path(tmp_path / "a.duckdb", addon.session_id).read_text())
            new = json.loads(session_live_path(tmp_path / "b.duckdb", addon.session_id).read_text())
            assert (old["running"], new["running"]) == (False, True)
            assert len([t for t in threading.enumerate() if t.name == "tokometer-live"]) == 1
        finally:
            addon.done()


async def test_a_call_estimated_across_a_database_switch_lands_in_one_database(tmp_path: Path) -> None:
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(a))
        addon.running()
        try:
            flow = make_flow(CHAT_URL, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
            await run_request(addon, flow)
            no_usage = {"model": "gpt-4o", "choices": []}  # no usage: counted offline, off the loop
            flow.response = http.Response.make(
                200, json.dumps(no_usage), {"content-type": "application/json"}
            )
            await addon.response(flow)  # journaled in a's journal, the estimate under way
            tctx.configure(addon, tokometer_db=str(b))
            await asyncio.gather(*addon._estimates)
            call_id = addon.call_state(flow).record.id  # type: ignore[union-attr]
        finally:
            addon.done()
    # In a's journal, for the next proxy on a.duckdb to replay (this process holds it until it
    # exits), and nowhere in b.
    journaled = "".join(p.read_text() for p in journal_dir_of(a).glob("*.jsonl"))
    assert journaled.count(call_id) >= 1
    assert call_ids(b) == [] and not list(journal_dir_of(b).glob("*.jsonl"))


async def test_a_policies_path_that_does_not_exist_is_said_out_loud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mistyped path reads as "no file", which means metering only: every rule lifted."""
    policies = tmp_path / "policies.yaml"
    policies.write_text("environments:\n  development:\n    budget: {usd: 1, period: day}\n")
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"), tokometer_policies=str(policies))
        addon.running()
        try:
            with caplog.at_level(logging.WARNING, logger="tokometer"):
                tctx.configure(addon, tokometer_policies=str(tmp_path / "polices.yaml"))
            assert any("polices.yaml does not exist: metering only" in r.getMessage() for r in caplog.records)
        finally:
            addon.done()


HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])  # read-write: nobody else may open the file
print("holding", flush=True)
sys.stdin.readline()
con.close()
"""


@pytest.mark.usefixtures("proxy_store_gives_up_soon")
async def test_budgets_are_loaded_once_a_database_held_at_start_is_free(tmp_path: Path) -> None:
    """A duckdb shell or notebook holds the file while the proxy starts: the start cannot read
    the day's spend. It used to stall the event loop ~10 s and then lift every budget for the
    whole run; the writer now loads the spend as soon as it can read the file."""
    import subprocess
    import sys
    import time
    from datetime import UTC, datetime

    from addon.store import request_flush

    db = tmp_path / "spend.duckdb"
    policies = tmp_path / "policies.yaml"
    policies.write_text("environments:\n  development:\n    budget: {usd: 1, period: day}\n")

    async def one_call(addon: Meter, prompt_tokens: int) -> int | None:
        flow = make_flow(CHAT_URL, {"model": "gpt-4o", "max_tokens": 10, "messages": []})
        flow.request.timestamp_start = datetime.now(UTC).timestamp()
        await run_request(addon, flow)
        if flow.response is not None:
            return flow.response.status_code
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 0}
        answer = json.dumps({"model": "gpt-4o", "choices": [], "usage": usage})
        flow.response = http.Response.make(200, answer, {"content-type": "application/json"})
        await addon.response(flow)
        return None

    first = Meter()
    with taddons.context(first) as tctx:
        tctx.configure(first, tokometer_db=str(db), tokometer_policies=str(policies))
        first.running()
        assert await one_call(first, 1_000_000) is None  # $2.50 today, over the $1 cap
        first.done()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        addon = Meter()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, tokometer_db=str(db), tokometer_policies=str(policies))
            started = time.monotonic()
            addon.running()
            assert time.monotonic() - started < 3  # not the 10 s it was
            try:
                assert await one_call(addon, 100) is None  # the day's spend unknown yet: let through
                assert holder.stdin is not None
                holder.stdin.write("\n")
                holder.stdin.flush()
                holder.wait(10)
                assert await asyncio.to_thread(request_flush, db, 5.0)  # the writer stores and loads
                assert await one_call(addon, 100) == 429  # $2.50 + this session's of a $1 cap
                [budget] = addon.enforcer.budgets.status(datetime.now(UTC))
                assert budget["spent"] == Decimal("2.50025")  # 1M + 100 gpt-4o input tokens, once each
            finally:
                addon.done()
    finally:
        if holder.poll() is None:
            holder.kill()


async def test_a_call_in_flight_when_mitmproxy_reloads_the_script_is_finished_by_the_new_addon(
    tmp_path: Path,
) -> None:
    """A reload calls ``done`` on the old addon and hands the flow's later hooks to the new one:
    the old addon leaves its calls in flight to the new one instead of losing them (a plain call)
    or recording them as aborted at shutdown (a stream)."""
    from addon.store import request_flush

    db = tmp_path / "spend.duckdb"
    old = Meter()
    with taddons.context(old) as tctx:
        tctx.configure(old, tokometer_db=str(db))
        old.running()
        plain = make_flow(CHAT_URL, {"model": "gpt-4o", "messages": []})
        await run_request(old, plain)
        streamed = make_flow(CHAT_URL, {"model": "gpt-4o", "stream": True, "messages": []})
        await run_request(old, streamed)
        streamed.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        streamed.response.stream = False
        old.responseheaders(streamed)
        stream = streamed.response.stream
        assert callable(stream)
        stream(b'data: {"model":"gpt-4o","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n')
        old.done()  # the script reloads: mitmproxy is not shutting down
        new = Meter()
        new.configure({"tokometer_db", "tokometer_policies", "tokometer_log"})
        new.running()
        try:
            answer = {
                "model": "gpt-4o",
                "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }
            plain.response = http.Response.make(200, json.dumps(answer), {"content-type": "application/json"})
            await new.response(plain)
            usage = (
                b'data: {"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":2}}'
            )
            usage += b"\n\n"
            stream(usage + b"data: [DONE]\n\n")
            state = new.call_state(streamed)
            assert state is not None and state.journaled_in is new.store  # journaled at its final event
            stream(b"")
            await new.response(streamed)
            assert await asyncio.to_thread(request_flush, db, 5.0)
        finally:
            new.done()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT streamed, aborted, input_tokens, usage_source FROM calls ORDER BY streamed"
        ).fetchall()
    assert rows == [(False, False, 10, "reported"), (True, False, 20, "reported")]
