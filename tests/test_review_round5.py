"""Review round 5: failing tests for defects found in 7038eb8, 0787c97, d5e8cc0, 2fb0609,
9c88cf4 and 647d740."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote

import pytest

from addon.budgets import BudgetTracker, Scope, scopes_for
from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_azure_v1_deployment_paths import AZURE_KEY, AZURE_POLICIES
from tests.test_azure_v1_deployment_paths import RESOURCE as AZURE_RESOURCE
from tests.test_meter import make_flow, run_request


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- budgets: which of several refusing scopes speaks (7038eb8) --------------------------------------


def test_of_two_spent_budgets_the_one_resetting_last_sets_the_wait() -> None:
    """The environment's $1/day cap and the key's $5/month cap are both spent on Nov 28 at 12:00.
    The call cannot pass before December; the refusal says "resets in 12h 0m" (Retry-After 43200),
    so a client (or the user reading the message) retries at midnight and is refused again, now for
    the month. The wait should be the longest of the spent budgets'."""
    policies = parse_policies(
        "environments:\n  qa:\n    budget: {usd: 1, period: day}\n"
        "keys:\n  ci: {fingerprint: 3f9a0c11b2de, budget: {usd: 5, period: month}}\n"
    )
    tracker = BudgetTracker(policies)
    now = utc(2026, 11, 28, 12)
    scopes = scopes_for("qa", "ci")
    tracker.record(scopes, Decimal("5"), now)
    refusal = tracker.check(scopes, now)
    assert refusal is not None and refusal.spent_out
    midnight = tracker.check(scopes, utc(2026, 11, 29, 0, 0, 1))
    assert midnight is not None  # still refused after the day's reset: the month is spent
    assert refusal.retry_after >= (utc(2026, 12, 1) - now).total_seconds()
    assert refusal.scope == Scope("key", "ci")


def test_a_spent_budget_does_not_hide_a_longer_background_hold_on_another_scope() -> None:
    """At 23:00 the key's $1/day cap is spent (resets at midnight) and the environment's $2/day cap
    is filled by a background response holding $2.50 until 03:00. The refusal says "resets in 1h
    0m"; the retry at midnight is refused again (the hold outlives the reset) and waits till 03:00."""
    policies = parse_policies(
        "environments:\n  qa:\n    budget: {usd: 2, period: day}\n"
        "keys:\n  ci: {fingerprint: 3f9a0c11b2de, budget: {usd: 1, period: day}}\n"
    )
    tracker = BudgetTracker(policies)
    now = utc(2026, 11, 28, 23)
    assert tracker.check(scopes_for("qa"), now, reserve=("bg", lambda: Decimal("2.50"))) is None
    tracker.keep("bg", "bg:resp_1", now.timestamp() + 4 * 3600)
    tracker.record(scopes_for(None, "ci"), Decimal("1"), now)
    scopes = scopes_for("qa", "ci")
    refusal = tracker.check(scopes, now)
    assert refusal is not None and refusal.spent_out
    assert tracker.check(scopes, utc(2026, 11, 29, 0, 0, 1)) is not None  # refused again at midnight
    assert refusal.retry_after >= 4 * 3600


# -- Azure OpenAI's v1 deployment path (647d740) ----------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/openai/v1/deployments%2Fteam-big/chat/completions?api-version=preview",
        "/openai/v1/deployments/team-small/..%2Fteam-big/chat/completions?api-version=preview",
        "/openai/deployments%2Fteam-big/chat/completions?api-version=2024-10-21",
        "/openai/deployments/team-small/..%2fteam-big/chat/completions?api-version=2024-10-21",
    ],
)
async def test_an_encoded_slash_before_the_v1_deployment_does_not_hide_it(meter: Meter, path: str) -> None:
    """The proxy reads a path as a server that decodes its whole path before routing would (README:
    ``/v1/chat%2Fcompletions`` is read as chat completions), but not the deployment:
    ``/openai/v1/deployments%2Fteam-big/chat/completions`` with a body naming team-small is read as a
    v1 body-model call of team-small (allowed in a *-mini environment) and goes upstream untouched,
    where such a server runs team-big (gpt-4o). The same path to images/generations is read
    decoded and refused; chat completions and embeddings are not. It should be read as naming
    team-big: downgraded (nothing left naming team-big) or refused."""
    meter._apply(parse_policies(AZURE_POLICIES))
    body = {"model": "team-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    flow = make_flow(AZURE_RESOURCE + path, body, headers=AZURE_KEY)
    await run_request(meter, flow)
    if flow.response is None:
        assert "team-big" not in unquote(flow.request.path), flow.request.path


# -- journals across versions (d5e8cc0) ------------------------------------------------------------


def test_journal_lines_an_older_proxy_set_aside_are_stored_by_this_version(tmp_path: Path) -> None:
    """Two proxies on one database during an upgrade: this version's proxy is killed (-9) and the
    other, still on the version before calls.answers, replays its journal. Every line has one value
    more than that version knows, so it keeps them in ``<session>.unreadable`` ("kept for that
    version", README) and deletes the journal. This version never reads that file back: the calls
    are never stored, and their spend is missing from every report and budget."""
    from addon.store import Store
    from tests.test_store import make_record, rows

    db = tmp_path / "data" / "spend.duckdb"
    journal_dir = db.with_name(db.name + ".journal")
    journal_dir.mkdir(parents=True)
    record = make_record(1, "crashed")
    record.answers = 4  # this version's line: the column the older proxy does not know
    (journal_dir / "crashed.unreadable").write_text(record.to_json() + "\n")
    store = Store(db, "s2", flush_interval=0.05)
    store.start()
    store.close()
    assert rows(db, "SELECT id, answers FROM calls") == [("crashed-0001", 4)]


def test_set_aside_lines_this_version_cannot_read_either_stay_where_they_are(tmp_path: Path) -> None:
    """A file of a newer version's lines only is left as it is (never renamed at each start); a
    file mixing lines is taken: the readable ones stored, the others kept at the old name."""
    from addon.store import Store
    from tests.test_store import make_record, rows

    db = tmp_path / "data" / "spend.duckdb"
    journal_dir = db.with_name(db.name + ".journal")
    journal_dir.mkdir(parents=True)
    future = b'["a line of a newer version", 1, 2, 3]\n'
    (journal_dir / "newer.unreadable").write_bytes(future)
    (journal_dir / "mixed.unreadable").write_bytes(
        make_record(7, "mixed").to_json().encode() + b"\n" + future
    )
    for _ in range(2):
        store = Store(db, "s3", flush_interval=0.05)
        store.start()
        store.close()
    assert rows(db, "SELECT id FROM calls") == [("mixed-0007",)]
    left = sorted(p.name for p in journal_dir.glob("*.unreadable"))
    assert left == ["mixed.unreadable", "newer.unreadable"]
    assert (journal_dir / "newer.unreadable").read_bytes() == future
    assert (journal_dir / "mixed.unreadable").read_bytes() == future


# -- API keys in every header a provider takes them in (9c88cf4) ---------------------------------


async def test_an_empty_bearer_beside_a_key_in_x_api_key_is_no_second_key(meter: Meter) -> None:
    """A client pointed at OpenRouter's Anthropic-compatible endpoint with its key in x-api-key and
    an auth token set but empty (an Anthropic SDK given ``auth_token=""``, which it checks against
    null only, or ``export ANTHROPIC_AUTH_TOKEN=``) sends ``x-api-key: sk-or-...`` and
    ``Authorization: Bearer`` with nothing after it. The proxy reads the word "Bearer" as a second
    API key: with the key bound by last4 to its environment, "2 different API keys ... bound to
    different environments", and the allowed gpt-4o-mini call is refused 403 ("send one API key").
    Before, OpenRouter's x-api-key was not read, so this call was never refused; an empty bearer
    carries no key."""
    from tests.test_api_key_headers import OPENROUTER_KEY

    meter._apply(
        parse_policies(
            "default_environment: open\n"
            "environments:\n"
            "  locked:\n"
            '    models: {allow: ["*-mini"], on_disallowed: block}\n'
            "  open:\n"
            '    models: {allow: ["*"]}\n'
            "keys:\n"
            f'  intern: {{last4: "{OPENROUTER_KEY[-4:]}", environment: locked}}\n'
        )
    )
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow(
        "https://openrouter.ai/api/v1/messages",
        body,
        headers={"x-api-key": OPENROUTER_KEY, "authorization": "Bearer ", "anthropic-version": "2023-06-01"},
    )
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert flow.response is None, flow.response.text if flow.response else None
    assert (state.record.key_name, state.record.environment) == ("intern", "locked"), state.errors
