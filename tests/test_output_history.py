"""What a call with no output cap reserves: the p90 of its model's recent outputs (addon.output_history)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from addon.migrations import migrate
from addon.output_history import OutputHistory, percentile, tells_output
from addon.record import CallRecord

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def call(output: int | None, model: str = "o3", provider: str = "openai", **kw) -> CallRecord:
    record = CallRecord(
        id=kw.pop("id", "c"),
        ts=kw.pop("ts", NOW),
        session_id="s1",
        environment="development",
        provider=provider,
        host="api.openai.com",
        path="/v1/chat/completions",
        api_flavor=kw.pop("api_flavor", "chat"),
        model_requested=model,
        model_sent=model,
        output_tokens=output,
        input_tokens=None if output is None else 100,
        usage_source=kw.pop("usage_source", "none" if output is None else "reported"),
    )
    for name, value in kw.items():
        setattr(record, name, value)
    return record


def test_percentile_is_nearest_rank_and_exact() -> None:
    assert percentile(list(range(1, 101))) == 90
    assert percentile(list(range(1, 71))) == 63  # 0.9 * 70 is 63.000...01 in floats: not 64
    assert percentile([5]) == 5
    assert percentile([10, 1, 7, 3, 9, 2, 8, 4, 6, 5]) == 9
    assert percentile(list(range(1, 21)), 50) == 10


def test_the_p90_of_enough_outputs_never_under_the_fallback() -> None:
    history = OutputHistory(1000)
    assert history.reserved("openai", "o3") == 1000  # nothing seen: the fallback
    history.record([call(100 * i) for i in range(1, 41)])  # 100, 200 ... 4,000
    assert history.reserved("openai", "o3") == 3600  # the 36th of 40
    assert history.reserved("anthropic", "o3") == 1000  # another provider's model is another history
    assert history.reserved("openai", "o3-pro") == 1000
    assert history.reserved("openai", None) == 1000
    small = OutputHistory(1000)
    small.record([call(50) for _ in range(30)])
    assert small.reserved("openai", "o3") == 1000  # a model that writes little reserves the fallback


def test_fewer_than_the_minimum_reserve_the_most_seen_or_the_fallback() -> None:
    history = OutputHistory(1000, min_observations=20)
    history.record([call(300), call(700)])
    assert history.reserved("openai", "o3") == 1000
    history.record([call(12_000)])
    assert history.reserved("openai", "o3") == 12_000  # one long answer among three: the most seen
    history.record([call(2000) for _ in range(16)])
    assert len(history.observations("openai", "o3")) == 19
    assert history.reserved("openai", "o3") == 12_000
    history.record([call(2000)])  # the 20th: now the p90, the 18th of 20 sorted
    assert history.reserved("openai", "o3") == 2000


def test_only_calls_that_tell_what_the_model_writes_count() -> None:
    history = OutputHistory(1000, min_observations=1)
    history.record(
        [
            call(9000, usage_source="estimated"),  # tiktoken's guess of a call without usage
            call(None),  # refused, failed: no usage
            call(9000, aborted=True),  # cut short
            call(90_000, api_flavor="batch"),  # a batch's row sums its requests
            call(9000, model_sent=None),
            call(4000, reasoning_tokens=3000),  # reasoning is part of output_tokens already
        ]
    )
    assert history.observations("openai", "o3") == [4000]
    assert history.reserved("openai", "o3") == 4000
    assert not tells_output(call(9000, api_flavor="batch"))


def test_the_history_is_bounded_per_model_and_in_models() -> None:
    history = OutputHistory(1000, window=30, max_models=3, min_observations=20)
    history.record([call(20_000) for _ in range(10)] + [call(3000) for _ in range(30)])
    assert history.observations("openai", "o3") == [3000] * 30  # the 10 old ones fell off the ring
    assert history.reserved("openai", "o3") == 3000
    history.record([call(5000, model=m) for m in ("a", "b")])
    history.record([call(6000, model="o3")])  # o3 seen again: the most recent
    history.record([call(7000, model="c")])  # a fourth model: "a", the least recently seen, goes
    assert history.models() == [("openai", "b"), ("openai", "o3"), ("openai", "c")]
    assert history.reserved("openai", "a") == 1000
    assert history.reserved("openai", "c") == 7000
    assert len(history._reserved) == 3


def insert(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    for i, (ts, provider, model, output, source, aborted, flavor) in enumerate(rows):
        con.execute(
            "INSERT INTO calls (id, ts, session_id, environment, provider, host, path, api_flavor, "
            "model_requested, model_sent, action, aborted, input_tokens, output_tokens, usage_source) "
            "VALUES (?, ?, 's0', 'development', ?, 'api.openai.com', '/v1/chat/completions', ?, ?, ?, "
            "'allowed', ?, 100, ?, ?)",
            [f"c{i}", ts, provider, flavor, model, model, aborted, output, source],
        )


def test_seeded_from_a_real_database(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "spend.duckdb"))
    migrate(con)
    day = datetime(2026, 11, 25, 0, 0)  # naive UTC, as the table holds it
    rows: list[tuple] = []
    # 30 o3 calls over the last day: 4,000 .. 6,900 output tokens; the newest 25 are kept
    rows += [
        (day + timedelta(minutes=i), "openai", "o3", 4000 + 100 * i, "reported", False, "chat")
        for i in range(30)
    ]
    rows += [(day - timedelta(days=40), "openai", "o3", 90_000, "reported", False, "chat")]  # too old
    rows += [(day, "openai", "o3", 80_000, "estimated", False, "chat")]
    rows += [(day, "openai", "o3", 70_000, "reported", True, "chat")]  # aborted
    rows += [(day, "openai", "o3", 60_000, "reported", False, "batch")]
    rows += [(day, "openai", "o3", None, "none", False, "chat")]
    rows += [(day + timedelta(hours=1), "anthropic", "claude-opus-4-1", 2500, "reported", False, "messages")]
    rows += [(day - timedelta(days=2), "openai", "gpt-5", 7000, "reported", False, "responses")]
    insert(con, rows)
    history = OutputHistory(1000, window=25, max_models=2)
    assert history.load(con, now=NOW) == 26  # 25 of o3, 1 of claude; gpt-5 used least recently
    assert history.observations("openai", "o3") == [4500 + 100 * i for i in range(25)]
    assert history.reserved("openai", "o3") == 6700  # the 23rd of 25: 4,500 + 2,200
    assert history.reserved("anthropic", "claude-opus-4-1") == 2500  # 1 seen: the most seen
    assert history.reserved("openai", "gpt-5") == 1000
    history.record([call(1, model="new")])
    history.load(con, now=NOW)  # replaces what was there
    assert history.models() == [("openai", "o3"), ("anthropic", "claude-opus-4-1")]
    con.close()


def test_loading_a_database_without_calls_raises_for_the_caller(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "empty.duckdb"))
    history = OutputHistory(1000)
    try:
        history.load(con, now=NOW)
    except duckdb.CatalogException:
        pass
    else:
        raise AssertionError("no calls table must raise")
    migrate(con)
    assert history.load(con, now=NOW) == 0
    con.close()


def test_written_in_one_thread_read_in_another() -> None:
    history = OutputHistory(1000, window=50)
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(history.reserved("openai", "o3"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(2000):
            history.record([call(2000 + i % 7)])
    finally:
        stop.set()
        reader.join()
    assert set(seen) <= {1000, *range(2000, 2007)}
    assert history.reserved("openai", "o3") == 2006


def test_a_stored_call_of_several_answers_is_read_back_one_answers_output(tmp_path: Path) -> None:
    """A row's ``answers`` (n, candidateCount) divides its output as ``record`` does: the history a
    restart reads back is the one the proxy kept while running. A database not migrated yet (no
    column: another process held it at start) is read as one answer a row."""
    from addon.migrations import MIGRATIONS

    con = duckdb.connect(str(tmp_path / "spend.duckdb"))
    migrate(con)
    day = datetime(2026, 11, 25, 0, 0)
    insert(
        con,
        [
            (day, "openai", "o3", 8 * 3000, "reported", False, "chat"),  # c0: n=8
            (day + timedelta(minutes=1), "openai", "o3", 4000, "reported", False, "chat"),
        ],
    )
    con.execute("UPDATE calls SET answers = 8 WHERE id = 'c0'")
    running = OutputHistory(1000, min_observations=1)
    running.record([call(8 * 3000, answers=8), call(4000)])
    history = OutputHistory(1000, min_observations=1)
    assert history.load(con, now=NOW) == 2
    assert history.observations("openai", "o3") == running.observations("openai", "o3") == [3000, 4000]
    con.close()

    old = duckdb.connect(str(tmp_path / "old.duckdb"))
    for fn in MIGRATIONS:
        if fn.__name__ == "m009_answers":
            break
        fn(old)
    insert(old, [(day, "openai", "o3", 8 * 3000, "reported", False, "chat")])
    assert history.load(old, now=NOW) == 1
    assert history.observations("openai", "o3") == [24_000]
    old.close()


def test_record_takes_the_answers_from_the_record_or_by_id() -> None:
    history = OutputHistory(1000, min_observations=1)
    history.record([call(6000, id="a", answers=3), call(6000, id="b"), call(6000, id="c")], {"c": 2})
    assert history.observations("openai", "o3") == [2000, 6000, 3000]
