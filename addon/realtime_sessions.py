"""Sessions over WebSocket as the meter follows them: the rows their messages bill.

An OpenAI Realtime session bills one row per response and per input transcription; a Gemini Live
session one row per turn (each ``usageMetadata``). No mitmproxy here: the addon hands in what
``addon.providers.openai_realtime`` and ``addon.providers.gemini_live`` read from the messages,
and gets back finished rows to price and store. Per session it keeps the handshake's row
(attribution, models) and when the work in flight started: a few fields, whatever the session's
length (mitmproxy keeps the messages).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from addon.budgets import Scope, scopes_for
from addon.client_process import ClientProcess
from addon.providers.gemini_live import TurnUsage
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
class SocketSession:
    """What every metered WebSocket keeps: the handshake's row, copied onto each row it bills."""

    handshake: CallRecord  # attribution, model asked for and sent, action: copied onto every row
    next_id: Callable[[], str]
    opened_at: float  # when the socket opened (epoch seconds)
    capped: bool = False  # refused or over budget: client messages are dropped while the socket closes
    scopes: tuple[Scope, ...] = ()  # the budget scopes its rows count in (from the handshake's row)

    def __post_init__(self) -> None:
        self.attributed()

    def attributed(self) -> None:
        """The handshake's attribution changed (or was just set): its budget scopes follow."""
        record = self.handshake
        self.scopes = scopes_for(record.environment, record.key_name, record.user_name)

    def end(self, now: float, reason: str) -> list[RealtimeRow]:
        """The socket closed: the rows of the work cut short (none by default)."""
        return []

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


@dataclass(slots=True)
class RealtimeSession(SocketSession):
    """The rows of one OpenAI Realtime WebSocket: one per response, one per input transcription."""

    model_reported: str | None = None
    transcription_model: str | None = None
    in_flight: dict[str, float] = field(default_factory=dict)  # response id -> response.created time
    last_end: float = 0.0  # when the latest response ended
    responses: int = 0  # rows billed so far
    transcriptions: int = 0

    def __post_init__(self) -> None:
        SocketSession.__post_init__(self)
        self.last_end = self.last_end or self.opened_at

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


@dataclass(slots=True)
class LiveSession(SocketSession):
    """The rows of one Gemini Live WebSocket: one per ``usageMetadata`` (a turn's usage).

    The model is named by the setup (the first client message), so the handshake's row gets it
    then. A turn runs from its first server content to its usage; one cut by the close is an
    aborted row without usage.
    """

    setup_seen: bool = False  # the first client message went by (checked, rewritten or refused)
    turn_started: float | None = None  # when the turn in flight sent its first content
    turns: int = 0  # rows billed so far
    # To attribute the session again at its setup (a Vertex project stands for the credential).
    tags_header: str | None = None
    process: ClientProcess | None = None

    def content(self, now: float) -> None:
        """Content of a turn went by: the turn in flight started now, if none was."""
        if self.turn_started is None:
            self.turn_started = now

    def take(self, turn: TurnUsage, now: float) -> RealtimeRow:
        """One ``usageMetadata``: its turn's row (from its first content, else from now)."""
        started = self.turn_started if self.turn_started is not None else now
        self.turn_started = None
        row = self._row(started, now, None)
        row.set_usage(turn.usage)
        row.service_tier = turn.service_tier
        self.turns += 1
        return RealtimeRow(row)

    def end(self, now: float, reason: str) -> list[RealtimeRow]:
        """The socket closed: an aborted row, without usage, for a turn still in flight."""
        started, self.turn_started = self.turn_started, None
        if started is None:
            return []
        row = self._row(started, now, None)
        row.aborted = True
        row.error = _join(row.error, reason)
        return [RealtimeRow(row)]


def _join(first: str | None, second: str | None) -> str | None:
    """Two problems on one row's ``error``."""
    if not first or not second:
        return first or second
    return f"{first}; {second}"[:1000]
