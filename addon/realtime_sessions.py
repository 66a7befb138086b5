"""Sessions over WebSocket as the meter follows them: the rows their messages bill.

An OpenAI Realtime session bills one row per response and per input transcription; a Gemini Live
session one row per turn (each ``usageMetadata``); a Responses WebSocket one row per response
(each ``response.create`` is a call, checked and reserved as it goes up), and one more for the
images its ``image_generation`` tool wrote (addon.image_tool); an OpenAI Live session one row per
increase of its cumulative billed seconds (and one per delegated Responses call); a Realtime
translation session one row per minute of the audio its client sends (an estimate: it reports no
usage). No mitmproxy here: the addon hands in what ``addon.providers.openai_realtime``,
``gemini_live``, ``openai_responses_ws``, ``openai_live`` and ``openai_realtime_translation`` read
from the messages, and gets back finished rows to price and store. Per session it keeps the
handshake's row (attribution, models) and the work in flight: a few fields per response, whatever
the session's length (mitmproxy keeps the messages; a Responses session also keeps each create
event until its response ends, bounded, for an offline estimate if it is cut short).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from addon.budgets import Scope, scopes_for
from addon.client_process import ClientProcess
from addon.image_tool import ImageToolCall, svg_rows, tool_row
from addon.pricing import NOT_BILLED
from addon.providers import openai_live, openai_realtime_translation, openai_responses_ws
from addon.providers.gemini_live import TurnUsage
from addon.providers.openai_api import ImageEvents
from addon.providers.openai_realtime import (
    ResponseDone,
    ResponseStarted,
    ServerEvent,
    SessionConfig,
    TranscriptionDone,
)
from addon.record import CallRecord
from addon.usage import Metered, ToolImages, Usage

# Responses in flight remembered at most (a session runs one or a few at a time).
MAX_IN_FLIGHT = 64
UPGRADED = 101  # the status of every row of a session: its handshake's


# Responses WebSocket: the create events kept for an offline estimate, at most (bytes, per session).
MAX_KEPT_BYTES = 16 * 1024 * 1024
MAX_LANES = 64  # lanes followed at most (OpenAI accepts 32 named ones per socket, and the default)


@dataclass(slots=True)
class RealtimeRow:
    """A finished row of a session (a response, a transcription, or a response cut short)."""

    record: CallRecord
    # A response cut short: the create event that asked for it, for an offline estimate of its
    # input (None: not kept, or nothing to estimate). Never stored.
    estimate_from: bytes | None = None
    # A Responses create's conversation (the Conversations API id it added to), if it named one.
    conversation: str | None = None


@dataclass(slots=True)
class SocketSession:
    """What every metered WebSocket keeps: the handshake's row, copied onto each row it bills."""

    handshake: CallRecord  # attribution, model asked for and sent, action: copied onto every row
    next_id: Callable[[], str]
    opened_at: float  # when the socket opened (epoch seconds)
    capped: bool = False  # refused or over budget: client messages are dropped while the socket closes
    scopes: tuple[Scope, ...] = ()  # the budget scopes its rows count in (from the handshake's row)
    # Its connection's process lookup: a session opened before it answered gets its user at its
    # next billable point (a Responses create; a message or the close of any other session).
    lookup: asyncio.Future[ClientProcess] | None = None
    # Users had limits when the handshake was attributed: the user it was decided as stays (an
    # HTTP call's CallState.user_decided); else a finished lookup names it.
    user_decided: bool = False
    lookup_read: bool = False  # the finished lookup's user and process are the handshake's

    def __post_init__(self) -> None:
        self.attributed()

    def attributed(self) -> None:
        """The handshake's attribution changed (or was just set): its budget scopes follow."""
        record = self.handshake
        self.scopes = scopes_for(record.environment, record.key_name, record.user_name)

    def end(self, now: float, reason: str) -> list[RealtimeRow]:
        """The socket closed: the rows of the work cut short (none by default)."""
        return []

    def refused_update(self, now: float, model: str, status: int, message: str) -> CallRecord:
        """A session.update the proxy refused for a ``model`` it names (a Realtime transcription model,
        an OpenAI Live delegation model; dropped, the client got an error event): its row, not billed."""
        row = self._row(now, now, None, model=model, action="blocked")
        row.model_sent, row.status_code = None, status
        row.error = _join(row.error, message)
        row.cost_usd, row.price_status = Decimal(0), NOT_BILLED
        return row

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
    # Transcription models the proxy downgraded in a session.update: the one sent -> the one asked for.
    transcription_downgrades: dict[str, str] = field(default_factory=dict)
    # A transcription session (``?intent=transcription``) where models are restricted, until it names
    # an allowed transcription model: what the client sends is held back (see SocketMeter).
    transcription_unnamed: bool = False
    transcription_pending: bool = False  # let go on a checked update, the server's answer awaited
    deployments: Mapping[str, str] = field(default_factory=dict)  # Azure: deployment -> its model
    held: int = 0  # client messages held back meanwhile

    def __post_init__(self) -> None:
        SocketSession.__post_init__(self)
        self.last_end = self.last_end or self.opened_at

    def take(self, event: ServerEvent, now: float) -> list[RealtimeRow]:
        """Follow one server event; the rows it finishes (none for most)."""
        if isinstance(event, SessionConfig):
            self.model_reported = event.model or self.model_reported
            named = event.transcription_model  # on Azure, a deployment
            self.transcription_model = self.deployments.get(named, named) if named is not None else None
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
            asked = self.transcription_downgrades.get(model) if model is not None else None
            if asked is not None:
                row.model_requested, row.action = asked, "downgraded"
            row.set_usage(event.usage)
            row.error = _join(row.error, event.error)
            if model is None:
                row.error = _join(row.error, "the session's transcription model was not seen")
            self.transcriptions += 1
            return [RealtimeRow(row)]
        return []

    def downgraded_transcription(self, asked: str, sent: str) -> None:
        """A session.update asked for transcription model ``asked``; the proxy sent ``sent``."""
        if len(self.transcription_downgrades) < MAX_IN_FLIGHT:
            self.transcription_downgrades[sent] = asked

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


@dataclass(slots=True)
class OpenAILiveSession(SocketSession):
    """The rows of one OpenAI Live WebSocket: one per increase of its billed seconds.

    Live reports the session's CUMULATIVE billed seconds (``session.usage.updated``, and the final
    total in ``session.closed``): each report that raises the total is a row of the increase, from
    the previous report (or the session's start) to this one, so the rows add up to the bill and a
    finished stretch is stored as soon as it is reported (a session can last an hour). The model is
    named by ``session.start`` (the handshake's row gets it then), the resolved one by
    ``session.started``. A session that started and whose socket closed before ``session.closed``
    is one more row, aborted without usage: the seconds after its last report are unknown. Each
    delegated Responses call is a row of its own (billed apart, by tokens).

    A sideband (``sideband``) joins a session running elsewhere: it sends no start, and runs from
    its upgrade; its reports carry the session's whole total (the seconds before it attached too).
    One attached to a session this proxy meters already (``bills`` False) bills nothing again.
    A fork (``fork``) is a new session continuing a stored one: it runs and bills as a primary, but
    its start names no model (it inherits it; ``session.started`` names it, and prices its rows).
    """

    start_seen: bool = False  # the first client message went by (checked, rewritten or refused)
    started: bool = False  # session.started came: the session bills from here
    closed: bool = False  # session.closed came: its final total is billed
    model_reported: str | None = None
    billed_seconds: float = 0.0  # the cumulative total billed so far
    last_report: float = 0.0  # when the billed total was last reported (or the session started)
    reports: int = 0  # rows of seconds so far
    cap_reason: str | None = None  # capped: why (the close the proxy sends once the session closed)
    session_id: str | None = None  # the Live session's id (session.started's; a sideband's path's)
    sideband: bool = False  # a sideband (/attach): no start of its own, the session runs elsewhere
    bills: bool = True  # False: a sideband of a session metered here already (never billed twice)
    fork: bool = False  # a fork (/fork) of a stored session: its start names no model, it inherits one

    def __post_init__(self) -> None:
        SocketSession.__post_init__(self)
        self.last_report = self.last_report or self.opened_at
        if self.sideband:
            self.start_seen = self.started = True  # it runs already: never a start to check

    def began(self, event: openai_live.Started, now: float) -> None:
        """``session.started``: the session runs (and bills) from now (``session.updated``: only
        its model is read)."""
        self.model_reported = event.model or self.model_reported
        self.session_id = self.session_id or event.session_id
        if not self.started and not event.updated:
            self.started, self.last_report = True, now

    def take(self, report: openai_live.UsageReport, now: float) -> RealtimeRow | None:
        """One usage report: a row of the seconds it adds to the billed total (None: it adds none)."""
        self.model_reported = self.model_reported or report.model
        if not self.bills:
            self.closed = self.closed or report.final
            return None
        if report.final:
            if report.seconds is None and self.started and not self.closed:
                self.closed = True
                return self._cut(now, "session.closed without usage")
            self.closed = True
        if report.seconds is None or report.seconds <= self.billed_seconds:
            return None
        row = self._row(self.last_report, now, self.model_reported)
        row.set_usage(Usage(audio_seconds=report.seconds - self.billed_seconds))
        if report.final and report.reason not in (None, "close_requested"):
            row.error = _join(row.error, f"the session closed: {report.reason}")
        self.billed_seconds, self.last_report = report.seconds, now
        self.reports += 1
        return RealtimeRow(row)

    def delegated(self, metered: Metered, now: float) -> RealtimeRow | None:
        """A delegated Responses call ended: its row, priced by the model that served it (None: a
        sideband's of a session billed here already)."""
        if not self.bills:
            return None
        row = self._row(now, None, metered.model, model=None, action="allowed")
        row.api_flavor = openai_live.DELEGATED_FLAVOR
        row.service_tier = metered.service_tier
        row.set_usage(metered.usage)
        row.error = _join(row.error, metered.error)
        return RealtimeRow(row)

    def end(self, now: float, reason: str) -> list[RealtimeRow]:
        """The socket closed: a session that started and never reported its close is an aborted
        row without usage (what it billed after its last report is unknown)."""
        if not self.started or self.closed or not self.bills:
            return []
        self.closed = True
        return [self._cut(now, reason)]

    def _cut(self, now: float, reason: str) -> RealtimeRow:
        """The aborted row, without usage, of the seconds after the last report."""
        row = self._row(self.last_report, now, self.model_reported)
        row.aborted = True
        row.error = _join(row.error, f"{reason}: the seconds after the last usage report are unknown")
        return RealtimeRow(row)


# A Realtime translation session's audio per row (bytes of 24 kHz PCM16: 60 seconds): its spend
# counts against the budgets minute by minute, not only when the session ends.
TRANSLATION_ROW_BYTES = 60 * openai_realtime_translation.BYTES_PER_SECOND


@dataclass(slots=True)
class TranslationSession(SocketSession):
    """The rows of one OpenAI Realtime translation WebSocket: its audio, by the minute.

    The server reports no usage; OpenAI bills the audio's duration. What the proxy sees is the
    audio the client appends (24 kHz mono PCM16: 48,000 bytes a second), so each row is the
    seconds of that audio (``usage_source = 'estimated'``): one row per ``TRANSLATION_ROW_BYTES``
    sent, from the previous row (or the socket's opening) to the append that completes it, and one
    for the rest when the session closes (``session.closed``), or an aborted one when the socket
    closes first. The model is the handshake's; ``session.created`` names the one the server runs
    (``model_reported``).
    """

    model_reported: str | None = None
    unbilled: int = 0  # bytes of audio appended since the last row
    last_row: float = 0.0  # when the last row ended (or the socket opened)
    rows: int = 0  # rows of audio so far
    closed: bool = False  # session.closed came: the rest is billed

    def __post_init__(self) -> None:
        SocketSession.__post_init__(self)
        self.last_row = self.last_row or self.opened_at

    def configured(self, event: openai_realtime_translation.Configured) -> None:
        """``session.created`` / ``session.updated``: the model the server runs."""
        self.model_reported = event.model or self.model_reported

    def appended(self, size: int, now: float) -> RealtimeRow | None:
        """The client appended ``size`` bytes of audio: a row once a minute of it is unbilled."""
        if size <= 0 or self.closed:
            return None
        self.unbilled += size
        if self.unbilled < TRANSLATION_ROW_BYTES:
            return None
        return self._audio_row(now)

    def server_closed(self, now: float) -> RealtimeRow | None:
        """``session.closed``: the row of the audio not billed yet (None: none)."""
        if self.closed:
            return None
        self.closed = True
        return self._audio_row(now) if self.unbilled else None

    def end(self, now: float, reason: str) -> list[RealtimeRow]:
        """The socket closed before ``session.closed``: the audio not billed yet is an aborted row."""
        if self.closed or not self.unbilled:
            return []
        self.closed = True
        row = self._audio_row(now)
        row.record.aborted = True
        row.record.error = _join(row.record.error, reason)
        return [row]

    def _audio_row(self, now: float) -> RealtimeRow:
        """A row of the unbilled audio's seconds, from the last row to ``now``."""
        row = self._row(self.last_row, now, self.model_reported)
        seconds = self.unbilled / openai_realtime_translation.BYTES_PER_SECOND
        row.set_usage(Usage(audio_seconds=seconds), source="estimated")
        self.unbilled, self.last_row = 0, now
        self.rows += 1
        return RealtimeRow(row)


@dataclass(slots=True)
class ResponseCall:
    """One response asked for on a Responses WebSocket: its row (id = its budget reservation's),
    the create's bytes while it runs (an estimate if it is cut short), when it started, its lane,
    and its image_generation tool as let through (its images' row is priced by its model)."""

    record: CallRecord
    create: bytes | None = None
    started: float | None = None
    lane: str | None = None
    image_tool: ImageToolCall | None = None
    conversation: str | None = None  # the conversation its create added to, if any


@dataclass(slots=True)
class ResponsesSession(SocketSession):
    """The rows of one Responses WebSocket: one per response, from its create to its terminal event.

    Responses run one after another on a lane (``stream_id``; None is the default lane) and lanes
    run at once, so each lane's creates wait in order for their ``response.created``, which binds
    the response id; the terminal event names that id. A ``response.created`` with no create
    waiting is a response the server started by itself (the successor of a steered one): billed
    with the model of the lane's latest create, which it inherits.
    """

    subscription: bool = False  # a flat-fee plan's key: no budget reservations
    waiting: dict[str | None, deque[ResponseCall]] = field(default_factory=dict)  # per lane
    in_flight: dict[str, ResponseCall] = field(default_factory=dict)  # response id -> its call
    latest: dict[str | None, CallRecord] = field(default_factory=dict)  # per lane: its latest create's row
    latest_tool: dict[str | None, ImageToolCall] = field(default_factory=dict)  # and its image tool
    kept_bytes: int = 0  # of the create events kept (MAX_KEPT_BYTES)
    responses: int = 0  # rows billed so far
    # Per lane: the image call events of its running response (partial images, completions).
    image_events: dict[str | None, ImageEvents] = field(default_factory=dict)

    def call(self, now: float, model: str | None) -> CallRecord:
        """The row of a new ``response.create`` asking for ``model`` (a new id: its reservation's)."""
        row = self._row(now, None, None)
        row.model_requested = row.model_sent = model
        return row

    def refused(self, record: CallRecord, status: int, message: str) -> CallRecord:
        """A create the proxy refused (dropped; the client got an error event): its row, not billed."""
        record.status_code, record.model_sent, record.duration_ms = status, None, 0.0
        record.error = _join(record.error, message)
        record.cost_usd, record.price_status = Decimal(0), NOT_BILLED
        return record

    def sent(
        self,
        record: CallRecord,
        stream_id: str | None,
        create: bytes,
        image_tool: ImageToolCall | None = None,
        conversation: str | None = None,
    ) -> list[RealtimeRow]:
        """A create went upstream: it waits for its response on its lane. The rows of the calls no
        longer followed to make room (none normally)."""
        kept = None
        if self.kept_bytes + len(create) <= MAX_KEPT_BYTES:
            kept, self.kept_bytes = create, self.kept_bytes + len(create)
        lane = self.waiting.get(stream_id)
        dropped: list[ResponseCall] = []
        if lane is None:
            if len(self.waiting) >= MAX_LANES:
                oldest = next(iter(self.waiting))
                dropped.extend(self.waiting.pop(oldest))
                self.latest.pop(oldest, None)
                self.latest_tool.pop(oldest, None)
            lane = self.waiting[stream_id] = deque()
        if len(lane) >= MAX_IN_FLIGHT:
            dropped.append(lane.popleft())
        lane.append(
            ResponseCall(record, kept, lane=stream_id, image_tool=image_tool, conversation=conversation)
        )
        self.latest[stream_id] = record
        self.latest_tool.pop(stream_id, None)
        if image_tool is not None:
            self.latest_tool[stream_id] = image_tool
        return [self._forget(c, record.ts.timestamp()) for c in dropped]

    def image_event(self, event: openai_responses_ws.ImageEvent, data: bytes) -> None:
        """An image call event of a lane's running response (its partial images are billed)."""
        events = self.image_events.get(event.stream_id)
        if events is None:
            if len(self.image_events) >= MAX_LANES:
                return
            events = self.image_events[event.stream_id] = ImageEvents()
        events.feed(event.kind, data)

    def take(self, event: openai_responses_ws.ServerEvent, now: float) -> list[RealtimeRow]:
        """Follow one server event; the rows it finishes."""
        if isinstance(event, openai_responses_ws.Started):
            call = self._next_waiting(event.stream_id) or self._successor(event.stream_id, now)
            self.image_events.pop(event.stream_id, None)  # a lane runs one response at a time
            call.started = now
            call.record.ts = datetime.fromtimestamp(now, UTC)
            rows = []
            if len(self.in_flight) >= MAX_IN_FLIGHT:
                rows.append(self._forget(self.in_flight.pop(next(iter(self.in_flight))), now))
            self.in_flight[event.response_id or ""] = call
            return rows
        if isinstance(event, openai_responses_ws.Ended):
            call = self.in_flight.pop(event.response_id or "", None)
            call = call or self._next_waiting(event.stream_id) or self._successor(event.stream_id, now)
            started = call.started if call.started is not None else call.record.ts.timestamp()
            self._release(call)
            row = call.record
            row.duration_ms = round((now - started) * 1000, 3)
            metered = event.metered
            row.model_reported = metered.model
            row.service_tier = metered.service_tier
            row.set_usage(metered.usage)
            row.error = _join(row.error, metered.error)
            self.responses += 1
            images = self._images_row(call, event.stream_id, metered.tool_images)
            # The images first: counted before the call's row gives back its reservation (text and images).
            return [*images, RealtimeRow(row, conversation=call.conversation)]
        if isinstance(event, openai_responses_ws.Rejected):
            call = self._next_waiting(event.stream_id)
            if call is None:
                return []  # about no create of ours (the connection's own): nothing to bill
            self._release(call)
            row = call.record
            row.duration_ms = round((now - row.ts.timestamp()) * 1000, 3)
            row.status_code = event.status or row.status_code
            row.error = _join(row.error, event.error)
            row.cost_usd, row.price_status = Decimal(0), NOT_BILLED
            return [RealtimeRow(row)]
        return []

    def end(self, now: float, reason: str) -> list[RealtimeRow]:
        """The socket closed: each response started is an aborted row without usage (its create
        kept for an estimate); each create whose response never started, a row not billed."""
        rows = []
        for call in self.in_flight.values():
            row = call.record
            started = call.started if call.started is not None else row.ts.timestamp()
            row.duration_ms = round((now - started) * 1000, 3)
            row.aborted = True
            row.error = _join(row.error, f"{reason} before the response ended: usage unknown")
            rows.extend(self._images_row(call, call.lane, None, ended=False))
            rows.append(RealtimeRow(row, call.create))
        for lane in self.waiting.values():
            for call in lane:
                row = call.record
                row.duration_ms = round((now - row.ts.timestamp()) * 1000, 3)
                row.error = _join(row.error, f"{reason} before the response started")
                row.cost_usd, row.price_status = Decimal(0), NOT_BILLED
                rows.append(RealtimeRow(row))
        self.in_flight.clear()
        self.waiting.clear()
        self.image_events.clear()
        self.kept_bytes = 0
        return rows

    def _images_row(
        self, call: ResponseCall, lane: str | None, final: ToolImages | None, *, ended: bool = True
    ) -> list[RealtimeRow]:
        """The row of the images a response's image_generation tool wrote (addon.image_tool): from
        its terminal event (``final``; ``ended`` False: it never came) and its lane's image events;
        none if it wrote none."""
        events = self.image_events.pop(lane, None)
        found = events.merged(final, ended) if events is not None else final
        if found is None or not found.billed:
            return []
        row = tool_row(call.record, found, call.image_tool, self.next_id()) if found.images_billed else None
        authored = svg_rows(call.record, found, [self.next_id() for _ in found.svg], call.image_tool)
        return [RealtimeRow(one) for one in ([row] if row is not None else []) + authored]

    def _next_waiting(self, stream_id: str | None) -> ResponseCall | None:
        lane = self.waiting.get(stream_id)
        return lane.popleft() if lane else None

    def _successor(self, stream_id: str | None, now: float) -> ResponseCall:
        """A response no create waited for: the lane's latest create's models and action."""
        row = self._row(now, None, None)
        latest = self.latest.get(stream_id)
        if latest is not None:
            row.model_requested, row.model_sent = latest.model_requested, latest.model_sent
            row.action = latest.action
        else:
            row.model_requested = row.model_sent = None
        return ResponseCall(row, None, now, lane=stream_id, image_tool=self.latest_tool.get(stream_id))

    def _release(self, call: ResponseCall) -> None:
        if call.create is not None:
            self.kept_bytes -= len(call.create)
            call.create = None

    def _forget(self, call: ResponseCall, now: float) -> RealtimeRow:
        """A call no longer followed (too many at once): an aborted row, its usage unknown."""
        self._release(call)
        row = call.record
        row.aborted = True
        row.error = _join(row.error, f"over {MAX_IN_FLIGHT} responses in flight: no longer followed")
        return RealtimeRow(row)


def _join(first: str | None, second: str | None) -> str | None:
    """Two problems on one row's ``error``."""
    if not first or not second:
        return first or second
    return f"{first}; {second}"[:1000]
