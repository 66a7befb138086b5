"""Hard budget caps: spend per environment, key and user in UTC day / week / month periods.

``BudgetTracker`` keeps, for every scope it has seen, the spend of the current day,
week and month (so a reloaded policy that changes a period is still exact). It is
loaded from DuckDB at start and fed each finished call's cost; ``check`` is a dict
lookup and a compare, safe to run on mitmproxy's event loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import duckdb

from addon.policies import PERIODS, Budget, Policies, normalize_environment

SCOPE_KINDS = ("environment", "key", "user")
_SCOPE_COLUMNS = {"environment": "environment", "key": "key_name", "user": "user_name"}
ALERT_KINDS = ("budget_alert", "budget_exhausted")
UNPRICED_KIND = "budget_unpriced"
EVENT_KINDS = ("budget_alert", "budget_exhausted", UNPRICED_KIND, "policy_reloaded", "policy_invalid")
EVENT_COLUMNS = (
    "id",
    "ts",
    "session_id",
    "kind",
    "scope_kind",
    "scope_name",
    "period_start",
    "data",
    "message",
)
# Seconds a client refused because calls in flight fill a budget (not its spend) waits to retry.
NO_ROOM_RETRY_S = 5
_ZERO = Decimal(0)


def _utc(ts: datetime) -> datetime:
    """Aware UTC (naive input is taken as UTC already)."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _naive(ts: datetime) -> datetime:
    """Naive UTC, as DuckDB TIMESTAMP columns hold it."""
    return _utc(ts).replace(tzinfo=None)


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """UTC ``[start, end)`` of the day, ISO week (from Monday 00:00) or calendar month containing ``now``."""
    now = _utc(now)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start, end
    raise ValueError(f"unknown budget period {period!r} (day, week or month)")


def cap_places(usd: Decimal) -> int:
    """The decimals a cap is written with: at least 2 (cents), at most 6 (``0.015``: 3)."""
    exponent = usd.normalize().as_tuple().exponent
    return min(6, max(2, -exponent if isinstance(exponent, int) else 2))


def format_cap(usd: Decimal) -> str:
    """A cap as policies.yaml gives it, to the cent at least: ``$150.00``, ``$0.015``, ``$0.0101``
    (rounded to cents, $0.015 read $0.02 beside a spend shown exactly by the reports)."""
    return f"${usd.quantize(Decimal(1).scaleb(-cap_places(usd)), ROUND_HALF_UP):,f}"


def format_usd(amount: Decimal, places: int = 2) -> str:
    """``$150.02``; under a dollar up to four decimals (``$0.0123``, as the call log and
    ``spend watch`` write amounts), under a cent up to six (``$0.0004``); from a cent on, trailing
    zeros dropped down to ``places`` decimals (a cap's, ``cap_places``: beside a $0.015 cap,
    ``$0.010`` and ``$0.0151``)."""
    if amount != 0 and abs(amount) < Decimal("0.01"):
        small = amount.quantize(Decimal("0.000001"), ROUND_HALF_UP)
        if small != 0:
            return f"${small.normalize():f}"
    most = max(places, 4 if abs(amount) < 1 else 2)
    text = f"{amount.quantize(Decimal(1).scaleb(-most), ROUND_HALF_UP):,f}"
    while text.endswith("0") and len(text.partition(".")[2]) > places:
        text = text[:-1]
    return f"${text}"


def _format_reserved(amount: Decimal, places: int = 2) -> str:
    """A positive amount as ``format_usd`` writes it, ``<$0.000001`` where that reads ``$0.00``."""
    text = format_usd(amount, places)
    return "<$0.000001" if amount > 0 and Decimal(text.lstrip("$").replace(",", "")) == 0 else text


def format_duration(seconds: int) -> str:
    """``3d 4h``, ``2h 5m``, ``7m 3s`` or ``42s``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _fraction_text(fraction: float) -> str:
    return f"{fraction * 100:g}%"


@dataclass(frozen=True, slots=True)
class Scope:
    """What a budget applies to: kind ``environment`` | ``key`` | ``user``, and its name."""

    kind: str
    name: str

    @property
    def label(self) -> str:
        """``development``, ``key ci-openai`` or ``user build-bot``."""
        return self.name if self.kind == "environment" else f"{self.kind} {self.name}"


def scopes_for(
    environment: str | None, key_name: str | None = None, user_name: str | None = None
) -> tuple[Scope, ...]:
    """The budget scopes of one call (pass these to ``check`` and ``record`` for EVERY call)."""
    scopes: list[Scope] = []
    if environment:
        scopes.append(Scope("environment", normalize_environment(environment)))
    if key_name:
        scopes.append(Scope("key", key_name))
    if user_name:
        scopes.append(Scope("user", user_name))
    return tuple(scopes)


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    """A budget whose spend has reached its cap: the call must be refused (429)."""

    scope: Scope
    budget: Budget
    spent: Decimal
    period_start: datetime
    period_end: datetime
    retry_after: int  # whole seconds until the call may pass: the period's end, or see below
    reserved: Decimal = _ZERO  # held besides by calls in flight and background responses running
    kept: Decimal = _ZERO  # of ``reserved``, background responses' (held for hours, not seconds)
    # whole seconds until the period ends, when that is not ``retry_after``: calls in flight or
    # background responses fill the cap (room comes back sooner), or background responses still
    # fill it once the spend has reset (room comes back later)
    resets_after: int | None = None

    @property
    def spent_out(self) -> bool:
        """Does the refusal stand for long: the spend, or the background responses held (for hours,
        until retrieved), fill the cap? Else calls in flight fill it and give room back as they
        finish: a short wait, ``NO_ROOM_RETRY_S``."""
        return self.spent + self.kept >= self.budget.usd or self.reserved <= self.kept

    def message(self) -> str:
        """One line naming the budget, its cap, the spend (and what is held besides), the period
        and when to retry. "is spent" only when the spend alone reached the cap; a budget that
        reservations fill up "has no room left" (until calls finish, or background responses end)."""
        spent = self.spent >= self.budget.usd or self.reserved <= 0
        places = cap_places(self.budget.usd)
        held = ""
        if self.kept > 0:
            held += f", {_format_reserved(self.kept, places)} held by background responses running"
        in_flight = self.reserved - self.kept
        if in_flight > 0:
            held += f", {_format_reserved(in_flight, places)} more reserved by calls in flight"
            held += "" if spent else " (given back as they finish)"
        if spent and self.resets_after is not None and self.resets_after < self.retry_after:
            wait = (
                f"resets in {format_duration(self.resets_after)}, background responses holding "
                f"its room past that; retry in {format_duration(self.retry_after)}"
            )
        elif spent:
            wait = f"resets in {format_duration(self.retry_after)}"
        elif self.spent_out:
            wait = f"retry in {format_duration(self.retry_after)}"
        else:
            wait = f"retry in {self.retry_after} s"
        return (
            f"{self.scope.label} budget of {format_cap(self.budget.usd)} per {self.budget.period} "
            f"{'is spent' if spent else 'has no room left'}: "
            f"{format_usd(self.spent, places)} used since {self.period_start:%Y-%m-%d} (UTC){held}; {wait}"
        )


def _weight(refusal: BudgetRefusal) -> tuple[bool, int]:
    """Orders the refusals of one call's budgets: those that stand for long (spent, or held by
    background responses) before those filled by calls in flight, and of these the one the call
    must wait for longest (its ``retry_after``: the call passes only once every budget has room;
    ties go to the first in order)."""
    return (refusal.spent_out, refusal.retry_after)


def _room_after_holds(
    spent: Decimal, held: Sequence[tuple[Decimal, float]], usd: Decimal, now: float, end: float
) -> int:
    """Whole seconds from ``now`` until a cap of ``usd`` has room again, with ``spent`` used until
    the period ``end`` (nothing after it: the spend resets) and background holds ((amount, until),
    epoch seconds; each let go at its ``until``) on top. Calls in flight are left out: they give
    their room back in seconds."""
    remaining = sum((amount for amount, _ in held), _ZERO)
    ends = sorted(held, key=lambda pair: pair[1])
    moments = sorted({until for _, until in ends} | {end})
    i = 0
    for moment in moments:
        while i < len(ends) and ends[i][1] <= moment:
            remaining -= ends[i][0]
            i += 1
        if (spent if moment < end else _ZERO) + remaining < usd:
            return max(1, math.ceil(moment - now))
    return max(1, math.ceil(end - now))  # a cap of $0: never room; said as the period's end


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """Spend crossed a fraction of a budget (1.0: the budget is exhausted)."""

    scope: Scope
    budget: Budget
    fraction: float
    spent: Decimal
    period_start: datetime

    @property
    def kind(self) -> str:
        """The event kind: ``budget_exhausted`` at 100%, else ``budget_alert``."""
        return "budget_exhausted" if self.fraction >= 1 else "budget_alert"

    @property
    def period_end(self) -> datetime:
        """End of the period the alert belongs to."""
        return period_bounds(self.budget.period, self.period_start)[1]

    def message(self) -> str:
        """One line for the log and the ``events`` table."""
        cap = format_cap(self.budget.usd)
        spent = format_usd(self.spent, cap_places(self.budget.usd))
        since = f"{spent} used since {self.period_start:%Y-%m-%d} (UTC)"
        if self.fraction >= 1:
            return (
                f"{self.scope.label} budget of {cap} per {self.budget.period} is spent: {since}; "
                f"calls are refused until {self.period_end:%Y-%m-%d %H:%M} UTC"
            )
        return (
            f"{self.scope.label} budget: {_fraction_text(self.fraction)} of {cap} per "
            f"{self.budget.period} reached: {since}"
        )


@dataclass(frozen=True, slots=True)
class UnpricedCall:
    """A call with usage to a model no price list knows, in a scope with a budget: it counts $0
    against the budget, which its model's calls can therefore spend past (said once per run)."""

    scope: Scope
    budget: Budget
    provider: str
    model: str

    @property
    def kind(self) -> str:
        """The event kind."""
        return UNPRICED_KIND

    def message(self) -> str:
        """One line for the log and the ``events`` table: the model, the budget, the fix."""
        return (
            f"{self.model} ({self.provider}) has no price: its calls count $0 against the "
            f"{self.scope.label} budget of {format_cap(self.budget.usd)} per {self.budget.period}, "
            f"which they can spend past; price it under prices: in policies.yaml "
            f"(scripts/spend unpriced lists such calls)"
        )


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """A row of table ``events`` (columns in ``EVENT_COLUMNS`` order)."""

    id: str
    ts: datetime
    session_id: str
    kind: str
    scope_kind: str | None
    scope_name: str | None
    period_start: datetime | None
    data: str | None  # JSON object
    message: str

    def row(self) -> list[Any]:
        """Values for an INSERT, timestamps as naive UTC."""
        return [
            self.id,
            _naive(self.ts),
            self.session_id,
            self.kind,
            self.scope_kind,
            self.scope_name,
            None if self.period_start is None else _naive(self.period_start),
            self.data,
            self.message,
        ]


def alert_id(scope: Scope, period: str, period_start: datetime, fraction: float, usd: Decimal) -> str:
    """A deterministic event id: the same alert is stored once, even across restarts; a cap
    changed during the period (policies.yaml) fires its alerts again, for the new amount."""
    return (
        f"alert:{scope.kind}:{scope.name}:{period}:{_naive(period_start):%Y-%m-%dT%H:%M:%S}:{fraction:g}"
        f":{usd.normalize():f}"
    )


def alert_event(alert: BudgetAlert, session_id: str, now: datetime) -> Event:
    """The ``events`` row of a budget alert."""
    data = {
        "fraction": alert.fraction,
        "period": alert.budget.period,
        "usd": str(alert.budget.usd),
        "spent": str(alert.spent),
    }
    return Event(
        id=alert_id(alert.scope, alert.budget.period, alert.period_start, alert.fraction, alert.budget.usd),
        ts=_utc(now),
        session_id=session_id,
        kind=alert.kind,
        scope_kind=alert.scope.kind,
        scope_name=alert.scope.name,
        period_start=_utc(alert.period_start),
        data=json.dumps(data, sort_keys=True),
        message=alert.message(),
    )


def unpriced_event(unpriced: UnpricedCall, session_id: str, now: datetime) -> Event:
    """The ``events`` row of an unpriced model escaping a budget (one per proxy run)."""
    scope = unpriced.scope
    data = {
        "provider": unpriced.provider,
        "model": unpriced.model,
        "period": unpriced.budget.period,
        "usd": str(unpriced.budget.usd),
    }
    return Event(
        id=f"unpriced:{session_id}:{scope.kind}:{scope.name}:{unpriced.provider}:{unpriced.model}",
        ts=_utc(now),
        session_id=session_id,
        kind=UNPRICED_KIND,
        scope_kind=scope.kind,
        scope_name=scope.name,
        period_start=None,
        data=json.dumps(data, sort_keys=True),
        message=unpriced.message(),
    )


def policy_event(
    kind: str, session_id: str, now: datetime, message: str, data: dict[str, Any] | None = None
) -> Event:
    """An ``events`` row for ``policy_reloaded`` / ``policy_invalid`` (or another kind)."""
    return Event(
        id=uuid.uuid4().hex,
        ts=_utc(now),
        session_id=session_id,
        kind=kind,
        scope_kind=None,
        scope_name=None,
        period_start=None,
        data=None if data is None else json.dumps(data, sort_keys=True, default=str),
        message=message,
    )


def insert_events(con: duckdb.DuckDBPyConnection, events: Sequence[Event]) -> None:
    """Insert ``events`` (an id already stored is skipped), in the caller's transaction."""
    if not events:
        return
    row_sql = "(" + ", ".join("?" * len(EVENT_COLUMNS)) + ")"
    params = [value for event in events for value in event.row()]
    con.execute(
        f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
        + ", ".join([row_sql] * len(events)),
        params,
    )


# -- the tracker -----------------------------------------------------------------------------------


def _budgets_of(policies: Policies) -> dict[Scope, Budget]:
    found: dict[Scope, Budget] = {}
    for name, env in policies.environments.items():
        if env.budget is not None:
            found[Scope("environment", name)] = env.budget
    for key in policies.keys:
        if key.budget is not None:
            found[Scope("key", key.name)] = key.budget
    for name, user in policies.users.items():
        if user.budget is not None:
            found[Scope("user", name)] = user.budget
    return found


def _as_decimal(value: Any) -> Decimal:
    if value is None:
        return _ZERO
    return value if isinstance(value, Decimal) else Decimal(str(value))


_Sums = dict[tuple[Scope, str], tuple[datetime, Decimal]]


def _add_sum(sums: _Sums, scope: Scope, period: str, start: datetime, amount: Decimal) -> None:
    previous = sums.get((scope, period), (start, _ZERO))[1]
    sums[(scope, period)] = (start, previous + amount)


def _scope_of(kind: str, name: Any) -> Scope | None:
    if name is None or name == "":
        return None
    return Scope(kind, normalize_environment(str(name)) if kind == "environment" else str(name))


def _period_sums(
    con: duckdb.DuckDBPyConnection, now: datetime, session_id: str | None, *, own: bool = True
) -> tuple[_Sums, _Sums]:
    """Spend per (scope, period) in ``calls`` for the periods containing ``now``: (rows of
    ``session_id``, rows of other sessions); without ``session_id`` every row is the first's.
    ``own=False`` leaves this session's rows out of the query. One grouped scan of the rows since
    the earliest period's start (GROUPING SETS over the three scope columns)."""
    bounds = {period: period_bounds(period, now) for period in PERIODS}
    earliest = _naive(min(start for start, _ in bounds.values()))
    filters = ", ".join("coalesce(sum(cost_usd) FILTER (WHERE ts >= ? AND ts < ?), 0)" for _ in PERIODS)
    params: list[Any] = [_naive(t) for period in PERIODS for t in bounds[period]]
    mine_sql = "coalesce(session_id = ?, false)" if session_id is not None else "true"
    where = "ts >= ?" if own or session_id is None else "ts >= ? AND coalesce(session_id <> ?, true)"
    inner_params: list[Any] = [] if session_id is None else [session_id]
    inner_params.append(earliest)
    if not (own or session_id is None):
        inner_params.append(session_id)
    sql = (
        f"SELECT grouping(environment, key_name, user_name), mine, environment, key_name, user_name, "
        f"{filters} FROM (SELECT *, {mine_sql} AS mine FROM calls WHERE {where}) "
        "GROUP BY GROUPING SETS ((mine, environment), (mine, key_name), (mine, user_name))"
    )
    mine: _Sums = {}
    others: _Sums = {}
    try:
        rows = con.execute(sql, [*params, *inner_params]).fetchall()
    except (duckdb.CatalogException, duckdb.BinderException):
        return _period_sums_by_column(con, bounds, earliest), others  # a database from before
    kinds = {3: "environment", 5: "key", 6: "user"}  # the grouping bits of the two others' columns
    for grouping, is_mine, env, key, user, *sums in rows:
        kind = kinds.get(grouping)
        if kind is None:
            continue
        scope = _scope_of(kind, {"environment": env, "key": key, "user": user}[kind])
        if scope is None:
            continue
        target = mine if is_mine else others
        for period, total in zip(PERIODS, sums, strict=True):
            _add_sum(target, scope, period, bounds[period][0], _as_decimal(total))
    return mine, others


def _period_sums_by_column(
    con: duckdb.DuckDBPyConnection, bounds: dict[str, tuple[datetime, datetime]], earliest: datetime
) -> _Sums:
    """``_period_sums`` for a database lacking some columns (session_id, key_name...): a query per
    scope column it has, every row counted as this session's."""
    spent: _Sums = {}
    filters = ", ".join("coalesce(sum(cost_usd) FILTER (WHERE ts >= ? AND ts < ?), 0)" for _ in PERIODS)
    params: list[Any] = [_naive(t) for period in PERIODS for t in bounds[period]]
    for kind, column in _SCOPE_COLUMNS.items():
        sql = (
            f"SELECT {column}, {filters} FROM calls "
            f"WHERE ts >= ? AND {column} IS NOT NULL AND {column} <> '' GROUP BY {column}"
        )
        try:
            rows = con.execute(sql, [*params, earliest]).fetchall()
        except (duckdb.CatalogException, duckdb.BinderException):
            continue  # no calls table, or a database from before the column existed
        for name, *sums in rows:
            scope = _scope_of(kind, name)
            if scope is None:
                continue
            for period, total in zip(PERIODS, sums, strict=True):
                _add_sum(spent, scope, period, bounds[period][0], _as_decimal(total))
    return spent


def _add_calls(
    sums: _Sums, calls: Iterable[tuple[Sequence[Scope], Decimal | None, datetime]], now: datetime
) -> None:
    """Add calls ((scopes, cost, ts)) to ``sums``: each to the periods (containing ``now``) its
    ``ts`` falls in."""
    bounds = {period: period_bounds(period, now) for period in PERIODS}
    for scopes, cost, ts in calls:
        ts = _utc(ts)
        for period, (start, end) in bounds.items():
            if start <= ts < end:
                for scope in scopes:
                    _add_sum(sums, scope, period, start, _as_decimal(cost))


def _fired_alerts(
    con: duckdb.DuckDBPyConnection, now: datetime
) -> set[tuple[Scope, str, datetime, float, Decimal]]:
    """The alerts stored in ``events`` (by any session) for the periods containing ``now``."""
    bounds = {period: period_bounds(period, now) for period in PERIODS}
    earliest = min(start for start, _ in bounds.values())
    fired: set[tuple[Scope, str, datetime, float, Decimal]] = set()
    try:
        rows = con.execute(
            "SELECT scope_kind, scope_name, period_start, data FROM events "
            "WHERE kind IN (?, ?) AND period_start >= ?",
            [*ALERT_KINDS, _naive(earliest)],
        ).fetchall()
    except (duckdb.CatalogException, duckdb.BinderException):
        rows = []
    for scope_kind, scope_name, period_start, data in rows:
        try:
            info = json.loads(data or "{}")
            period, fraction = str(info["period"]), float(info["fraction"])
            usd = Decimal(str(info["usd"]))
        except (ValueError, KeyError, TypeError, ArithmeticError):
            continue
        if period in bounds and period_start is not None and _utc(period_start) == bounds[period][0]:
            fired.add((Scope(scope_kind, scope_name), period, bounds[period][0], fraction, usd))
    return fired


def claim_event(con: duckdb.DuckDBPyConnection, event: Event) -> bool:
    """Store ``event`` unless its id is stored already; True when this call stored it.

    With the database attached read-write no other process can write it meanwhile, so of the
    proxies that see the same alert crossed, exactly one claims it (and announces it)."""
    if con.execute("SELECT 1 FROM events WHERE id = ?", [event.id]).fetchone() is not None:
        return False
    insert_events(con, [event])
    return True


class BudgetTracker:
    """Spend per scope and period, with budget checks and alerts. Thread-safe.

    ``record`` runs on the store's writer thread, ``check`` on the event loop.
    Pass every scope of every call (``scopes_for``), budgeted or not: spend is kept
    for all of them, so a budget added by a reload starts from the true spend.
    """

    def __init__(self, policies: Policies) -> None:
        self._lock = threading.Lock()
        self._budgets = _budgets_of(policies)
        # (scope, period) -> (start of the period the sum belongs to, sum): this proxy's calls
        # (and those of its session stored before the last ``load``)
        self._spent: dict[tuple[Scope, str], tuple[datetime, Decimal]] = {}
        # The same, for the calls of OTHER sessions (other proxies writing the database): replaced
        # whole by each ``load`` and ``refresh_others``, never added to.
        self._others: dict[tuple[Scope, str], tuple[datetime, Decimal]] = {}
        # (scope, period, period start, fraction, cap) of alerts already fired
        self._fired: set[tuple[Scope, str, datetime, float, Decimal]] = set()
        self._bounds: dict[str, tuple[datetime, datetime]] = {}
        # Calls in flight hold a reservation of their estimated cost until they are recorded,
        # so calls started together cannot all slip under a nearly spent cap.
        self._reservations: dict[str, tuple[tuple[Scope, ...], Decimal]] = {}
        self._reserved: dict[Scope, Decimal] = {}
        # A background response keeps its call's reservation under a key of its own while it runs
        # upstream (``keep``), until the retrieval that bills it, its unbilled end, or the time
        # (epoch seconds) given here, whichever comes first: a response never retrieved is let go.
        self._kept_until: dict[str, float] = {}
        self._next_end = math.inf  # the earliest of them
        # Calls priced as they ended (Realtime responses; an HTTP call that held a reservation,
        # ``give_way``) hold their exact cost the same way until recorded: spent already, so a
        # refusal counts it as used.
        self._holds: dict[str, tuple[tuple[Scope, ...], Decimal]] = {}
        self._held: dict[Scope, Decimal] = {}
        # When each held call ran (its row's ts, the period ``finish`` records it in), for holds
        # given one: a cost held since before a period's end is not that of the period after.
        self._held_at: dict[str, datetime] = {}
        self._period_starts: tuple[date, dict[str, datetime]] | None = None  # for ``record``
        self._unpriced_said: set[tuple[Scope, str, str]] = set()  # (scope, provider, model)

    def set_policies(self, policies: Policies) -> None:
        """Use new budgets; the spend already counted is kept."""
        budgets = _budgets_of(policies)
        with self._lock:
            self._budgets = budgets

    @property
    def has_budgets(self) -> bool:
        """Is any budget in force? (Without one, a call has nothing to check or reserve.)"""
        return bool(self._budgets)

    def budgets(self) -> dict[Scope, Budget]:
        """The budgets in force, by scope."""
        with self._lock:
            return dict(self._budgets)

    def load(
        self,
        con: duckdb.DuckDBPyConnection,
        now: datetime | None = None,
        *,
        session_id: str | None = None,
        others: Iterable[tuple[Sequence[Scope], Decimal | None, datetime]] = (),
    ) -> None:
        """Replace the in-memory spend with the current periods' totals from ``calls``.

        With ``session_id``, this session's rows count as its own (fed on by ``record``) and
        the other sessions' rows, plus ``others`` ((scopes, cost, ts) of calls counted as another
        session's: a dead session's replayed calls not stored yet), as the others' figure that
        ``refresh_others`` replaces. Also reads the alerts already fired this period from
        ``events``. Run it before ``record`` starts being fed (at start), or from the store's
        writer thread.
        """
        now = _utc(now or datetime.now(UTC))
        own, other = _period_sums(con, now, session_id)
        _add_calls(other, others, now)
        fired = _fired_alerts(con, now)
        with self._lock:
            self._spent = own
            self._others = other
            self._fired |= fired

    def refresh_others(
        self,
        con: duckdb.DuckDBPyConnection,
        session_id: str,
        now: datetime | None = None,
        others: Iterable[tuple[Sequence[Scope], Decimal | None, datetime]] = (),
    ) -> list[BudgetAlert]:
        """Replace the other sessions' spend with their rows in ``con`` now (plus ``others``, as
        in ``load``); this session's own spend is left as counted. One grouped query for the
        spend, one for the alerts fired (by any proxy) this period, which are not fired again.

        Returns the alerts the other proxies' spend makes newly crossed: the caller claims each
        in ``events`` before announcing it (``claim_event``), so that one proxy announces it.
        """
        now = _utc(now or datetime.now(UTC))
        _, other = _period_sums(con, now, session_id, own=False)
        _add_calls(other, others, now)
        fired = _fired_alerts(con, now)
        alerts: list[BudgetAlert] = []
        with self._lock:
            self._others = other
            self._fired |= fired
            for scope, budget in self._budgets.items():
                alerts.extend(self._crossed(scope, budget, self._current(budget.period, now)[0]))
        return alerts

    def _current(self, period: str, now: datetime) -> tuple[datetime, datetime]:
        """Bounds of the period containing ``now``, cached until it ends (lock held)."""
        cached = self._bounds.get(period)
        if cached is not None and cached[0] <= now < cached[1]:
            return cached
        cached = period_bounds(period, now)
        self._bounds[period] = cached
        return cached

    def _spent_in(self, scope: Scope, period: str, start: datetime) -> Decimal:
        """This proxy's spend plus the other proxies' (lock held)."""
        total = _ZERO
        for spent in (self._spent, self._others):
            found = spent.get((scope, period))
            if found is not None and found[0] == start:
                total += found[1]
        return total

    def check(
        self,
        scopes: Sequence[Scope],
        now: datetime,
        *,
        reserve: tuple[str, Callable[[], Decimal]] | None = None,
    ) -> BudgetRefusal | None:
        """The budget of ``scopes`` that refuses the call, else None.

        Spend counts the reservations of calls still in flight. With ``reserve`` =
        (call id, estimated cost), an allowed call reserves its estimate in every
        budgeted scope until ``settle`` (atomically with the check): of calls started
        together against a nearly spent cap, only as many pass as the cap leaves room for.

        Every scope is looked at: of several refusing, a budget whose spend reached its cap wins
        (the call waits for its reset, whatever fills the others), then one that background
        responses fill (hours), then one that calls in flight fill (seconds); among equals, the
        first of ``scopes``.
        """
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now
        with self._lock:
            self._expire(now.timestamp())
            budgeted: list[Scope] = []
            worst: BudgetRefusal | None = None
            for scope in scopes:
                budget = self._budgets.get(scope)
                if budget is None:
                    continue
                budgeted.append(scope)
                refusal = self._refusal(scope, budget, now)
                if refusal is not None and (worst is None or _weight(refusal) > _weight(worst)):
                    worst = refusal
            if worst is not None:
                return worst
            if reserve is not None and budgeted:
                call_id, estimate = reserve
                amount = max(_ZERO, estimate())
                self._reservations[call_id] = (tuple(budgeted), amount)
                for scope in budgeted:
                    self._reserved[scope] = self._reserved.get(scope, _ZERO) + amount
        return None

    def _refusal(self, scope: Scope, budget: Budget, now: datetime) -> BudgetRefusal | None:
        """How ``budget`` of ``scope`` refuses a call at ``now``, if it does (lock held)."""
        start, end = self._current(budget.period, now)
        spent = self._spent_in(scope, budget.period, start) + self._held_in(scope, start)
        reserved = self._reserved.get(scope, _ZERO)
        if spent + reserved < budget.usd:
            return None
        retry_after = max(1, math.ceil((end - now).total_seconds()))
        held = [
            (found[1], until)
            for key, until in self._kept_until.items()
            if (found := self._reservations.get(key)) is not None and scope in found[0]
        ]
        kept = sum((amount for amount, _ in held), _ZERO)
        refusal = BudgetRefusal(scope, budget, spent, start, end, retry_after, reserved, kept)
        if not refusal.spent_out:  # calls in flight fill it: room comes back as they end
            if retry_after <= NO_ROOM_RETRY_S:
                return refusal
            return dataclasses.replace(refusal, retry_after=NO_ROOM_RETRY_S, resets_after=retry_after)
        if held:
            # background responses fill it, or still will after the spend resets at the period's
            # end (holds outlive it): room comes back when enough holds have ended (calls in
            # flight give theirs back in seconds) or the period has, whichever makes room first
            wait = _room_after_holds(spent, held, budget.usd, now.timestamp(), end.timestamp())
            if wait != retry_after:
                return dataclasses.replace(refusal, retry_after=wait, resets_after=retry_after)
        return refusal

    def hold(
        self, call_id: str, scopes: Sequence[Scope], amount: Decimal, at: datetime | None = None
    ) -> None:
        """Count ``amount``, a call's known cost, against its budgeted scopes until ``finish``
        records it (in one step, as for a reservation): a call priced as it ends (a Realtime
        response) counts at once, not only when the store's writer gets to it. ``at``: when the
        call ran (its row's ts): the hold counts in that period only (None: in any)."""
        with self._lock:
            self._settle(call_id)
            self._hold(call_id, scopes, amount, at)

    def give_way(
        self, call_id: str, scopes: Sequence[Scope], cost: Decimal | None, at: datetime | None = None
    ) -> bool:
        """A call just finished and priced: its reservation gives way to its cost (None counts 0)
        in one step, held as ``hold`` holds it until ``finish`` records it (which then counts it
        once and releases nothing else). False, changing nothing, when ``call_id`` holds no
        reservation (none was taken, or it was settled, kept or recorded already)."""
        with self._lock:
            if call_id not in self._reservations:
                return False
            self._settle(call_id)
            self._hold(call_id, scopes, _as_decimal(cost), at)
            return True

    def holding(self, call_id: str) -> tuple[tuple[Scope, ...], Decimal, datetime | None] | None:
        """The scopes, amount and time of the cost ``call_id`` holds (``hold``, ``give_way``), if any."""
        with self._lock:
            found = self._holds.get(call_id)
            return None if found is None else (*found, self._held_at.get(call_id))

    def reserves(self, call_id: str) -> bool:
        """Does ``call_id`` hold a reservation (a budget applied to it as it started)?"""
        with self._lock:
            return call_id in self._reservations

    def _hold(
        self, call_id: str, scopes: Sequence[Scope], amount: Decimal, at: datetime | None = None
    ) -> None:
        """Hold ``amount`` in the budgeted ``scopes`` under ``call_id`` (lock held, nothing there)."""
        budgeted = tuple(scope for scope in scopes if scope in self._budgets)
        if not budgeted or amount <= 0:
            return
        self._holds[call_id] = (budgeted, amount)
        if at is not None:
            self._held_at[call_id] = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        for scope in budgeted:
            self._held[scope] = self._held.get(scope, _ZERO) + amount

    def _held_in(self, scope: Scope, start: datetime) -> Decimal:
        """What the holds of ``scope`` count in the period starting at ``start`` (lock held): all of
        them, but those of calls that ran before it (a stream whose final event came before
        midnight and whose body ended after), which its ``finish`` records in their own period."""
        held = self._held.get(scope, _ZERO)
        if not held or not self._held_at or min(self._held_at.values()) >= start:
            return held
        for call_id, at in self._held_at.items():
            found = self._holds.get(call_id)
            if at < start and found is not None and scope in found[0]:
                held -= found[1]
        return max(held, _ZERO)

    def settle(self, call_id: str) -> None:
        """Release the reservation of a call that was not sent after all (see also ``finish``), or
        the one a background response kept (``keep``) when it ended unbilled."""
        with self._lock:
            self._settle(call_id)

    def keep(self, call_id: str, key: str, until: float) -> Decimal | None:
        """Keep ``call_id``'s reservation past its row, under ``key``: a background response runs
        on upstream, billed when retrieved. It holds until ``hand_over`` or ``settle`` of ``key``,
        or the time ``until`` (epoch seconds). The amount kept; None if the call reserved nothing."""
        with self._lock:
            found = self._reservations.pop(call_id, None)
            if found is None:
                return None
            self._settle(key)  # a key kept again: counted once
            self._reservations[key] = found
            self._kept_until[key] = until
            self._next_end = min(self._next_end, until)
            return found[1]

    def keep_reserved(self, key: str, scopes: Sequence[Scope], amount: Decimal, until: float) -> None:
        """Hold ``amount`` in the budgeted ``scopes`` under ``key`` as ``keep`` does, unless ``key``
        holds already: a background response's reservation held again after a restart."""
        with self._lock:
            if self._reserve(key, scopes, amount):
                self._kept_until[key] = until
                self._next_end = min(self._next_end, until)

    def reserve(self, call_id: str, scopes: Sequence[Scope], amount: Decimal) -> None:
        """Reserve ``amount`` for ``call_id`` in its budgeted ``scopes``, without a check, unless it
        has a reservation already: a call in flight taken over at a script reload (``reservation``
        of the tracker before it)."""
        with self._lock:
            self._reserve(call_id, scopes, amount)

    def reservation(self, call_id: str) -> tuple[tuple[Scope, ...], Decimal] | None:
        """The scopes and amount ``call_id`` has reserved, if it has."""
        with self._lock:
            return self._reservations.get(call_id)

    def kept(self) -> list[str]:
        """The keys of the reservations kept past their call (``keep``, ``keep_reserved``)."""
        with self._lock:
            return list(self._kept_until)

    def _reserve(self, key: str, scopes: Sequence[Scope], amount: Decimal) -> bool:
        """Add a reservation under ``key`` unless it has one (lock held): was it added?"""
        budgeted = tuple(scope for scope in scopes if scope in self._budgets)
        if key in self._reservations or not budgeted or amount <= 0:
            return False
        self._reservations[key] = (budgeted, amount)
        for scope in budgeted:
            self._reserved[scope] = self._reserved.get(scope, _ZERO) + amount
        return True

    def hand_over(self, key: str, call_id: str) -> None:
        """The reservation kept under ``key`` becomes ``call_id``'s, the retrieval that bills the
        background response: its row's ``finish`` swaps it for the cost in one step. Once: a second
        retrieval finds nothing under ``key``."""
        with self._lock:
            found = self._reservations.pop(key, None)
            self._kept_until.pop(key, None)
            if found is None:
                return
            self._settle(call_id)  # a retrieval reserves nothing of its own: never counted twice
            self._reservations[call_id] = found

    def _expire(self, now: float) -> None:
        """Release the kept reservations whose time is up (lock held; a compare when none is)."""
        if now < self._next_end:
            return
        for key, until in list(self._kept_until.items()):
            if until <= now:
                self._settle(key)
        self._next_end = min(self._kept_until.values(), default=math.inf)

    def _settle(self, call_id: str) -> None:
        """Release ``call_id``'s reservation or hold (lock held)."""
        self._kept_until.pop(call_id, None)
        self._held_at.pop(call_id, None)
        for calls, totals in ((self._reservations, self._reserved), (self._holds, self._held)):
            found = calls.pop(call_id, None)
            if found is None:
                continue
            scopes, amount = found
            for scope in scopes:
                left = totals.get(scope, _ZERO) - amount
                if left > 0:
                    totals[scope] = left
                else:
                    totals.pop(scope, None)

    def finish(
        self, call_id: str, scopes: Iterable[Scope], cost: Decimal | None, ts: datetime
    ) -> list[BudgetAlert]:
        """A call is priced: its reservation gives way to its cost in one step (``record``'s alerts).

        One step, because a ``check`` in between would see the call neither reserved nor spent,
        and let through calls the cap has no room for.
        """
        return self._record(scopes, cost, ts, settling=call_id)

    def unpriced(self, scopes: Iterable[Scope], provider: str, model: str) -> list[UnpricedCall]:
        """The budgets of ``scopes`` that a call to ``model``, which has no price, escapes and that
        were not reported for this model yet: each (scope, provider, model) once per tracker."""
        found: list[UnpricedCall] = []
        with self._lock:
            for scope in scopes:
                budget = self._budgets.get(scope)
                mark = (scope, provider, model)
                if budget is None or mark in self._unpriced_said:
                    continue
                self._unpriced_said.add(mark)
                found.append(UnpricedCall(scope, budget, provider, model))
        return found

    def reserved(self, now: float | None = None) -> dict[Scope, Decimal]:
        """What calls in flight (and background responses running) hold, per scope, at ``now``
        (epoch seconds; the time now by default)."""
        with self._lock:
            self._expire(time.time() if now is None else now)
            return dict(self._reserved)

    def record(self, scopes: Iterable[Scope], cost: Decimal | None, ts: datetime) -> list[BudgetAlert]:
        """Add a call's cost (None counts 0) at ``ts``; return the alerts it newly crossed."""
        return self._record(scopes, cost, ts)

    def _record(
        self, scopes: Iterable[Scope], cost: Decimal | None, ts: datetime, settling: str | None = None
    ) -> list[BudgetAlert]:
        ts = _utc(ts)
        amount = _as_decimal(cost)
        day = ts.date()
        cached = self._period_starts
        if cached is not None and cached[0] == day:
            starts = cached[1]
        else:  # once a day: the calls of one day share their periods' starts
            starts = {period: period_bounds(period, ts)[0] for period in PERIODS}
            self._period_starts = (day, starts)
        alerts: list[BudgetAlert] = []
        with self._lock:
            if settling is not None:
                self._settle(settling)
            for scope in scopes:
                for period, start in starts.items():
                    key = (scope, period)
                    found = self._spent.get(key)
                    if found is None or found[0] < start:
                        self._spent[key] = (start, amount)
                    elif found[0] == start:
                        self._spent[key] = (start, found[1] + amount)
                    # else: a late call from a period already over; it no longer counts
                budget = self._budgets.get(scope)
                if budget is not None:
                    alerts.extend(self._crossed(scope, budget, starts[budget.period]))
        return alerts

    def _crossed(self, scope: Scope, budget: Budget, start: datetime) -> list[BudgetAlert]:
        """Alerts of ``budget`` reached and not yet fired in the period from ``start`` (lock held)."""
        spent = self._spent_in(scope, budget.period, start)
        if spent <= 0:
            return []
        found: list[BudgetAlert] = []
        for fraction in sorted({*budget.alert_at, 1.0}):
            mark = (scope, budget.period, start, fraction, budget.usd)
            if mark in self._fired or spent < budget.usd * Decimal(str(fraction)):
                continue
            self._fired.add(mark)
            found.append(BudgetAlert(scope, budget, fraction, spent, start))
        return found

    def status(self, now: datetime) -> list[dict[str, Any]]:
        """Every budget in force: scope, cap, period, start, end, spent, fraction used."""
        now = _utc(now)
        order = {kind: i for i, kind in enumerate(SCOPE_KINDS)}
        result: list[dict[str, Any]] = []
        with self._lock:
            items = sorted(self._budgets.items(), key=lambda item: (order[item[0].kind], item[0].name))
            for scope, budget in items:
                start, end = period_bounds(budget.period, now)
                spent = self._spent_in(scope, budget.period, start)
                result.append(
                    {
                        "scope": scope,
                        "scope_kind": scope.kind,
                        "scope_name": scope.name,
                        "cap": budget.usd,
                        "period": budget.period,
                        "start": start,
                        "end": end,
                        "spent": spent,
                        "fraction": float(spent / budget.usd) if budget.usd else None,
                        "alert_at": budget.alert_at,
                        "exhausted": spent >= budget.usd,
                    }
                )
        return result
