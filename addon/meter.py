"""The metering addon: follows each LLM call from request to a stored row.

Data flows one way: the request is recognised (provider, flavor, model, key),
forwarded (with ``stream_options.include_usage`` added where a stream would
otherwise carry no usage), metered from the response or stream, and handed to
the store. Any failure here is logged and the traffic passes unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import gc
import inspect
import itertools
import json
import logging
import os
import re
import secrets
import socket
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import duckdb
from mitmproxy import ctx, exceptions, http
from mitmproxy.flow import Error as FlowError

from addon import anthropic_models, log_privacy
from addon.api_keys import key_of_header, recent_key_fingerprint
from addon.attribution import FORCE_ENV_VAR, TAGS_HEADER, UnknownUser, attribute, fallback_environment
from addon.background_responses import BATCH_INPUTS_FOLDER, HOLD_S, PendingResponses
from addon.background_responses import FOLDER_NAME as BACKGROUND_FOLDER
from addon.budgets import (
    BudgetAlert,
    Scope,
    UnpricedCall,
    alert_event,
    claim_event,
    policy_event,
    scopes_for,
    unpriced_event,
)
from addon.call_log import DEFAULT_LOG_LEVEL, LOG_LEVELS, CallLog, TerminalLines, use_color
from addon.carried_context import CarriedContexts, conversation_of
from addon.client_process import (
    ClientProcess,
    identified_late,
    lookup_client_process,
    start_lookup,
    wait_for_process,
)
from addon.content_decoding import BodyNotDecodable
from addon.enforcement import Decision, Enforcer
from addon.header_fields import content_of, header, header_all, host_header, pop_header, set_content
from addon.image_tool import (
    DEPLOYMENT_HEADER,
    ImageToolCall,
    call_from_json,
    call_to_json,
    price_unpriced_images,
    rule_fallback_object_tools,
    rule_image_tools,
    svg_rows,
    tool_row,
)
from addon.live_state import LiveState, remove_dead, session_live_path, today_baseline
from addon.model_rules import base_model
from addon.notify import Notifier
from addon.output_history import OutputHistory
from addon.paths import default_policies_path, resolve_db_path, resolve_policies_path
from addon.policies import NotificationSettings, Policies, PolicyError, PolicyFile
from addon.pricing import (
    BACKGROUND,
    NOT_BILLED,
    SUBSCRIPTION,
    SUBSCRIPTION_SOURCE,
    Pricer,
)
from addon.providers import (
    Provider,
    Registry,
    azure_path_deployment,
    batches,
    gemini_live,
    keys_in_query,
    openai_live,
    openai_realtime,
    openai_realtime_mints,
    openai_responses_ws,
    registry_for,
    videos,
)
from addon.providers.anthropic_api import repeated_fallbacks
from addon.providers.batches import BatchInput
from addon.providers.openai_api import RUNNING as RESPONSE_RUNNING
from addon.providers.openai_media import (
    FORM_NOT_REWRITTEN,
    MEDIA_FLAVORS,
    FormFields,
    image_tools,
    inline_image_bytes,
    input_images,
    is_form,
    read_form,
    tool_choice_none,
)
from addon.providers.values import normal_path, without_dot_segments
from addon.realtime_sessions import SocketSession
from addon.record import CallRecord
from addon.request_decision import UNREADABLE_MODEL, RequestDecider, rewritten_request
from addon.reservation import (
    BYTES_PER_TOKEN,
    RESERVED_OUTPUT_TOKENS,
    answers_asked,
    reserved_body,
    with_fallback_lists,
)
from addon.reservation import cost_estimate as reservation_cost_estimate
from addon.socket_metering import SocketMeter, remember_live_setup, remembered_live_setup
from addon.store import Store, journal_dir_of
from addon.stream_tap import ResultsTap, StreamTap
from addon.token_estimate import estimate_output, estimate_usage
from addon.unmetered_models import FLAVOR as UNMETERED
from addon.unmetered_models import (
    NamedModel,
    body_model,
    default_model,
    form_reader,
    path_model,
    runs_no_model,
)
from addon.usage import Metered, Usage
from addon.video_calls import VideoCalls

log = logging.getLogger("tokometer")
log_privacy.install()  # a logged failure shows no request's or answer's text

# Bodies larger than this are parsed in a worker thread, off mitmproxy's event loop.
INLINE_PARSE_LIMIT = 128 * 1024
# An unmetered answer on a provider host larger than this passes on as it comes (a download).
PASS_ON_FROM = 1024 * 1024
# How long a request may wait for the lookup of its calling process (normally 3-15 ms).
PROCESS_LOOKUP_TIMEOUT = 2.0
NOTICE_HEADER = "X-Tokometer-Notice"
POLICY_CHECK_INTERVAL = 1.0
# How often (seconds) the policy watch looks whether the background responses this proxy holds are
# still pending: one billed or ended through another proxy on the database lets its hold go then.
HOLD_CHECK_INTERVAL = 30.0
MAX_REMEMBERED_HOSTS = 256  # distinct (Host header, host) pairs whose pretty_host is kept
# The row's error when a stream ended before its final usage (Metered.output_partial): the input
# counts are the provider's, the output counted offline from the text seen.
PARTIAL_USAGE_NOTE = "output tokens estimated: the stream ended before its final usage"
# Added when that stream's cost is the provider's own running one (xAI's cost_in_usd_ticks): kept as
# the row's cost, a lower bound (the count it was for is one).
PARTIAL_COST_NOTE = "cost: the provider's so far, a lower bound"
PROVIDER_REPORTED = "provider_reported"
# The row's error when metering the call failed as it ended (a bug): it keeps what was known.
METERING_FAILED_NOTE = "metering failed (see the proxy's log): the row keeps what was known"
# The row's error when mitmproxy's server playback (--server-replay) answered the call from a recording.
SERVER_REPLAY_NOTE = "answered by mitmproxy's server playback: the provider never saw it"
# An addon that runs before the meter (mitmproxy's block_list with a status) answered the call.
ANSWERED_UNSENT_NOTE = (
    "answered by mitmproxy before it was sent (an addon such as block_list): the provider never saw it"
)
# A GET of an OpenAI background response (answered "queued"), of a Gemini background
# interaction (answered "in_progress") or of an OpenAI batch job: its usage comes with one of these.
_RESPONSE_PATH = re.compile(r"/(?:responses|interactions|batches)/([^/]+)$")
# ``POST .../{id}/cancel`` answers with the response or interaction as it stands when cancelled
# (its usage so far, if the provider reports any): it settles the background call like a GET.
_CANCEL = "/cancel"
# The flavors of the calls such a GET retrieves (the flavor of the path it was POSTed to).
_BACKGROUND_FLAVORS = frozenset({"responses", "interactions", batches.FLAVOR})
# Those whose call's budget reservation stays held while they run (a batch's is released at its
# creation's row), and which a DELETE of the response (the interaction) ends.
_HELD_FLAVORS = frozenset({"responses", "interactions"})
# A pending entry's field: the reservation its call keeps, {"usd": "0.08", "until": epoch seconds}.
_HOLD_FIELD = "hold"
_HOLD_PREFIX = "background:"  # of the key a background response's reservation is held under
# A call still running upstream (a background response, a batch job): billed later.
RUNNING = RESPONSE_RUNNING | batches.RUNNING
# Why a batch whose input file names a disallowed model is refused rather than downgraded.
BATCH_NOT_REWRITTEN = (
    "a batch's requests are in its input file, uploaded already, which the proxy cannot rewrite, "
    "so it is refused instead of downgraded: upload a file that asks for an allowed model"
)
# Why a Message Batch (requests inline) asking for a disallowed model is refused, not downgraded.
INLINE_BATCH_NOT_REWRITTEN = (
    "its requests ask for it; a batch is refused rather than rewritten request by request: "
    "ask for an allowed model in each"
)
_RESULTS = "/results"  # GET .../messages/batches/{id}/results: a Message Batch's results (Anthropic)
# What a background response's retrieval row takes from the row of the call that started it.
# The image_generation tool call a background response's entry keeps (addon.image_tool).
_IMAGE_TOOL_KEY = "image_tool"
# A background response's entry: the id of its creation row, the call its retrieval row is a part of.
_CREATION_KEY = "call_id"
_STARTED_BY = (
    "environment",
    "environment_source",
    "team",
    "feature",
    "tags",
    "user_name",
    "client_pid",
    "client_process",
    "client_cwd",
    "repo",
    "git_branch",
    "key_name",
    "key_fingerprint",
    "model_requested",
    "model_sent",
)
MAX_KEYS_EXAMINED = 8  # API keys of one request looked up in policies.yaml (a request may carry more)
# Calls in flight when mitmproxy reloaded the script, for the new Meter to finish: this module
# is imported once per process (the script is what mitmproxy reloads).
_HANDED_OVER: weakref.WeakKeyDictionary[http.HTTPFlow, CallState] = weakref.WeakKeyDictionary()


def _shutting_down() -> bool:
    """Is mitmproxy shutting down (``done`` at exit), rather than reloading the script?"""
    try:
        return ctx.master.should_exit.is_set()
    except Exception:  # no master: take it as the end
        return True


_startup_heap_frozen = False


def freeze_startup_heap() -> None:
    """Once per process: leave the objects alive after start-up out of every later collection.

    The price list, policies and mitmproxy's own start-up objects never die, yet every full
    collection walked them all: a ~55 ms stop of the event loop every few thousand calls, ~7 ms
    once frozen (gc callbacks in a running proxy). Garbage is collected first, so none is kept.
    """
    global _startup_heap_frozen
    if _startup_heap_frozen:
        return
    _startup_heap_frozen = True
    gc.collect()
    gc.freeze()


def new_session_id() -> str:
    """A sortable, readable id for one proxy run, e.g. ``20261128T152500Z-3f9a``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


class Credentials(NamedTuple):
    """The API keys of a request, as Meter._pick_key reads them."""

    key: str | None  # the one whose fingerprint the row keeps
    others: tuple[str, ...] = ()  # the other different ones, weighed by attribute()
    problem: str | None = None  # several different keys: the row says so
    unweighed: bool = False  # more different keys than MAX_KEYS_EXAMINED: some not weighed


class FinishedRow(NamedTuple):
    """A finished call's row as filled, for ``Meter._hand_over`` to store."""

    record: CallRecord
    store: Store | None  # the one that journaled it ahead, else the one in use
    images: list[CallRecord]  # the rows billed apart from it (its images, advisors...)
    body: dict[str, Any] | None  # its request, for an offline count of its tokens
    metered: Metered
    again: bool  # its reservation gave way at its stream's final event (_give_way_early)


@dataclass(slots=True)
class CallState:
    """What the addon knows about one LLM call in flight.

    Kept in a weak map keyed by the flow, not in ``flow.metadata``, which
    mitmproxy serialises (``-w``) and deep-copies: the API key must never go there.
    """

    provider: Provider
    record: CallRecord
    api_key: str | None = None
    other_keys: tuple[str, ...] = ()  # the request's other API keys, until attributed
    keys_unweighed: bool = False  # it carried more different keys than were weighed
    key_conflict: str | None = None  # its keys disagree about its environment: refused if enforced
    tags_header: str | None = None
    process: asyncio.Future[ClientProcess] | None = None
    unknown_user: UnknownUser | None = None  # why it has no user (its refusal says)
    user_decided: bool = False  # users had limits when it was attributed: a late lookup keeps its user
    errors: list[str] = field(default_factory=list)
    request_body: dict[str, Any] | None = None
    request_size: int = 0  # bytes of the request body, decoded (its budget reservation's input)
    injected_usage: bool = False
    notice: str | None = None  # X-Tokometer-Notice for the client (a downgrade)
    refusal: str | None = None  # why the proxy answered the call itself
    retrieval: str | None = None  # a GET of this background response (its usage is billed here)
    claimed: bool = False  # this retrieval took the response off the pending list: it bills it
    deletion: bool = False  # a DELETE of this background response: it ends it unbilled
    pending_in: PendingResponses | None = None  # the list the retrieval's response was found in
    subscription: bool = False  # a flat-fee plan's key: $0 per call, outside the budgets
    tap: StreamTap | None = None
    finished: bool = False
    journaled_in: Store | None = None  # the store that journaled it ahead (see _finish)
    # Its reservation gave way at its stream's final event (_give_way_early): its finished row's
    # cost replaces what was held then (_submit), whatever came after.
    gave_way: bool = False
    path_tags: Mapping[str, str] | None = None  # what the path says of the call (Vertex's project)
    handshake: openai_realtime.Handshake | None = None  # an OpenAI Realtime WebSocket handshake
    live: gemini_live.Endpoint | None = None  # a Gemini Live WebSocket handshake
    batch_results: bool = False  # a retrieval that downloads a Message Batch's results
    results: ResultsTap | None = None  # reading that download (set at its response headers)
    responses_ws: bool = False  # an OpenAI Responses WebSocket handshake
    mint: str | None = None  # a Realtime session minted over HTTP: its kind (openai_realtime_mints)
    openai_live: bool = False  # an OpenAI Live WebSocket handshake (primary: session.start names the model)
    live_sideband: str | None = None  # an OpenAI Live sideband's handshake: the session id it attaches to
    live_setup_model: str | None = None  # an OpenAI Live set-up (a mint): the session's model as sent
    route: str | None = None  # the path as read, where it is not the one sent (signed; %2F...)
    # The policies' decision that let it go (its rate-limit hits): taken back if it never reaches
    # the provider (_take_back_if_unsent)
    decision: Decision | None = None
    # When the meter's ``request`` hook let it go (after a slow lookup's wait): mitmproxy writes it
    # upstream only after that, so a connection closed before then never carried it (_never_sent)
    released_at: float | None = None
    # An addon before the meter answered it (mitmproxy's block_list with a status): never sent
    answered_unsent: bool = False
    # Its budget reservation (scopes, amount), kept when a script reload hands it over (see done)
    reservation: tuple[tuple[Scope, ...], Decimal] | None = None
    # Or the cost it holds instead, having given way at its stream's final event (scopes, amount, ts)
    held: tuple[tuple[Scope, ...], Decimal, datetime | None] | None = None
    transcription_unnamed: bool = False  # a Realtime transcription session, models restricted: none named yet
    translation: bool = False  # an OpenAI Realtime translation WebSocket handshake (``handshake`` set)
    live_fork: str | None = None  # an OpenAI Live fork's handshake: the stored session it forks
    image_tool: ImageToolCall | None = None  # a Responses call's image_generation tool, as let through
    tool_row_id: str | None = None  # the id of the row of its images (journaled ahead, then submitted)
    svg_row_ids: list[str] = field(default_factory=list)  # and of its SVG author's rows
    unmetered: bool = False  # a POST the proxy does not meter, models restricted: checked, maybe refused
    video: str | None = None  # a video generation request: its kind (addon.providers.videos)
    video_job: videos.VideoJob | None = None  # what it asked for (its reservation, its bill)
    video_source: videos.VideoJob | None = None  # the job of its source video, seen here earlier
    # All the source videos it names, when every one was seen here (an extension naming two: the
    # answer's model tells which one it ran on)
    video_sources: tuple[videos.VideoJob, ...] = ()
    # An Anthropic call's advisor tool models as let through: base name -> (requested, sent, action)
    advisor_sent: dict[str, tuple[str, str, str]] | None = None
    iteration_row_ids: list[str] = field(default_factory=list)  # its advisors' and declined hops' rows

    @property
    def opens_socket(self) -> bool:
        """A WebSocket handshake the meter follows (Realtime, Gemini Live, Responses, OpenAI Live)."""
        return self.handshake is not None or self.live is not None or self.responses_ws or self.openai_live


def _bare_sdp_offer(headers: http.Headers, kind: str) -> bool:
    """A WebRTC offer (a mint of kind ``call``) sent as bare SDP, not as a form naming its session."""
    content_type = headers.get("content-type", "")
    return kind == openai_realtime_mints.CALL and content_type.lstrip().lower().startswith("application/sdp")


def _azure_disagreement(
    provider: Provider, route: str, body: dict[str, Any] | None
) -> tuple[str, tuple[str, str]] | None:
    """Why an Azure call on the v1 path /openai/v1/deployments/{name}/... names no model it can be
    held to (``Provider.request_model`` read none: its body names a deployment serving another
    model), and the two models it may run; None for any other call."""
    in_path = azure_path_deployment(route) if provider.name == "azure" else None
    named = body.get("model") if body is not None else None
    if in_path is None or not in_path[1] or not isinstance(named, str):
        return None
    deployments = provider.deployments
    models = (deployments.get(in_path[0], in_path[0]), deployments.get(named, named))
    if models[0] == models[1]:
        return None
    why = (
        f"its path names deployment {in_path[0]!r} and its body {named!r}, serving another model: "
        "which one Azure runs is not known, so the call cannot be checked against the allowlist"
    )
    return why, models


def _standard_key(headers: http.Headers) -> bool:
    """Does a request carry a standard API key (OpenAI's ``sk-...``, Azure's ``api-key`` header),
    not an ephemeral one (``ek_...``) whose session was configured when it was minted?"""
    if any(value.strip() for value in headers.get_all("api-key")):
        return True
    return any((key_of_header(value) or "").startswith("sk-") for value in headers.get_all("authorization"))


def _never_raises(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Metering never breaks traffic: log a hook's failure and let the flow pass."""
    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def guarded_async(self: Meter, flow: http.HTTPFlow) -> None:
            try:
                await hook(self, flow)
            except Exception:
                log.exception("tokometer: %s failed; the call passes unmetered", hook.__name__)

        return guarded_async

    @functools.wraps(hook)
    def guarded(self: Meter, flow: http.HTTPFlow) -> None:
        try:
            hook(self, flow)
        except Exception:
            log.exception("tokometer: %s failed; the call passes unmetered", hook.__name__)

    return guarded


# mitmproxy's connection handler logs each client and server connect and disconnect, and each
# streamed response, at INFO: four to five lines around every call's one (README: one line per
# call). Its warnings (a client that does not trust the CA) and errors still show.
_CONNECTION_LOGGER = "mitmproxy.proxy.server"


def _quiet_connection_lines(quiet: bool) -> None:
    """Hide (``quiet``) or show again mitmproxy's per-connection INFO lines; ``debug`` shows them."""
    logging.getLogger(_CONNECTION_LOGGER).setLevel(logging.WARNING if quiet else logging.NOTSET)


def _parse_body(provider: Provider, flavor: str, headers: Mapping[str, str], body: bytes) -> Metered:
    return provider.parse_response(flavor, body, headers)


def _describe_client(record: CallRecord, process: ClientProcess, *, user: bool = False) -> None:
    """Fill the row's process fields from ``process``, and with ``user`` its user_name (a late
    lookup where no user limit decided the call: else the row keeps the user it was charged as)."""
    if user:
        record.user_name = process.user or record.user_name  # not identified: unidentified_user
    record.client_pid = process.pid
    record.client_process = process.name
    record.client_cwd = process.cwd
    record.repo = process.repo
    record.git_branch = process.git_branch


def _with_tags(tags: str | None, extra: Mapping[str, str]) -> str:
    """A row's ``tags`` JSON with ``extra`` added (what a path says beats a header's claim)."""
    return json.dumps({**(json.loads(tags) if tags else {}), **extra}, sort_keys=True, ensure_ascii=False)


MAX_ANSWER_COUNTS = 10_000  # calls in flight whose answer count is remembered (see _answers_of)


def _runs_in_background(state: CallState, metered: Metered) -> bool:
    """Does the call run on upstream in the background (billed later, on its retrieval's row)?"""
    return (
        metered.response_id is not None
        and metered.response_status in RUNNING
        and state.retrieval is None
        # A stream cut short runs on upstream only if it was asked for in the background (an
        # Interactions stream says so only in its request).
        and (state.request_body is None or state.request_body.get("background") is True)
    )


def _hold_key(response_id: str) -> str:
    """The key a background response's kept reservation is held under (BudgetTracker.keep)."""
    return f"{_HOLD_PREFIX}{response_id}"


def _estimate_wanted(
    record: CallRecord, metered: Metered, body: dict[str, Any] | None
) -> tuple[bool, Usage | None]:
    """Are the call's tokens to be counted offline (no final usage reported, yet the provider likely
    billed), and the usage a stream reported before its end without its final output count (else
    None)? The finished row's rule (_finish), which the give-way at a stream's final event follows."""
    counted = record.price_status is None or record.price_status == SUBSCRIPTION  # a plan's: tokens too
    # A stream cut before its final usage: the input counts reported stand, the output is not known.
    # Its tokens are estimated even when the provider said its cost so far (xAI's running cost,
    # kept as the row's cost: a lower bound).
    partial = metered.usage if metered.usage is not None and metered.output_partial else None
    missing = metered.usage is None and body is not None
    wanted = (missing and counted) or (
        partial is not None and (counted or record.price_status == PROVIDER_REPORTED)
    )
    return wanted and _billable(record), partial


def _billable(record: CallRecord) -> bool:
    """Whether the provider likely billed a call (it was sent and not answered with an error)."""
    sent = record.action in ("allowed", "downgraded")
    return sent and (record.status_code is None or record.status_code < 400)


def _never_sent(flow: http.HTTPFlow, state: CallState) -> bool:
    """Did the call surely not reach the provider? Answered by mitmproxy's server playback
    (``is_replay == "response"``) or by an addon before the meter (``state.answered_unsent``:
    ``block_list`` with a status); or, with no response, killed before it went out (a kill takes
    effect as a hook returns, and before any response that is ``requestheaders`` or ``request``:
    mitmproxy's ``block_list``, server playback's kill of an unmatched request), read from the
    client only in part, or with no connection to upstream to carry it (a connect failure). A
    kept-alive connection, set up for an earlier request, does not make a killed one sent.

    mitmproxy marks nothing on the flow when it writes the request upstream: it replaces
    ``flow.server_conn`` only with a connection it got for this request, and writes the request
    (or, streamed, its end) after the ``request`` hook, which follows ``request.timestamp_end``.
    A failed reconnect on a kept-alive tunnel leaves the earlier connection there, closed before
    this request was read, or before the meter let it go (``state.released_at``, after a slow lookup's
    wait; a streamed request body went out as it was read): a connection closed before then did
    not carry it."""
    if flow.is_replay == "response" or state.answered_unsent:
        return True
    if flow.response is not None:
        return False
    error = flow.error
    if error is not None and error.msg == FlowError.KILLED_MESSAGE:
        return True
    server = flow.server_conn
    read_at = flow.request.timestamp_end
    if server is None or server.timestamp_tcp_setup is None or read_at is None:
        return True
    # A streamed request body went out as it was read, before the request hook: read_at alone.
    released_at = state.released_at
    let_go = read_at if flow.request.stream or released_at is None else max(read_at, released_at)
    return server.timestamp_end is not None and server.timestamp_end < let_go


_INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'


def _with_usage_requested(raw: bytes) -> bytes | None:
    """``raw``, a JSON object without ``stream_options``, with ``stream_options.include_usage`` added.

    The member goes in before the closing brace and every other byte stays as the client sent
    it: no re-encoding of a body that may be megabytes of prompt. None when the body is not
    a UTF-8 ``{...}`` (json.loads also reads UTF-16 and -32): the caller re-encodes it instead.
    """
    end = len(raw.rstrip(b" \t\r\n"))
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    while start < end and raw[start] in b" \t\r\n":
        start += 1
    if raw[start : start + 1] != b"{" or raw[end - 1 : end] != b"}":
        return None  # UTF-16-BE, for one, ends in "}" too
    head = raw[: end - 1].rstrip(b" \t\r\n")
    comma = b"" if head.endswith(b"{") else b","  # ``{}``: the only object whose head ends in {
    return head + comma + _INCLUDE_USAGE + raw[end - 1 :]


_TAGS_HEADER = TAGS_HEADER.lower().encode()
_STREAM_TYPES = ("text/event-stream", "application/vnd.amazon.eventstream", "application/x-ndjson")


def _is_stream(response: http.Response) -> bool:
    """A response whose body is a stream of events by its content type."""
    content_type = (header(response.headers, b"content-type") or "").lower()
    return content_type.startswith(_STREAM_TYPES)


def _maybe_large(response: http.Response) -> bool:
    """A body of unknown size (chunked) or over ``PASS_ON_FROM`` bytes: not one to hold whole."""
    length = header(response.headers, b"content-length")
    if length is None:
        return True
    try:
        return int(length) > PASS_ON_FROM
    except ValueError:
        return True


_SLASHES = re.compile(r"/{2,}")
_ESCAPED_SEPARATOR = re.compile(r"%2[fFeE]|%5[cC]")  # "/", ".", "\\" escaped in a path


def _fully_decoded(route: str) -> str | None:
    """``route`` (a path as read, and its query) with every escape in its path decoded once (then
    dot segments resolved, doubled slashes merged); None when its path has no escape."""
    path, mark, query = route.partition("?")
    if "%" not in path:
        return None
    return _SLASHES.sub("/", without_dot_segments(unquote(path))) + mark + query


def _azure_decoded(route: str) -> str | None:
    """An Azure path with an escaped slash, dot or backslash, or a bare backslash, read as a front
    end that decodes its whole path and takes a backslash for a slash (IIS) would: decoded once,
    each backslash a slash, dot segments resolved, doubled slashes merged. None for another path.
    No deployment name holds any of them, so such a path names the deployment it spells."""
    path, mark, query = route.partition("?")
    if not (_ESCAPED_SEPARATOR.search(path) or "\\" in path):
        return None
    path = unquote(path).replace("\\", "/")
    return _SLASHES.sub("/", without_dot_segments(path)) + mark + query


def _asks_for_websocket(headers: http.Headers) -> bool:
    """Does the request offer an upgrade to WebSocket (among other protocols, in any case)?"""
    return any(
        token.strip().lower() == "websocket"
        for value in headers.get_all("upgrade")
        for token in value.split(",")
    )


_LIVE_MODEL = ("session", "model")  # where a Live set-up names its session's model


def _decoded_content(request: http.Request) -> bytes:
    """The request body, its content encoding undone (raises BodyNotDecodable if it cannot be)."""
    return content_of(request) or b""


def _dump_json(body: dict[str, Any]) -> bytes:
    # ensure_ascii (the default) also carries lone surrogates ("\ud83d") through as escapes.
    return json.dumps(body).encode()


async def _off_loop_if_large[A, T](func: Callable[[A], T], data: A, size: int | None = None) -> T:
    """Run ``func(data)`` inline when small, in a worker thread when large."""
    if (len(data) if size is None else size) > INLINE_PARSE_LIMIT:  # type: ignore[arg-type]
        return await asyncio.to_thread(func, data)
    return func(data)


class Meter:
    """Meters LLM calls and stores one row per finished call."""

    def __init__(self) -> None:
        self.session_id = new_session_id()
        # Call ids: a random 64-bit prefix per proxy run and a counter (32 hex digits, like a
        # uuid4's hex, unique across runs; a uuid4 per call reads os.urandom each time). A run's
        # ids are consecutive, so the primary key's index takes a flush's rows in one place: with
        # random ids a flush costs more the bigger the file (scripts/bench-store).
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count()
        self.enforcer = Enforcer(Policies())
        self.decider = RequestDecider(self.enforcer)  # by its rules: never reassign self.enforcer
        self.registry = Registry()
        self.pricer = Pricer(
            price_provider=self.registry.price_provider, geo_surcharge=self.registry.geo_surcharge
        )
        self.on_providers_changed: Callable[[], None] | None = None  # set by the entry script
        self.call_lines = TerminalLines(log)  # attached to mitmproxy's terminal at `running`
        self.call_log = CallLog(self.call_lines, color=use_color(sys.stdout))
        self.notifier = Notifier(NotificationSettings())
        # What each model writes here: the output a call without an output cap reserves.
        self.outputs = OutputHistory(RESERVED_OUTPUT_TOKENS)
        # The history a stateful call continues (previous_response_id...): reserved as input.
        self.contexts = CarriedContexts()
        # Calls asking for several answers (``reservation.answers_asked``), by id, until their output
        # is recorded: the history is of one answer's output, which a reservation multiplies again.
        self._answers_of: dict[str, int] = {}
        self.live: LiveState | None = None
        self.policies_path = default_policies_path()
        self.policy_file: PolicyFile | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.db_path: Path | None = None
        self.store: Store | None = None
        self._running = False
        self._refused_start = False  # policies.yaml was invalid at start
        self._calls: weakref.WeakKeyDictionary[http.HTTPFlow, CallState] = weakref.WeakKeyDictionary()
        # OpenAI Realtime, Gemini Live and Responses WebSockets being metered.
        self.sockets = SocketMeter(
            self, off_loop=_off_loop_if_large, billable=_billable, with_tags=_with_tags
        )
        self._unmetered_sockets: set[str] = set()  # host + path of WebSockets named in the log
        self._odd_routes: set[tuple[str, str]] = set()  # paths read otherwise than sent, logged
        # Video generation calls, and the jobs accepted here (addon.video_calls).
        self.video_calls = VideoCalls(
            self, off_loop=_off_loop_if_large, decoded_content=_decoded_content, never_sent=_never_sent
        )
        # One process lookup per client connection, shared by its requests.
        self._processes: dict[str, asyncio.Future[ClientProcess]] = {}
        self._pretty_hosts: dict[tuple[str | None, str], str] = {}  # see _pretty_host
        # Background responses started and not yet retrieved (see _finish and _start_retrieval):
        # in memory until the store opens, then one file each beside its journals. The lists of
        # databases used before a tokometer_db switch are still looked in.
        self._background = PendingResponses()
        self._earlier_background: list[PendingResponses] = []
        # What the batch input files uploaded through the proxy said (their models and sizes), by
        # file id: in memory until the store opens, then one file each beside its journals.
        self._batch_inputs = PendingResponses()
        self._earlier_batch_inputs: list[PendingResponses] = []
        # Uploads being read for a batch's models: what was read (or is being read, off the event
        # loop) until the upload's answer names its file id.
        self._uploads: weakref.WeakKeyDictionary[
            http.HTTPFlow, BatchInput | asyncio.Future[BatchInput | None] | None
        ] = weakref.WeakKeyDictionary()
        # Pages of batches being listed (GET /v1/batches), with the provider and host they came by.
        self._batch_lists: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[Provider, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._estimates: set[asyncio.Future[None]] = set()  # estimates under way (kept referenced)
        self.hostname = socket.gethostname()
        self.forced_environment = os.environ.get(FORCE_ENV_VAR, "").strip() or None

    @property
    def policies(self) -> Policies:
        """The policies in force."""
        return self.enforcer.policies

    def _tell_claimable(self, live: LiveState, policies: Policies) -> None:
        """Tell the live file how a calling shell's variables book its calls here (the status
        line books a shell the same way): the variables read, the environments they may name,
        and where a call goes when they name none of those (rules 4-5 of addon.attribution)."""
        live.set_claimable(
            policies.claimable(),
            policies.default_environment,
            variables=policies.attribution.environment_vars,
            fallback=fallback_environment(policies, self.forced_environment, self.hostname),
        )

    def _next_call_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    def call_state(self, flow: http.HTTPFlow) -> CallState | None:
        """The metering state of ``flow``, if it is an LLM call being metered."""
        return self._state(flow)

    def _state(self, flow: http.HTTPFlow) -> CallState | None:
        """``flow``'s state, taking over one an instance before a script reload left in flight."""
        state = self._calls.get(flow)
        if state is None and _HANDED_OVER:
            state = _HANDED_OVER.pop(flow, None)
            if state is not None:
                self._take_over(flow, state)
        return state

    def _take_over(self, flow: http.HTTPFlow, state: CallState) -> None:
        """Finish a call the instance before a script reload left in flight (its stream's final
        event now journaled by this instance's store), its budget reservation held again."""
        self._calls[flow] = state
        if state.journaled_in is None:  # its row is this instance's: counted as its own spend
            state.record.session_id = self.session_id
        # This instance's budgets never had its reservation: reserved again, unless its row goes to
        # the store before the reload (journaled there ahead), whose rows these budgets never see.
        if state.reservation is not None and state.journaled_in is None:
            scopes, amount = state.reservation
            self.enforcer.budgets.reserve(state.record.id, scopes, amount)
        elif state.held is not None and state.journaled_in is None:  # gave way at its final event
            scopes, amount, at = state.held
            self.enforcer.budgets.hold(state.record.id, scopes, amount, at)
        tap = state.tap
        if tap is not None and tap.on_final_event is not None:
            tap.on_final_event = functools.partial(self._journal_stream_end, flow, state)

    # -- lifecycle ---------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "tokometer_db",
            str,
            "",
            "DuckDB file that stores metered calls "
            "(default: $TOKOMETER_DB, else $XDG_DATA_HOME/tokometer/spend.duckdb).",
        )
        loader.add_option(
            "tokometer_policies",
            str,
            "",
            "policies.yaml to enforce (default: $TOKOMETER_POLICIES, else policies.yaml of the checkout).",
        )
        loader.add_option(
            "tokometer_log",
            str,
            DEFAULT_LOG_LEVEL,
            "Per-call lines in the proxy's terminal: quiet (none), calls (one line per call), "
            "debug (also how each call was attributed).",
            choices=LOG_LEVELS,
        )

    def configure(self, updated: set[str]) -> None:
        if "tokometer_log" in updated:
            self.call_log.level = ctx.options.tokometer_log
            _quiet_connection_lines(ctx.options.tokometer_log != "debug")
        if "tokometer_policies" in updated:
            path = resolve_policies_path(ctx.options.tokometer_policies)
            policy_file = PolicyFile(path)
            try:
                policies = policy_file.load()
            except PolicyError as exc:
                if self._running:  # a new path set at run time: refuse it, keep the old one
                    raise exceptions.OptionsError(str(exc)) from exc
                # An error logged during start-up makes mitmdump exit with status 1 (errorcheck addon).
                log.error("tokometer: %s is invalid, so the proxy does not start:\n%s", path, exc)
                self._refused_start = True
                return
            if self._running and not policies.enforcing and self.policies.enforcing:
                # A mistyped path reads as "no file": metering only. Say so, loudly.
                log.warning("tokometer: %s does not exist: metering only, no policy is enforced", path)
                self._policy_event("policy_invalid", f"{path} does not exist: metering only")
            self.policy_file, self.policies_path = policy_file, path
            self._apply(policies)
        if "tokometer_db" in updated:
            db_path = resolve_db_path(ctx.options.tokometer_db)
            if self.store is not None and db_path != self.db_path:
                self.store.close()  # calls finishing later go to its journal (see _finish)
                self.store = None
                if self.live is not None:  # "running": false, and its thread ends
                    self.live.close()
                    self.live = None
            self.db_path = db_path
            if self.store is None and self._running:
                self._open_store()

    def running(self) -> None:
        if self._refused_start:
            return
        self._running = True
        # Files the proxy creates from now on are private: DuckDB recreates its write-ahead
        # log (which holds the rows being written) with the process umask at every write.
        os.umask(os.umask(0o077) | 0o077)
        self.call_lines.attach()
        if self.store is None:
            self._open_store()
        ca = Path(ctx.options.confdir).expanduser() / "mitmproxy-ca-cert.pem"
        log.info(
            "tokometer: session %s | db %s | policies %s%s | CA %s",
            self.session_id,
            self.db_path,
            self.policies_path,
            "" if self.policies.enforcing else " (missing: metering only, nothing enforced)",
            ca,
        )
        if self._watch_task is None:
            self._watch_task = asyncio.ensure_future(self._watch_policies())
        for flow, state in list(_HANDED_OVER.items()):  # a script reload: its calls in flight
            if _HANDED_OVER.pop(flow, None) is not None:
                self._take_over(flow, state)
        self.sockets.take_over()  # and its WebSocket sessions
        freeze_startup_heap()

    def done(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        if not _shutting_down():
            # mitmproxy reloads the script (its file changed): the calls in flight go on, and
            # the new instance's hooks finish them (see _state).
            budgets = self.enforcer.budgets
            for flow, state in list(self._calls.items()):
                if not state.finished:
                    state.reservation = budgets.reservation(state.record.id)  # for the next one's
                    state.held = budgets.holding(state.record.id)
                    _HANDED_OVER[flow] = state
            self._calls.clear()
            self.sockets.hand_over()
        # mitmproxy calls `done` before `error` for flows still streaming: record them now.
        for flow, state in list(self._calls.items()):
            if not state.finished and state.tap is not None:
                with contextlib.suppress(Exception):
                    state.errors.append("proxy shut down mid-call")
                    metered = state.tap.result() if state.tap else Metered()
                    self._finish(flow, state, metered, aborted=True, now=True)
        for flow, session in list(self.sockets.sessions.items()):  # responses in flight: aborted rows
            with contextlib.suppress(Exception):
                self.sockets.end_session(flow, session, "proxy shut down mid-session", now=True)
        if self.store is not None:
            self.store.close()  # a call finishing after this lands in the journal, replayed at next start
        if self.live is not None:
            self.live.close()
        self.notifier.close(2.0)
        _quiet_connection_lines(False)  # a reloaded script's configure hides them again

    def _apply(self, policies: Policies) -> None:
        """Put policies in force: rules, provider hosts, Azure deployments and prices."""
        names_before = self._process_env_names()
        had_budgets = self.enforcer.budgets.has_budgets
        self.enforcer.set_policies(policies)
        if self.store is not None and self.enforcer.budgets.has_budgets and not had_budgets:
            # Without a budget the other proxies' spend was not read again: read it now, in the
            # store's writer thread (never on the event loop).
            self.store.request_refresh()
        if self._process_env_names() != names_before:
            # Each connection's calling process was read for the variable names then in force:
            # look again (at each connection's next request) for the new ones.
            self._processes.clear()
        if self.live is not None:  # the status line shows the new caps now, not at the next call
            self.live.set_budgets(self.enforcer.budgets.status(datetime.now(UTC)))
            self._tell_claimable(self.live, policies)
        self.notifier.set_settings(policies.notifications)
        registry = registry_for(policies)
        self.registry = registry
        self.pricer = Pricer(
            policies.prices, price_provider=registry.price_provider, geo_surcharge=registry.geo_surcharge
        )
        if self.on_providers_changed is not None:
            self.on_providers_changed()

    def _price(self, record: CallRecord) -> None:
        """The store's pricer (writer thread): whatever prices are in force now. An image tool's
        images at a model without a price: at the rates that reserved them (addon.image_tool)."""
        pricer = self.pricer
        pricer(record)
        price_unpriced_images(record, pricer)

    async def _watch_policies(self) -> None:
        """Pick up edits of policies.yaml; an invalid edit leaves the last good policy in force.
        Every ``HOLD_CHECK_INTERVAL`` too, let go of the holds of background responses ended
        elsewhere (``_release_ended_holds``)."""
        next_hold_check = time.monotonic() + HOLD_CHECK_INTERVAL
        while True:
            await asyncio.sleep(POLICY_CHECK_INTERVAL)
            if time.monotonic() >= next_hold_check:
                next_hold_check = time.monotonic() + HOLD_CHECK_INTERVAL
                try:
                    self._release_ended_holds()
                except Exception:
                    log.exception("tokometer: could not look for background responses ended elsewhere")
            policy_file = self.policy_file
            if policy_file is None or not policy_file.may_have_changed():  # one stat, here
                continue
            try:
                policies, problem = await asyncio.to_thread(policy_file.check)
            except Exception:
                log.exception("tokometer: checking %s failed", policy_file.path)
                continue
            if policies is not None and policy_file is self.policy_file:
                self._apply(policies)
                message = problem or f"{policy_file.path} reloaded"
                log.log(logging.WARNING if problem else logging.INFO, "tokometer: %s", message)
                self._policy_event("policy_reloaded", message)
            elif problem is not None:
                log.error("tokometer: the last good policy stays in force:\n%s", problem)
                self._policy_event("policy_invalid", problem)

    def _open_store(self) -> None:
        assert self.db_path is not None
        from addon import __version__

        store = Store(self.db_path, self.session_id, version=__version__, pricer=self._price)
        store.start()  # replays journals left by a crash first, so the loads below see them
        self._earlier_background = [self._background, *self._earlier_background][:4]
        self._background = PendingResponses(journal_dir_of(self.db_path) / BACKGROUND_FOLDER)
        self._background.forget_old()
        try:
            self._hold_pending(self._background)
        except Exception:
            log.exception("tokometer: could not hold the reservations of background responses again")
        self._earlier_batch_inputs = [self._batch_inputs, *self._earlier_batch_inputs][:4]
        self._batch_inputs = PendingResponses(journal_dir_of(self.db_path) / BATCH_INPUTS_FOLDER)
        self._batch_inputs.forget_old()
        remove_dead(self.db_path)  # the live files of proxies gone
        live = LiveState(session_live_path(self.db_path, self.session_id), self.session_id)
        now = datetime.now(UTC)
        try:  # spend so far in each budget's period: loaded once, then kept up by the listener

            def load(con: duckdb.DuckDBPyConnection) -> None:
                # A crashed session's calls the start could not store yet (another process held
                # the file): stored later by the writer, they count against budgets now, as the
                # other sessions' spend (theirs once stored).
                self.enforcer.budgets.load(
                    con, session_id=self.session_id, others=self._unstored_spend(store, con)
                )
                self._load_outputs(con)
                live.load_baseline(today_baseline(con, now), now.date())

            # The start could not write: the file is held, and waiting another 5 s for it here
            # would hold mitmproxy's event loop with it.
            store.read(load, timeout=5.0 if store.started_stored else 0.5)
        except Exception as exc:  # loaded by the writer once it can read the file
            log.warning(
                "tokometer: could not load spend for budgets from %s yet (%s): budgets count this "
                "session's calls until it can be read",
                self.db_path,
                exc,
            )
            store.after_next_write(functools.partial(self._load_budgets_late, store))
        live.set_budgets(self.enforcer.budgets.status(now))
        self._tell_claimable(live, self.policies)
        live.start()
        self.live = live
        store.add_listener(self._on_finished)
        store.add_listener(self.call_log)
        # Other proxies writing this database spend from the same budgets: while they run, their
        # stored calls are read again after each flush and when one of them stored calls
        # (addon.store); so is today's spend in the live file.
        store.set_refresher(functools.partial(self._refresh_shared, store, live))
        self.store = store

    def _load_budgets_late(
        self, store: Store, con: duckdb.DuckDBPyConnection, queued: list[CallRecord]
    ) -> None:
        """Writer thread, the database readable at last: the budgets' spend from it, plus the
        calls counted already but not stored yet (``queued``) and a crashed session's calls."""
        others = self._unstored_spend(store, con)
        self.enforcer.budgets.load(con, session_id=self.session_id, others=others)
        self._load_outputs(con, queued)
        alerts = self.enforcer.record_spend(queued)
        self._raise_alerts(alerts)
        if self.live is not None:
            self.live.set_budgets(self.enforcer.budgets.status(datetime.now(UTC)))
        log.info("tokometer: spend for budgets loaded from %s", self.db_path)

    def _unstored_spend(
        self, store: Store, con: duckdb.DuckDBPyConnection
    ) -> list[tuple[tuple[Scope, ...], Decimal | None, datetime]]:
        """(scopes, cost, ts) of the dead sessions' calls ``store`` replays and has not stored yet:
        the other sessions' spend, like their stored calls (``BudgetTracker.load``)."""
        found = []
        for record in store.unstored_replay(con):
            self._price(record)
            found.append(
                (
                    scopes_for(record.environment, record.key_name, record.user_name),
                    record.cost_usd,
                    record.ts,
                )
            )
        return found

    def _refresh_shared(
        self, store: Store, live: LiveState, con: duckdb.DuckDBPyConnection, queued: list[CallRecord]
    ) -> None:
        """Writer thread, the database attached read-write: the other proxies' spend read again
        (with a budget in force), and today's spend for the live file (the database's, plus
        ``queued``: this proxy's calls counted and not stored yet).

        An alert the others' spend makes crossed is announced by the one proxy that stores its
        event first (``claim_event``); the others find it stored and stay quiet."""
        now = datetime.now(UTC)
        budgets = self.enforcer.budgets
        if budgets.has_budgets:
            alerts = budgets.refresh_others(con, self.session_id, now, self._unstored_spend(store, con))
            for alert in alerts:
                if claim_event(con, alert_event(alert, self.session_id, now)):
                    log.warning("tokometer: %s", alert.message())
                    self.notifier.notify_alert(alert)
        live.rebase(today_baseline(con, now), now.date(), queued)
        live.set_budgets(budgets.status(now))

    def _load_outputs(self, con: duckdb.DuckDBPyConnection, queued: Sequence[CallRecord] = ()) -> None:
        """The recent outputs of each model from the database (then ``queued``, priced and not
        stored yet); a problem only means no history: uncapped calls reserve the fallback."""
        try:
            self.outputs.load(con)
            self.outputs.record(queued)
        except Exception as exc:
            log.warning("tokometer: no history of output tokens from %s (%s)", self.db_path, exc)

    def _on_finished(self, records: list[CallRecord]) -> None:
        """Writer thread, right after pricing: budgets, their alerts, models with no price escaping
        a budget, the models' output history, the live-state file."""
        alerts = self.enforcer.record_spend(records)
        now = datetime.now(UTC)
        self._raise_alerts(alerts, now)
        try:
            self._say_unpriced(self.enforcer.unpriced(records), now)
        except Exception:
            log.exception("tokometer: could not look for unpriced calls escaping a budget")
        for record in records:  # on the record too: a late load adds ``queued`` records again
            if (n := self._answers_of.pop(record.id, 1)) > 1 and not record.answers:
                record.answers = n
        try:
            self.outputs.record(records)
        except Exception:
            log.exception("tokometer: could not add calls to the output history")
        if self.live is not None:
            self.live.record(records)
            self.live.set_budgets(self.enforcer.budgets.status(now))

    def _raise_alerts(self, alerts: list[BudgetAlert], now: datetime | None = None) -> None:
        """Log, notify and store budget alerts (an event row each)."""
        now = now or datetime.now(UTC)
        for alert in alerts:
            log.warning("tokometer: %s", alert.message())
            self.notifier.notify_alert(alert)
            if self.store is not None:
                self.store.submit_event(alert_event(alert, self.session_id, now))

    def _say_unpriced(self, found: list[UnpricedCall], now: datetime) -> None:
        """Log, notify and store (an event row each) the budgets that calls to a model with no
        price escape: once per (scope, provider, model) for the proxy's run."""
        for unpriced in found:
            log.warning("tokometer: %s", unpriced.message())
            self.notifier.notify_unpriced(unpriced)
            if self.store is not None:
                self.store.submit_event(unpriced_event(unpriced, self.session_id, now))

    def _policy_event(self, kind: str, message: str) -> None:
        if self.store is not None:
            self.store.submit_event(policy_event(kind, self.session_id, datetime.now(UTC), message))

    # -- hooks ---------------------------------------------------------------

    def client_disconnected(self, client: Any) -> None:
        self._processes.pop(client.id, None)

    @_never_raises
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Runs before map_remote and friends: pretty_host is the host the client asked for.
        host = self._pretty_host(flow.request)
        provider = self.registry.for_host(host, flow.request.port)
        if provider is None:
            return
        # Our header never goes upstream, whatever the path.
        tags_header = pop_header(flow.request.headers, _TAGS_HEADER)
        route = self._route_as_read(flow, provider, host)
        # "/v1/chat%2Fcompletions": a server that decodes its whole path before routing calls an
        # API here. Read it so, never rewritten (another server reads it as sent). An Azure path
        # with an escaped slash, dot or backslash (or a bare backslash) is read decoded first, a
        # backslash as a slash (as IIS reads it): no deployment name holds any of them, so
        # "/openai/v1/deployments%2Fteam-big/chat/completions" and ".../deployments%5Cteam-big/..."
        # name team-big, not the body's model.
        decoded = _fully_decoded(route)
        first = _azure_decoded(route) if provider.name == "azure" else None
        if first is not None and self._follow(flow, provider, host, tags_header, first):
            self._log_route_once(host, flow.request.path, first, "read as")
            return
        if self._follow(flow, provider, host, tags_header, route):
            return
        if (
            decoded is not None
            and decoded != first
            and self._follow(flow, provider, host, tags_header, decoded)
        ):
            self._log_route_once(host, flow.request.path, decoded, "read as")
            return
        if flow.request.method == "POST" and self.policies.restricts_models and flow not in self._uploads:
            self._hold_unmetered(flow, provider, host, tags_header, route, decoded)

    def _follow(
        self, flow: http.HTTPFlow, provider: Provider, host: str, tags_header: str | None, route: str
    ) -> bool:
        """Start following ``flow`` if ``route`` (its path and query as read) is an API the proxy
        meters: a call, a WebSocket handshake, a session set-up, a background retrieval. False
        when it is none of them."""
        if (
            provider.realtime is not None
            or provider.live is not None
            or provider.responses_ws is not None
            or provider.openai_live is not None
            or provider.realtime_translation is not None
        ) and flow.request.method == "GET":
            path = route.partition("?")[0]
            if _asks_for_websocket(flow.request.headers):  # "websocket" among others, in any case
                if provider.realtime is not None and provider.realtime.matches(path):
                    self._start_handshake(flow, provider, host, tags_header, route)
                    return True
                translation = provider.realtime_translation
                if translation is not None and translation.matches(path):
                    self._start_handshake(flow, provider, host, tags_header, route, translation=True)
                    return True
                if provider.live is not None and provider.live.matches(path):
                    self._start_handshake(flow, provider, host, tags_header, route, provider.live)
                    return True
                if provider.responses_ws is not None and provider.responses_ws.matches(path):
                    self._start_handshake(flow, provider, host, tags_header, route, responses_ws=True)
                    return True
                if provider.openai_live is not None and provider.openai_live.matches(path):
                    self._start_handshake(flow, provider, host, tags_header, route, openai_live_ws=True)
                    return True
                if provider.openai_live is not None and (side := openai_live.sideband_session(path)):
                    self._start_handshake(
                        flow, provider, host, tags_header, route, openai_live_ws=True, sideband=side
                    )
                    return True
                if provider.openai_live is not None and (forked := openai_live.fork_session(path)):
                    self._start_handshake(
                        flow, provider, host, tags_header, route, openai_live_ws=True, fork=forked
                    )
                    return True
        method = flow.request.method
        retrieval = method in ("GET", "DELETE") or route.partition("?")[0].endswith(_CANCEL)
        pending = self._background or self._earlier_background
        if retrieval and pending and self._start_retrieval(flow, provider, host, route):
            return True
        if flow.request.method != "POST":
            return False
        path = route.partition("?")[0]
        mints = provider.realtime_mints
        if mints is not None and (kind := mints.kind(path)) is not None:
            self._start_mint(flow, provider, host, mints, kind, route, tags_header)
            return True
        flavor = provider.flavor_for_path(route)
        if flavor is None:
            kind = None
            if provider.name in videos.PROVIDERS:  # only theirs: nothing read on other paths
                named = provider.request_model(route, None) if provider.name in videos.VEO_PROVIDERS else None
                kind = videos.video_kind(provider.name, path, named)
            if kind is not None:
                self._open_path_call(flow, provider, host, tags_header, route, videos.FLAVOR, video=kind)
                return True
            if provider.batch_api == "openai" and batches.is_upload_path(path):
                self._uploads[flow] = None  # maybe a batch's input file: read in `request`
            return False
        self._open_path_call(flow, provider, host, tags_header, route, flavor)
        return True

    def _open_path_call(
        self,
        flow: http.HTTPFlow,
        provider: Provider,
        host: str,
        tags_header: str | None,
        route: str,
        flavor: str,
        **state: Any,
    ) -> CallState:
        """Start following ``flow`` as a call to ``route`` (its path and query as read): its key,
        and what its path says besides (Vertex: its project and location)."""
        path, _, query = route.partition("?")
        facts = provider.path_facts(path) if provider.path_facts is not None else None
        # Vertex: the project stands for an OAuth token that rotates, beside any API key sent.
        stand_in = facts.credential if facts is not None else None
        credentials = self._api_key(provider, flow.request.headers, query, stand_in)
        self._open_call(
            flow,
            provider,
            host,
            path,  # never the query string: Gemini may carry the key there
            flavor,
            credentials,
            tags_header,
            geo=facts.geo if facts is not None else None,
            path_tags=facts.tags if facts is not None and facts.tags else None,
            route=route if route != flow.request.path else None,
            **state,
        )
        return self._calls[flow]

    def _hold_unmetered(
        self,
        flow: http.HTTPFlow,
        provider: Provider,
        host: str,
        tags_header: str | None,
        route: str,
        decoded: str | None,
    ) -> None:
        """A POST to a provider's path the proxy does not meter, where some environment restricts
        models: followed until ``request`` has read the model it names (its path's, read here, or
        its JSON body's) and checked it (``_unmetered_request``). Token counting, OpenAI's
        moderation and file uploads, which run no billed model, are left alone."""
        priced_as = provider.price_provider  # a gateway priced as OpenRouter: its preset API too
        if runs_no_model(provider.name, route, priced_as) or (
            decoded is not None and runs_no_model(provider.name, decoded, priced_as)
        ):
            return
        model = provider.request_model(route, None) or path_model(provider.name, route)
        if model is None and decoded is not None:  # a server that decodes its whole path first
            model = provider.request_model(decoded, None) or path_model(provider.name, decoded)
        state = self._open_path_call(flow, provider, host, tags_header, route, UNMETERED, unmetered=True)
        state.record.model_requested = model

    def _route_as_read(self, flow: http.HTTPFlow, provider: Provider, host: str) -> str:
        """The request's path and query as servers read them, so that a path spelled otherwise is
        metered and checked like any other: ``values.normal_path`` (``/v1/./chat/%63ompletions`` is
        ``/v1/chat/completions``), to which the request is rewritten (the same resource, by RFC
        3986) unless it is signed over its path, and doubled slashes merged (only read so: many
        servers merge them, as nginx does)."""
        sent = flow.request.path
        normal = normal_path(sent)
        if normal is not sent and provider.with_model is not None:
            flow.request.path = normal
            self._log_route_once(host, sent, normal, "sent as")
            sent = normal
        path, mark, query = normal.partition("?")
        read = _SLASHES.sub("/", path) + mark + query if "//" in path else normal
        if read != sent:
            self._log_route_once(host, sent, read, "read as")
        return read

    def _log_route_once(self, host: str, sent: str, route: str, how: str) -> None:
        where = (host, sent.partition("?")[0])
        if where in self._odd_routes or len(self._odd_routes) >= MAX_REMEMBERED_HOSTS:
            return
        self._odd_routes.add(where)
        log.info("tokometer: %s%s %s %s", host, where[1], how, route.partition("?")[0])

    def _open_call(
        self,
        flow: http.HTTPFlow,
        provider: Provider,
        host: str,
        path: str,
        flavor: str,
        credentials: Credentials,
        tags_header: str | None,
        *,
        geo: str | None = None,
        **state: Any,
    ) -> None:
        """Start following ``flow`` as a call: its row (what the request line and key say) and
        its state (``state``: the fields a kind of call adds)."""
        key = credentials.key
        record = CallRecord(
            id=self._next_call_id(),
            ts=datetime.fromtimestamp(flow.request.timestamp_start, UTC),
            session_id=self.session_id,
            environment=self.policies.default_environment,
            provider=provider.name,
            host=host.lower(),
            path=path,
            api_flavor=flavor,
            key_fingerprint=recent_key_fingerprint(key) if key else None,
            inference_geo=geo,
        )
        self._calls[flow] = CallState(
            provider=provider,
            record=record,
            api_key=key,
            other_keys=credentials.others,
            keys_unweighed=credentials.unweighed,
            tags_header=tags_header,
            process=self._client_process(flow),
            errors=[credentials.problem] if credentials.problem else [],
            subscription=bool(key and provider.subscription_key_prefixes)
            and key.startswith(provider.subscription_key_prefixes),  # type: ignore[union-attr]
            **state,
        )

    def _start_handshake(
        self,
        flow: http.HTTPFlow,
        provider: Provider,
        host: str,
        tags_header: str | None,
        route: str,
        live: gemini_live.Endpoint | None = None,
        *,
        responses_ws: bool = False,
        openai_live_ws: bool = False,
        sideband: str | None = None,
        fork: str | None = None,
        translation: bool = False,
    ) -> None:
        """A WebSocket handshake, OpenAI Realtime's (``translation``: a Realtime translation
        session's), (``live``) Gemini Live's, (``responses_ws``) OpenAI Responses' or
        (``openai_live_ws``) OpenAI Live's (``sideband``: a sideband attached to that session id;
        ``fork``: a fork of that stored session; either's row path its own path): a call being
        started (attributed, checked); its work is metered as the session runs (see
        websocket_message). ``route``: its path and query as read."""
        path, _, query = route.partition("?")
        headers = flow.request.headers
        if live is None:
            credentials = self._api_key(provider, headers, query)
            if credentials.key is None:  # a browser's key rides in the subprotocols
                browser = openai_realtime.key_in_subprotocols(headers.get("sec-websocket-protocol"))
                credentials = credentials._replace(key=browser)
            flavor, row_path = openai_realtime.FLAVOR, _SLASHES.sub("/", path).rstrip("/")
            if responses_ws:
                flavor, row_path = openai_responses_ws.FLAVOR, openai_responses_ws.ROW_PATH
            elif openai_live_ws:
                flavor = openai_live.FLAVOR
                row_path = row_path if sideband is not None or fork is not None else openai_live.ROW_PATH
        else:
            credentials = self._pick_key(self._live_credentials(live, headers, query))
            flavor, row_path = gemini_live.FLAVOR, gemini_live.row_path(path)
        handshake = None
        if live is None and not (responses_ws or openai_live_ws):
            handshake = provider.realtime_translation if translation else provider.realtime
        self._open_call(
            flow,
            provider,
            host,
            row_path,  # never the query string: it may hold the key
            flavor,
            credentials,
            tags_header,
            handshake=handshake,
            live=live,
            responses_ws=responses_ws,
            openai_live=openai_live_ws,
            live_sideband=sideband,
            live_fork=fork,
            translation=translation,
        )

    def _start_mint(
        self,
        flow: http.HTTPFlow,
        provider: Provider,
        host: str,
        mints: openai_realtime_mints.Mints,
        kind: str,
        route: str,
        tags_header: str | None,
    ) -> None:
        """A Realtime or OpenAI Live session set up over HTTP (a mint): a call being started
        (attributed, checked in _mint_request). A WebRTC offer of bare SDP with an ephemeral key
        passes unfollowed: its model was fixed when the key was minted. With a standard key (the
        openai SDK sends bare SDP whenever no session is given) it opens the default session: a
        mint naming no model."""
        if _bare_sdp_offer(flow.request.headers, kind) and not _standard_key(flow.request.headers):
            return
        path, _, query = route.partition("?")
        credentials = self._api_key(provider, flow.request.headers, query)
        path = mints.row_path(path)
        live = kind in openai_realtime_mints.LIVE_KINDS
        flavor = openai_live.FLAVOR if live else openai_realtime.FLAVOR
        self._open_call(flow, provider, host, path, flavor, credentials, tags_header, mint=kind)

    @staticmethod
    def _live_credentials(live: gemini_live.Endpoint, headers: http.Headers, query: str) -> list[str]:
        """The credentials of a Gemini Live handshake: API keys (``x-goog-api-key``, ``?key=``) and
        ephemeral tokens (``Authorization: Token auth_tokens/...``, ``?access_token=``); on Vertex
        never the OAuth token (``Authorization: Bearer``), which rotates."""
        found = [k for raw in headers.get_all("x-goog-api-key") if (k := key_of_header(raw))]
        if live.reads_authorization:
            read = gemini_live.authorization_credential
            found += [k for raw in headers.get_all("authorization") if (k := read(raw))]
        return found + list(reversed(keys_in_query(query, live.key_query)))

    def _start_retrieval(self, flow: http.HTTPFlow, provider: Provider, host: str, route: str) -> bool:
        """A GET of a background response this proxy saw start, or its cancel (a POST answered
        with the response as it stands): meter it, as its call's. False when ``route`` (its path
        as read) is none of them."""
        path = route.partition("?")[0]
        get = flow.request.method == "GET"
        target = path if get else path.removesuffix(_CANCEL)
        results = get and provider.batch_api == "anthropic" and path.endswith(_RESULTS)
        if results:
            target = path.removesuffix(_RESULTS)
        found = _RESPONSE_PATH.search(target)
        if found is None:
            if get and provider.batch_api == "openai" and batches.flavor_for_path(path):
                self._batch_lists[flow] = (provider, host)  # a page of batches: read in `response`
                return True
            return False
        flavor = provider.flavor_for_path(target.rsplit("/", 1)[0])
        if flavor is None or flavor not in _BACKGROUND_FLAVORS:
            return False
        deletion = flow.request.method == "DELETE"
        if deletion and flavor not in _HELD_FLAVORS:
            return False
        state = self._retrieval(flow, provider, host, flavor, found.group(1))
        if state is not None:
            state.batch_results = results
            state.deletion = deletion
            self._calls[flow] = state
        elif flavor in _HELD_FLAVORS:  # settled already (by another proxy on the database)
            self.enforcer.budgets.settle(_hold_key(found.group(1)))
        return True

    def _retrieval(
        self, flow: http.HTTPFlow, provider: Provider, host: str, flavor: str, response_id: str
    ) -> CallState | None:
        """The state of a retrieval of ``response_id``, attributed as its call, if it is pending."""
        started, pending_in = None, None
        for pending in (self._background, *self._earlier_background):
            if (started := pending.get(response_id)) is not None:
                pending_in = pending
                break
        if started is None:
            return None
        path = flow.request.path.partition("?")[0]
        record = CallRecord(
            id=self._next_call_id(),
            ts=datetime.fromtimestamp(flow.request.timestamp_start, UTC),
            session_id=self.session_id,
            provider=provider.name,
            host=host.lower(),
            path=path,
            api_flavor=flavor,
            # environment, team, ..., the key's fingerprint: the starting call's (the fields this
            # version knows: another version may have written the entry)
            **(
                {"environment": self.policies.default_environment}
                | {name: started[name] for name in _STARTED_BY if name in started}
            ),
        )
        creation = started.get(_CREATION_KEY)
        if isinstance(creation, str):  # the creation row is the call; this row bills it, a part
            record.parent_id = creation
        state = CallState(provider=provider, record=record, retrieval=response_id, pending_in=pending_in)
        state.image_tool = call_from_json(started.get(_IMAGE_TOOL_KEY))
        return state

    async def _bill_listed_batches(self, flow: http.HTTPFlow) -> None:
        """``GET /v1/batches``: each batch of the page that is pending and has ended is billed on a
        row of its own, as a retrieval of it would be (the first to see it ended bills it)."""
        provider, host = self._batch_lists.pop(flow)
        response = flow.response
        if response is None or response.status_code >= 400:
            return
        try:
            content = content_of(response) or b""
        except BodyNotDecodable:
            return
        for metered in await _off_loop_if_large(batches.parse_list, content):
            assert metered.response_id is not None
            if batches.outcome(metered) == "wait":
                continue
            state = self._retrieval(flow, provider, host, batches.FLAVOR, metered.response_id)
            if state is not None:
                self._finish(flow, state, metered, aborted=False)

    def _claim(self, state: CallState, metered: Metered) -> bool:
        """Does this retrieval bill its background response? The first one to see it finished,
        with usage, takes it off the pending list; one that sees it ended without usage drops
        it; while it runs (a Gemini interaction's usage so far is a running total), it stays for
        a later GET."""
        assert state.retrieval is not None
        pending = state.pending_in or self._background
        if not state.claimed and state.record.api_flavor == batches.FLAVOR:
            # A batch: billed once ended, with or without a usage figure (a row says it is missing),
            # unless it used nothing (failed, or cancelled before any work).
            outcome = batches.outcome(metered)
            if outcome == "bill":
                state.claimed = pending.claim(state.retrieval)
            elif outcome == "drop":
                pending.claim(state.retrieval)
        elif not state.claimed and metered.response_status not in RUNNING:
            budgets, key = self.enforcer.budgets, _hold_key(state.retrieval)
            if metered.usage is not None:
                state.claimed = pending.claim(state.retrieval)
                if state.claimed:  # its reservation gives way to this row's cost, in one step
                    budgets.hand_over(key, state.record.id)
                else:  # billed already (by another proxy on the database): a hold here lets go
                    budgets.settle(key)
            elif metered.response_status is not None:
                pending.claim(state.retrieval)
                budgets.settle(key)  # ended unbilled: what it held is let go
        return state.claimed

    def _end_deleted(self, flow: http.HTTPFlow, state: CallState) -> None:
        """A background response (interaction) deleted: it can no longer be retrieved, so it is
        taken off the pending list without a row and its reservation let go."""
        assert state.retrieval is not None
        response = flow.response
        if response is None or response.status_code >= 300:
            return  # not deleted: still pending
        (state.pending_in or self._background).claim(state.retrieval)
        self.enforcer.budgets.settle(_hold_key(state.retrieval))

    def _keep_reservation(self, record: CallRecord, response_id: str) -> dict[str, Any] | None:
        """A background response starts running: its call's reservation stays held until it is
        billed or ends (``HOLD_S`` at most). What the pending entry remembers of it, if anything."""
        if record.api_flavor not in _HELD_FLAVORS:
            return None
        until = time.time() + HOLD_S
        kept = self.enforcer.budgets.keep(record.id, _hold_key(response_id), until)
        return None if kept is None else {"usd": str(kept), "until": until}

    def _release_ended_holds(self) -> None:
        """Let go of the holds of background responses no longer pending: billed, ended or deleted
        through another proxy on the database, which this one never hears of. A stat per hold;
        nothing at all without one."""
        kept = self.enforcer.budgets.kept()
        if not kept:
            return
        lists = (self._background, *self._earlier_background)
        for key in kept:
            response_id = key.removeprefix(_HOLD_PREFIX)
            if response_id != key and not any(pending.has(response_id) for pending in lists):
                self.enforcer.budgets.settle(key)

    def _hold_pending(self, pending: PendingResponses) -> None:
        """At start: hold again the reservations of the background responses still running, as
        their entries remember them (a restart, a script reload, another database)."""
        if not self.enforcer.budgets.has_budgets:
            return
        now = time.time()
        for response_id, started in pending.recent(HOLD_S, now):
            hold = started.get(_HOLD_FIELD)
            try:
                amount, until = Decimal(str(hold["usd"])), float(hold["until"])  # type: ignore[index]
            except (TypeError, KeyError, ValueError, ArithmeticError):
                continue  # none kept, or written by another version
            if not (now < until and amount.is_finite()):  # its end passed (NaN too)
                continue
            until = min(until, now + HOLD_S)
            environment = started.get("environment") or self.policies.default_environment
            scopes = scopes_for(environment, started.get("key_name"), started.get("user_name"))
            self.enforcer.budgets.keep_reserved(_hold_key(response_id), scopes, amount, until)

    def _pretty_host(self, request: http.Request) -> str:
        """``request.pretty_host``, remembered: parsing the Host header (regex, validation) costs
        ~20 µs inside the proxy, and a connection's requests all carry the same one."""
        key = (host_header(request), request.host)
        host = self._pretty_hosts.get(key)
        if host is None:
            host = request.pretty_host
            if len(self._pretty_hosts) >= MAX_REMEMBERED_HOSTS:
                self._pretty_hosts.clear()
            self._pretty_hosts[key] = host
        return host

    def _is_provider_host(self, request: http.Request) -> bool:
        return self.registry.for_host(self._pretty_host(request), request.port) is not None

    def _api_key(
        self, provider: Provider, headers: http.Headers, query: str, stand_in: str | None = None
    ) -> Credentials:
        """The caller's API key (or, for signed requests, its stable key id) and the request's
        other keys (see _pick_key).

        A request may carry several different keys (repeated headers, a header and ``?key=``):
        whichever the provider reads, the call cannot leave the environment its key is bound to
        that way (attribute() weighs them all). ``stand_in`` (Vertex's ``vertex:{project}``) is
        one more of them: an API key added to a call cannot unbind its project.
        """
        if provider.key_from_header is not None:
            found = [
                k
                for raw in header_all(headers, b"authorization")
                if raw and (k := provider.key_from_header(raw))
            ]
        else:
            found = [
                k
                for name in provider.key_headers
                for raw in header_all(headers, name.lower().encode())
                if (k := key_of_header(raw))
            ]
            if provider.key_query:
                found += reversed(provider.keys_in_query(query))  # the last one first, as read
        if stand_in is not None:
            found.append(stand_in)
        return self._pick_key(found)

    def _pick_key(self, found: list[str]) -> Credentials:
        """The credential whose fingerprint the row keeps, the other different ones (the first
        MAX_KEYS_EXAMINED in all: with more, only a fingerprint match decides), and a problem
        when there are several.

        The row's key: one policies.yaml maps by fingerprint, else by last4, else the first. It
        does not decide alone: attribute() weighs every key, never their order; a last4 match is
        four characters anyone can write beside a key of their own."""
        if len(found) <= 1 or len(keys := list(dict.fromkeys(found))) == 1:
            return Credentials(found[0] if found else None)
        problem = f"{len(keys)} different API keys in one request"
        unweighed = len(keys) > MAX_KEYS_EXAMINED
        if unweighed:
            problem += f" (the first {MAX_KEYS_EXAMINED} looked at)"
            keys = keys[:MAX_KEYS_EXAMINED]
        policies = self.policies
        chosen = next(
            (k for k in keys if policies.key_for(recent_key_fingerprint(k), None) is not None), None
        )
        chosen = chosen or next((k for k in keys if policies.key_for(None, k) is not None), keys[0])
        return Credentials(chosen, tuple(k for k in keys if k != chosen), problem, unweighed)

    def _client_process(self, flow: http.HTTPFlow) -> asyncio.Future[ClientProcess] | None:
        """Start (once per client connection) the lookup of the calling process, off the loop."""
        client = flow.client_conn
        future = self._processes.get(client.id)
        if future is None and client.peername:
            ip, port = client.peername[0], client.peername[1]
            names = frozenset(self._process_env_names())
            server = (client.sockname[0], client.sockname[1]) if client.sockname else None
            lookup = functools.partial(lookup_client_process, ip, port, names, server=server)
            future = start_lookup(lookup)
            self._processes[client.id] = future
        return future

    def _process_env_names(self) -> tuple[str, ...]:
        settings = self.policies.attribution
        return (*settings.environment_vars, *settings.team_vars, *settings.feature_vars)

    async def _attribute(self, state: CallState, *, users_checked: bool = True) -> None:
        """Fill the row's environment, team, feature, user and process fields. The calling
        process is waited for longer where users have limits, unless the call is not held to them
        (``users_checked`` False: an unmetered request, checked against the allowlist alone)."""
        deciding = users_checked and self.policies.limits_users(budgets=not state.subscription)
        process, lookup_problem = await wait_for_process(
            state.process, PROCESS_LOOKUP_TIMEOUT, deciding=deciding
        )
        if lookup_problem is not None:
            state.errors.append(lookup_problem)
        decided = attribute(
            policies=self.policies,
            header=state.tags_header,
            api_key=state.api_key,
            fingerprint=state.record.key_fingerprint,
            process=process,
            hostname=self.hostname,
            forced_environment=self.forced_environment,
            other_keys=state.other_keys,
            keys_unweighed=state.keys_unweighed,
            lookup_problem=lookup_problem,
        )
        state.api_key, state.other_keys = None, ()  # keep keys in memory no longer than needed
        state.key_conflict = decided.key_conflict
        record = state.record
        record.environment = decided.environment
        record.environment_source = decided.environment_source
        record.team, record.feature, record.tags = decided.team, decided.feature, decided.tags
        if state.path_tags:
            # What the path says (Vertex's project) beats a header's claim of the same tag.
            record.tags = _with_tags(record.tags, state.path_tags)
        record.key_name = decided.key_name
        state.errors.extend(decided.problems)
        if process is not None:
            _describe_client(record, process)
        record.user_name = decided.user  # what it is decided and charged as: a late lookup keeps it
        state.unknown_user, state.user_decided = decided.unknown_user, deciding

    async def _attribute_unsent(self, flow: http.HTTPFlow, state: CallState) -> None:
        """A call an addon before the meter answered in its ``request`` hook (mitmproxy's
        ``block_list`` with a status): it is never sent. Its row is attributed and names the model
        it asked for, as any row does; nothing is decided, reserved or counted, and it is not
        billed (``_fill_record``)."""
        state.answered_unsent = True
        await self._attribute(state, users_checked=False)  # nothing decided: no long wait
        record = state.record
        if state.video is not None:  # a form or Veo's JSON, read as the video path reads it
            record.model_requested = (await self.video_calls.read_job(flow, state, state.video)).model
            return
        if state.unmetered or record.api_flavor in MEDIA_FLAVORS or record.api_flavor == batches.FLAVOR:
            return  # a body read its own way: never read here as JSON
        body = await self._request_json(flow, state)
        record.model_requested = state.provider.request_model(state.route or flow.request.path, body)

    @_never_raises
    async def request(self, flow: http.HTTPFlow) -> None:
        # The call's state, held from the start: a script reload while the hook waits hands it to
        # the new instance (whose ``running`` takes it over at once); the same object either way.
        state = self._calls.get(flow) or _HANDED_OVER.get(flow)
        try:
            await self._request(flow)
        finally:
            if state is not None or (state := self._calls.get(flow)) is not None:
                state.released_at = time.time()

    async def _request(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None:
            if self._uploads and flow in self._uploads and flow.response is None:
                await self._read_upload(flow)
            return
        if state.retrieval is not None:
            return  # a retrieval was attributed when its response started, and is never refused
        if flow.response is not None:  # answered by an addon that runs before the meter
            # A streamed request body went upstream as it was read: the provider's answer follows.
            if not (state.opens_socket or flow.request.stream):
                await self._attribute_unsent(flow, state)
            return
        if state.handshake is not None:
            await self._handshake_request(flow, state, state.handshake)
            return
        if state.live is not None or state.responses_ws or state.openai_live:
            # Live (Gemini's, OpenAI's) names its model in its first message, Responses in each
            # response.create; a rate limit counts each session, and each create, not the socket
            # (an OpenAI Live sideband's session was counted where it was set up).
            counted = state.live is not None or (state.openai_live and state.live_sideband is None)
            await self._unnamed_model_handshake_request(flow, state, counted=counted)
            return
        if state.mint is not None:
            await self._mint_request(flow, state, state.mint)
            return
        if state.unmetered:
            await self._unmetered_request(flow, state)
            return
        if state.video is not None:
            await self.video_calls.request(flow, state, state.video)
            return
        await self._attribute(state)
        record = state.record
        if record.api_flavor == batches.FLAVOR:
            await self._batch_request(flow, state)
            return
        form = None
        if record.api_flavor in MEDIA_FLAVORS:  # images, audio: never estimated offline, maybe an upload
            body, form = await self._media_request(flow, state)
        else:
            body = await self._request_json(flow, state)
            state.request_body = body  # in memory only: an offline estimate if no usage comes back
        provider = state.provider
        route = state.route or flow.request.path  # the path as read
        model = form.model if form is not None else provider.request_model(route, body)
        fallbacks = provider.fallback_models(body) if provider.fallback_models is not None else None
        if model is None and fallbacks is not None and fallbacks.models:
            model = fallbacks.models[0]  # OpenRouter starts with the list's first entry
        record.model_requested = record.model_sent = model
        if body is not None:
            record.streamed = body.get("stream") is True
        image_request = None  # what an image call asks for: its reservation's output
        edited = 0  # an edit's input images: its reservation's image input
        if record.api_flavor == "images":
            image_request = form.fields if form is not None else body
            edited = input_images(route, body, form)

        text_size = state.request_size - (inline_image_bytes(body) if edited and form is None else 0)
        # The image_generation tool's model is held to the allowlist too (its images reserved at
        # the model it will run).
        tools = image_tools(body) if record.api_flavor == "responses" else ()
        in_objects = fallbacks.tool_objects if fallbacks and record.api_flavor == "responses" else ()
        rules = None
        if tools or in_objects:  # a LiteLLM fallback object's image tools too
            restricted = self.decider.models_restricted(record.environment)
            rules = rule_image_tools(
                self.enforcer,
                record.provider,
                record.environment,
                tools,
                restricted,
                tool_choice_none(body),
                provider.deployments,
                flow.request.headers.get(DEPLOYMENT_HEADER),
            )
            rules = rule_fallback_object_tools(
                rules, self.enforcer, record.provider, record.environment, body, in_objects, restricted
            )
        # An advisor tool's model too (Anthropic's, OpenRouter's): it runs within the call, at its
        # own rates.
        advisors = None
        if provider.advisor_tools is not None and body is not None:
            advisors = provider.advisor_tools(record.api_flavor, body)
        advised, advisor_models = self.decider.rule_advisors(record, advisors)
        tool_models = rules.changes if rules is not None else {}
        svg_models = rules.svg_changes if rules is not None else {}
        rewrites_tools = bool(tool_models or svg_models or (rules is not None and rules.objects))
        header_deployment = rules.header if rules is not None else None  # Azure: a downgraded header
        priced_body = reserved_body(body, rules, advisor_models)  # at the tool models sent
        estimate = self.cost_estimate(
            record.provider,
            text_size,
            priced_body,
            record.inference_geo,
            image_request,
            edited,
            flavor=record.api_flavor,
        )
        if (answers := answers_asked(record.api_flavor, body)) > 1:
            record.answers = answers  # stored: the history read back at a restart divides by it
            if len(self._answers_of) < MAX_ANSWER_COUNTS:
                self._answers_of[record.id] = answers
        # OpenRouter's fallback models, Anthropic's server-side fallbacks: each held to the
        # allowlist; the call reserved at the dearest (Anthropic's chain: at each hop it may bill).
        ruled = self.decider.rule_fallbacks(record, fallbacks) if fallbacks is not None else None
        chain = fallbacks is not None and fallbacks.chain  # Anthropic's: as its reader says
        # Beside Anthropic's chain: LiteLLM's other lists, what the chain's objects name of their own.
        routing = provider.routing_models(body) if provider.routing_models is not None else None
        routed = self.decider.rule_fallbacks(record, routing) if routing is not None else None
        # Azure's v1 path naming one deployment and its body another: reserved at the dearer.
        disagreement = _azure_disagreement(provider, route, body) if model is None else None
        if ruled is not None or routed is not None or disagreement is not None:
            estimate = with_fallback_lists(
                estimate,
                # a hop's body at the text rates (no image request), at the call's geo and flavor
                functools.partial(
                    self.cost_estimate,
                    record.provider,
                    text_size,
                    geo=record.inference_geo,
                    flavor=record.api_flavor,
                ),
                body,
                priced_body,
                model,
                chain=chain,
                fallbacks=fallbacks,
                ruled=ruled,
                routing=routing,
                routed=routed,
                also=disagreement[1] if disagreement is not None else (),
            )
        decision = self._decide(state, record.model_requested, estimate)
        decision = self.decider.hold_to_lists(
            decision,
            record,
            unreadable=disagreement[0] if disagreement is not None else UNREADABLE_MODEL,
            tools=rules,
            lists=(ruled, routed, advised),
        )
        decision = self.decider.refuse_unsendable(decision, record, provider, model, advisors, advisor_models)
        downgrade = decision.model_sent if decision.action == "downgraded" else None
        rewrites_fallbacks = ruled is not None and ruled.changed and decision.refusal is None
        rewrites_routing = routed is not None and routed.changed and decision.refusal is None
        rewrites_advisors = bool(advisor_models) and decision.refusal is None
        # Nor a fallbacks list naming the model the call now runs, or an entry twice, by rewriting.
        dropped: list[int] = []
        rewriting = bool(downgrade or rewrites_fallbacks) and decision.refusal is None and chain
        if rewriting and fallbacks is not None and ruled is not None and fallbacks.error is None:
            dropped = repeated_fallbacks(model, downgrade or model, fallbacks.models, ruled.sent)
        new_path, new_body = route, body
        if downgrade or (
            (rewrites_tools or rewrites_fallbacks or rewrites_advisors or rewrites_routing)
            and decision.refusal is None
        ):
            try:
                new_path, new_body = rewritten_request(
                    provider,
                    route,
                    body,
                    form=form is not None,
                    downgrade=downgrade,
                    tool_rules=rules if rewrites_tools else None,
                    fallbacks=(ruled.sent, fallbacks) if rewrites_fallbacks and ruled is not None else None,
                    advisor_models=advisor_models if rewrites_advisors else None,
                    routing=(routed.sent, routing) if rewrites_routing and routed is not None else None,
                    dropped=dropped,
                )
            except ValueError as exc:
                refused = record.model_requested
                if not downgrade:  # the tool's model it was to be rewritten from
                    refused = next((t.runs for t in tools if t.index in tool_models), None)
                    refused = refused or next((t.svg_model for t in tools if t.index in svg_models), None)
                decision = self.decider.refuse_instead(decision, record, refused or "?", str(exc))
        if self._answer_if_refused(flow, state, decision):
            return
        state.image_tool = rules.call if rules is not None else None
        if advisors is not None and advisors.tools:
            state.advisor_sent = {
                base_model(sent): (tool.model, sent, "downgraded" if sent != tool.model else "allowed")
                for tool, sent in zip(
                    advisors.tools,
                    [advisor_models.get(t.where, t.model) for t in advisors.tools],
                    strict=True,
                )
            }
        inject = record.streamed and record.api_flavor in provider.usage_opt_in_flavors and body is not None
        if inject:
            options = body.get("stream_options")  # type: ignore[union-attr]
            inject = options is None or (
                isinstance(options, dict) and options.get("include_usage") is not True
            )
        if header_deployment is not None:  # Azure: the image deployment header's downgrade
            flow.request.headers[DEPLOYMENT_HEADER] = header_deployment
        if not (
            downgrade
            or inject
            or rewrites_tools
            or header_deployment
            or rewrites_fallbacks
            or rewrites_advisors
            or rewrites_routing
        ):
            return
        if inject and new_body is not None:
            options = {**(new_body.get("stream_options") or {}), "include_usage": True}
            new_body = {**new_body, "stream_options": options}
        # Only once the new request is in place does the row (and the client's notice) say so.
        spliced = None
        rewritten = downgrade or rewrites_tools or rewrites_fallbacks or rewrites_advisors or rewrites_routing
        if inject and not rewritten and "stream_options" not in body:  # type: ignore[operator]
            spliced = _with_usage_requested(content_of(flow.request) or b"")
        if spliced is not None:
            set_content(flow.request, spliced)
        elif new_body is not body and new_body is not None:
            size = len(flow.request.raw_content or b"")
            flow.request.content = await _off_loop_if_large(_dump_json, new_body, size)
        if new_path != route:  # the model is in the path (Gemini, Vertex, Azure)
            flow.request.path = new_path
        notices = [decision.notice] if downgrade and decision.notice else []
        if downgrade:
            record.model_sent = downgrade
        if (rewrites_tools or header_deployment) and rules is not None:
            notices += rules.notices
            log.info("tokometer: %s", "; ".join(rules.notices))
        if rewrites_fallbacks and ruled is not None:
            record.action = "downgraded"  # the request as sent is not the one asked for
            notices += ruled.notices
            log.info("tokometer: %s", "; ".join(ruled.notices))
        if rewrites_routing and routed is not None:
            record.action = "downgraded"
            notices += routed.notices
            log.info("tokometer: %s", "; ".join(routed.notices))
        if rewrites_advisors and advised is not None:  # the advisor's own row says its downgrade
            notices += advised.notices
            log.info("tokometer: %s", "; ".join(advised.notices))
        if dropped and ruled is not None:
            names = ", ".join(dict.fromkeys(ruled.sent[i] for i in dropped))
            said = (
                f"fallbacks list: {names} dropped (the call now runs it, or an entry before it "
                "names it: a fallback to the model that just declined would only repeat it)"
            )
            record.action = "downgraded"
            notices.append(said)
            log.info("tokometer: %s", said)
        state.notice = "; ".join(notices) or None
        state.injected_usage = inject

    async def _handshake_request(
        self, flow: http.HTTPFlow, state: CallState, handshake: openai_realtime.Handshake
    ) -> None:
        """Check a Realtime (or Realtime translation) handshake like any call: its model is the
        query's ``model`` (Azure: the deployment). A downgrade rewrites that parameter; a refusal
        answers the handshake here. Nothing is reserved against the budgets: the handshake is not
        billed, its responses are (each counts as it ends, and a spent budget caps the session)."""
        await self._attribute(state)  # drops the key
        record = state.record
        path, _, query = flow.request.path.partition("?")
        record.model_requested = record.model_sent = handshake.model(query)
        decision = self._decide(state, record.model_requested)
        sideband = handshake.has_sidebands and handshake.is_sideband(query)
        if decision.refusal is None and record.model_requested is None and not sideband:
            if not state.translation and handshake.is_transcription(query):  # checked in the session
                state.transcription_unnamed = self.decider.models_restricted(record.environment)
            else:
                decision = self.decider.unknown_model(record, decision) or decision
        downgrade = decision.model_sent if decision.action == "downgraded" else None
        new_query = query
        if downgrade:
            try:
                new_query = handshake.with_model(query, downgrade)
            except ValueError as exc:
                decision = self.decider.refuse_instead(
                    decision, record, record.model_requested or "?", str(exc)
                )
        if self._answer_if_refused(flow, state, decision):
            return
        if downgrade:
            flow.request.path = f"{path}?{new_query}"
            record.model_sent, state.notice = downgrade, decision.notice

    async def _unnamed_model_handshake_request(
        self, flow: http.HTTPFlow, state: CallState, *, counted: bool
    ) -> None:
        """Check a handshake like any call, but for its model: a Gemini Live or OpenAI Live session
        names it in its first message (checked then, see SocketMeter._check_session_model), a
        Responses WebSocket in each
        ``response.create`` (see _responses_create). A spent budget or a rate limit refuses it
        here; nothing is reserved. ``counted=False``: a rate limit refuses it when reached, but
        the handshake is not one of its requests (each create is)."""
        await self._attribute(state)  # drops the key
        decision = self._decide(state, None)
        if not counted:
            self.enforcer.withdraw(decision, None)
        self._answer_if_refused(flow, state, decision)

    async def _mint_request(self, flow: http.HTTPFlow, state: CallState, kind: str) -> None:
        """Check a Realtime session minted over HTTP (a client secret, a beta session, a WebRTC offer,
        a SIP accept), or an OpenAI Live one (WebRTC, SIP accept), like any call: its media go to the
        provider directly, so every model it names (its model, its transcription model, a Live
        session's delegation model) is checked now. A disallowed one is downgraded by
        rewriting it in the JSON body (every other member kept), or refused; a WebRTC offer's form
        is never rewritten. A spent budget or a rate limit refuses it too. Nothing is reserved:
        the mint is not billed (see _end_mint)."""
        await self._attribute(state)  # drops the key
        record = state.record
        mints = state.provider.realtime_mints
        assert mints is not None
        content_type = flow.request.headers.get("content-type", "")
        body: dict[str, Any] | None = None
        if _bare_sdp_offer(flow.request.headers, kind):  # with a standard key (see _start_mint)
            found = openai_realtime_mints.NamedModels(
                error="the offer is bare SDP with a standard API key: its session is the default one"
            )
        elif kind == openai_realtime_mints.CALL and is_form(content_type):
            try:
                content = content_of(flow.request) or b""
            except BodyNotDecodable as exc:  # its text names the encoding, never the offer's
                found = openai_realtime_mints.NamedModels(error=f"the offer: {exc}")
            else:
                read = functools.partial(
                    openai_realtime_mints.read_call_form,
                    content_type=content_type,
                    deployments=mints.deployments,
                )
                found = await _off_loop_if_large(read, content)
        else:
            body = await self._request_json(flow, state)
            found = openai_realtime_mints.read_mint(kind, body, mints.deployments)
        primary = found.models[0] if found.models else None
        record.model_requested = record.model_sent = primary.model if primary is not None else None
        decision = self._decide(state, record.model_requested)
        if decision.refusal is None and found.error is not None:
            reason = f"{found.error}, so its models cannot all be checked against the allowlist"
            decision = self.decider.unknown_model(record, decision, reason) or decision
        changes: dict[openai_realtime_mints.Where, str] = {}  # place -> the name written there
        downgraded: list[tuple[str, str | None]] = []  # (model asked for, notice)
        primary_sent = record.model_sent
        for named in found.models:
            if decision.refusal is not None:
                break
            ruled = decision
            if named is not primary:
                ruled = self.enforcer.decide_model(record.provider, record.environment, named.model)
            if ruled.refusal is not None:  # a transcription model: the row names the model refused
                self.enforcer.withdraw(decision, record.id)
                decision, record.model_requested = ruled, named.model
            elif ruled.action == "downgraded" and ruled.model_sent is not None:
                changes[named.where] = mints.written_as(ruled.model_sent)
                downgraded.append((named.model, ruled.notice))
                primary_sent = ruled.model_sent if named is primary else primary_sent
        if kind == openai_realtime_mints.LIVE_FORK and decision.refusal is None and primary is None:
            decision = self.decider.check_inherited_model(record, decision)
        new_body = body
        if decision.refusal is None and changes:
            try:
                if body is None:
                    raise ValueError(FORM_NOT_REWRITTEN)
                new_body = openai_realtime_mints.with_models(body, changes)
            except ValueError as exc:
                decision = self.decider.refuse_instead(decision, record, downgraded[0][0], str(exc))
            else:
                notice = "; ".join(n for _, n in downgraded if n)
                decision = dataclasses.replace(decision, action="downgraded", notice=notice)
        if self._answer_if_refused(flow, state, decision):
            return
        if kind in openai_realtime_mints.LIVE_KINDS and primary is not None and primary.where == _LIVE_MODEL:
            state.live_setup_model = primary_sent  # its sidebands' rows are priced by it (_end_mint)
        if new_body is not body and new_body is not None:
            size = len(flow.request.raw_content or b"")
            flow.request.content = await _off_loop_if_large(_dump_json, new_body, size)
            record.model_sent, state.notice = primary_sent, decision.notice
            log.info("tokometer: session set up at %s: %s", record.path, decision.notice)

    async def _remember_live_setup(self, flow: http.HTTPFlow, state: CallState) -> None:
        """An OpenAI Live set-up answered 2xx: the session it opened (its answer's id, or an accept's
        path's) is remembered with its model (the answer's, else the one this proxy sent; a fork's,
        which inherits its model, that of the stored session if it was set up here), so that a
        sideband attached to it prices its usage before the server names the model there."""
        response = flow.response
        if state.refusal is not None or response is None or not 200 <= response.status_code < 300:
            return
        try:
            content = content_of(response) or b""
        except BodyNotDecodable:
            content = b""  # an accept's id is in its path; a WebRTC answer's is not read
        read = functools.partial(openai_live.read_setup_answer, state.record.path)
        found = await _off_loop_if_large(read, content)
        if found is None:
            return
        model = found.model or state.live_setup_model
        forked = openai_live.fork_session(state.record.path)
        if model is None and forked is not None:
            model = remembered_live_setup(forked)
        remember_live_setup(found.session_id, model)

    async def _unmetered_request(self, flow: http.HTTPFlow, state: CallState) -> None:
        """Fail closed on a model-running request the proxy does not meter (a video, a batch, a
        fine-tuning job): the model its path or JSON body names is checked against the allowlist
        of its environment, where that restricts models. A disallowed one is refused (a row says
        so), never downgraded: rewriting a request of an API the proxy does not understand is not
        safe. Anything else passes as it came, unfollowed (no row): an allowed model, a request
        naming none (an upload, a vector store), an environment without model rules. No budget
        is reserved, no rate limit counted: what such a call costs is not known here."""
        record = state.record
        named = NamedModel(model=record.model_requested)
        deployments = state.provider.deployments  # Azure: a body's model is a deployment
        azure = state.provider.name == "azure"
        in_path = azure_path_deployment(state.route or flow.request.path) if azure else None
        # The v1 path /openai/v1/deployments/{name}/...: its body names a deployment too.
        if named.model is None or (in_path is not None and in_path[1]):
            in_body = await self._unmetered_body_model(flow)
            if in_body.model is not None and in_body.model in deployments:
                in_body = NamedModel(model=deployments[in_body.model])
            if named.model is None:
                named = in_body
            elif in_body.model is not None and in_body.model != named.model and in_path is not None:
                named = NamedModel(
                    problem=f"its path names deployment {in_path[0]!r} ({named.model}) and its body "
                    f"one serving {in_body.model}: which one Azure runs is not known"
                )
        if named.model is None and named.problem is None:  # a path that runs a default model
            named = NamedModel(model=default_model(record.provider, state.route or flow.request.path))
        if named.model is None and named.problem is None:
            self._calls.pop(flow, None)
            return
        # drops the key; no user's limits apply here: the ordinary wait for the process
        await self._attribute(state, users_checked=False)
        if not self.decider.models_restricted(record.environment):
            self._calls.pop(flow, None)
            return
        what = f"{record.path[:120]} is not metered by the proxy"
        if named.model is None:
            reason = f"its model could not be read ({named.problem}); {what}"
            decision = self.enforcer.refuse_model(record.provider, record.environment, "(unreadable)", reason)
        else:
            decision = self.enforcer.decide_model(record.provider, record.environment, named.model)
            if decision.action == "allowed":
                self._calls.pop(flow, None)
                return
            reason = what
            if decision.action == "downgraded":
                reason += ", which cannot safely rewrite its model: refused instead of downgraded"
            decision = self.enforcer.refuse_model(record.provider, record.environment, named.model, reason)
        record.model_requested = named.model
        self._answer_if_refused(flow, state, decision)

    @staticmethod
    async def _unmetered_body_model(flow: http.HTTPFlow) -> NamedModel:
        """The model a JSON body names (``unmetered_models.body_model``), or a multipart form's
        ``model`` field (``form_model``: its files never decoded), read off the event loop when
        large. A body that is no JSON object (a file's bytes), one that cannot be decoded: none
        named."""
        request = flow.request
        raw = request.raw_content or b""
        if not raw:
            return NamedModel()
        content_type = request.headers.get("content-type", "")
        read = form_reader(content_type) if is_form(content_type) else body_model
        if "content-encoding" not in request.headers:
            return await _off_loop_if_large(read, raw)
        try:
            content = await _off_loop_if_large(_decoded_content, request, len(raw))
        except BodyNotDecodable:
            return NamedModel()  # an encoding the provider cannot read either
        return await _off_loop_if_large(read, content)

    def _end_mint(self, flow: http.HTTPFlow, state: CallState, *, aborted: bool) -> None:
        """A mint is answered. Minted (2xx, 3xx): no row, as an upgraded Realtime handshake has none:
        the mint is not billed, and the session it opens goes to the provider over WebRTC or SIP,
        unmetered here (a $0 row would read as that session's cost). Refused by the proxy, answered
        with an error or failed: a row like any such call, not billed."""
        state.finished = True
        response = flow.response
        if not aborted and state.refusal is None and response is not None and response.status_code < 400:
            self._calls.pop(flow, None)
            return
        self._fill_record(flow, state, Metered(), state.errors, aborted=aborted)
        state.record.cost_usd, state.record.price_status = Decimal(0), NOT_BILLED
        self._submit(state.record)

    def _decide(
        self, state: CallState, model: str | None, estimate: Callable[[str | None], Decimal] | None = None
    ) -> Decision:
        """``RequestDecider.decide`` on the call ``state`` follows (its row, key conflict, plan and
        why its user is unknown)."""
        return self.decider.decide(
            state.record,
            model,
            estimate,
            key_conflict=state.key_conflict,
            subscription=state.subscription,
            unknown_user=state.unknown_user,
        )

    def _answer_if_refused(self, flow: http.HTTPFlow, state: CallState, decision: Decision) -> bool:
        """Put the decision on the row; a refusal is answered here (upstream is never contacted)
        and nothing was sent. True when refused. A call let through keeps its decision (its
        rate-limit hits): one killed by an addon before this one (mitmproxy's ``block_list``) is
        never sent, and takes back its hits and its reservation at once."""
        state.record.action = decision.action
        if decision.refusal is None:
            state.decision = decision
            if flow.error is not None:
                self._take_back_if_unsent(flow, state)
            return False
        flow.response = decision.refusal
        state.refusal = decision.message
        state.record.model_sent = None
        return True

    def _take_back_if_unsent(self, flow: http.HTTPFlow, state: CallState) -> None:
        """A call that never reached the provider (``_never_sent``) takes back its rate-limit hits
        and its budget reservation, as a refusal does: the provider saw no request."""
        decision = state.decision
        if decision is not None and _never_sent(flow, state):
            state.decision = None
            self.enforcer.withdraw(decision, state.record.id)

    def models_restricted(self, environment: str) -> bool:
        """Does ``environment`` allow only some models (policies enforced, no ``*``)?"""
        return self.decider.models_restricted(environment)

    # -- batch jobs (OpenAI's Batch API, Anthropic's Message Batches) ------------

    @staticmethod
    async def _inline_batch(flow: http.HTTPFlow) -> BatchInput:
        """The requests of an Anthropic Message Batch's creation, read for their models."""
        try:
            content = content_of(flow.request) or b""
        except BodyNotDecodable as exc:  # its text names the encoding, never the batch's prompts
            return BatchInput(size=len(flow.request.raw_content or b""), error=f"body: {exc}")
        return await _off_loop_if_large(batches.read_inline, content)

    def _finish_results(self, flow: http.HTTPFlow, state: CallState) -> None:
        """A Message Batch's results downloaded to their end: the first download bills the batch,
        one row per model (and inference geo) with the usage of its succeeded requests."""
        tap = state.results
        assert tap is not None and state.retrieval is not None
        state.finished = True
        if not tap.finished:  # an empty body: mitmproxy never called the tap
            tap(b"")
        pending = state.pending_in or self._background
        if not pending.claim(state.retrieval):
            return  # billed by another download already
        reader = tap.reader
        errors = list(state.errors)
        if tap.failed is not None:
            errors.append(f"the results were not read to their end ({tap.failed})")
        if reader.unreadable:
            errors.append(
                f"{reader.unreadable} of {reader.lines} results lines could not be read: not billed"
            )
        rows: list[tuple[str | None, str | None, Usage | None]] = [
            (model, geo, usage) for (model, geo), usage in sorted(reader.usage_by_model().items(), key=str)
        ]
        if not rows:
            if not (tap.failed or reader.unreadable):
                return  # no request succeeded: nothing billed
            rows = [(None, None, None)]  # billed, but the proxy could not read for how much
        base = dataclasses.replace(state.record)
        for i, (model, geo, usage) in enumerate(rows):
            state.record = dataclasses.replace(base, id=base.id if i == 0 else self._next_call_id())
            metered = Metered(usage=usage, model=model, service_tier=batches.TIER, inference_geo=geo)
            self._fill_record(flow, state, metered, [*errors], aborted=False)
            self._submit(state.record)

    async def _read_upload(self, flow: http.HTTPFlow) -> None:
        """``POST /v1/files``: a batch's input file (``purpose=batch``) is read for its models as the
        upload goes on (off the event loop when large); nothing of its content is kept."""
        content_type = flow.request.headers.get("content-type", "")
        try:
            content = content_of(flow.request) or b""
        except BodyNotDecodable:
            self._uploads.pop(flow, None)  # an encoding we cannot decode: its file stays unseen
            return
        read = functools.partial(batches.read_upload, content_type=content_type)
        if len(content) > INLINE_PARSE_LIMIT:
            # Read while the upload travels: joined when its answer names the file (`response`).
            self._uploads[flow] = asyncio.ensure_future(asyncio.to_thread(read, content))
        else:
            self._uploads[flow] = read(content)

    async def _remember_upload(self, flow: http.HTTPFlow) -> None:
        """The upload's answer names its file: remember what the file said, by that id."""
        found = self._uploads.pop(flow, None)
        if isinstance(found, asyncio.Future):
            found = await found
        response = flow.response
        if found is None or response is None or response.status_code >= 400:
            return
        try:
            file_id = batches.uploaded_file_id(content_of(response) or b"")
        except BodyNotDecodable:
            file_id = None
        if file_id is None:
            log.warning("tokometer: a batch input file's upload was answered without a file id")
            return
        self._batch_inputs.add(file_id, found.to_entry())

    def _batch_input(self, file_id: str) -> BatchInput | None:
        """What the input file ``file_id`` said when it was uploaded through a proxy on this database."""
        for remembered in (self._batch_inputs, *self._earlier_batch_inputs):
            entry = remembered.get(file_id)
            if entry is not None:
                return BatchInput.from_entry(entry)
        return None

    async def _batch_request(self, flow: http.HTTPFlow, state: CallState) -> None:
        """``POST /v1/batches`` (or Anthropic's ``/v1/messages/batches``): the models of its input
        file (of its inline requests) are checked as a call's would be (a disallowed one refuses
        it: a batch is never rewritten), its estimate reserved; the creation is a $0 row, and the
        batch is billed by the retrieval that sees it ended (Anthropic: its results download)."""
        record = state.record
        inline = state.provider.batch_api == "anthropic"
        file_id: str | None = None
        if inline:  # Anthropic: the requests are in the body (up to 256 MB), read one at a time
            found: BatchInput | None = await self._inline_batch(flow)
        else:
            body = await self._request_json(flow, state)  # not kept: a batch is never estimated offline
            file_id = batches.input_file_id(body)
            found = self._batch_input(file_id) if file_id is not None else None
        problem = None  # why not every model of the batch can be checked
        if inline:
            assert found is not None
            if found.error or found.unreadable or not found.models:
                problem = (
                    f"{found.unreadable} of {found.lines} requests of the batch have no readable "
                    "params.model, so they cannot be checked against the allowlist"
                )
                if found.error:
                    problem += f" ({found.error})"
        elif file_id is None:
            problem = "the batch names no input_file_id, so its models cannot be checked"
        elif found is None:
            problem = (
                f"its input file {file_id} was not uploaded through the proxy, so its models are "
                "unknown: upload the batch's input file through the proxy"
            )
        elif found.unreadable or not found.models:
            problem = (
                f"{found.unreadable} of {found.lines} lines of its input file {file_id} have no "
                "readable model, so they cannot be checked against the allowlist"
            )
            if found.error:
                problem += f" ({found.error})"
        # A Message Batch request's advisor tool and server-side fallbacks run other models too.
        also = found.also_runs if found is not None else ()
        if problem is None and found is not None and found.also_unreadable is not None:
            problem = (
                f"{found.also_unreadable}, so the models it may run cannot all be checked against "
                "the allowlist"
            )
        models = found.models if found is not None else ()
        if len(models) > 1:
            what = "its requests ask" if inline else "its input file asks"
            state.errors.append(f"{what} for {len(models)} models: {', '.join(models)}")
        if also:
            state.errors.append(f"its requests' advisor tools or fallbacks name {', '.join(also)}")
        rules = self.policies.environment(record.environment).models
        refused = None
        if self.policies.enforcing:
            refused = next((m for m in (*models, *also) if not rules.is_allowed(m)), None)
        model = refused or (models[0] if models else None)
        record.model_requested = record.model_sent = model
        if problem is not None:
            state.errors.append(problem)

        def estimate(model: str | None) -> Decimal:
            if found is None:
                return Decimal(0)
            # A line without an output cap reserves what its model writes here, as a call does.
            reserved = functools.partial(self.outputs.reserved, record.provider)

            def priced(one: str | None, size: int, output: int) -> Decimal:
                tokens = size // BYTES_PER_TOKEN
                return self.pricer.estimate(record.provider, one, tokens, output, service_tier=batches.TIER)

            # Each model's requests at that model's price (a haiku request beside opus ones never
            # prices them as haiku); what no model's requests account for (unreadable lines, the
            # body around the requests, an entry kept before it was counted by model) added to the
            # dearest of the batch's models.
            own: dict[str | None, tuple[int, int]] = {}  # model -> (bytes, output tokens)
            size, caps, uncapped = found.size, found.output_caps, found.uncapped
            for one, one_size, one_caps, one_uncapped in found.by_model:
                own[one] = (one_size, one_caps + one_uncapped * max(RESERVED_OUTPUT_TOKENS, reserved(one)))
                size, caps, uncapped = size - one_size, caps - one_caps, uncapped - one_uncapped
            rest = BatchInput(
                found.models,
                size=max(0, size),
                output_caps=max(0, caps),
                uncapped=max(0, uncapped),
                uncapped_by_model=() if found.by_model else found.uncapped_by_model,
            )
            rest_output = rest.output_tokens(RESERVED_OUTPUT_TOKENS, reserved)
            cost = sum((priced(one, *counts) for one, counts in own.items()), Decimal(0))
            if rest.size or rest_output:
                extra = Decimal(0)
                for one in found.models or (model,):
                    one_size, one_output = own.get(one, (0, 0))
                    with_rest = priced(one, one_size + rest.size, one_output + rest_output)
                    extra = max(extra, with_rest - (priced(one, one_size, one_output) if one in own else 0))
                cost += extra
            # Its requests' advisor consultations and fallback hops, as a plain call reserves them
            # (each reads its request and writes up to its cap, else what its model usually writes
            # here), at the batch price.
            for one, size, capped, uncapped in found.also_billed:
                written = capped + uncapped * self.outputs.reserved(record.provider, one)
                cost += self.pricer.estimate(
                    record.provider, one, size // BYTES_PER_TOKEN, written, service_tier=batches.TIER
                )
            return cost

        decision = self._decide(state, model, estimate)
        if refused is not None and decision.action in ("blocked", "downgraded"):
            # Say where the model comes from; a downgrade cannot be made: the file is uploaded.
            if inline and refused not in models:
                why = (
                    "a request of the batch runs it as its advisor tool's or fallbacks' model, and "
                    "a batch's requests are never rewritten"
                )
            elif inline:
                why = INLINE_BATCH_NOT_REWRITTEN
            elif decision.action == "downgraded":
                why = BATCH_NOT_REWRITTEN
            else:
                why = f"its input file {file_id} asks for it"
            decision = self.decider.refuse_instead(decision, record, refused, why)
        elif decision.refusal is None and problem is not None:
            decision = self.decider.unknown_model(record, decision, problem) or decision
        self._answer_if_refused(flow, state, decision)

    def cost_estimate(
        self,
        provider: str,
        size: int,
        body: dict[str, Any] | None,
        geo: str | None = None,
        image_request: Mapping[str, Any] | None = None,
        edited: int = 0,
        flavor: str | None = None,
    ) -> Callable[[str | None], Decimal]:
        """What a call may cost at the model it runs, for its budget reservation:
        ``reservation.cost_estimate`` at the prices, output history and carried contexts in force
        (public: the SocketMeter reserves a Responses WebSocket's creates with it). The estimate
        keeps the prices it was made with: it is run at once, inside ``Enforcer.decide``, before
        anything is awaited (a policies reload replaces ``self.pricer`` only between calls)."""
        return reservation_cost_estimate(
            self.pricer,
            self.outputs,
            self.contexts,
            self.registry.by_name(provider),
            provider,
            size,
            body,
            geo,
            image_request,
            edited,
            flavor,
        )

    @staticmethod
    async def _request_json(flow: http.HTTPFlow, state: CallState) -> dict[str, Any] | None:
        """The request's JSON object, or None (with the reason on the row)."""
        state.request_size = len(flow.request.raw_content or b"")  # if it cannot be decoded
        try:
            content = content_of(flow.request)
        except BodyNotDecodable as exc:  # whatever the codec raised; its text holds no body
            state.errors.append(f"request body: {exc}")
            return None
        state.request_size = len(content or b"")  # decoded: a gzip body's prompt is its cost
        try:
            body = await _off_loop_if_large(json.loads, content or b"")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            state.errors.append(f"request body is not JSON ({type(exc).__name__})")
            return None
        if not isinstance(body, dict):
            state.errors.append("request body is not a JSON object")
            return None
        return body

    @staticmethod
    async def _media_request(
        flow: http.HTTPFlow, state: CallState
    ) -> tuple[dict[str, Any] | None, FormFields | None]:
        """An image or transcription request: its JSON object, or the fields of a multipart upload
        (read without decoding its files). Neither is kept for an offline estimate."""
        content_type = flow.request.headers.get("content-type", "")
        if not is_form(content_type):
            return await Meter._request_json(flow, state), None
        try:
            content = content_of(flow.request) or b""
        except BodyNotDecodable as exc:  # its text names the encoding, never the form's fields
            form = FormFields(error=f"upload: {exc}")
        else:
            form = await _off_loop_if_large(functools.partial(read_form, content_type=content_type), content)
        state.request_size = form.text_bytes  # its files are no tokens a size could tell
        if form.error is not None:
            state.errors.append(form.error)
        return None, form

    @_never_raises
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        response = flow.response
        if response is None:
            return
        if state is None:
            # Not metered (another path, a GET), yet intercepted because the host is a provider's:
            # a stream, or a download that may be large (a file's content, batch results), must
            # still pass on as it comes, which mitmproxy does not do by default. A page of batches
            # (at most 100 small objects), and the answer to a batch input file's upload (a file
            # object: its id), are held whole to be read, whether their size is given or not.
            listing = self._batch_lists and flow in self._batch_lists
            uploaded = self._uploads and self._uploads.get(flow) is not None
            if (listing or uploaded) and not _is_stream(response):
                return
            if (_is_stream(response) or _maybe_large(response)) and self._is_provider_host(flow.request):
                response.stream = True
            return
        if flow.is_replay == "response":
            return  # server playback's recording: not metered (see response), passed on whole
        if state.batch_results and response.status_code < 400:
            if response.status_code != 200:  # a part of them (206, a resumed download): never bills
                response.stream = True
                return
            # A Message Batch's results (JSONL, maybe gigabytes): passed on as they come, read on the side.
            state.results = ResultsTap(response.headers.get("content-encoding"))
            response.stream = state.results
            return
        if state.notice:
            response.headers[NOTICE_HEADER] = state.notice
        if state.video is not None:  # a job object or an operation: small, read whole
            if _is_stream(response):
                response.stream = True
            return
        content_type = header(response.headers, b"content-type") or ""
        framing = state.provider.stream_framing(state.route or flow.request.path, content_type)
        if framing is None or response.status_code >= 400:
            if response.status_code >= 400 and _is_stream(response):
                response.stream = True  # an error answered as a stream: nothing to meter, never held back
            # A whole body, buffered by mitmproxy and parsed in `response`: JSON, or SSE a parser
            # reads whole (Gemini's :generateContent?alt=sse).
            return
        encoding = header(response.headers, b"content-encoding")
        try:
            tap = StreamTap(
                state.provider, state.record.api_flavor, encoding, state.injected_usage, framing=framing
            )
        except Exception as exc:
            state.errors.append(f"stream not metered: {exc}")
            response.stream = True  # still never buffer a stream
            return
        if state.injected_usage:
            # Events are regrouped (minus the injected usage chunk): forward them decoded.
            pop_header(response.headers, b"content-encoding")
            pop_header(response.headers, b"content-length")
        if self.store is not None:
            tap.on_final_event = functools.partial(self._journal_stream_end, flow, state)
        state.tap = tap
        response.stream = tap

    @_never_raises
    async def response(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if flow.is_replay == "response" or (
            state is not None and state.answered_unsent and state.mint is None
        ):
            # Server playback answered from a recording, or an addon before the meter answered it
            if state is not None and not state.finished:
                self._end_replayed(flow, state)
            return
        if state is None:
            if self._uploads and flow in self._uploads:
                await self._remember_upload(flow)
            elif self._batch_lists and flow in self._batch_lists:
                await self._bill_listed_batches(flow)
            return
        if state.finished:
            return
        if state.opens_socket:
            self.sockets.end_handshake(flow, state, aborted=False)
            return
        if state.mint is not None:
            if state.live_setup_model is not None or state.mint == openai_realtime_mints.LIVE_FORK:
                await self._remember_live_setup(flow, state)
            self._end_mint(flow, state, aborted=False)
            return
        if state.results is not None:
            self._finish_results(flow, state)
            return
        if state.video is not None:
            self.video_calls.finish(flow, state, aborted=False)
            return
        response = flow.response
        metered: Metered
        try:
            if state.tap is not None:
                if not state.tap.finished:  # an empty body: mitmproxy never called the tap
                    state.tap(b"")
                metered = state.tap.result()
            elif response is not None and response.status_code < 400:
                try:
                    content = content_of(response)
                except BodyNotDecodable as exc:  # its text names the encoding, never the completion
                    metered = Metered(error=f"response body: {exc}")
                else:
                    parse = functools.partial(
                        _parse_body, state.provider, state.record.api_flavor, response.headers
                    )
                    metered = await _off_loop_if_large(parse, content or b"")
            else:
                metered = Metered()
        except Exception:
            # A bug reading the answer: the call is still finished (its tokens counted offline, at
            # once, as for an answer without usage), its reservation given way to that count.
            log.exception("tokometer: reading the answer of call %s failed", state.record.id)
            self._finish(flow, state, Metered(error=METERING_FAILED_NOTE), aborted=False, now=True)
            return
        self._finish(flow, state, metered, aborted=False)

    def _end_replayed(self, flow: http.HTTPFlow, state: CallState) -> None:
        """A call mitmproxy's server playback answered from a recording: the provider never saw it.
        Its rate-limit hits and reservation are taken back; a call's row is not billed, without
        the recording's usage (_fill_record); a retrieval, a deletion, a mint or a handshake
        claims, ends and stores nothing (what its recording says happened upstream is not news)."""
        self._take_back_if_unsent(flow, state)
        if state.opens_socket or state.mint is not None or state.retrieval is not None or state.deletion:
            state.finished = True
            self._calls.pop(flow, None)
        else:
            self._finish(flow, state, Metered(), aborted=False)

    @_never_raises
    def error(self, flow: http.HTTPFlow) -> None:
        if self.sockets.failed(flow):  # the WebSocket failed: websocket_end may not follow
            return
        state = self._state(flow)
        if state is None or state.finished:
            return
        if state.unmetered and state.refusal is None:  # not checked yet: no row, as before
            self._calls.pop(flow, None)
            return
        self._take_back_if_unsent(flow, state)  # never sent: its rate-limit hits and reservation
        if state.video is not None:
            if flow.error is not None:
                state.errors.append(flow.error.msg)
            self.video_calls.finish(flow, state, aborted=True)
            return
        if state.opens_socket or state.mint is not None:
            if flow.error is not None:
                state.errors.append(flow.error.msg)
            if state.mint is not None:
                self._end_mint(flow, state, aborted=True)
            else:
                self.sockets.end_handshake(flow, state, aborted=True)
            return
        if flow.error is not None:
            state.errors.append(flow.error.msg)
        try:
            metered = state.tap.result() if state.tap is not None else Metered()
        except Exception:  # a bug reading the stream so far: the call is still finished
            log.exception("tokometer: reading the stream of call %s failed", state.record.id)
            metered = Metered(error=METERING_FAILED_NOTE)
        self._finish(flow, state, metered, aborted=True)

    # -- WebSocket sessions: OpenAI Realtime, Gemini Live, Responses (addon.socket_metering) --

    @property
    def _sessions(self) -> weakref.WeakKeyDictionary[http.HTTPFlow, SocketSession]:
        """The WebSocket sessions being metered (the SocketMeter's)."""
        return self.sockets.sessions

    @property
    def _close_websocket(self) -> Callable[..., bool]:
        """How the proxy closes a session it caps or refuses (SocketMeter.close_websocket)."""
        return self.sockets.close_websocket

    @_close_websocket.setter
    def _close_websocket(self, close: Callable[..., bool]) -> None:
        self.sockets.close_websocket = close  # type: ignore[method-assign]

    @_never_raises
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """One WebSocket message: metered, checked, maybe dropped (SocketMeter.message)."""
        await self.sockets.message(flow)

    @_never_raises
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        """A WebSocket on a provider's host that no session follows (an API the proxy does not
        meter) passes untouched; the log names it, once per host and path."""
        if self.sockets.session(flow) is not None or not self._is_provider_host(flow.request):
            return
        where = self._pretty_host(flow.request) + _SLASHES.sub("/", flow.request.path.partition("?")[0])
        if where in self._unmetered_sockets or len(self._unmetered_sockets) >= MAX_REMEMBERED_HOSTS:
            return
        self._unmetered_sockets.add(where)
        log.warning("tokometer: a WebSocket to %s passes unmetered (not an API the proxy meters)", where)

    @_never_raises
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        """A session's WebSocket closed: its work in flight gets its rows (SocketMeter.end)."""
        self.sockets.end(flow)

    # -- finishing -----------------------------------------------------------

    def _finish(
        self,
        flow: http.HTTPFlow,
        state: CallState,
        metered: Metered,
        *,
        aborted: bool,
        now: bool = False,
        fill: Callable[..., FinishedRow | None] | None = None,
        despite: Callable[[http.HTTPFlow, CallState, Metered], FinishedRow] | None = None,
    ) -> None:
        """The call ended: its row filled (by ``fill``, default ``_finished_row``) and handed to the
        store (its tokens counted offline first where none were reported). Whatever raises before
        the row is handed over, the row is still stored, with what was known and an error saying
        metering failed, and its reservation gives way to it, once: metering never loses a finished
        call nor leaves it reserved. ``despite`` builds that row (default ``_row_despite_failure``)."""
        state.finished = True
        try:
            ready = (fill or self._finished_row)(flow, state, metered, aborted=aborted)
        except Exception:
            log.exception("tokometer: metering call %s failed; its row is stored as is", state.record.id)
            ready = (despite or self._row_despite_failure)(flow, state, metered)
        if ready is not None:
            self._hand_over(ready, now=now)

    def _row_despite_failure(self, flow: http.HTTPFlow, state: CallState, metered: Metered) -> FinishedRow:
        """The row of a call whose metering raised as it finished: what was known (its status, the
        usage read), its error saying metering failed; handed over as it stands (no offline count)."""
        record = state.record
        with contextlib.suppress(Exception):
            if record.usage is None:
                record.set_usage(metered.usage)
            if record.status_code is None and flow.response is not None:
                record.status_code = flow.response.status_code
        record.error = "; ".join([*state.errors, METERING_FAILED_NOTE])[:1000]  # _fill_record's, if it ran
        return self._row_as_filled(state)

    def _row_as_filled(self, state: CallState) -> FinishedRow:
        """A call's row as it stands, handed over without images, body or usage (its request body
        dropped), to the store that journaled it ahead, else the one in use."""
        state.request_body = None
        return FinishedRow(
            state.record, state.journaled_in or self.store, [], None, Metered(), state.gave_way
        )

    def _finished_row(
        self, flow: http.HTTPFlow, state: CallState, metered: Metered, *, aborted: bool
    ) -> FinishedRow | None:
        """Fill a finished call's row, to be handed over (None: the call has no row)."""
        if state.tap is not None:
            state.tap.on_final_event = None  # it holds the flow: the weak map's entry must go
        again = state.gave_way  # what was held at the final event gives way to the row's cost
        if state.deletion:
            self._end_deleted(flow, state)
            return None
        if state.retrieval is not None and not self._claim(state, metered):
            return None  # still running, ended unbilled, or billed by another GET: no row
        background = _runs_in_background(state, metered)
        if background and metered.usage is not None:
            # A running total so far (a Gemini interaction): the retrieval's row bills it all.
            metered = dataclasses.replace(metered, usage=None)
        self._fill_record(flow, state, metered, state.errors, aborted=aborted)
        record = state.record
        # The tool's images: a row of their own, submitted before the call's row gives back its
        # reservation (which holds them too), so no budget check in between misses them.
        images = [] if background else self._tool_rows(state, metered)
        if background:
            # Background mode: billed when it finishes, on the row of its retrieval.
            assert metered.response_id is not None
            record.cost_usd, record.price_status, record.price_source = Decimal(0), BACKGROUND, None
            started = {name: getattr(record, name) for name in _STARTED_BY}
            started[_CREATION_KEY] = record.parent_id or record.id
            if state.image_tool is not None:  # its images' row: the tool's model as let through
                started[_IMAGE_TOOL_KEY] = call_to_json(state.image_tool)
            # Its reservation stays held while it runs (kept before the row goes to the store,
            # whose writer would release it): no budget check in between misses it.
            hold = self._keep_reservation(record, metered.response_id)
            if hold is not None:
                started[_HOLD_FIELD] = hold
            self._background.add(metered.response_id, started)
        body, state.request_body = state.request_body, None
        if not background:
            self._remember_context(record, body, metered)
        # The store that journaled the call ahead (its stream's final event) keeps it: a
        # tokometer_db switched meanwhile must not put it in two databases.
        return FinishedRow(record, state.journaled_in or self.store, images, body, metered, again)

    def _hand_over(self, ready: FinishedRow, *, now: bool = False) -> None:
        """Hand a finished call's row (and its images' rows) to its store, its tokens counted
        offline first where no usage was reported (in a thread, unless ``now``)."""
        record, store, images, body, metered, again = ready
        if images and (again or self.enforcer.budgets.reserves(record.id)):
            # Held at once: the call's reservation, which holds them too, gives way to the call's
            # own row's cost alone (_submit), so no budget check in between misses them.
            for row in images:
                self._price_now(row, settle=False)
        for row in images:
            self._submit(row, store)
        wanted, partial = _estimate_wanted(record, metered, body)
        if wanted:
            # No (final) usage reported, yet the provider likely billed: count the tokens ourselves.
            if now:
                self._estimate(record, body, metered.output_text, partial)
                self._submit(record, store, again=again)
            else:
                if store is not None:
                    store.journal(record)  # kept even if the proxy dies during the estimate
                task = asyncio.ensure_future(
                    self._estimate_then_submit(record, body, metered.output_text, store, partial, again=again)
                )
                self._estimates.add(task)
                task.add_done_callback(self._estimates.discard)
            return
        self._submit(record, store, again=again)

    @staticmethod
    def _fill_record(
        flow: http.HTTPFlow,
        state: CallState,
        metered: Metered,
        errors: list[str],
        *,
        aborted: bool,
    ) -> None:
        """Set the row's outcome: status, timings, usage, errors (appended to ``errors``)."""
        record = state.record
        lookup = state.process
        if record.client_pid is None and lookup is not None and lookup.done() and not lookup.cancelled():
            with contextlib.suppress(Exception):  # late at request time: describe the caller now
                _describe_client(record, lookup.result(), user=not state.user_decided)
        if record.client_pid is not None:
            # The row names its process (now, or in an earlier fill of it: a stream's journaled
            # row): "not identified in time" is no more, in the call's notes and in this copy.
            state.errors[:] = identified_late(state.errors, user_kept=state.user_decided)
            errors[:] = identified_late(errors, user_kept=state.user_decided)
        start = flow.request.timestamp_start
        record.duration_ms = round((time.time() - start) * 1000, 3)
        response = flow.response
        if response is not None:
            record.status_code = response.status_code
            if state.refusal is not None:
                errors.append(state.refusal)
            elif state.answered_unsent:
                errors.append(ANSWERED_UNSENT_NOTE)
            elif response.status_code >= 400:
                errors.append(f"upstream answered {response.status_code}")
        tap = state.tap
        if tap is not None:
            record.streamed = True
            if tap.first_chunk_at is not None:
                record.ttft_ms = round((tap.first_chunk_at - start) * 1000, 3)
            # Aborted: the client did not get the whole answer. Past the final event it has,
            # whatever happens to the rest of the body (a client that hangs up at [DONE]).
            record.aborted = (aborted or not tap.finished) and not tap.final_event_seen
        else:
            record.streamed = False if response is not None and not aborted else record.streamed
            record.aborted = aborted
        record.model_reported = metered.model
        if metered.iterations is not None and metered.iterations.served_by is not None:
            record.model_reported = metered.iterations.served_by  # a fallback served it: its rates
        record.service_tier = metered.service_tier
        # Where the path said it runs (Vertex's location) stands; else where the answer says.
        record.inference_geo = record.inference_geo or metered.inference_geo
        record.set_usage(metered.usage)
        if metered.provider_cost is not None and metered.usage is not None:
            # The provider said what it charged (OpenRouter): that beats any price list.
            record.cost_usd, record.price_status = metered.provider_cost, PROVIDER_REPORTED
            record.price_source = f"{record.provider} usage.cost"
        if metered.error:
            errors.append(metered.error)
        if metered.usage is None and _never_sent(flow, state):
            # The request never went out (no connection, killed before it was sent) or server
            # playback answered it: the provider billed nothing.
            record.cost_usd, record.price_status = Decimal(0), NOT_BILLED
            if flow.is_replay == "response":
                errors.append(SERVER_REPLAY_NOTE)
        elif state.subscription:
            record.cost_usd, record.price_status = Decimal(0), SUBSCRIPTION
            record.price_source = SUBSCRIPTION_SOURCE
        record.error = "; ".join(errors)[:1000] if errors else None

    def _remember_context(self, record: CallRecord, body: dict[str, Any] | None, metered: Metered) -> None:
        """An answer with its final usage: what a request continuing it carries (CarriedContexts)."""
        if metered.usage is not None and not metered.output_partial:
            conversation = conversation_of(body) if record.api_flavor == "responses" else None
            self.contexts.remember(metered.context_id, conversation, metered.usage)

    def _journal_stream_end(self, flow: http.HTTPFlow, state: CallState) -> None:
        """A stream's final event is about to reach the client: journal the call as it stands.

        The call is finished (and submitted) when the body ends; a kill -9 in between, which a
        client that stops reading at ``[DONE]`` leaves open for as long as upstream holds the
        body, then still leaves the call, its usage included, in the journal for replay.
        """
        if state.finished or self.store is None or state.tap is None or state.deletion:
            return
        metered = state.tap.result()
        if state.retrieval is not None and not self._claim(state, metered):
            return  # no row for this GET: nothing to journal
        if not _runs_in_background(state, metered):  # an agent may continue it before the body ends
            self._remember_context(state.record, state.request_body, metered)
        self._fill_record(flow, state, metered, [*state.errors], aborted=False)
        images = [] if _runs_in_background(state, metered) else self._tool_rows(state, metered)
        for row in images:
            self.store.journal(row)
        if self.store.journal(state.record):
            state.journaled_in = self.store
        if not images and not _runs_in_background(state, metered):
            # The client has its answer: its next call is decided on this one's cost, not on its
            # reservation until upstream ends the body (a tool's images give way in _finish, where
            # they are held first; a background response keeps its reservation while it runs).
            self._give_way_early(state, metered)

    def _give_way_early(self, state: CallState, metered: Metered) -> None:
        """The call's reservation gives way to its cost as known at its stream's final event: a copy
        of its row priced, with the tokens counted offline as the finished row's are when no usage
        was reported (in a thread: the give-way then follows). The row itself is priced when it
        finishes (a usage after the final event counts), and its cost then replaces this one in the
        budgets (_submit), so they count the stored row's cost, once."""
        record = state.record
        if not self.enforcer.budgets.reserves(record.id):
            return
        priced = copy.copy(record)
        body = state.request_body
        wanted, partial = _estimate_wanted(priced, metered, body)
        if not wanted:
            state.gave_way = self._price_now(priced)
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a test driving the stream by hand): counted here
            self._estimate(priced, body, metered.output_text, partial)
            state.gave_way = self._price_now(priced)
            return
        task = asyncio.ensure_future(self._estimate_then_give_way(state, priced, body, metered, partial))
        self._estimates.add(task)
        task.add_done_callback(self._estimates.discard)

    async def _estimate_then_give_way(
        self,
        state: CallState,
        priced: CallRecord,
        body: dict[str, Any] | None,
        metered: Metered,
        partial: Usage | None,
    ) -> None:
        await asyncio.to_thread(self._estimate, priced, body, metered.output_text, partial)
        if not state.finished:  # else the finished row gives way itself: this count is moot
            state.gave_way = self._price_now(priced)

    def _tool_rows(self, state: CallState, metered: Metered) -> list[CallRecord]:
        """The rows of what the call's image_generation tool spent that OpenAI bills apart: its
        images, and its SVG author's tokens (addon.image_tool); and of what an Anthropic answer's
        ``usage.iterations`` bill apart (``_iteration_rows``). Their ids are made once: journaled
        ahead, they are then submitted."""
        rows = self._iteration_rows(state, metered)
        found = metered.tool_images
        if found is None or not found.billed:
            return rows
        if state.tool_row_id is None:
            state.tool_row_id = self._next_call_id()
        while len(state.svg_row_ids) < len(found.svg):
            state.svg_row_ids.append(self._next_call_id())
        images = tool_row(state.record, found, state.image_tool, state.tool_row_id)
        return (
            ([images] if images is not None else [])
            + svg_rows(state.record, found, state.svg_row_ids, state.image_tool)
            + rows
        )

    def _iteration_rows(self, state: CallState, metered: Metered) -> list[CallRecord]:
        """The rows of what an Anthropic answer's ``usage.iterations`` bill apart from its top-level
        usage: its advisor models' tokens, its declined hops' (addon.anthropic_models). Their ids
        are made once: journaled ahead, they are then submitted."""
        wanted = anthropic_models.row_count(metered.iterations)
        while len(state.iteration_row_ids) < wanted:
            state.iteration_row_ids.append(self._next_call_id())
        return anthropic_models.iteration_rows(
            state.record, metered.iterations, state.iteration_row_ids, state.advisor_sent
        )

    def _submit(self, record: CallRecord, store: Store | None = None, *, again: bool = False) -> None:
        """Hand the call to ``store`` (the one that journaled it, else the one in use now).

        ``again``: its reservation gave way at its stream's final event (_give_way_early); the cost
        held since is replaced by this row's, which the store's writer then records once."""
        store = store or self.store
        if store is None:
            log.error("tokometer: no store; call %s not recorded", record.id)
            try:  # its spend still counts: budgets would otherwise hold its reservation for ever
                self._price(record)
                self._on_finished([record])
            except Exception:
                self.enforcer.budgets.settle(record.id)
                log.exception("tokometer: could not count call %s against its budgets", record.id)
            return
        if store is not self.store:
            # A store closed or switched away (tokometer_db changed): the row goes to its journal,
            # counted by that database's next start; no writer here ever counts it, so nothing
            # may stay held or reserved for it.
            self.enforcer.budgets.settle(record.id)
        else:
            # A row this instance's budgets count as its own carries its session id: a call taken
            # over at a script reload would otherwise be stored under the earlier instance's,
            # and counted again as another proxy's spend (``BudgetTracker.refresh_others``).
            record.session_id = self.session_id
            if again or self.enforcer.budgets.reserves(record.id):
                self._price_now(record, again=again)
        store.submit(record)  # after close() this goes to a journal for the next start

    def _price_now(self, record: CallRecord, *, settle: bool = True, again: bool = False) -> bool:
        """Price a finished call here, on the event loop, and count its cost against its budgets at
        once: its reservation gives way to it (``settle``; else the cost is held besides, a tool's
        images row), held until the store's writer records it, so the next call is decided on it,
        not on a reservation left until the writer's next round (PRICE_INTERVAL). Only for calls
        that hold a reservation: the rest are priced off the loop (see PRICE_INTERVAL in
        addon.store). The writer's pricer then leaves the row as it is (it prices a row once) and
        its listener counts the spend, alerts, history and live file once. ``again``: the call gave
        way already (at its stream's final event): the cost held since is replaced by this one.
        Did the call's reservation give way? Never raises: on a failure the reservation (or what
        was held) stays until the writer counts the call."""
        try:
            self._price(record)
            scopes = scopes_for(record.environment, record.key_name, record.user_name)
            budgets = self.enforcer.budgets
            if settle:
                if budgets.give_way(record.id, scopes, record.cost_usd, record.ts):
                    return True
                if again:
                    budgets.hold(record.id, scopes, record.cost_usd or Decimal(0), record.ts)
            elif record.cost_usd is not None:
                budgets.hold(record.id, scopes, record.cost_usd, record.ts)
        except Exception:
            log.debug("tokometer: call %s left to the store's writer to price", record.id, exc_info=True)
        return False

    async def _estimate_then_submit(
        self,
        record: CallRecord,
        body: dict[str, Any] | None,
        text: str | None,
        store: Store | None,
        partial: Usage | None = None,
        *,
        again: bool = False,
    ) -> None:
        try:
            await asyncio.to_thread(self._estimate, record, body, text, partial)
        finally:
            self._submit(record, store, again=again)

    @staticmethod
    def _estimate(
        record: CallRecord, body: dict[str, Any] | None, text: str | None, partial: Usage | None = None
    ) -> None:
        """Fill the row's usage with tiktoken counts (usage_source 'estimated'); never raises.

        ``partial``: the usage a stream reported before its end, without its final count (the
        output a placeholder or running count): its input and cache counts are kept, only the
        output is counted from ``text`` (at least as reported), and the row's error says so (and
        that a provider's own cost, kept, is a lower bound).
        """
        try:
            if partial is not None:
                usage = estimate_output(partial, text, record.model_sent)
            else:
                usage = estimate_usage(record.api_flavor, body, text, record.model_sent)
        except Exception as exc:
            log.debug("tokometer: no estimate for call %s: %s", record.id, exc)
            return
        record.set_usage(usage, source="estimated")
        if partial is not None:
            notes = [PARTIAL_USAGE_NOTE]
            if record.price_status == PROVIDER_REPORTED:
                notes.append(PARTIAL_COST_NOTE)
            record.error = "; ".join(filter(None, (record.error, *notes)))[:1000]
