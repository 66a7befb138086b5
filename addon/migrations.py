"""Schema changes: an ordered list of small functions, each applied once, in a transaction.

Never edit a migration that has shipped: add a new one at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import duckdb

from addon.record import BILLED_APART_NOTE

Migration = Callable[[duckdb.DuckDBPyConnection], None]

MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration (its name is its id)."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    """Tables ``calls`` (columns in addon.record.COLUMNS order) and ``sessions``."""
    con.execute(
        """
        CREATE TABLE calls (
            id VARCHAR PRIMARY KEY,
            ts TIMESTAMP,
            session_id VARCHAR,
            environment VARCHAR,
            provider VARCHAR,
            host VARCHAR,
            path VARCHAR,
            api_flavor VARCHAR,
            duration_ms DOUBLE,
            ttft_ms DOUBLE,
            model_requested VARCHAR,
            model_sent VARCHAR,
            model_reported VARCHAR,
            action VARCHAR,
            status_code INTEGER,
            streamed BOOLEAN,
            aborted BOOLEAN,
            input_tokens BIGINT,
            cache_read_tokens BIGINT,
            cache_write_tokens BIGINT,
            output_tokens BIGINT,
            reasoning_tokens BIGINT,
            usage_source VARCHAR,
            cost_usd DECIMAL(18, 10),
            price_status VARCHAR,
            price_source VARCHAR,
            price_model VARCHAR,
            key_fingerprint VARCHAR,
            error VARCHAR
        )
        """
    )
    con.execute(
        """
        CREATE TABLE sessions (
            session_id VARCHAR PRIMARY KEY,
            started_at TIMESTAMP,
            ended_at TIMESTAMP,
            pid INTEGER,
            hostname VARCHAR,
            version VARCHAR
        )
        """
    )


@migration
def m002_attribution(con: duckdb.DuckDBPyConnection) -> None:
    """Who and what made each call: environment source, team, feature, tags, client process."""
    for column, sql_type in (
        ("environment_source", "VARCHAR"),
        ("team", "VARCHAR"),
        ("feature", "VARCHAR"),
        ("tags", "VARCHAR"),
        ("user_name", "VARCHAR"),
        ("client_pid", "INTEGER"),
        ("client_process", "VARCHAR"),
        ("client_cwd", "VARCHAR"),
        ("repo", "VARCHAR"),
        ("git_branch", "VARCHAR"),
        ("key_name", "VARCHAR"),
    ):
        con.execute(f"ALTER TABLE calls ADD COLUMN {column} {sql_type}")


@migration
def m003_events(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``events``: budget alerts and policy reloads (columns in addon.budgets.EVENT_COLUMNS order)."""
    con.execute(
        """
        CREATE TABLE events (
            id VARCHAR PRIMARY KEY,
            ts TIMESTAMP,
            session_id VARCHAR,
            kind VARCHAR,
            scope_kind VARCHAR,
            scope_name VARCHAR,
            period_start TIMESTAMP,
            data VARCHAR,
            message VARCHAR
        )
        """
    )


@migration
def m004_priced_apart(con: duckdb.DuckDBPyConnection) -> None:
    """What is priced apart from tokens: one-hour cache writes, web searches, the service tier."""
    for column, sql_type in (
        ("cache_write_1h_tokens", "BIGINT"),
        ("web_searches", "BIGINT"),
        ("service_tier", "VARCHAR"),
    ):
        con.execute(f"ALTER TABLE calls ADD COLUMN {column} {sql_type}")


@migration
def m005_tokens_by_modality(con: duckdb.DuckDBPyConnection) -> None:
    """Audio and image tokens, subsets of the input, output and cache-read counts, priced apart."""
    for column in (
        "input_audio_tokens",
        "output_audio_tokens",
        "input_image_tokens",
        "output_image_tokens",
        "cache_audio_read_tokens",
    ):
        con.execute(f"ALTER TABLE calls ADD COLUMN {column} BIGINT")


@migration
def m006_file_searches(con: duckdb.DuckDBPyConnection) -> None:
    """Hosted file searches (OpenAI Responses' ``file_search_call`` items), priced per call."""
    con.execute("ALTER TABLE calls ADD COLUMN file_searches BIGINT")


@migration
def m007_inference_geo(con: duckdb.DuckDBPyConnection) -> None:
    """Where inference ran (Anthropic's ``usage.inference_geo``): US-only inference costs 1.1x."""
    con.execute("ALTER TABLE calls ADD COLUMN inference_geo VARCHAR")


@migration
def m008_audio_seconds(con: duckdb.DuckDBPyConnection) -> None:
    """Audio billed by its duration, not in tokens (whisper-1's transcriptions), in seconds."""
    con.execute("ALTER TABLE calls ADD COLUMN audio_seconds DOUBLE")


@migration
def m009_answers(con: duckdb.DuckDBPyConnection) -> None:
    """How many answers a call asked for (n, candidateCount; NULL: one), its output being theirs
    together: the output history a restart reads back is of one answer's."""
    con.execute("ALTER TABLE calls ADD COLUMN answers INTEGER")


@migration
def m010_parent_id(con: duckdb.DuckDBPyConnection) -> None:
    """The call a row is a part of (``addon.record.billed_apart``: an advisor's, a declined hop's,
    an image_generation tool's or its SVG author's tokens, billed apart on a row of their own);
    NULL for a call's own row. Reports count a call once: ``coalesce(parent_id, id)``.

    Rows stored before it named their call only in ``error`` (``"... of call ID"`` then ``:`` or
    the end): those are filled in when the call named is in the table."""
    con.execute("ALTER TABLE calls ADD COLUMN parent_id VARCHAR")
    con.execute(
        """
        UPDATE calls SET parent_id = linked.parent
        FROM (
            SELECT id AS child, regexp_extract(error, $note, 2) AS parent FROM calls
            WHERE regexp_matches(error, $note)
        ) AS linked
        WHERE calls.id = linked.child AND linked.parent <> linked.child
            AND linked.parent IN (SELECT id FROM calls)
        """,
        {"note": _BILLED_APART_NOTE},
    )


# How a billed-apart row's ``error`` began before m010, group 2 the call's id.
_BILLED_APART_NOTE = BILLED_APART_NOTE


def applied(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the migrations already applied (empty for a new database)."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    return {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Apply, in order, every migration not yet applied, each in its own transaction."""
    done = applied(con)
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        con.begin()
        try:
            fn(con)
            con.execute(
                "INSERT INTO _migrations VALUES (?, ?)",
                [fn.__name__, datetime.now(UTC).replace(tzinfo=None)],
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise
