"""How many output tokens each model writes here: what a call that sets no output cap reserves.

``OutputHistory`` keeps, per (provider, model sent), the output tokens (reasoning included, as
the rows store them) of the last ``window`` finished calls with reported usage, and the number
a call without an output cap reserves against the budgets: the 90th percentile of them, never
under ``fallback``; with fewer than ``min_observations`` of them, the larger of ``fallback``
and the most seen. It is seeded from DuckDB at start (``load``), fed each finished call in the
store's writer thread (``record``), and read with ``reserved``: a dict lookup, safe on
mitmproxy's event loop (the value is recomputed when the history changes, not per call).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import duckdb

from addon.record import CallRecord

PERCENT = 90  # the percentile reserved
MIN_OBSERVATIONS = 20  # below this many, the most seen (and the fallback) is reserved
WINDOW = 500  # outputs kept per model
MAX_MODELS = 256  # models kept (the least recently seen is forgotten first)
SEED_DAYS = 30  # how far back ``load`` looks
BATCH_FLAVOR = "batch"  # a batch's row sums its requests' outputs: not one call's

Key = tuple[str, str]  # (provider, model sent)


def percentile(values: Sequence[int], percent: int = PERCENT) -> int:
    """The nearest-rank ``percent``-th percentile of ``values`` (not empty): the smallest value
    that at least ``percent``% of them are at or below. Integer arithmetic, so exact."""
    ordered = sorted(values)
    rank = max(1, -(-percent * len(ordered) // 100))  # ceil(percent * n / 100)
    return ordered[rank - 1]


def tells_output(record: CallRecord) -> bool:
    """Does this finished call say how much its model writes? Its usage was reported, it was
    not cut short, and it is one call (not a batch's sum)."""
    return (
        record.usage_source == "reported"
        and record.output_tokens is not None
        and bool(record.model_sent)
        and not record.aborted
        and record.api_flavor != BATCH_FLAVOR
    )


# The last ``WINDOW`` outputs of the ``MAX_MODELS`` models most recently used in the last
# ``SEED_DAYS`` days, oldest first (the order they are fed in), each one answer's: a row's output
# divided by the answers its call asked for (column ``answers``, NULL for one). One bounded query.
_SEED_SQL = f"""
WITH recent AS (
    SELECT provider, model_sent, output_tokens // greatest(coalesce({{answers}}, 1), 1) AS output_tokens,
        ts FROM calls
    WHERE ts >= ? AND usage_source = 'reported' AND output_tokens IS NOT NULL
      AND model_sent IS NOT NULL AND model_sent <> '' AND provider IS NOT NULL
      AND NOT coalesce(aborted, false) AND coalesce(api_flavor, '') <> '{BATCH_FLAVOR}'
),
models AS (
    SELECT provider, model_sent FROM recent GROUP BY provider, model_sent
    ORDER BY max(ts) DESC LIMIT ?
)
SELECT provider, model_sent, output_tokens FROM recent JOIN models USING (provider, model_sent)
QUALIFY row_number() OVER (PARTITION BY provider, model_sent ORDER BY ts DESC) <= ?
ORDER BY ts
"""


class OutputHistory:
    """Recent output tokens per (provider, model sent), and what an uncapped call reserves.

    ``record`` and ``load`` run in the store's writer thread (or at start), ``reserved`` on the
    event loop: the writer replaces one entry of ``_reserved`` at a time, a single dict
    assignment, so a reader sees either the old or the new number.
    """

    def __init__(
        self,
        fallback: int,
        *,
        window: int = WINDOW,
        max_models: int = MAX_MODELS,
        min_observations: int = MIN_OBSERVATIONS,
    ) -> None:
        self.fallback = fallback
        self.window = window
        self.max_models = max_models
        self.min_observations = min_observations
        self._lock = threading.Lock()
        self._outputs: OrderedDict[Key, deque[int]] = OrderedDict()  # least recently seen first
        self._reserved: dict[Key, int] = {}

    def reserved(self, provider: str, model: str | None) -> int:
        """Output tokens a call to ``model`` that sets no output cap reserves (a dict lookup)."""
        if not model:
            return self.fallback
        return self._reserved.get((provider, model), self.fallback)

    def observations(self, provider: str, model: str) -> list[int]:
        """The outputs kept for one model, oldest first (for tests and reports)."""
        with self._lock:
            return list(self._outputs.get((provider, model), ()))

    def models(self) -> list[Key]:
        """The (provider, model) pairs kept, least recently seen first."""
        with self._lock:
            return list(self._outputs)

    def record(self, records: Iterable[CallRecord], answers: Mapping[str, int] | None = None) -> None:
        """Add the outputs of finished calls (those ``tells_output`` accepts), each one answer's:
        a call that asked for several (its ``answers``, or ``answers`` by id) counts its output
        divided by them."""
        answers = answers or {}
        self._add(
            [
                (
                    r.provider,
                    r.model_sent or "",
                    (r.output_tokens or 0) // max(1, answers.get(r.id) or r.answers or 1),
                )
                for r in records
                if tells_output(r)
            ]
        )

    def load(self, con: duckdb.DuckDBPyConnection, now: datetime | None = None) -> int:
        """Replace the history with the recent calls stored in ``con`` (one bounded query over the
        last ``SEED_DAYS`` days); the number of outputs read. Raises what DuckDB raises. A database
        not migrated yet (no column ``answers``: another process held it) is read as one answer
        a row."""
        now = now or datetime.now(UTC)
        since = (now.astimezone(UTC) if now.tzinfo else now).replace(tzinfo=None) - timedelta(days=SEED_DAYS)
        params = [since, self.max_models, self.window]
        try:
            rows = con.execute(_SEED_SQL.format(answers="answers"), params).fetchall()
        except duckdb.BinderException:  # a database from before the column
            rows = con.execute(_SEED_SQL.format(answers="NULL"), params).fetchall()
        with self._lock:
            self._outputs.clear()
            self._reserved = {}
        self._add(rows)
        return len(rows)

    def _add(self, outputs: Iterable[tuple[str, str, int]]) -> None:
        """Append (provider, model, output tokens), then recompute each changed model's number."""
        with self._lock:
            changed: set[Key] = set()
            for provider, model, tokens in outputs:
                key = (provider, model)
                ring = self._outputs.get(key)
                if ring is None:
                    ring = self._outputs[key] = deque(maxlen=self.window)
                else:
                    self._outputs.move_to_end(key)
                ring.append(max(0, int(tokens)))
                changed.add(key)
            while len(self._outputs) > self.max_models:
                gone, _ = self._outputs.popitem(last=False)
                changed.discard(gone)
                self._reserved.pop(gone, None)
            for key in changed:
                self._reserved[key] = self._compute(self._outputs[key])

    def _compute(self, ring: Sequence[int]) -> int:
        """What an uncapped call reserves, given its model's recent outputs."""
        if len(ring) < self.min_observations:
            return max(self.fallback, *ring) if ring else self.fallback
        return max(self.fallback, percentile(ring))
