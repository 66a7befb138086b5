"""Review of the budget refusal logic (BudgetRefusal, spent_budget, background holds, answers).

Each test fails on the code as reviewed and states what a user would see go wrong.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from addon.budgets import BudgetTracker, Scope, scopes_for
from addon.enforcement import Enforcer
from addon.policies import parse_policies
from addon.record import CallRecord
from addon.store import Store

KEY_AND_ENV = parse_policies(
    """\
environments:
  qa:
    budget: {usd: 10, period: day}
keys:
  ci: {fingerprint: 3f9a0c11b2de, budget: {usd: 1, period: day}}
"""
)
QA = Scope("environment", "qa")
CI = Scope("key", "ci")
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def _key_spent_env_held(enforcer: Enforcer, *, background: bool) -> tuple[Scope, ...]:
    """Key ci has spent $1.50 of its $1/day (the environment qa $1.50 of $10); another caller in qa
    (no key) holds $8.60 of qa's room: a background response (``background``) or a call in flight."""
    budgets = enforcer.budgets
    scopes = scopes_for("qa", "ci")
    budgets.record(scopes, Decimal("1.50"), NOW)
    assert budgets.check(scopes_for("qa"), NOW, reserve=("post", lambda: Decimal("8.60"))) is None
    if background:
        assert budgets.keep("post", "bg:resp_1", NOW.timestamp() + 3 * 3600) == Decimal("8.60")
    return scopes


def test_a_session_whose_key_budget_is_spent_is_closed_even_while_its_environment_is_merely_full() -> None:
    """spent_budget(spent_only=True) looks at the FIRST refusing budget only (check returns at the
    environment, whose room background responses fill: its spend is under its cap) and so says
    "not spent", though the key's own spend is over the key's cap. A Realtime / Live session on key
    ci keeps being served past its key's budget for as long as the environment stays full (up to
    3 hours of background holds), billing work the key's cap should have stopped."""
    enforcer = Enforcer(KEY_AND_ENV)
    scopes = _key_spent_env_held(enforcer, background=True)
    assert enforcer.budgets.check((CI,), NOW) is not None  # the key alone: spent
    message = enforcer.spent_budget(scopes, NOW.timestamp(), spent_only=True)
    assert message is not None, "key ci's budget is spent ($1.50 of $1), yet the session is not closed"
    assert message.startswith("key ci budget of $1.00 per day is spent")


def test_a_spent_key_is_refused_as_spent_not_as_a_five_second_wait_behind_a_full_environment() -> None:
    """decide() answers with the first budget check() finds over: the environment, full only of
    another caller's call in flight ("has no room left ... retry in 5 s", Retry-After 5, no
    x-should-retry: false). But the call's key has spent its budget for the day: the SDK retries
    (the README promises a spent budget "does not retry") and the message tells the user to retry
    in 5 seconds when nothing will pass before the day ends."""
    enforcer = Enforcer(KEY_AND_ENV)
    _key_spent_env_held(enforcer, background=False)
    decision = enforcer.decide(
        provider="openai",
        environment="qa",
        key_name="ci",
        user_name=None,
        model="gpt-4o-mini",
        now=NOW.timestamp(),
    )
    assert decision.refusal is not None
    assert decision.refusal.headers.get("x-should-retry") == "false", decision.message
    assert int(decision.refusal.headers["retry-after"]) == 12 * 3600, decision.message


def test_the_status_line_books_an_undeclared_app_env_where_a_forced_environment_sends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8409463: the live file says which environments a caller may name and the default, and the
    status line books an undeclared APP_ENV to that default. But the proxy books it by rules 3-5
    (addon.attribution._unbound): TOKOMETER_ENVIRONMENT (or an attribution.hosts rule) comes
    before the default. On a proxy started with TOKOMETER_ENVIRONMENT=staging, a shell with
    APP_ENV=test (shell-env --env test) has its calls booked to staging, while its prompt shows
    development's spend and budget ("development · $0.00 today · 0 calls")."""
    from addon.attribution import attribute
    from addon.client_process import ClientProcess
    from addon.live_state import LiveState
    from addon.meter import Meter
    from addon.spend_watch import statusline_json

    policies = parse_policies(
        "environments:\n  development:\n    budget: {usd: 10, period: day}\n"
        "  staging:\n    budget: {usd: 10, period: day}\n"
    )
    monkeypatch.setenv("TOKOMETER_ENVIRONMENT", "staging")
    meter = Meter()
    meter.live = LiveState(tmp_path / "spend.duckdb.live" / "s1.json", "s1")
    meter._apply(policies)
    # where the proxy books a call of that shell
    booked = attribute(
        policies=policies,
        process=ClientProcess(env={"APP_ENV": "test"}),
        forced_environment=meter.forced_environment,
    ).environment
    assert booked == "staging"
    state = meter.live.snapshot()
    now = datetime.now(UTC)
    state["today"] = {
        "date": now.date().isoformat(),
        "environments": {"staging": {"calls": 3, "cost_usd": "0.42"}},
    }
    monkeypatch.setenv("APP_ENV", "test")
    shown = statusline_json(state, now=now, alive=True)
    assert (shown["environment"], shown["calls"]) == (booked, 3), shown["text"]


def test_the_wait_a_background_hold_gives_is_not_cut_to_the_period_end_it_outlives() -> None:
    """check() caps a background-held refusal's Retry-After at the period's end (min(retry_after,
    room)). That is right when the spend fills the cap (it resets), not when the holds do: they do
    not end with the day. At 23:00 a deep-research call reserving $1.20 (held up to 3 hours, until
    02:00) fills a $1/day cap: the client is told to retry in 1h 0m, retries at midnight and is
    refused again (until 02:00), with the message again promising the same kind of wait."""
    tracker = BudgetTracker(parse_policies("environments:\n  qa:\n    budget: {usd: 1, period: day}\n"))
    start = datetime(2026, 11, 28, 23, tzinfo=UTC)
    scopes = scopes_for("qa")
    assert tracker.check(scopes, start, reserve=("post", lambda: Decimal("1.20"))) is None
    assert tracker.keep("post", "bg:resp_1", start.timestamp() + 3 * 3600) == Decimal("1.20")
    tracker.finish("post", scopes, Decimal(0), start)  # the POST's $0 row
    refusal = tracker.check(scopes, start)
    assert refusal is not None and refusal.spent_out
    retry_at = start + timedelta(seconds=refusal.retry_after)
    again = tracker.check(scopes, retry_at)
    assert again is None, f"told {refusal.message()!r}, then refused at {retry_at:%H:%M}: {again.message()!r}"


async def test_a_restart_keeps_the_output_history_per_answer(tmp_path: Path) -> None:
    """The output history is of ONE answer's output (_answers_of divides an n-answer call's output
    by n before OutputHistory.record). At start the history is read back from the database
    (OutputHistory.load), where an n=8 call's row holds all 8 answers' output and nothing says it
    asked for 8: it counts as one answer 8 times as long. Before the restart an uncapped o3 call
    reserves 3,000 output tokens an answer; after it, 24,000 (an n=8 call 192,000): calls under a
    small cap are refused "no room left" that passed the minute before."""
    from mitmproxy.test import taddons

    from addon.meter import Meter
    from addon.store import Store
    from tests.test_meter import CHAT_URL, finished_call, make_flow, run_request

    db = tmp_path / "spend.duckdb"
    policies = "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
    first = Meter()
    with taddons.context(first) as tctx:
        tctx.configure(first, tokometer_db=str(tmp_path / "other.duckdb"))
        first._apply(parse_policies(policies))
        body = {"model": "o3", "n": 8, "messages": [{"role": "user", "content": "eight takes"}]}
        flow = make_flow(CHAT_URL, body)
        flow.request.timestamp_start = datetime.now(UTC).timestamp()
        await run_request(first, flow)
        assert flow.response is None
        call_id = first.call_state(flow).record.id  # type: ignore[union-attr]
        record = finished_call(first, 0, "o3", 8 * 3000)  # 8 answers of 3,000 tokens each
        record.id = call_id
        first._on_finished([record])
        before = first.outputs.reserved("openai", "o3")
        assert before == 3000
    store = Store(db, first.session_id, flush_interval=0.05)
    store.start()
    store.submit(record)
    store.close()
    import duckdb

    second = Meter()  # the proxy started again on that database
    con = duckdb.connect(str(db), read_only=True)
    try:
        second._load_outputs(con)
    finally:
        con.close()
    assert second.outputs.reserved("openai", "o3") == before


def test_the_status_line_reads_app_env_only_where_the_proxy_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status line always books the shell by APP_ENV, but the proxy reads the variables
    attribution.process_env.environment names (README: "An empty value turns the lookup off";
    another list, other names). With the lookup off, a shell with APP_ENV=staging (declared) has
    its calls booked to development by the proxy, while its prompt shows staging (0 calls, staging's
    budget): the live file does not say which variables the proxy reads."""
    from addon.attribution import attribute
    from addon.client_process import ClientProcess
    from addon.live_state import LiveState
    from addon.meter import Meter
    from addon.spend_watch import statusline_json

    monkeypatch.delenv("TOKOMETER_ENVIRONMENT", raising=False)
    policies = parse_policies(
        "environments:\n  development:\n    budget: {usd: 10, period: day}\n"
        "  staging:\n    budget: {usd: 10, period: day}\n"
        "attribution:\n  process_env:\n    environment: []\n"
    )
    meter = Meter()
    meter.live = LiveState(tmp_path / "spend.duckdb.live" / "s1.json", "s1")
    meter._apply(policies)
    booked = attribute(policies=policies, process=ClientProcess(env={"APP_ENV": "staging"})).environment
    assert booked == "development"
    state = meter.live.snapshot()
    now = datetime.now(UTC)
    state["today"] = {
        "date": now.date().isoformat(),
        "environments": {"development": {"calls": 3, "cost_usd": "0.42"}},
    }
    monkeypatch.setenv("APP_ENV", "staging")
    shown = statusline_json(state, now=now, alive=True)
    assert (shown["environment"], shown["calls"]) == (booked, 3), shown["text"]


def _priced_call(call_id: str, session_id: str, cost: str) -> CallRecord:
    return CallRecord(
        id=call_id,
        ts=datetime.now(UTC),
        session_id=session_id,
        environment="development",
        provider="openai",
        host="api.openai.com",
        path="/v1/chat/completions",
        api_flavor="chat",
        model_requested="gpt-4o-mini",
        model_sent="gpt-4o-mini",
        status_code=200,
        cost_usd=Decimal(cost),
        price_status="priced",
    )


def _store_whose_listeners_see_a_call_arrive(db: Path, session_id: str) -> tuple[Store, CallRecord]:
    """A store (its writer thread not running: the test drives its rounds) whose listeners, as they
    run for call c1, see the event loop submit c2: c2 is queued and not shown to the listeners yet
    when the same flush takes the queue (``_flush_once``: ``_price_pending``, then the batch)."""
    store = Store(db, session_id, flush_interval=3600)
    store._stopping = True  # no writer thread: the rounds below are the writer's, in order
    store.start()
    late = _priced_call("c2", session_id, "0.25")

    def loop_submits_meanwhile(records: list[CallRecord]) -> None:
        if any(r.id == "c1" for r in records):
            store.submit(late)

    store.add_listener(loop_submits_meanwhile)
    return store, late


def test_a_call_submitted_while_the_listeners_run_is_not_counted_twice_in_the_live_file(
    tmp_path: Path,
) -> None:
    """Two proxies on one database: after each flush the refresher rebases the live file on the
    database's figure plus ``queued`` (this proxy's calls shown to the listeners and not stored).
    A call submitted while the listeners of that flush ran (c2) is stored by the flush but is not
    in ``queued`` (not shown to the listeners yet): the rebase counts it from the database, then
    the next round's listener (LiveState.record) counts it again in today_unstored. The status
    line shows 3 calls and $0.35 for 2 calls and $0.10 + $0.25 until another rebase (the next flush
    with something to store, or another proxy storing calls)."""
    from addon.live_state import LiveState
    from addon.meter import Meter

    db = tmp_path / "spend.duckdb"
    meter = Meter()
    live = LiveState(tmp_path / "spend.duckdb.live" / "s1.json", meter.session_id)
    store, _ = _store_whose_listeners_see_a_call_arrive(db, meter.session_id)
    store.add_listener(live.record)
    store.set_refresher(functools.partial(meter._refresh_shared, store, live))
    store._refresh_requested = True  # as when another proxy runs: a refresh after the flush
    try:
        store.submit(_priced_call("c1", meter.session_id, "0.10"))
        assert store.flush()
        store._price_pending()  # the writer's next round: c2 shown to the listeners
        today = live.snapshot()["today"]["environments"]["development"]
        assert (today["calls"], Decimal(today["cost_usd"])) == (2, Decimal("0.35")), today
    finally:
        store._stopping = False
        store.close()


def test_a_call_submitted_while_the_listeners_run_is_not_counted_twice_by_a_late_budget_load(
    tmp_path: Path,
) -> None:
    """The database was held at start (a duckdb shell): the budgets' spend is loaded after the next
    write (_load_budgets_late: the database's rows of this session, plus ``queued``). A call
    submitted while that flush's listeners ran (c2) is in the database and not in ``queued``; the
    next round's listener (record_spend) adds it again. Its budget counts c2 twice for the rest
    of the proxy's run: $0.60 spent for $0.35, and calls refused early as the cap nears."""
    from addon.meter import Meter

    db = tmp_path / "spend.duckdb"
    meter = Meter()
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 10, period: day}\n"))
    store, _ = _store_whose_listeners_see_a_call_arrive(db, meter.session_id)
    store.add_listener(meter._on_finished)
    store.after_next_write(functools.partial(meter._load_budgets_late, store))
    try:
        store.submit(_priced_call("c1", meter.session_id, "0.10"))
        assert store.flush()
        store._price_pending()  # the writer's next round: c2 counted by the listener
        [status] = meter.enforcer.budgets.status(datetime.now(UTC))
        assert status["spent"] == Decimal("0.35"), status["spent"]
    finally:
        store._stopping = False
        store.close()


def test_a_late_load_keeps_the_queued_calls_output_per_answer(tmp_path: Path) -> None:
    """_load_budgets_late (the database held at start, read after the next write) reloads the
    output history from the database and adds ``queued`` (calls priced, not stored yet) with
    OutputHistory.record(queued): without their answer counts, which _on_finished popped already.
    An n=8 call's 24,000 output tokens, 3,000 an answer a moment before, now count as one
    answer: its model's uncapped calls reserve 8 times what they write."""
    import duckdb

    from addon.meter import Meter
    from addon.migrations import migrate
    from tests.test_meter import finished_call

    meter = Meter()
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 100, period: day}\n"))
    record = finished_call(meter, 0, "o3", 8 * 3000)
    meter._answers_of[record.id] = 8  # as the request hook remembers an n=8 call
    meter._on_finished([record])
    assert meter.outputs.reserved("openai", "o3") == 3000
    con = duckdb.connect(str(tmp_path / "spend.duckdb"))
    try:
        migrate(con)  # the call is not stored yet: it is queued
        meter._load_outputs(con, [record])
    finally:
        con.close()
    assert meter.outputs.reserved("openai", "o3") == 3000
