"""The per-call line of the proxy's terminal: exact text, with and without colour."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from addon.call_log import (
    LOG_LEVELS,
    CallLog,
    format_call_details,
    format_call_line,
    format_usd,
    use_color,
)
from addon.record import CallRecord
from addon.usage import Usage

TS = datetime(2026, 11, 28, 15, 25, 0, tzinfo=UTC)
TOTAL = Decimal("1.2345")
# ANSI: reset, dim, bold, red, green, yellow, magenta, cyan
R, DIM, B, RED, GRN, YEL, MAG, CYN = (
    "\x1b[0m",
    "\x1b[2m",
    "\x1b[1m",
    "\x1b[31m",
    "\x1b[32m",
    "\x1b[33m",
    "\x1b[35m",
    "\x1b[36m",
)
USAGE = Usage(1200, 200, 0, 300)
HEAD_COLOR = f"{DIM}15:25:00{R} {CYN}development{R}  openai "


def rec(usage: Usage | None = USAGE, **kwargs: object) -> CallRecord:
    """A finished gpt-4o-mini call; 1,200 in (200 cached) / 300 out = $0.000345 at 0.15/0.075/0.60."""
    fields: dict[str, object] = {
        "id": "c1",
        "ts": TS,
        "session_id": "s1",
        "environment": "development",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "api_flavor": "chat",
        "model_requested": "gpt-4o-mini",
        "model_sent": "gpt-4o-mini",
        "status_code": 200,
        "cost_usd": Decimal("0.000345"),
        "price_status": "priced",
    }
    record = CallRecord(**(fields | kwargs))  # type: ignore[arg-type]
    record.set_usage(usage, str(kwargs.get("usage_source", "reported")))
    return record


def line(record: CallRecord, *, color: bool) -> str:
    return format_call_line(record, TOTAL, color=color, tz=UTC)


def test_metered_call() -> None:
    record = rec()
    assert line(record, color=False) == (
        "15:25:00 development  openai gpt-4o-mini  1,200 in / 200 cached / 300 out  $0.000345  session $1.23"
    )
    assert line(record, color=True) == (
        f"{HEAD_COLOR}{B}gpt-4o-mini{R}  1,200 in / 200 cached / 300 out  "
        f"{GRN}$0.000345{R}  session {B}$1.23{R}"
    )


def test_downgraded_call_shows_requested_and_sent() -> None:
    record = rec(model_requested="gpt-4o", action="downgraded")
    assert line(record, color=False) == (
        "15:25:00 development  openai gpt-4o -> gpt-4o-mini  1,200 in / 200 cached / 300 out  "
        "$0.000345  session $1.23"
    )
    assert line(record, color=True) == (
        f"{HEAD_COLOR}{B}gpt-4o{R} {YEL}-> gpt-4o-mini{R}  1,200 in / 200 cached / 300 out  "
        f"{GRN}$0.000345{R}  session {B}$1.23{R}"
    )


@pytest.mark.parametrize(
    ("action", "status", "label"),
    [
        ("blocked", 403, "BLOCKED 403"),
        ("over_budget", 429, "OVER BUDGET 429"),
        ("rate_limited", 429, "RATE LIMITED 429"),
    ],
)
def test_refused_call_has_its_kind_and_reason_in_magenta(action: str, status: int, label: str) -> None:
    reason = "model gpt-4o is not allowed in development (allow: *-mini)"
    record = rec(
        None,
        model_requested="gpt-4o",
        model_sent=None,
        action=action,
        status_code=status,
        cost_usd=Decimal(0),
        price_status="not_billed",
        error="tokometer: " + reason,
    )
    assert (
        line(record, color=False) == f"15:25:00 development  openai gpt-4o  {label}  session $1.23  {reason}"
    )
    assert line(record, color=True) == (
        f"{HEAD_COLOR}{B}gpt-4o{R}  \x1b[1;35m{label}{R}  session {B}$1.23{R}  {MAG}{reason}{R}"
    )


def test_aborted_stream_with_estimated_tokens() -> None:
    record = rec(
        Usage(1200, 0, 0, 40),
        aborted=True,
        streamed=True,
        usage_source="estimated",
        cost_usd=Decimal("0.000204"),
    )
    assert record.usage_source == "estimated"
    assert line(record, color=False) == (
        "15:25:00 development  openai gpt-4o-mini  ~1,200 in / 0 cached / ~40 out  "
        "$0.000204  session $1.23  ABORTED"
    )
    assert line(record, color=True) == (
        f"{HEAD_COLOR}{B}gpt-4o-mini{R}  ~1,200 in / 0 cached / ~40 out  {GRN}$0.000204{R}  "
        f"session {B}$1.23{R}  {YEL}ABORTED{R}"
    )


def test_unpriced_call_shows_dollar_question_mark_and_why() -> None:
    record = rec(
        model_requested="my-model", model_sent="my-model", cost_usd=None, price_status="unknown_model"
    )
    assert line(record, color=False) == (
        "15:25:00 development  openai my-model  1,200 in / 200 cached / 300 out  "
        "$? (unknown_model)  session $1.23"
    )
    assert line(record, color=True) == (
        f"{HEAD_COLOR}{B}my-model{R}  1,200 in / 200 cached / 300 out  {YEL}$? (unknown_model){R}  "
        f"session {B}$1.23{R}"
    )


def test_upstream_error_is_marked_red() -> None:
    record = rec(
        None, status_code=500, cost_usd=Decimal(0), price_status="not_billed", error="upstream answered 500"
    )
    assert line(record, color=False) == (
        "15:25:00 development  openai gpt-4o-mini  no usage  $0  session $1.23  "
        "ERROR 500: upstream answered 500"
    )
    assert line(record, color=True).endswith(f"{RED}ERROR 500: upstream answered 500{R}")


def test_aborted_without_usage() -> None:
    record = rec(None, aborted=True, cost_usd=None, price_status="no_usage")
    assert line(record, color=False) == (
        "15:25:00 development  openai gpt-4o-mini  no usage  $? (no_usage)  session $1.23  ABORTED"
    )


def test_audio_billed_by_the_second_shows_its_seconds() -> None:
    record = rec(Usage(audio_seconds=61), model_requested="whisper-1", cost_usd=Decimal("0.0061"))
    assert line(record, color=False) == (
        "15:25:00 development  openai whisper-1  61 s of audio  $0.0061  session $1.23"
    )
    record = rec(Usage(audio_seconds=12.5), model_requested="whisper-1", cost_usd=Decimal("0.00125"))
    assert "  12.5 s of audio  " in line(record, color=False)


def test_long_model_names_are_cut_and_normal_lines_stay_short() -> None:
    record = rec(
        model_requested="x" * 60, model_sent="y" * 60, action="downgraded", cost_usd=Decimal("0.0123")
    )
    text = line(record, color=False)
    assert f" {'x' * 25}... -> {'y' * 25}...  " in text
    assert len(line(rec(), color=False)) <= 120
    assert len(line(rec(model_requested="gpt-4o", action="downgraded"), color=False)) <= 120


def test_client_text_cannot_reach_the_terminal_raw() -> None:
    record = rec(model_requested="evil\x1b[2Jmodel", environment="dev\nx", action="downgraded")
    text = line(record, color=False)
    assert "\x1b" not in text and "\n" not in text
    assert text.startswith("15:25:00 dev x  openai evil?[2Jmodel -> gpt-4o-mini  ")


def test_local_time_is_the_default_and_tz_is_honoured() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert format_call_line(rec(), TOTAL, color=False, tz=plus2).startswith("17:25:00 ")


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0", "$0"),
        ("0.000345", "$0.000345"),
        ("0.0000004", "<$0.000001"),
        ("0.0000006", "$0.000001"),
        ("0.0123456", "$0.0123"),
        ("0.42", "$0.42"),
        ("0.4", "$0.40"),
        ("1.005", "$1.01"),
        ("1234.5", "$1,234.50"),
    ],
)
def test_format_usd(amount: str, text: str) -> None:
    assert format_usd(Decimal(amount)) == text


def test_details_line_for_debug() -> None:
    record = rec(
        environment_source="process",
        client_process="python3",
        client_pid=4242,
        key_name="ci-openai",
        user_name="alice",
        repo="tokometer",
        git_branch="main",
    )
    assert format_call_details(record) == (
        "    env from process | process python3 (pid 4242) | key ci-openai | user alice | "
        "repo tokometer@main | id c1"
    )


def test_call_log_levels_and_running_total() -> None:
    lines: list[str] = []
    batches: list[int] = []

    def emit(batch: list[str]) -> None:
        batches.append(len(batch))
        lines.extend(batch)

    log = CallLog(emit, level="quiet", tz=UTC)
    log([rec(id="a"), rec(id="b", cost_usd=None, price_status="unknown_model")])
    assert lines == []
    assert log.session_total == Decimal("0.000345")
    log.level = "calls"
    log([rec(id="c")])
    assert lines == [
        "15:25:00 development  openai gpt-4o-mini  1,200 in / 200 cached / 300 out  "
        "$0.000345  session $0.00069"
    ]
    log.level = "debug"
    log([rec(id="d", environment_source="header")])
    assert lines[1].endswith("session $0.001035")
    assert lines[2] == "    env from header | id d"
    assert log.session_total == Decimal("0.001035")
    log.level = "calls"
    log([rec(id="e"), rec(id="f"), rec(id="g")])
    assert batches == [1, 2, 3]  # one emit per batch of calls: line and details, then three lines
    assert lines[-1].endswith("session $0.00207")
    assert LOG_LEVELS == ("quiet", "calls", "debug")
    with pytest.raises(ValueError, match="quiet, calls, debug"):
        CallLog(emit, level="loud")


def test_use_color_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Tty()) is True
    assert use_color(io.StringIO()) is False
    assert use_color(None) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_color(Tty()) is False
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert use_color(Tty()) is False


def test_terminal_lines_print_a_batch_in_one_write_as_mitmproxy_formats_them() -> None:
    """The per-call lines skip mitmproxy's add_log hook (a loop wake-up per line), not the terminal."""
    import logging

    from addon.call_log import TerminalLines

    class Writes(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    class TermLogHandler(logging.Handler):  # stands in for mitmproxy.addons.termlog's
        def __init__(self) -> None:
            super().__init__()
            self.file = Writes()
            self.setFormatter(logging.Formatter("[t] %(message)s"))

        def emit(self, record: logging.LogRecord) -> None:
            print(self.format(record), file=self.file)

    class LegacyLogEvents(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    root = logging.getLogger()
    terminal, events = TermLogHandler(), LegacyLogEvents()
    root.addHandler(terminal)
    root.addHandler(events)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        lines = TerminalLines(logging.getLogger("tokometer.test-calls"))
        lines.attach()
        lines(["one", "two", "three"])
        assert terminal.file.getvalue() == "[t] one\n[t] two\n[t] three\n"
        assert terminal.file.writes == 1
        assert events.messages == []
        terminal.setLevel(logging.WARNING)  # --set termlog_verbosity=warn
        lines(["hidden"])
        assert "hidden" not in terminal.file.getvalue()
        root.removeHandler(terminal)
        lines.attach()  # no terminal handler (mitmweb): logged as usual, a record per line
        lines(["four", "five"])
        assert events.messages == ["four", "five"]
    finally:
        root.removeHandler(terminal)
        root.removeHandler(events)
        root.setLevel(level)


def test_terminal_lines_look_as_mitmproxys_formatter_makes_each_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch is formatted once and filled with each line: same text as a format() per line."""
    import logging

    from mitmproxy.log import MitmFormatter

    from addon.call_log import TerminalLines

    for colorize in (False, True):
        formatter = MitmFormatter(colorize)
        monkeypatch.setattr(formatter, "formatTime", lambda record, datefmt=None: "12:00:00.000")

        terminal = logging.Handler()  # stands in for mitmproxy's TermLogHandler
        terminal.setFormatter(formatter)
        terminal.file = io.StringIO()  # type: ignore[attr-defined]
        logger = logging.getLogger("tokometer.test-format")
        logger.setLevel(logging.INFO)
        lines = TerminalLines(logger)
        lines._terminal = terminal
        batch = ["15:25:00 staging  openai gpt-4o  $0.01", "\x1b[1mbold\x1b[0m 100%s %(x)s"]
        lines(batch)
        expected = "".join(
            formatter.format(logger.makeRecord(logger.name, logging.INFO, "f", 0, line, None, None)) + "\n"
            for line in batch
        )
        assert terminal.file.getvalue() == expected  # type: ignore[attr-defined]


def test_mitmproxys_connection_lines_show_only_at_debug(tmp_path: Path) -> None:
    """One line per call (README): mitmproxy's INFO lines for each connect, disconnect and
    streamed response are hidden, except with tokometer_log=debug; its warnings always show."""
    import logging

    from mitmproxy.test import taddons

    from addon.meter import Meter

    server = logging.getLogger("mitmproxy.proxy.server")
    meter = Meter()
    with taddons.context(meter) as tctx:
        tctx.configure(meter, tokometer_db=str(tmp_path / "spend.duckdb"))
        assert not server.isEnabledFor(logging.INFO) and server.isEnabledFor(logging.WARNING)
        tctx.configure(meter, tokometer_log="debug")
        assert server.level == logging.NOTSET  # as mitmdump's own verbosity says
        tctx.configure(meter, tokometer_log="quiet")
        assert not server.isEnabledFor(logging.INFO)
        meter.done()
    assert server.level == logging.NOTSET


def test_a_video_job_shows_what_it_was_billed_for() -> None:
    """A video has no tokens: its line said "no usage" beside its cost."""
    source = "tokometer video prices 2026-11-29 (sora-2-pro 1280x720: 8 s x $0.3/s)"
    record = rec(
        None, api_flavor="video", model_requested="sora-2-pro", cost_usd=Decimal("2.4"), price_source=source
    )
    assert line(record, color=False) == (
        "15:25:00 development  openai sora-2-pro  video sora-2-pro 1280x720: 8 s x $0.3/s  $2.40  "
        "session $1.23"
    )
    unpriced = rec(None, api_flavor="video", cost_usd=None, price_status="unknown_model", price_source="x")
    assert "  video  $? (unknown_model)" in line(unpriced, color=False)
