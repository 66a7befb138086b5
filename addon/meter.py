"""The metering addon: follows each LLM call from request to a stored row.

Data flows one way: the request is recognised (provider, flavor, model, key),
forwarded (with ``stream_options.include_usage`` added where a stream would
otherwise carry no usage), metered from the response or stream, and handed to
the store. Any failure here is logged and the traffic passes unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http

from addon.api_keys import find_api_key, key_fingerprint
from addon.paths import resolve_db_path
from addon.policies import Policies, PolicyError, load_policies
from addon.providers import Provider, provider_for_host
from addon.record import CallRecord
from addon.store import Store
from addon.stream_tap import StreamTap
from addon.usage import Metered

log = logging.getLogger("tokometer")

STATE_KEY = "tokometer"
# Bodies larger than this are parsed in a worker thread, off mitmproxy's event loop.
INLINE_PARSE_LIMIT = 128 * 1024
DEFAULT_POLICIES = Path(__file__).resolve().parent.parent / "policies.yaml"


def new_session_id() -> str:
    """A sortable, readable id for one proxy run, e.g. ``20261128T152500Z-3f9a``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


@dataclass(slots=True)
class CallState:
    """What the addon knows about one LLM call in flight (``flow.metadata``)."""

    provider: Provider
    record: CallRecord
    errors: list[str] = field(default_factory=list)
    injected_usage: bool = False
    tap: StreamTap | None = None
    finished: bool = False


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


async def _off_loop_if_large[T](func: Callable[[bytes], T], data: bytes) -> T:
    if len(data) > INLINE_PARSE_LIMIT:
        return await asyncio.to_thread(func, data)
    return func(data)


class Meter:
    """Meters LLM calls and stores one row per finished call."""

    def __init__(self) -> None:
        self.session_id = new_session_id()
        self.policies = Policies()
        self.policies_path = DEFAULT_POLICIES
        self.db_path: Path | None = None
        self.store: Store | None = None
        self._running = False

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

    def configure(self, updated: set[str]) -> None:
        if "tokometer_policies" in updated:
            raw = ctx.options.tokometer_policies or os.environ.get("TOKOMETER_POLICIES", "")
            path = Path(raw).expanduser() if raw else DEFAULT_POLICIES
            try:
                self.policies = load_policies(path)
            except PolicyError as exc:
                raise exceptions.OptionsError(str(exc)) from exc
            self.policies_path = path
        if "tokometer_db" in updated:
            db_path = resolve_db_path(ctx.options.tokometer_db)
            if self.store is not None and db_path != self.db_path:
                self.store.close()
                self.store = None
            self.db_path = db_path
            if self.store is None and self._running:
                self._open_store()

    def running(self) -> None:
        self._running = True
        if self.store is None:
            self._open_store()
        ca = Path(ctx.options.confdir).expanduser() / "mitmproxy-ca-cert.pem"
        log.info(
            "tokometer: session %s | db %s | policies %s%s | CA %s",
            self.session_id,
            self.db_path,
            self.policies_path,
            "" if self.policies.source else " (missing: defaults apply)",
            ca,
        )

    def done(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _open_store(self) -> None:
        assert self.db_path is not None
        from addon import __version__

        store = Store(self.db_path, self.session_id, version=__version__)
        store.start()
        self.store = store

    # -- hooks ---------------------------------------------------------------

    @_never_raises
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Runs before map_remote and friends: pretty_host is the host the client asked for.
        host = flow.request.pretty_host
        provider = provider_for_host(host)
        if provider is None or flow.request.method != "POST":
            return
        path = flow.request.path.split("?", 1)[0]
        flavor = provider.flavor_for_path(path)
        if flavor is None:
            return
        key = find_api_key(flow.request.headers, provider.key_headers)
        record = CallRecord(
            id=uuid.uuid4().hex,
            ts=datetime.fromtimestamp(flow.request.timestamp_start, UTC),
            session_id=self.session_id,
            environment=self.policies.default_environment,
            provider=provider.name,
            host=host.lower(),
            path=path,
            api_flavor=flavor,
            key_fingerprint=key_fingerprint(key) if key else None,
        )
        flow.metadata[STATE_KEY] = CallState(provider=provider, record=record)

    @_never_raises
    async def request(self, flow: http.HTTPFlow) -> None:
        state: CallState | None = flow.metadata.get(STATE_KEY)
        if state is None or flow.response is not None:
            return
        record = state.record
        try:
            content = flow.request.get_content()
            body = await _off_loop_if_large(json.loads, content or b"")
        except (ValueError, UnicodeDecodeError) as exc:
            state.errors.append(f"request body is not JSON ({type(exc).__name__})")
            return
        if not isinstance(body, dict):
            state.errors.append("request body is not a JSON object")
            return
        model = body.get("model")
        if isinstance(model, str):
            record.model_requested = record.model_sent = model
        record.streamed = body.get("stream") is True
        if record.streamed and record.api_flavor in state.provider.usage_opt_in_flavors:
            options = body.get("stream_options")
            if options is None or (isinstance(options, dict) and options.get("include_usage") is not True):
                body["stream_options"] = {**(options or {}), "include_usage": True}
                flow.request.content = json.dumps(body, ensure_ascii=False).encode()
                state.injected_usage = True

    @_never_raises
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state: CallState | None = flow.metadata.get(STATE_KEY)
        response = flow.response
        if state is None or response is None:
            return
        if "text/event-stream" not in response.headers.get("content-type", "").lower():
            return  # a JSON body: buffered by mitmproxy, parsed in `response`
        encoding = response.headers.get("content-encoding")
        try:
            tap = StreamTap(state.provider, state.record.api_flavor, encoding, state.injected_usage)
        except Exception as exc:
            state.errors.append(f"stream not metered: {exc}")
            response.stream = True  # still never buffer a stream
            return
        if state.injected_usage:
            # Events are regrouped (minus the injected usage chunk): forward them decoded.
            response.headers.pop("content-encoding", None)
            response.headers.pop("content-length", None)
        state.tap = tap
        response.stream = tap

    @_never_raises
    async def response(self, flow: http.HTTPFlow) -> None:
        state: CallState | None = flow.metadata.get(STATE_KEY)
        if state is None or state.finished:
            return
        response = flow.response
        metered: Metered
        if state.tap is not None:
            metered = state.tap.result()
        elif response is not None and response.status_code < 400:
            try:
                content = response.get_content()
            except ValueError as exc:
                metered = Metered(error=f"response body not decodable: {exc}")
            else:
                parse = functools.partial(state.provider.parse_response, state.record.api_flavor)
                metered = await _off_loop_if_large(parse, content or b"")
        else:
            metered = Metered()
        self._finish(flow, state, metered, aborted=False)

    @_never_raises
    def error(self, flow: http.HTTPFlow) -> None:
        state: CallState | None = flow.metadata.get(STATE_KEY)
        if state is None or state.finished:
            return
        metered = state.tap.result() if state.tap is not None else Metered()
        if flow.error is not None:
            state.errors.append(flow.error.msg)
        self._finish(flow, state, metered, aborted=True)

    # -- finishing -----------------------------------------------------------

    def _finish(self, flow: http.HTTPFlow, state: CallState, metered: Metered, *, aborted: bool) -> None:
        state.finished = True
        record = state.record
        start = flow.request.timestamp_start
        record.duration_ms = round((time.time() - start) * 1000, 3)
        response = flow.response
        if response is not None:
            record.status_code = response.status_code
            if response.status_code >= 400:
                state.errors.append(f"upstream answered {response.status_code}")
        tap = state.tap
        if tap is not None:
            record.streamed = True
            if tap.first_chunk_at is not None:
                record.ttft_ms = round((tap.first_chunk_at - start) * 1000, 3)
            record.aborted = aborted or not tap.finished
        else:
            record.streamed = False if response is not None and not aborted else record.streamed
            record.aborted = aborted
        record.model_reported = metered.model
        record.set_usage(metered.usage)
        if metered.error:
            state.errors.append(metered.error)
        if response is None and metered.usage is None:
            # No answer from upstream at all: nothing was billed.
            record.cost_usd, record.price_status = Decimal(0), "not_billed"
        if state.errors:
            record.error = "; ".join(state.errors)[:1000]
        if self.store is None:
            log.error("tokometer: no store; call %s not recorded", record.id)
            return
        self.store.submit(record)
