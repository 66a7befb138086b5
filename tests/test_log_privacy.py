"""The proxy's log never shows an exception's text: a parser's failure may quote what it read
(``int('...')``, a KeyError of a body's field), so a logged failure names its type and where it
was raised, with the traceback's frames, and nothing of its message."""

from __future__ import annotations

import logging

import pytest
from meter_helpers import make_flow, run_request
from mitmproxy.test import tutils

import addon.meter
from addon import log_privacy
from addon.meter import Meter

SECRET = "the user's secret prompt text"


def _fail() -> None:
    int(SECRET)


def test_a_logged_exception_shows_its_type_and_frames_not_its_text(caplog: pytest.LogCaptureFixture) -> None:
    log_privacy.install()
    log = logging.getLogger("tokometer")
    with caplog.at_level(logging.WARNING, logger="tokometer"):
        try:
            _fail()
        except ValueError:
            log.exception("tokometer: reading call %s failed", "c-1")
    text = caplog.text
    assert SECRET not in text
    assert "tokometer: reading call c-1 failed" in text
    assert "ValueError" in text
    assert "in _fail" in text  # the frames are kept: where it failed
    assert all(r.exc_info is None for r in caplog.records)


def test_a_chained_exception_shows_no_text_either(caplog: pytest.LogCaptureFixture) -> None:
    log_privacy.install()
    log = logging.getLogger("tokometer")
    with caplog.at_level(logging.WARNING, logger="tokometer"):
        try:
            try:
                _fail()
            except ValueError as exc:
                raise RuntimeError(f"wrapped: {exc}") from exc
        except RuntimeError:
            log.warning("tokometer: it failed", exc_info=True)
    assert SECRET not in caplog.text
    assert "RuntimeError" in caplog.text


def test_install_twice_adds_one_filter() -> None:
    log_privacy.install()
    log_privacy.install()
    filters = [
        f for f in logging.getLogger("tokometer").filters if isinstance(f, log_privacy.WithoutExceptionText)
    ]
    assert len(filters) == 1


async def test_a_hook_that_fails_on_a_body_logs_none_of_it(
    meter: Meter, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The meter installs it: a parser's exception quoting the answer reaches no log line."""

    def broken(provider: object, flavor: str, headers: object, body: bytes) -> object:
        raise ValueError(f"cannot read {body[:80]!r}")

    monkeypatch.setattr(addon.meter, "_parse_body", broken)
    flow = make_flow("https://api.openai.com/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    await run_request(meter, flow)
    flow.response = tutils.tresp(
        status_code=200,
        headers=((b"content-type", b"application/json"),),
        content=b'{"id":"x","model":"gpt-4o-mini","choices":[{"message":{"content":"SECRET ANSWER"}}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    )
    with caplog.at_level(logging.DEBUG, logger="tokometer"):
        meter.responseheaders(flow)
        await meter.response(flow)
    assert "reading the answer" in caplog.text  # control: the failure was logged
    assert "SECRET ANSWER" not in caplog.text


def test_an_exception_argument_is_named_by_its_type_unless_its_text_is_safe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception given as a ``%`` argument: a ValueError's text withheld; the file system's
    (a path) and the addon's own (a policies.yaml error) kept, since users need them."""
    from addon.policies import PolicyError

    log_privacy.install()
    log = logging.getLogger("tokometer")
    with caplog.at_level(logging.DEBUG, logger="tokometer"):
        log.warning("tokometer: a: %s", ValueError(SECRET))
        log.warning("tokometer: b: %s", FileNotFoundError(2, "No such file", "/tmp/x.duckdb"))
        log.warning("tokometer: c: %s", PolicyError("budgets.usd must be a number"))
    assert SECRET not in caplog.text
    assert "tokometer: a: ValueError (its text is not shown" in caplog.text
    assert "tokometer: b: [Errno 2] No such file: '/tmp/x.duckdb'" in caplog.text  # as it was
    assert "tokometer: c: budgets.usd must be a number" in caplog.text


def test_a_json_decoding_error_keeps_its_position(caplog: pytest.LogCaptureFixture) -> None:
    """A JSON decoder's text names a position, never the text: kept (the journal's unreadable
    lines are reported with it)."""
    import json

    log_privacy.install()
    try:
        json.loads('{"secret prompt": ')
    except json.JSONDecodeError as exc:
        with caplog.at_level(logging.DEBUG, logger="tokometer"):
            logging.getLogger("tokometer").warning("tokometer: skipped line: %s", exc)
    assert "tokometer: skipped line: Expecting value: line 1 column 19 (char 18)" in caplog.text
