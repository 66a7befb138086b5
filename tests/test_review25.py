"""Review 25 of the changes since e80d076 (log_privacy, _never_sent with released_at, presets
under a base path, shown_proxy): failing tests, no fixes."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from types import SimpleNamespace

import pytest
from meter_helpers import on_kept_alive_connection, run_request
from mitmproxy.test import tflow

import addon.meter
from addon import log_privacy
from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_unsent_calls import QA_LIMITS, next_call_action, qa_flow, settled

SECRET = "the user's secret prompt text"


async def test_a_streamed_request_body_cut_while_the_meter_held_it_had_reached_the_provider(
    meter: Meter,
) -> None:
    """With a streamed request body (mitmproxy's ``stream_large_bodies``: ``flow.request.stream``)
    mitmproxy writes the headers and the whole body upstream BEFORE the ``request`` hook (only the
    end of message follows it; with a Content-Length nothing more goes out): the provider has the
    whole request. A cut while the meter's hook waited (a slow lookup) is read as never sent:
    not billed, its rate-limit slot taken back. Expected as the made-for-it control in
    test_unsent_calls: an estimate ($0.0000012), the slot kept."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    flow.request.stream = True  # its body still read here (store_streamed_bodies keeps it)
    now = flow.request.timestamp_start
    flow.request.timestamp_start, flow.request.timestamp_end = now - 20.1, now - 20.0
    on_kept_alive_connection(flow)  # set up for this request by start_request_stream
    flow.server_conn.timestamp_end = now - 5.0  # cut after the body went out, while the hook ran
    await run_request(meter, flow)
    flow.error = tflow.terr("Server disconnected.")
    meter.error(flow)
    [row] = await settled(meter)
    assert (row.usage_source, row.price_status, row.cost_usd) == ("estimated", "priced", Decimal("0.0000012"))
    assert await next_call_action(meter) == "rate_limited"


async def test_a_call_handed_over_by_a_reload_while_the_meter_held_it_keeps_when_it_was_let_go(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mitmproxy reloads the script while the meter's ``request`` hook waits (a slow process
    lookup): ``done`` hands the call over (the old instance's ``_calls`` cleared), so the hook's
    ``finally`` finds no state and ``released_at`` stays None. The kept-alive connection closed
    during that wait, then the reconnect failed: the new instance reads the call as carried
    (read_at alone) and bills an estimate ($0.0000012), as before c1a9a03. Expected as
    test_a_connection_that_closed_while_the_meter_held_the_request_did_not_carry_it: not billed."""
    meter._apply(parse_policies(QA_LIMITS))
    go_on = asyncio.Event()

    async def slow_lookup(*args: object, **kwargs: object) -> tuple[None, None]:
        await go_on.wait()
        return None, None

    monkeypatch.setattr(addon.meter, "wait_for_process", slow_lookup)
    flow = qa_flow()
    now = flow.request.timestamp_start
    flow.request.timestamp_start, flow.request.timestamp_end = now - 20.1, now - 20.0
    on_kept_alive_connection(flow)
    flow.server_conn.timestamp_end = now - 5.0  # while the hook ran, before it let the request go
    meter.requestheaders(flow)
    hook = asyncio.ensure_future(meter.request(flow))
    await asyncio.sleep(0.01)
    assert not hook.done()  # control: the hook waits
    meter.done()  # a script reload (mitmproxy not exiting): the call is handed over
    after = Meter()
    after.store = meter.store
    after._apply(meter.policies)
    go_on.set()
    await hook
    flow.error = tflow.terr("[Errno 111] Connect call failed ('162.159.140.245', 443)")
    after.error(flow)
    [row] = await settled(after)
    assert (row.price_status, row.cost_usd, row.input_tokens) == ("not_billed", Decimal(0), None)


def test_a_failure_logged_by_its_text_is_not_rewritten(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "A failure the proxy logs shows the exception's type and its traceback's frames,
    never its text". The filter rewrites only records with ``exc_info``; a failure logged as
    ``"...: %s", exc`` (meter's "no estimate for call %s: %s", pricing's "pricing %s/%s failed:
    %s", the store's journal lines...) reaches the handlers with its text. The offline estimate of
    a request body failing on it: the body's text is in the log."""

    def broken(flavor: str, body: dict, text: str | None, model: str | None) -> object:
        raise ValueError(f"cannot count {body['messages'][0]['content']!r}")

    monkeypatch.setattr(addon.meter, "estimate_usage", broken)
    row = SimpleNamespace(id="c-1", api_flavor="chat", model_sent="gpt-4o-mini")  # what it reads
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": SECRET}]}
    with caplog.at_level(logging.DEBUG, logger="tokometer"):
        Meter._estimate(row, body, None)  # type: ignore[arg-type]
    assert "no estimate for call c-1" in caplog.text  # control: the failure was logged
    assert SECRET not in caplog.text


def test_a_record_whose_arguments_do_not_fit_its_message_does_not_raise_into_the_caller(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """logging never raises into the code that logs: a record whose ``%`` arguments do not fit
    is reported by the handler (``Handler.handleError``, "--- Logging error ---") and the caller
    goes on. The filter formats the message itself (``record.getMessage()``) in ``Logger.handle``,
    outside any handler: a ``log.exception`` with one argument too few now raises TypeError out of
    the ``except`` block that logged it (in a hook: out of ``_never_raises``'s own handler)."""
    log_privacy.install()
    log = logging.getLogger("tokometer")
    raised = None
    try:
        try:
            int(SECRET)
        except ValueError:
            log.exception("tokometer: call %s failed at %s", "c-1")
    except Exception as exc:  # what the filter lets out
        raised = type(exc).__name__
    assert raised is None


def test_a_schemeless_proxy_value_whose_password_starts_with_two_slashes_is_shown_without_it() -> None:
    """29b5055 reads a schemeless ``user:password@host`` whose password holds ``://``
    (``alice:s3cr://et@proxy``) as userinfo; a password that STARTS with ``//`` (``alice`` +
    ``//s3cret``) makes ``alice://`` look like a scheme (any RFC 3986 scheme is taken as real), the
    userinfo is ``s3cret`` with no ``:``, and the value is printed whole ("... is not an HTTP proxy
    mitmproxy can chain to"): the password in the output."""
    from addon.upstream_proxy import shown_proxy

    assert shown_proxy("alice://s3cret@proxy.corp:3128") == "alice:***@proxy.corp:3128"
