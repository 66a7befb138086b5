"""WebSocket sessions the proxy meters: OpenAI Realtime (and its translation sessions), Gemini Live,
OpenAI Responses, OpenAI Live (primaries, sidebands, forks).

A session opens when its handshake (a call the Meter follows from request to answer) is upgraded;
from then on each message passes through here: the rows of the work it bills are stored while the
hook runs (before the client gets the event), a call or a setup is checked against the policies,
and a session over its budget is capped and closed. The Meter owns one SocketMeter and delegates
its WebSocket hooks to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from mitmproxy import ctx, http
from mitmproxy.proxy import events as proxy_events
from mitmproxy.websocket import WebSocketMessage

from addon.api_keys import recent_key_fingerprint
from addon.attribution import UnknownUser, attribute, unknown_user, user_of
from addon.carried_context import conversation_of
from addon.client_process import NOT_IN_TIME, ClientProcess, identified_late
from addon.enforcement import Decision, Enforcer
from addon.image_tool import rule_image_tools
from addon.policies import Policies
from addon.pricing import NOT_BILLED
from addon.providers import (
    gemini_live,
    openai_live,
    openai_realtime,
    openai_realtime_mints,
    openai_realtime_translation,
    openai_responses_ws,
)
from addon.providers.openai_media import image_tools, tool_choice_none, with_image_tool_models
from addon.realtime_sessions import (
    UPGRADED,
    LiveSession,
    OpenAILiveSession,
    RealtimeRow,
    RealtimeSession,
    ResponsesSession,
    SocketSession,
    TranslationSession,
)
from addon.record import CallRecord
from addon.refusals import budget_refusal_status, error_body
from addon.usage import Metered
from addon.websocket_close import close_websocket, websocket_layer

if TYPE_CHECKING:
    from addon.meter import CallState
    from addon.request_decision import RequestDecider
    from addon.store import Store

log = logging.getLogger("tokometer")

# How the proxy closes a Gemini Live session it refuses, as Google closes one: a model it will not
# serve (1008, policy violation), a quota spent (1011).
LIVE_REFUSED = 1008
LIVE_OVER_BUDGET = 1011
# An OpenAI Live session the proxy refuses or caps gets a Live ``error`` event, then a close 1008
# (policy violation; the openai SDK does not reconnect after it). A capped session is first asked
# to close upstream (its time is what bills, and its session.closed reports the final total); if
# that close has not come after this many seconds, the proxy closes the socket itself.
LIVE_CLOSE_GRACE = 5.0

# WebSocket sessions (Realtime, Live) open when mitmproxy reloaded the script, for the new Meter's
# SocketMeter to go on with: this module is imported once per process (the script is what
# mitmproxy reloads).
_SESSIONS_HANDED_OVER: weakref.WeakKeyDictionary[http.HTTPFlow, SocketSession] = weakref.WeakKeyDictionary()
# WebSockets the proxy closed itself (with a close code): whatever still passes through them is
# dropped, by this instance or the next (a script reload).
_DROPPING: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
# Closes with a code the proxy asked for, queued when the empty message it injected behind the
# events it injected before (an error event) reaches the hook: (code, reason).
_PENDING_CLOSES: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[int, str]] = weakref.WeakKeyDictionary()
# Capped OpenAI Live sessions' graces (see SocketMeter._graces).
_GRACES: weakref.WeakKeyDictionary[http.HTTPFlow, asyncio.TimerHandle] = weakref.WeakKeyDictionary()
# What the proxy injected to a client and the hook has not seen yet, in order (see _unsplice).
_INJECTED: weakref.WeakKeyDictionary[http.HTTPFlow, list[bytes]] = weakref.WeakKeyDictionary()
MAX_INJECTED = 64  # injected messages remembered per WebSocket at most
# A transcription session held back until it names its model: an error event for the first held
# message and every this many after (audio comes ten times a second), and the row's model.
HELD_ERROR_EVERY = 100
UNNAMED_MODEL = "(unnamed)"
# OpenAI Live sessions this proxy meters, by session id: the WebSocket that bills them (a primary,
# from its session.started; or a sideband, when it is the only place the session is seen). A
# sideband attached to one of them bills nothing again. Bounded (the oldest forgotten first).
_LIVE_METERED: weakref.WeakValueDictionary[str, http.HTTPFlow] = weakref.WeakValueDictionary()
MAX_LIVE_METERED = 1024
# OpenAI Live sessions set up over HTTP here (WebRTC, SIP: their media never pass the proxy), by
# session id: the model the set-up's answer named, else the one it sent. A sideband attached to one
# prices its rows by it (model_sent) until the server names the model there. Bounded (the oldest
# forgotten first).
_LIVE_SET_UP: dict[str, str] = {}
MAX_LIVE_SET_UP = 1024


def remembered_live_setup(session_id: str) -> str | None:
    """The model of an OpenAI Live session set up over HTTP here (remember_live_setup), or None."""
    return _LIVE_SET_UP.get(session_id)


def remember_live_setup(session_id: str, model: str | None) -> None:
    """An OpenAI Live session set up over HTTP, and its model (None: nothing to remember)."""
    if model is None:
        return
    _LIVE_SET_UP.pop(session_id, None)
    while len(_LIVE_SET_UP) >= MAX_LIVE_SET_UP:
        _LIVE_SET_UP.pop(next(iter(_LIVE_SET_UP)), None)
    _LIVE_SET_UP[session_id] = model


class MeterSide(Protocol):
    """What a SocketMeter uses of the Meter that owns it, read as it is used (policies, prices
    and the store change while the proxy runs)."""

    enforcer: Enforcer
    decider: RequestDecider  # the allowlist's decisions (addon.request_decision)
    session_id: str
    hostname: str
    forced_environment: str | None
    _calls: weakref.WeakKeyDictionary[http.HTTPFlow, CallState]  # the calls being followed
    _estimates: set[asyncio.Future[None]]  # offline counts under way (kept referenced)

    @property
    def policies(self) -> Policies: ...

    def _next_call_id(self) -> str: ...

    def _submit(self, record: CallRecord, store: Store | None = None) -> None: ...

    def _price(self, record: CallRecord) -> None: ...

    def cost_estimate(
        self, provider: str, size: int, body: dict[str, Any] | None, geo: str | None = None
    ) -> Callable[[str | None], Decimal]: ...

    def models_restricted(self, environment: str) -> bool: ...

    @staticmethod
    def _fill_record(
        flow: http.HTTPFlow, state: CallState, metered: Metered, errors: list[str], *, aborted: bool
    ) -> None: ...

    @staticmethod
    def _estimate(record: CallRecord, body: dict[str, Any], text: str | None) -> None: ...


def _process_of(state: CallState) -> ClientProcess | None:
    """The calling process of a call, if its lookup is over (it was awaited when attributed)."""
    return _found_process(state.process)


def _found_process(lookup: asyncio.Future[ClientProcess] | None) -> ClientProcess | None:
    """The process a finished lookup found; None while it runs, or if it failed."""
    if lookup is None or not lookup.done() or lookup.cancelled() or lookup.exception() is not None:
        return None
    return lookup.result()


class SocketMeter:
    """Meters the WebSocket sessions of one Meter: opens them at their upgrade, reads their
    messages, records their rows, caps and closes them."""

    def __init__(
        self,
        meter: MeterSide,
        *,
        off_loop: Callable[..., Awaitable[Any]],
        billable: Callable[[CallRecord], bool],
        with_tags: Callable[[str | None, Mapping[str, str]], str],
    ) -> None:
        self._meter = meter
        self._off_loop = off_loop  # runs a parse in a worker thread when its input is large
        # Each family's messages, by its session's type.
        self._handlers: dict[type, Callable[..., Awaitable[None]]] = {
            LiveSession: self._live_message,
            ResponsesSession: self._responses_message,
            OpenAILiveSession: self._openai_live_message,
            TranslationSession: self._translation_message,
            RealtimeSession: self._realtime_message,
        }
        self._billable = billable
        self._with_tags = with_tags
        # OpenAI Realtime and Gemini Live WebSockets being metered (see message).
        self.sessions: weakref.WeakKeyDictionary[http.HTTPFlow, SocketSession] = weakref.WeakKeyDictionary()
        self._closing: set[asyncio.Future[None]] = set()  # capped sessions' closes (kept referenced)
        # Capped OpenAI Live sessions waiting for their session.closed: the close if it never comes
        # (shared with the instance after a script reload, which may end the session).
        self._graces = _GRACES

    def take_over(self) -> None:
        """A script reload: go on with the sessions the Meter before it left open."""
        for flow, session in list(_SESSIONS_HANDED_OVER.items()):
            if _SESSIONS_HANDED_OVER.pop(flow, None) is not None:
                # Its rows are this instance's (its session id; see Meter._submit).
                session.handshake.session_id = self._meter.session_id
                self.sessions[flow] = session

    def hand_over(self) -> None:
        """The script is reloaded: the open sessions go on, for the next Meter to follow."""
        _SESSIONS_HANDED_OVER.update(self.sessions)
        self.sessions.clear()

    def failed(self, flow: http.HTTPFlow) -> bool:
        """The flow failed: if a session followed it (websocket_end may not follow), it ends now."""
        session = self.sessions.get(flow)
        if session is None:
            return False
        self.end_session(flow, session, f"the WebSocket failed: {flow.error.msg if flow.error else '?'}")
        return True

    def end_handshake(self, flow: http.HTTPFlow, state: CallState, *, aborted: bool) -> None:
        """A WebSocket handshake is answered: an upgrade opens a session (no row: the handshake is
        not billed); anything else (a refusal, 401, 404, a failure) is a row like any failed call,
        not billed."""
        state.finished = True
        record = state.record
        if flow.websocket is not None and not aborted and state.refusal is None:
            self._meter._calls.pop(flow, None)
            self._meter._fill_record(flow, state, Metered(), state.errors, aborted=False)
            record.duration_ms = record.status_code = None  # each row gets its own
            session: SocketSession
            if state.live is not None:
                session = LiveSession(
                    handshake=record,
                    next_id=self._meter._next_call_id,
                    opened_at=time.time(),
                    tags_header=state.tags_header,
                    process=_process_of(state),
                )
            elif state.openai_live:
                if state.live_sideband is not None and record.model_sent is None:
                    record.model_sent = _LIVE_SET_UP.get(state.live_sideband)  # set up here: its model
                session = OpenAILiveSession(
                    handshake=record,
                    next_id=self._meter._next_call_id,
                    opened_at=time.time(),
                    session_id=state.live_sideband,
                    sideband=state.live_sideband is not None,
                    fork=state.live_fork is not None,
                )
                if session.sideband:
                    session.bills = self._bills_live(flow, state.live_sideband)
            elif state.translation:
                session = TranslationSession(
                    handshake=record, next_id=self._meter._next_call_id, opened_at=time.time()
                )
            elif state.responses_ws:
                session = ResponsesSession(
                    handshake=record,
                    next_id=self._meter._next_call_id,
                    opened_at=time.time(),
                    subscription=state.subscription,
                )
            else:
                session = RealtimeSession(
                    handshake=record,
                    next_id=self._meter._next_call_id,
                    opened_at=time.time(),
                    transcription_unnamed=state.transcription_unnamed,
                    deployments=state.handshake.deployments if state.handshake is not None else {},
                )
            session.lookup, session.user_decided = state.process, state.user_decided
            self.sessions[flow] = session
            return
        self._meter._fill_record(flow, state, Metered(), state.errors, aborted=aborted)
        if flow.response is not None and flow.response.status_code < 400:
            record.error = f"{record.error}; " if record.error else ""
            record.error += f"answered {flow.response.status_code} without upgrading to a WebSocket"
        record.cost_usd, record.price_status = Decimal(0), NOT_BILLED
        self._meter._submit(record)

    @staticmethod
    def _bills_live(flow: http.HTTPFlow, session_id: str | None) -> bool:
        """Does ``flow`` bill the OpenAI Live session ``session_id``? Not if another WebSocket this
        proxy follows does already; otherwise it does from now on (remembered)."""
        if session_id is None:
            return False
        billing = _LIVE_METERED.get(session_id)
        if billing is not None and billing is not flow:
            return False
        if billing is None:
            while len(_LIVE_METERED) >= MAX_LIVE_METERED:
                _LIVE_METERED.pop(next(iter(_LIVE_METERED)), None)
            _LIVE_METERED[session_id] = flow
        return True

    def session(self, flow: http.HTTPFlow) -> SocketSession | None:
        """``flow``'s session, taking over one the Meter before a script reload left open."""
        session = self.sessions.get(flow)
        if session is None and _SESSIONS_HANDED_OVER:
            session = _SESSIONS_HANDED_OVER.pop(flow, None)
            if session is not None:
                self.sessions[flow] = session
        return session

    async def message(self, flow: http.HTTPFlow) -> None:
        """One WebSocket message: a server event that bills makes a row, stored before the client
        gets it; a client message asking for work once a budget is spent caps the session; a Gemini
        Live session's first client message (its setup) is checked against the model rules."""
        message = flow.websocket.messages[-1]  # type: ignore[union-attr]
        if _INJECTED and message.injected and not message.from_client and flow in _INJECTED:
            self._unsplice(flow, message)
        if _PENDING_CLOSES and message.injected and not message.content and flow in _PENDING_CLOSES:
            self._close_now(flow, message)
            return
        session = self.sessions.get(flow) if not _SESSIONS_HANDED_OVER else self.session(flow)
        if session is None:
            if _DROPPING and flow in _DROPPING:  # closed by the proxy: nothing more passes
                message.drop()
            return
        self._identify_at_message(session)  # before it bills or is held to a budget
        handler = self._handlers.get(type(session))
        if handler is not None:
            await handler(flow, session, message)

    async def _realtime_message(
        self, flow: http.HTTPFlow, session: RealtimeSession, message: WebSocketMessage
    ) -> None:
        """An OpenAI Realtime message: a client's session.update is checked (and a transcription
        session held back until its model is); server events that can bill are decoded."""
        if message.from_client:
            if session.capped:
                message.drop()  # the socket is closing: nothing more goes upstream
            elif self._meter.policies.enforcing:
                update = False
                if openai_realtime_mints.may_update_session(message.content):  # text or binary frame
                    update = await self._realtime_session_update(flow, session, message)
                if session.transcription_unnamed and not update:
                    self._hold_until_model_named(flow, session, message)
                # A message the test took that is no session update may still ask for work.
                if not message.dropped and self._meter.enforcer.budgets.has_budgets:
                    self._cap_if_spent(flow, session, message)
            return
        data = message.content
        if message.injected or not message.is_text:
            return
        if session.transcription_pending and openai_realtime.is_error_event(data):
            # Most likely the server refusing the update just let through: its default model
            # may transcribe, so the session is held back again until one is confirmed.
            session.transcription_pending, session.transcription_unnamed = False, True
            return
        if not openai_realtime.might_bill(data):
            return
        event = await self._off_loop(openai_realtime.read_server_event, data)
        if event is None:
            return
        for row in session.take(event, time.time()):
            self._record_realtime(row)
        if isinstance(event, openai_realtime.SessionConfig) and (
            session.transcription_unnamed or session.transcription_pending
        ):
            self._confirm_transcription(session)

    def _confirm_transcription(self, session: RealtimeSession) -> None:
        """The server says which transcription model the session runs (``session.created`` or
        ``.updated``): an allowed one lets a held-back transcription session go; anything else after
        an update the proxy let through holds it back again."""
        record, model = session.handshake, session.transcription_model
        ruled = (
            None
            if model is None
            else self._meter.enforcer.decide_model(record.provider, record.environment, model)
        )
        if ruled is not None and ruled.action == "allowed":
            session.transcription_unnamed = session.transcription_pending = False
        elif session.transcription_pending:
            session.transcription_pending, session.transcription_unnamed = False, True

    async def _translation_message(
        self, flow: http.HTTPFlow, session: TranslationSession, message: WebSocketMessage
    ) -> None:
        """A Realtime translation message: a client's ``session.update`` naming a transcription
        model is checked as a Realtime session's is; an append, once a budget is spent, caps the
        session, else its audio is counted (a row per minute of it). Server deltas cost a look at
        their first bytes; ``session.created``/``updated`` (the model) and ``session.closed`` (the
        rest of the audio billed) are decoded."""
        data = message.content
        if message.from_client:
            if session.capped:
                message.drop()  # the socket is closing: nothing more goes upstream
                return
            if self._meter.policies.enforcing:
                if openai_realtime_mints.may_update_session(data):  # text or binary frame
                    await self._realtime_session_update(flow, session, message)
                if not message.dropped and self._meter.enforcer.budgets.has_budgets:
                    self._cap_if_spent(flow, session, message)
            if message.dropped:  # audio in a binary frame counts as in a text one
                return
            size = await self._off_loop(openai_realtime_translation.appended_audio_bytes, data)
            row = session.appended(size, time.time())
            if row is not None:
                self._record_realtime(row)
            return
        if message.injected or not message.is_text or not openai_realtime_translation.might_matter(data):
            return
        event = await self._off_loop(openai_realtime_translation.read_server_event, data)
        if isinstance(event, openai_realtime_translation.Configured):
            session.configured(event)
        elif isinstance(event, openai_realtime_translation.Closed):
            row = session.server_closed(time.time())
            if row is not None:
                self._record_realtime(row)

    async def _realtime_session_update(
        self, flow: http.HTTPFlow, session: RealtimeSession | TranslationSession, message: WebSocketMessage
    ) -> bool:
        """A client ``session.update`` (``transcription_session.update``; a Realtime translation
        session's names its source transcription model as a GA session does): each transcription
        model it names is checked against the allowlist of the session's environment. A disallowed one is
        downgraded by rewriting it in the message, or refused: the message never goes upstream, the
        client gets an ``error`` event (the session goes on as it was configured) and the refusal
        is a row, not billed. A message that cannot be rewritten is refused too. False when the
        message is no session update."""
        data = message.content
        deployments = session.deployments if isinstance(session, RealtimeSession) else {}
        read = functools.partial(openai_realtime_mints.read_session_update, deployments=deployments)
        update = await self._off_loop(read, data)
        if update is None:
            return False
        if not update.models.models:
            return True
        record = session.handshake
        enforcer = self._meter.enforcer
        changes: dict[openai_realtime_mints.Where, str] = {}
        downgrades: list[tuple[str, str, str | None]] = []  # (asked, sent, notice)
        refused: tuple[openai_realtime_mints.NamedModel, Decision] | None = None
        for named in update.models.models:
            decision = enforcer.decide_model(record.provider, record.environment, named.model)
            if decision.refusal is not None:
                refused = named, decision
                break
            if decision.action == "downgraded" and decision.model_sent is not None:
                written = openai_realtime_mints.written_as(deployments, decision.model_sent)
                if record.provider == "azure" and written not in deployments:
                    why = (
                        f"no Azure deployment serves {decision.model_sent} (policies.yaml azure_deployments)"
                    )
                    refused = (
                        named,
                        enforcer.refuse_model(record.provider, record.environment, named.model, why),
                    )
                    break
                changes[named.where] = written
                downgrades.append((named.model, decision.model_sent, decision.notice))
            elif isinstance(session, RealtimeSession):
                session.transcription_downgrades.pop(named.model, None)  # asked for as it is
        if refused is None and changes:
            try:
                rewrite = functools.partial(
                    openai_realtime_mints.update_with_models, update=update, changes=changes
                )
                message.content = await self._off_loop(rewrite, data)
            except ValueError as exc:
                named = next(n for n in update.models.models if n.where in changes)
                refused = (
                    named,
                    enforcer.refuse_model(record.provider, record.environment, named.model, str(exc)),
                )
        if refused is not None:
            named, decision = refused
            assert decision.refusal is not None
            message.drop()
            status = decision.refusal.status_code
            error = json.loads(decision.refusal.content or b"{}").get("error") or {}
            why = decision.message or str(error.get("message"))
            event = openai_realtime.error_event(
                str(error.get("code") or "model_not_allowed"),
                str(error.get("message") or why),
                f"event_tokometer_{secrets.token_hex(8)}",
                param=named.param,
                client_event_id=update.event_id,
            )
            self._inject(flow, event)
            self._meter._submit(session.refused_update(time.time(), named.model, status, why))
            log.warning("tokometer: a Realtime session.update refused: %s", why)
            return True
        for asked, sent, notice in downgrades:
            if isinstance(session, RealtimeSession):  # a translation's transcriptions have no rows
                session.downgraded_transcription(asked, sent)
            log.info("tokometer: Realtime session.update %s", notice)
        if isinstance(session, RealtimeSession) and session.transcription_unnamed:
            session.transcription_unnamed, session.transcription_pending = False, True  # till the server says
        return True

    def _hold_until_model_named(
        self, flow: http.HTTPFlow, session: RealtimeSession, message: WebSocketMessage
    ) -> None:
        """A transcription session that has named no transcription model yet (the server would use
        its default, unchecked) where models are restricted: fail closed. The client's message is
        held back (dropped); the first, and every ``HELD_ERROR_EVERY``-th, gets an ``error`` event
        saying what to send, and the first a row, not billed."""
        record = session.handshake
        if not self._meter.models_restricted(record.environment):  # the policies changed
            session.transcription_unnamed = False
            return
        message.drop()
        session.held += 1
        if session.held % HELD_ERROR_EVERY != 1:
            return
        allowed = ", ".join(self._meter.policies.environment(record.environment).models.allow)
        why = (
            f"this transcription session has not named its transcription model, so it cannot be checked "
            f"against the allowlist of environment {record.environment} (allowed there: {allowed}; "
            "see policies.yaml): send session.update with session.audio.input.transcription.model first"
        )
        event = openai_realtime.error_event(
            "model_not_named", f"tokometer: {why}", f"event_tokometer_{secrets.token_hex(8)}",
            param="session.audio.input.transcription.model",
        )  # fmt: skip
        self._inject(flow, event)
        if session.held == 1:
            self._meter._submit(session.refused_update(time.time(), UNNAMED_MODEL, 403, why))
            log.warning("tokometer: a Realtime transcription session held back: %s", why)

    async def _responses_message(
        self, flow: http.HTTPFlow, session: ResponsesSession, message: WebSocketMessage
    ) -> None:
        """A Responses WebSocket message: a delta costs a look at its first bytes; a client's
        ``response.create`` is a call (checked, reserved: _responses_create); ``response.created``
        and the terminal events are decoded (a row per response, stored before the client gets
        its terminal event)."""
        data = message.content
        if message.from_client:
            if openai_responses_ws.may_be_create(data):
                await self._responses_create(flow, session, message, data)
            return  # a response.steer adds input to a running response: no call, never refused
        if message.injected:
            return
        image = openai_responses_ws.read_image_event(data)  # a partial image: counted, never decoded
        if image is not None:
            session.image_event(image, data)
            return
        if not openai_responses_ws.might_matter(data):
            return
        event = await self._off_loop(openai_responses_ws.read_server_event, data)
        if event is None:
            return
        rows = session.take(event, time.time())
        if isinstance(event, openai_responses_ws.Ended):  # a later create may continue it
            conversation = next((row.conversation for row in rows if row.conversation), None)
            self._meter.contexts.remember(event.response_id, conversation, event.metered.usage)
        for row in rows:
            self._record_realtime(row)

    def _identify_at_message(self, session: SocketSession) -> None:
        """A Realtime, translation or Live session, which may bill or be held to a budget at any
        message (and its close), takes its user from a lookup that answered late (_identify_late)
        until it has read it; a Responses session does so at each create instead."""
        if not (session.user_decided or session.lookup_read or isinstance(session, ResponsesSession)):
            self._identify_late(session)

    def _identify_late(self, session: SocketSession) -> UnknownUser | None:
        """A session opened before its lookup answered, where no user limit decided its user (none,
        or only ``attribution.unidentified_user`` standing in): once the lookup has answered, its
        user (and process) from it, for the rows and budget scopes of its work from now on (a
        Responses create; a Realtime, translation or Live session's rows and budget checks); else
        why it has none (a lookup still running: late, so a create refused for it is told to retry,
        not blamed on a container). A user decided with user limits stays."""
        handshake = session.handshake
        if handshake.user_name is not None and (session.user_decided or session.lookup_read):
            return None
        lookup = session.lookup
        if lookup is not None and not lookup.done():
            # The stand-in user meanwhile (its creates are its); none: not identified in time.
            return None if handshake.user_name is not None else UnknownUser(NOT_IN_TIME, late=True)
        process = _found_process(lookup)
        problem = None if lookup is None or process is not None else "calling process lookup failed"
        session.lookup_read = True
        user = user_of(self._meter.policies, process)
        changed = user != handshake.user_name
        handshake.user_name = user
        if process is not None and handshake.client_pid is None:
            handshake.client_pid, handshake.client_process = process.pid, process.name
            handshake.client_cwd, handshake.repo = process.cwd, process.repo
            handshake.git_branch = process.git_branch
            if handshake.client_pid is not None and handshake.error:  # its rows name it from now on
                handshake.error = "; ".join(identified_late(handshake.error.split("; "), user_kept=False))
        if isinstance(session, LiveSession) and session.process is None:
            session.process = process  # a Vertex setup attributes the session again with it
        if user is not None:
            if changed:
                session.attributed()  # its budget scopes now name the user
            return None
        return unknown_user(self._meter.policies, process, problem)

    async def _responses_create(
        self, flow: http.HTTPFlow, session: ResponsesSession, message: WebSocketMessage, data: bytes
    ) -> None:
        """A ``response.create``: a call, decided as an HTTP call is (model rules, budgets with
        its estimate reserved under its row's id, rate limits). Downgraded by rewriting its
        ``model``; refused by dropping it and sending the client an ``error`` event on its lane
        (the socket stays open), with a row not billed. Allowed, it waits for its response."""
        create = await self._off_loop(openai_responses_ws.read_create, data)
        if create is None:
            return
        unknown = self._identify_late(session)
        record = session.call(time.time(), create.model)
        enforcer = self._meter.enforcer
        # Its image_generation tool's model is held to the allowlist too (addon.image_tool).
        tools = image_tools(create.body)
        rules = None
        if tools:
            restricted = self._meter.models_restricted(record.environment)
            off = tool_choice_none(create.body)
            rules = rule_image_tools(enforcer, record.provider, record.environment, tools, restricted, off)
        tool_models = rules.changes if rules is not None else {}
        svg_models = rules.svg_changes if rules is not None else {}
        rewrites_tools = bool(tool_models or svg_models)
        reserved = (
            with_image_tool_models(create.body, tool_models, svg_models) if rewrites_tools else create.body
        )
        decision = enforcer.decide(
            provider=record.provider,
            environment=record.environment,
            key_name=record.key_name,
            user_name=record.user_name,
            model=create.model,
            call_id=record.id,
            estimate=self._meter.cost_estimate(record.provider, len(data), reserved, record.inference_geo),
            budgeted=not session.subscription,
            user_identified=record.user_name is not None,
            unknown_user=unknown,
        )
        if decision.refusal is None and create.model is None:
            decision = self._meter.decider.unknown_model(record, decision) or decision
        if decision.refusal is None and rules is not None and rules.refusal is not None:
            enforcer.withdraw(decision, record.id)
            decision, record.model_requested = rules.refusal, rules.refused_model
        downgrade = decision.model_sent if decision.action == "downgraded" else None
        rewritten = data
        if downgrade or (rewrites_tools and decision.refusal is None):
            try:
                if downgrade:
                    rewrite = functools.partial(openai_responses_ws.with_model, model=downgrade)
                    rewritten = await self._off_loop(rewrite, data)
                if rewrites_tools:
                    rewrite = functools.partial(
                        openai_responses_ws.with_tool_models, models=tool_models, svg_models=svg_models
                    )
                    rewritten = await self._off_loop(rewrite, rewritten)
            except ValueError as exc:
                enforcer.withdraw(decision, record.id)
                refused = create.model
                if not downgrade:  # the tool's model it was to be rewritten from
                    refused = next((t.runs for t in tools if t.index in tool_models), None)
                    refused = refused or next((t.svg_model for t in tools if t.index in svg_models), None)
                decision = enforcer.refuse_model(
                    record.provider, record.environment, refused or "?", str(exc)
                )
        record.action = decision.action
        if decision.refusal is not None:
            message.drop()
            status = decision.refusal.status_code
            error = json.loads(decision.refusal.content or b"{}").get("error") or {}
            why = decision.message or str(error.get("message"))
            event = openai_responses_ws.error_event(error, status, create.stream_id)
            self._inject(flow, event)
            self._meter._submit(session.refused(record, status, why))
            log.warning("tokometer: response.create refused on a Responses WebSocket: %s", why)
            return
        if rewritten is not data:
            message.content = rewritten
        if downgrade:
            record.model_sent = downgrade
            log.info("tokometer: Responses WebSocket %s", decision.notice)
        if rewrites_tools and rules is not None:
            log.info("tokometer: Responses WebSocket %s", "; ".join(rules.notices))
        image_tool = rules.call if rules is not None else None
        for row in session.sent(record, create.stream_id, data, image_tool, conversation_of(create.body)):
            self._record_realtime(row)

    async def _live_message(
        self, flow: http.HTTPFlow, session: LiveSession, message: WebSocketMessage
    ) -> None:
        """A Gemini Live message: audio both ways costs a substring test or two; the setup and
        the messages with usage are decoded."""
        if message.from_client:
            if session.capped:
                message.drop()  # the socket is closing: nothing more goes upstream
            elif not session.setup_seen:
                self._live_setup(flow, session, message)
            elif self._meter.policies.enforcing and self._meter.enforcer.budgets.has_budgets:
                self._cap_if_spent(flow, session, message)
            return
        if message.injected:
            return
        data = message.content
        now = None
        if session.turn_started is None and gemini_live.starts_turn(data):
            now = time.time()
            session.content(now)
        if not gemini_live.might_bill(data):
            return
        found = await self._off_loop(gemini_live.read_usage, data)
        if found is not None:
            self._record_realtime(session.take(found, now or time.time()))

    def _live_setup(self, flow: http.HTTPFlow, session: LiveSession, message: WebSocketMessage) -> None:
        """A Gemini Live session's first client message, its setup: the model it names is the
        session's, checked now. A disallowed model is downgraded by rewriting ``setup.model`` in
        the message, or refused: the message never goes upstream and the client gets a close 1008
        with the reason, as Google refuses a model. On Vertex, the project in the model's path
        stands for the credential (the OAuth token is never read): the session is attributed
        again with it, before the check."""
        session.setup_seen = True
        data = message.content
        setup = gemini_live.read_setup(data) if gemini_live.is_setup(data) else None
        record = session.handshake
        if setup is not None and setup.project is not None:
            self._attribute_to_project(session, setup.project)
        if setup is not None and setup.location is not None:
            record.inference_geo = setup.location.lower()
        model = setup.model if setup is not None else None
        checked = self._check_session_model(session, message, model, gemini_live.with_model, "Gemini Live")
        if checked is None:
            return
        decision, spent = checked
        if decision.message is not None and decision.action in ("blocked", "over_budget"):
            code = LIVE_OVER_BUDGET if spent else LIVE_REFUSED
            self._refuse_session(flow, session, message, decision.message, code, "Gemini Live")

    def _check_session_model(
        self,
        session: SocketSession,
        message: WebSocketMessage,
        model: str | None,
        with_model: Callable[[bytes, str], bytes],
        family: str,
        *,
        inherited: bool = False,
    ) -> tuple[Decision, bool] | None:
        """The model a session's first message names (Gemini Live's setup, OpenAI Live's
        session.start), checked as a call's is: the handshake's row gets it, and a disallowed one is
        downgraded by rewriting the message (``with_model``; a message it cannot rewrite is refused).
        A model that cannot be read is refused where models are restricted (unless the session
        inherits one, ``inherited``: an OpenAI Live fork's start names none), and a spent budget
        refuses the session too. The decision (the caller refuses a ``blocked`` or ``over_budget``
        one), and whether it is a spent budget's; None when no policy is enforced."""
        record = session.handshake
        record.model_requested = record.model_sent = model
        if not self._meter.policies.enforcing:
            return None
        enforcer = self._meter.enforcer
        decision = enforcer.decide_model(record.provider, record.environment, model)
        if decision.refusal is None and model is None and not inherited:
            decision = self._meter.decider.unknown_model(record, decision) or decision
        over_budget = False
        if decision.refusal is None and (spent := enforcer.spent_budget(session.scopes)) is not None:
            decision, over_budget = Decision("over_budget", decision.model_sent, message=spent), True
        if decision.action == "downgraded" and decision.model_sent is not None:
            try:
                message.content = with_model(message.content, decision.model_sent)
            except ValueError as exc:
                decision = enforcer.refuse_model(record.provider, record.environment, model or "?", str(exc))
            else:
                record.model_sent = decision.model_sent
                log.info("tokometer: %s session %s", family, decision.notice)
        record.action = decision.action
        return decision, over_budget

    def _refuse_session(
        self,
        flow: http.HTTPFlow,
        session: SocketSession,
        message: WebSocketMessage,
        why: str,
        code: int,
        family: str,
        event: Callable[[str], bytes] | None = None,
        when: str = "at its first message",
    ) -> None:
        """Refuse a session at its first message (``when``: or at another, an OpenAI Live fork's
        ``session.started``): the message is dropped, the session's row says why (the handshake's,
        not billed) and the client gets a close ``code`` with the reason (after ``event(reason)``,
        an error event, when the API reports one first)."""
        message.drop()
        session.capped = True
        reason = why if why.startswith("tokometer: ") else f"tokometer: {why}"
        if event is not None:
            self._inject(flow, event(reason))
        record = session.handshake
        record.model_sent = None  # nothing was sent
        record.status_code = UPGRADED
        record.duration_ms = round((time.time() - record.ts.timestamp()) * 1000, 3)
        record.error = "; ".join(filter(None, (record.error, f"{why} (closed {code})")))[:1000]
        record.cost_usd, record.price_status = Decimal(0), NOT_BILLED
        self._meter._submit(dataclasses.replace(record))
        log.warning("tokometer: %s session refused %s: %s", family, when, why)
        if not self.close_websocket(flow, code, reason):
            log.error("tokometer: could not close a refused %s session; its messages are dropped", family)

    async def _openai_live_message(
        self, flow: http.HTTPFlow, session: OpenAILiveSession, message: WebSocketMessage
    ) -> None:
        """An OpenAI Live message: audio both ways costs a substring test or two; the start, the
        usage reports, the close and delegated calls' terminal events are decoded."""
        if message.from_client:
            if session.capped:
                message.drop()  # the session is closing: nothing more goes upstream
            elif not session.start_seen or (not session.started and openai_live.may_start(message.content)):
                await self._openai_live_start(flow, session, message)
            elif self._meter.policies.enforcing:
                if openai_live.may_update(message.content):  # text or binary frame
                    await self._openai_live_update(flow, session, message)
                if not message.dropped and self._meter.enforcer.budgets.has_budgets:
                    self._cap_if_spent(flow, session, message)
            return
        data = message.content
        if message.injected or not openai_live.might_matter(data):
            return
        event = await self._off_loop(openai_live.read_server_event, data)
        now = time.time()
        row = None
        if isinstance(event, openai_live.Started):
            inherits = session.fork and not session.started and not event.updated
            session.began(event, now)
            if not session.sideband and session.session_id is not None:
                self._bills_live(flow, session.session_id)  # its sidebands bill nothing again
            if inherits:  # a fork ran upstream from here: refused or not, what it bills is metered
                self._refuse_inherited_model(flow, session, message, event.model, event.delegation_model)
        elif isinstance(event, openai_live.UsageReport):
            row = session.take(event, now)
        elif isinstance(event, openai_live.Delegated):
            row = session.delegated(event.metered, now)
        if row is not None:
            self._record_realtime(row)

    async def _openai_live_start(
        self, flow: http.HTTPFlow, session: OpenAILiveSession, message: WebSocketMessage
    ) -> None:
        """An OpenAI Live session's first client message, its ``session.start``: the model it names
        is the session's, checked now (see _check_session_model). A refused start never goes
        upstream: the client gets Live's ``error`` event (``param`` ``session.model``, or
        ``budget_exceeded``) and a close 1008 with the reason; the refusal is a row. A start sent
        again before ``session.started`` (the server refused the first) is checked the same way.
        A fork's start names no model (it inherits the stored session's): only a model it does
        name, and its delegation's, are checked."""
        again, session.start_seen = session.start_seen, True
        data = message.content
        read = openai_live.read_session_start
        if session.fork:
            read = functools.partial(openai_live.read_session_start, fork=True)
        start = await self._off_loop(read, data) if openai_live.may_start(data) else None
        if again and start is None:
            return  # not a start: a message naming one
        model = start.model if start is not None else None
        checked = self._check_session_model(
            session, message, model, openai_live.with_model, "OpenAI Live", inherited=session.fork
        )
        if checked is None:
            return
        decision, spent = checked
        param = "session.model"
        if decision.action not in ("blocked", "over_budget") and start is not None:
            refused = await self._check_delegation(session, message, start)
            if refused is not None:
                decision, param = refused
        if decision.message is None or decision.action not in ("blocked", "over_budget"):
            return
        event = functools.partial(
            openai_live.error_event,
            "budget_exceeded" if spent else "model_not_allowed",
            event_id=f"event_tokometer_{secrets.token_hex(8)}",
            param=None if spent else param,
            client_event_id=start.event_id if start is not None else None,
        )
        self._refuse_session(flow, session, message, decision.message, LIVE_REFUSED, "OpenAI Live", event)

    def _refuse_inherited_model(
        self,
        flow: http.HTTPFlow,
        session: OpenAILiveSession,
        message: WebSocketMessage,
        model: str | None,
        delegation: str | None = None,
    ) -> None:
        """A fork's ``session.started``: the model it inherited from the stored session (named
        nowhere before) is checked against the allowlist of the fork's environment. It cannot be
        rewritten, so one the rules would downgrade is refused too, as is one not named where models
        are restricted: the event never reaches the client, which gets Live's ``error`` event
        (``param`` ``session.model``) and, with upstream, a close 1008; the refusal is the
        handshake's row. The delegation's model it inherited (``delegation``) is checked the same
        way. The session ran upstream until the close: a usage report still coming is metered, and
        the seconds after it are an aborted row, as a session cut short is."""
        if not self._meter.policies.enforcing:
            return
        record = session.handshake
        enforcer = self._meter.enforcer
        decision = enforcer.decide_model(record.provider, record.environment, model)
        if model is None:
            reason = (
                "the fork's session.started names no model, so it cannot be checked against the allowlist"
            )
            decision = self._meter.decider.unknown_model(record, decision, reason) or decision
        elif decision.action == "downgraded":
            why = "a fork inherits its stored session's model, which cannot be rewritten"
            decision = enforcer.refuse_model(record.provider, record.environment, model, why)
        param = "session.model"
        if decision.refusal is None and delegation is not None:
            ruled = enforcer.decide_model(record.provider, record.environment, delegation)
            if ruled.action == "downgraded":
                why = "a fork inherits its stored session's delegation model, which cannot be rewritten"
                ruled = enforcer.refuse_model(record.provider, record.environment, delegation, why)
            if ruled.refusal is not None:
                decision, param = ruled, "session.delegation.model"
        if decision.refusal is None or decision.message is None:
            return
        if param == "session.model":
            record.model_requested = model
        record.action = decision.action
        event = functools.partial(
            openai_live.error_event,
            "model_not_allowed",
            event_id=f"event_tokometer_{secrets.token_hex(8)}",
            param=param,
        )
        self._refuse_session(
            flow, session, message, decision.message, LIVE_REFUSED, "OpenAI Live fork", event, "as it started"
        )

    async def _check_delegation(
        self, session: OpenAILiveSession, message: WebSocketMessage, start: openai_live.SessionStart
    ) -> tuple[Decision, str] | None:
        """The delegation's model a ``session.start`` names (the Responses or Decisions backend the
        session delegates tasks to, billed apart), checked against the allowlist once the session's
        own model passed: a disallowed one is downgraded by rewriting it in the message (ASCII JSON
        where the value alone cannot be replaced), else the whole session is refused, as for its
        model; one that cannot be read is refused where models are restricted. The refusal and the
        parameter at fault, else None."""
        record = session.handshake
        enforcer = self._meter.enforcer
        found = start.delegation
        changes: dict[openai_realtime_mints.Where, str] = {}
        notices: list[str] = []
        for named in found.models:
            ruled = enforcer.decide_model(record.provider, record.environment, named.model)
            if ruled.refusal is not None:
                record.model_requested, record.action = named.model, ruled.action
                return ruled, named.param
            if ruled.action == "downgraded" and ruled.model_sent is not None:
                changes[named.where] = ruled.model_sent
                notices.append(ruled.notice or "")
        if found.error is not None:
            reason = f"{found.error}, so the delegation's model cannot be checked against the allowlist"
            unknown = self._meter.decider.unknown_model(record, Decision("allowed", None), reason)
            if unknown is not None:
                record.action = unknown.action
                return unknown, start.delegation_param or "session.delegation"
        if not changes:
            return None
        try:
            rewrite = functools.partial(openai_live.with_models, changes=changes)
            message.content = await self._off_loop(rewrite, message.content)
        except ValueError as exc:
            named = next(n for n in found.models if n.where in changes)
            refused = enforcer.refuse_model(record.provider, record.environment, named.model, str(exc))
            record.model_requested, record.action = named.model, refused.action
            return refused, named.param
        record.action = "downgraded"
        for notice in notices:
            log.info("tokometer: OpenAI Live session's delegation %s", notice)
        return None

    async def _openai_live_update(
        self, flow: http.HTTPFlow, session: OpenAILiveSession, message: WebSocketMessage
    ) -> None:
        """A client ``session.update`` naming the delegation's model (the backend model of later
        delegated calls): checked against the allowlist of the session's environment. A disallowed
        one is downgraded by rewriting it in the message, or refused: the message never goes
        upstream, the client gets Live's ``error`` event (the session goes on as it was) and the
        refusal is a row, not billed. One that is not a name is left to the server to refuse."""
        update = await self._off_loop(openai_live.read_session_update, message.content)
        if update is None or not update.models.models:
            return
        record = session.handshake
        enforcer = self._meter.enforcer
        [named] = update.models.models  # an update names at most the delegation's model
        decision = enforcer.decide_model(record.provider, record.environment, named.model)
        if decision.action == "downgraded" and decision.model_sent is not None:
            try:
                rewrite = functools.partial(
                    openai_realtime_mints.message_with_models,
                    body=update.body,
                    changes={named.where: decision.model_sent},
                )
                message.content = await self._off_loop(rewrite, message.content)
            except ValueError as exc:
                decision = enforcer.refuse_model(record.provider, record.environment, named.model, str(exc))
            else:
                log.info("tokometer: OpenAI Live session.update %s", decision.notice)
                return
        if decision.refusal is None or decision.message is None:
            return
        message.drop()
        why = decision.message
        event = openai_live.error_event(
            "model_not_allowed",
            why,
            f"event_tokometer_{secrets.token_hex(8)}",
            param=named.param,
            client_event_id=update.event_id,
        )
        self._inject(flow, event)
        row = session.refused_update(time.time(), named.model, decision.refusal.status_code, why)
        self._meter._submit(row)
        log.warning("tokometer: an OpenAI Live session.update refused: %s", why)

    def _cap_openai_live(
        self, flow: http.HTTPFlow, session: OpenAILiveSession, message: WebSocketMessage, reason: str
    ) -> None:
        """A capped OpenAI Live session: the client's event goes upstream as a ``session.close``
        instead (rewritten, not injected: a message injected toward upstream while the client's next
        audio event is half received would be spliced into it), so upstream's ``session.closed``
        reports the final total (metered and passed on) and it closes the socket; the client gets
        Live's ``error`` event (``budget_exceeded``) and its later events are dropped. If the socket
        is still open ``LIVE_CLOSE_GRACE`` seconds later, the proxy closes it (1008)."""
        message.content = openai_live.CLOSE_EVENT
        session.capped, session.cap_reason = True, reason
        event = openai_live.error_event("budget_exceeded", reason, f"event_tokometer_{secrets.token_hex(8)}")
        self._inject(flow, event)
        self._graces[flow] = asyncio.get_running_loop().call_later(
            LIVE_CLOSE_GRACE, self._close_capped_live, flow, session
        )
        log.warning("tokometer: OpenAI Live session capped: %s", reason)

    def _close_capped_live(self, flow: http.HTTPFlow, session: OpenAILiveSession) -> None:
        """Close a capped OpenAI Live session still open when its grace ran out (once; the session
        itself, not looked up: after a script reload the next instance follows it)."""
        grace = self._graces.pop(flow, None)
        if grace is None:
            return
        grace.cancel()
        if session.cap_reason is None:
            return
        try:
            if not self.close_websocket(flow, LIVE_REFUSED, session.cap_reason):
                log.error("tokometer: could not close a capped OpenAI Live session; its requests are dropped")
        except Exception:
            log.exception("tokometer: closing a capped OpenAI Live session failed")

    def _attribute_to_project(self, session: LiveSession, project: str) -> None:
        """A Vertex setup names its project: ``vertex:{project}`` is the session's credential,
        unless the handshake carried one (express mode's API key) that policies.yaml maps and the
        project is not mapped (as a call's path project and its key are weighed). The session is
        then attributed again, as its handshake was (header, key, calling process)."""
        record = session.handshake
        stand_in = recent_key_fingerprint(f"vertex:{project}")
        policies = self._meter.policies
        key_bound = policies.key_for(record.key_fingerprint, None) is not None
        if record.key_fingerprint is None or (not key_bound and policies.key_for(stand_in, None) is not None):
            record.key_fingerprint = stand_in
            decided = attribute(
                policies=policies,
                header=session.tags_header,
                fingerprint=stand_in,
                process=session.process,
                hostname=self._meter.hostname,
                forced_environment=self._meter.forced_environment,
            )
            record.environment = decided.environment
            record.environment_source = decided.environment_source
            record.team, record.feature, record.tags = decided.team, decided.feature, decided.tags
            record.key_name = decided.key_name
            for problem in decided.problems:
                if problem not in (record.error or ""):
                    record.error = "; ".join(filter(None, (record.error, problem)))[:1000]
        record.tags = self._with_tags(record.tags, {"gcp_project": project})  # the path's claim wins
        session.attributed()

    def end(self, flow: http.HTTPFlow) -> None:
        """The session's WebSocket closed: work still in flight is cut, its usage unknown."""
        session = self.session(flow)
        if session is None:
            return
        code = flow.websocket.close_code if flow.websocket is not None else None
        closed = f"the WebSocket closed ({code})"
        if isinstance(session, ResponsesSession):  # it says before what
            self.end_session(flow, session, closed)
            return
        if isinstance(session, OpenAILiveSession | TranslationSession):
            self.end_session(flow, session, f"{closed} before session.closed")
            return
        before = "the turn's usage" if isinstance(session, LiveSession) else "response.done"
        self.end_session(flow, session, f"{closed} before {before}: usage unknown")

    def end_session(
        self, flow: http.HTTPFlow, session: SocketSession, reason: str, *, now: bool = False
    ) -> None:
        """The session is over: work still in flight gets its aborted rows (``now``: at shutdown,
        an offline estimate is made in the hook, not in a thread)."""
        self.sessions.pop(flow, None)
        grace = self._graces.pop(flow, None)
        if grace is not None:
            grace.cancel()
        live_id = session.session_id if isinstance(session, OpenAILiveSession) else None
        if live_id is not None and _LIVE_METERED.get(live_id) is flow:
            del _LIVE_METERED[live_id]
        self._identify_at_message(session)  # its rows cut short are the user's too
        for row in session.end(time.time(), reason):
            self._record_realtime(row, now=now)

    def _record_realtime(self, row: RealtimeRow, *, now: bool = False) -> None:
        """Store one row of a session now, inside the hook (before the client gets the event).

        Priced here when a budget applies, so its cost counts against the budgets at once: the
        session's next request sees it. A response cut short whose create is at hand has its
        input counted offline first (in a thread, unless ``now``), as an HTTP call without usage.
        """
        record = row.record
        create = row.estimate_from
        if (
            create is not None
            and record.usage is None
            and record.price_status is None
            and self._billable(record)
        ):
            if now:
                self._estimate_create(record, create)
            else:
                task = asyncio.ensure_future(self._estimate_then_count(record, create))
                self._meter._estimates.add(task)
                task.add_done_callback(self._meter._estimates.discard)
                return
        self._count_and_submit(record)

    async def _estimate_then_count(self, record: CallRecord, create: bytes) -> None:
        try:
            await asyncio.to_thread(self._estimate_create, record, create)
        finally:
            self._count_and_submit(record)

    def _estimate_create(self, record: CallRecord, create: bytes) -> None:
        """Count a cut response's input offline from its ``response.create`` (never raises)."""
        try:
            body = json.loads(create)
        except (ValueError, RecursionError):
            return
        if isinstance(body, dict):
            self._meter._estimate(record, body, None)

    def _count_and_submit(self, record: CallRecord) -> None:
        if self._meter.enforcer.budgets.has_budgets:
            self._meter._price(record)
        if record.cost_usd is not None:
            self._meter.enforcer.hold(record)
        self._meter._submit(record)

    def _cap_if_spent(self, flow: http.HTTPFlow, session: SocketSession, message: WebSocketMessage) -> None:
        """A client message asking for work once a budget of the session is spent: dropped, and the
        socket closed. A Realtime client first gets an ``error`` event (the over-budget refusal's
        message); a Gemini Live client a close 1011 with that message, as Google closes a session
        over its quota (every Live message after the setup asks for work: audio, text, a tool's
        answer)."""
        spent = self._meter.enforcer.spent_budget(session.scopes, spent_only=True)
        if spent is None:
            return
        live = isinstance(session, LiveSession)
        openai_live_session = isinstance(session, OpenAILiveSession)
        if openai_live_session:
            if openai_live.is_session_close(message.content):
                return  # the client ends the session (and its billing) itself
        elif isinstance(session, TranslationSession):
            if not openai_realtime_translation.asks_for_work(message.content):
                return  # a session.update, a session.close: no audio to bill
        elif not live and not openai_realtime.asks_for_work(message.content):
            return
        provider = session.handshake.provider
        text = error_body(provider, budget_refusal_status(provider), spent, "over_budget")
        reason = str(text["error"]["message"])  # type: ignore[index]
        if isinstance(session, OpenAILiveSession):
            self._cap_openai_live(flow, session, message, reason)
            return
        message.drop()
        session.capped = True
        if live:
            log.warning("tokometer: Gemini Live session capped and closed: %s", spent)
            if not self.close_websocket(flow, LIVE_OVER_BUDGET, reason):
                log.error("tokometer: could not close a capped Gemini Live session; its messages are dropped")
            return
        event = openai_realtime.budget_error_event(reason, f"event_tokometer_{secrets.token_hex(8)}")
        self._inject(flow, event)
        log.warning("tokometer: Realtime session capped and closed: %s", spent)
        if not self.close_websocket(flow):
            log.error("tokometer: could not close a capped Realtime session; its requests are dropped")

    def close_websocket(
        self, flow: http.HTTPFlow, code: int | None = None, reason: str | None = None
    ) -> bool:
        """Close a WebSocket from the addon, after what is queued for the client (an error event).

        mitmproxy 12 has no command for it (mitmproxy issue #4773; ``flow.kill()`` does not reach
        its WebSocket layer). With a ``code``, both sides get a close frame with that code and
        ``reason``, as if upstream had sent it (see addon.websocket_close); whatever still passes
        is dropped. The close is queued when an empty message injected now reaches the hook
        (_close_now): injected events are handled in order, so one injected before it (an error
        event) reaches the client first. Without a code, or if that cannot be done, the upstream
        side is reported closed to the flow's connection handler, as when the provider hangs up:
        the layer sends the client a close frame (1000) and closes both connections, also in order.
        """
        handler = self._handler(flow)
        if handler is None or flow.server_conn is None:
            return False
        if code is not None and websocket_layer(handler, flow) is not None:
            _PENDING_CLOSES[flow] = (code, reason or "")
            self._inject(flow, b"", is_text=False)
            return True
        self._report_upstream_closed(handler, flow)
        return True

    def _inject(self, flow: http.HTTPFlow, data: bytes, *, is_text: bool = True) -> None:
        """Send the client a message of the proxy's own (remembered until its hook: _unsplice)."""
        injected = _INJECTED.setdefault(flow, [])
        if len(injected) < MAX_INJECTED:
            injected.append(data)
        ctx.master.commands.call("inject.websocket", flow, True, data, is_text)

    def _unsplice(self, flow: http.HTTPFlow, message: WebSocketMessage) -> None:
        """A message the proxy injected to the client reached the hook. mitmproxy adds an injected
        message's data to the frames of a message upstream has half sent (the layer's ``frame_buf``):
        the two would reach the client as one, cut and glued, and the rest of upstream's as another
        (and an empty message queueing a close would no longer be empty). The client gets ours as it
        was injected, and upstream's first half goes back where the layer waits for its rest."""
        injected = _INJECTED[flow]
        ours = injected[0]
        content = message.content
        if not content.endswith(ours):
            return  # not ours (another addon's)
        del injected[0]
        if not injected:
            del _INJECTED[flow]
        if len(content) == len(ours):
            return
        message.content = ours
        handler = self._handler(flow)
        layer = websocket_layer(handler, flow) if handler is not None else None
        server_ws = getattr(layer, "server_ws", None)
        if getattr(server_ws, "frame_buf", None) == [b""]:
            server_ws.frame_buf = [content[: len(content) - len(ours)]]  # type: ignore[union-attr]
        else:
            log.error("tokometer: a message injected to a WebSocket client was joined to upstream's")

    @staticmethod
    def _handler(flow: http.HTTPFlow) -> Any:
        """The connection handler relaying ``flow`` (mitmproxy's proxyserver), or None."""
        server = ctx.master.addons.get("proxyserver")
        return getattr(server, "connections", {}).get(flow.client_conn.id)

    def _report_upstream_closed(self, handler: Any, flow: http.HTTPFlow) -> None:
        task = asyncio.ensure_future(handler.server_event(proxy_events.ConnectionClosed(flow.server_conn)))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _close_now(self, flow: http.HTTPFlow, message: WebSocketMessage) -> None:
        """The empty message close_websocket injected reached the hook, after every event injected
        before it: the close frame is queued now, read by the layer right after this message
        (dropped); whatever passes after it is dropped too."""
        code, reason = _PENDING_CLOSES.pop(flow)
        message.drop()
        handler = self._handler(flow)
        if handler is None or flow.server_conn is None:
            return
        try:
            closed = close_websocket(handler, flow, code, reason)
        except Exception:
            log.exception("tokometer: could not send a close frame; closing the connections instead")
            closed = False
        if closed:
            _DROPPING.add(flow)
        else:
            self._report_upstream_closed(handler, flow)
