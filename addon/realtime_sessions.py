"""One OpenAI Realtime session (a WebSocket) as the meter follows it: the rows its events bill.

No mitmproxy here: the addon hands in the events ``addon.providers.openai_realtime`` reads from
the server's messages, and gets back finished rows to price and store. Per session it keeps the
handshake's row (attribution, models), the models the session reports, and when each response
in flight started: a few fields, whatever the session's length (mitmproxy keeps the messages).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from addon.budgets import Scope, scopes_for
from addon.providers.openai_realtime import (
    ResponseDone,
    ResponseStarted,
    ServerEvent,
    SessionConfig,
    TranscriptionDone,
)
from addon.record import CallRecord

# Responses in flight remembered at most (a session runs one or a few at a time).
MAX_IN_FLIGHT = 64
UPGRADED = 101  # the status of every row of a session: its handshake's


@dataclass(slots=True)
class RealtimeRow:
    """A finished row of a session (a response, a transcription, or a response cut short)."""

    record: CallRecord


@dataclass(slots=True)
class RealtimeSession:
    """The rows of one Realtime WebSocket: one per response, one per input transcription."""

    handshake: CallRecord  # attribution, model asked for and sent, action: copied onto every row
    next_id: Callable[[], str]
    opened_at: float  # when the socket opened (epoch seconds)
    model_reported: str | None = None
    transcription_model: str | None = None
    in_flight: dict[str, float] = field(default_factory=dict)  # response id -> response.created time
    last_end: float = 0.0  # when the latest response ended
    responses: int = 0  # rows billed so far
    transcriptions: int = 0
    capped: bool = False  # a budget ran out: client messages are dropped while the socket closes
    scopes: tuple[Scope, ...] = ()  # the budget scopes its rows count in (from the handshake's row)

    def __post_init__(self) -> None:
        self.last_end = self.last_end or self.opened_at
        record = self.handshake
        self.scopes = scopes_for(record.environment, record.key_name, record.user_name)

    def take(self, event: ServerEvent, now: float) -> list[RealtimeRow]:
        """Follow one server event; the rows it finishes (none for most)."""
        if isinstance(event, SessionConfig):
            self.model_reported = event.model or self.model_reported
            self.transcription_model = event.transcription_model
            return []
        if isinstance(event, ResponseStarted):
            if len(self.in_flight) >= MAX_IN_FLIGHT:
                self.in_flight.pop(next(iter(self.in_flight)))
            self.in_flight[event.response_id or ""] = now
            return []
        if isinstance(event, ResponseDone):
            started = self.in_flight.pop(event.response_id or "", None)
            if started is None:  # its response.created was not seen: from the previous response
                started = self.last_end
            self.last_end = max(self.last_end, now)
            row = self._row(started, now, self.model_reported)
            row.set_usage(event.usage)
            row.error = _join(row.error, event.error)
            self.responses += 1
            return [RealtimeRow(row)]
        if isinstance(event, TranscriptionDone):
            model = self.transcription_model
            row = self._row(now, None, None, model=model, action="allowed")
            row.set_usage(event.usage)
            row.error = _join(row.error, event.error)
            if model is None:
                row.error = _join(row.error, "the session's transcription model was not seen")
            self.transcriptions += 1
            return [RealtimeRow(row)]
        return []

    def end(self, now: float, reason: str) -> list[RealtimeRow]:
        """The socket closed: an aborted row, without usage, for each response still in flight."""
        rows = []
        for started in self.in_flight.values():
            row = self._row(started, now, self.model_reported)
            row.aborted = True
            row.error = _join(row.error, reason)
            rows.append(RealtimeRow(row))
        self.in_flight.clear()
        return rows

    def _row(
        self,
        started: float,
        ended: float | None,
        model_reported: str | None,
        *,
        model: str | None = None,
        action: str | None = None,
    ) -> CallRecord:
        """A new row with the handshake's attribution, started at ``started``."""
        handshake = self.handshake
        changes: dict[str, object] = {
            "id": self.next_id(),
            "ts": datetime.fromtimestamp(started, UTC),
            "duration_ms": None if ended is None else round((ended - started) * 1000, 3),
            "status_code": UPGRADED,
            "streamed": True,
            "model_reported": model_reported,
        }
        if action is not None:  # a transcription: its own model, never checked at the handshake
            changes |= {"model_requested": model, "model_sent": model, "action": action}
        return dataclasses.replace(handshake, **changes)  # type: ignore[arg-type]


def _join(first: str | None, second: str | None) -> str | None:
    """Two problems on one row's ``error``."""
    if not first or not second:
        return first or second
    return f"{first}; {second}"[:1000]
