"""One line per finished call for the proxy's own terminal.

``format_call_line`` renders a priced ``CallRecord``; ``CallLog`` is a store listener
that keeps the session's running total and emits the lines at a log level:

- ``quiet``: no per-call lines (warnings, budget alerts and errors are still logged);
- ``calls`` (the default): one line per finished call;
- ``debug``: the line plus a second, indented line with the attribution details:
  where the environment came from, the calling process, the key's name, the repo.

A line reads (without colour)::

    15:25:00 staging  openai gpt-4o -> gpt-4o-mini  1,200 in / 200 cached / 300 out  $0.00036  session $0.01

Refusals (blocked, over_budget, rate_limited) show their kind and the reason in magenta,
upstream errors ``ERROR <status>`` in red, aborted streams ``ABORTED`` in yellow; a
call without a known price shows ``$?`` and why (``unknown_model``, ``no_usage``, ...).
Tokens estimated offline (an aborted stream) are prefixed ``~``. Text that comes from
clients (model and environment names, error messages) is stripped of control characters,
so a client cannot send escape sequences to the proxy's terminal.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import IO

from addon.record import CallRecord

LOG_LEVELS = ("quiet", "calls", "debug")
"""``quiet``: no per-call lines; ``calls``: one line per call (default); ``debug``: also attribution."""
DEFAULT_LOG_LEVEL = "calls"
REFUSAL_LABELS = {"blocked": "BLOCKED", "over_budget": "OVER BUDGET", "rate_limited": "RATE LIMITED"}

MAX_MODEL = 28
MAX_ENV = 16
MAX_REASON = 160

# ANSI SGR codes
_RESET = "\x1b[0m"
_DIM = "2"
_BOLD = "1"
_RED = "31"
_GREEN = "32"
_YELLOW = "33"
_MAGENTA = "35"
_CYAN = "36"

_CENT = Decimal("0.01")
_PLACEHOLDER = "\x00tokometer-line\x00"  # stands for a line in TerminalLines' template


def use_color(stream: IO[str] | None) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set or ``TERM=dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb" or stream is None:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_usd(amount: Decimal) -> str:
    """``$0``, ``$0.000345`` (under a cent: up to 6 decimals), ``$0.0123``, ``$0.42``, ``$1,234.50``."""
    if amount == 0:
        return "$0"
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount < _CENT:
        small = amount.quantize(Decimal("0.000001"), ROUND_HALF_UP)
        return f"{sign}${small.normalize():f}" if small else f"{sign}<$0.000001"
    if amount < 1:
        text = f"{amount.quantize(Decimal('0.0001'), ROUND_HALF_UP):f}"
        while text.endswith("0") and len(text.split(".")[1]) > 2:
            text = text[:-1]
        return f"{sign}${text}"
    return f"{sign}${amount.quantize(_CENT, ROUND_HALF_UP):,.2f}"


def clean(text: str, limit: int) -> str:
    """Printable characters only, on one line, at most ``limit`` long (``...`` marks a cut)."""
    if text.isprintable():  # the usual case, without a loop over the characters
        cleaned = text
    else:
        cleaned = "".join(ch if ch.isprintable() else "?" for ch in text.replace("\n", " "))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}{_RESET}" if color and text else text


def _tokens(record: CallRecord) -> str:
    """``1,200 in / 200 cached / 300 out`` (``~`` when estimated), ``61 s of audio`` (whisper-1's
    transcriptions, billed by the second), a video job's seconds and rate (from its
    ``price_source``: ``video sora-2 720x1280: 4 s x $0.1/s``), or ``no usage``."""
    if record.api_flavor == "video":
        source = record.price_source or ""
        billed = source[source.rfind("(") + 1 : -1] if source.endswith(")") and "(" in source else ""
        return f"video {billed}" if billed else "video"
    if record.input_tokens is None and record.output_tokens is None:
        return "no usage"
    if record.audio_seconds and not (record.input_tokens or record.output_tokens):
        return f"{record.audio_seconds:g} s of audio"
    mark = "~" if record.usage_source == "estimated" else ""
    text = (
        f"{mark}{record.input_tokens or 0:,} in / {record.cache_read_tokens or 0:,} cached / "
        f"{mark}{record.output_tokens or 0:,} out"
    )
    if record.cache_write_tokens:
        text += f" (+{record.cache_write_tokens:,} cache write)"
    return text


def _model(record: CallRecord, color: bool) -> str:
    requested = record.model_requested or record.model_sent or record.model_reported or "(no model)"
    shown = _paint(clean(requested, MAX_MODEL), _BOLD, color)
    if record.action == "downgraded" and record.model_sent and record.model_sent != requested:
        shown += " " + _paint(f"-> {clean(record.model_sent, MAX_MODEL)}", _YELLOW, color)
    return shown


def _reason(record: CallRecord) -> str:
    text = (record.error or "").strip()
    for prefix in ("tokometer: ",):
        text = text.removeprefix(prefix)
    return clean(text, MAX_REASON)


def format_call_line(
    record: CallRecord, session_total: Decimal, *, color: bool, tz: tzinfo | None = None
) -> str:
    """One line for a finished (priced) call; ``session_total`` includes it.

    The time is when the call started (its ``ts``), in local time unless ``tz`` is given.
    """
    when = record.ts if record.ts.tzinfo is not None else record.ts.replace(tzinfo=UTC)
    stamp = when.astimezone(tz).strftime("%H:%M:%S")
    head = (
        f"{_paint(stamp, _DIM, color)} {_paint(clean(record.environment or '-', MAX_ENV), _CYAN, color)}"
        f"  {clean(record.provider or '-', 16)} {_model(record, color)}"
    )
    total = "session " + _paint(format_usd(session_total), _BOLD, color)
    refusal = REFUSAL_LABELS.get(record.action)
    if refusal is not None:
        reason = _reason(record)
        status = f" {record.status_code}" if record.status_code else ""
        parts = [head, _paint(refusal + status, _BOLD + ";" + _MAGENTA, color), total]
        if reason:
            parts.append(_paint(reason, _MAGENTA, color))
        return "  ".join(parts)
    if record.cost_usd is not None:
        cost = _paint(format_usd(record.cost_usd), _GREEN, color)
    else:
        cost = _paint(f"$? ({record.price_status or 'not priced'})", _YELLOW, color)
    parts = [head, _tokens(record), cost, total]
    if record.status_code is not None and record.status_code >= 400:
        reason = _reason(record)
        parts.append(_paint(f"ERROR {record.status_code}" + (f": {reason}" if reason else ""), _RED, color))
    elif record.aborted:
        parts.append(_paint("ABORTED", _YELLOW, color))
    return "  ".join(parts)


def format_call_details(record: CallRecord) -> str:
    """The ``debug`` level's second line: attribution of the call (indented, no colour)."""
    items = [f"env from {record.environment_source or '?'}"]
    if record.client_process or record.client_pid:
        process = clean(record.client_process or "?", 40)
        items.append(f"process {process}" + (f" (pid {record.client_pid})" if record.client_pid else ""))
    if record.key_name:
        items.append(f"key {clean(record.key_name, 40)}")
    elif record.key_fingerprint:
        items.append(f"key {record.key_fingerprint}")
    if record.user_name:
        items.append(f"user {clean(record.user_name, 32)}")
    if record.team:
        items.append(f"team {clean(record.team, 32)}")
    if record.feature:
        items.append(f"feature {clean(record.feature, 32)}")
    if record.repo:
        repo = clean(record.repo, 40) + (f"@{clean(record.git_branch, 32)}" if record.git_branch else "")
        items.append(f"repo {repo}")
    items.append(f"id {record.id}")
    return "    " + " | ".join(items)


class TerminalLines:
    """Prints a batch of per-call lines to mitmproxy's terminal in one write.

    The lines look as mitmproxy's own log lines do (its terminal handler formats them), but
    skip the rest of logging: a record that reaches the root logger also goes to mitmproxy's
    ``LegacyLogEvents``, which wakes the event loop and runs an ``add_log`` hook on every
    addon (~170 µs of CPU per call), and a ``print`` per line makes two writes, each handing
    the GIL to the event loop and back (scripts/bench-overhead, strace). So the lines reach
    mitmdump's and mitmweb's terminal, not mitmweb's event list. Without a terminal handler
    (tests, other hosts) each line is logged to ``fallback`` as usual. ``fallback``'s level
    applies either way.
    """

    def __init__(self, fallback: logging.Logger) -> None:
        self.fallback = fallback
        self._terminal: logging.Handler | None = None

    def attach(self) -> None:
        """Find mitmproxy's terminal handler (installed on the root logger when it starts)."""
        found = [h for h in logging.getLogger().handlers if type(h).__name__ == "TermLogHandler"]
        self._terminal = found[0] if found and hasattr(found[0], "file") else None

    def __call__(self, lines: list[str]) -> None:
        terminal = self._terminal
        if not self.fallback.isEnabledFor(logging.INFO):
            return
        if terminal is None:
            for line in lines:
                self.fallback.info(line)
            return
        if terminal.level > logging.INFO:
            return
        # Formatted once for the batch (its time stamp and colours), then filled with each line.
        head, placeholder, tail = terminal.format(self._record(_PLACEHOLDER)).partition(_PLACEHOLDER)
        if placeholder:
            text = "".join(f"{head}{line}{tail}\n" for line in lines)
        else:  # a formatter that does not show the message as it is
            text = "".join(terminal.format(self._record(line)) + "\n" for line in lines)
        terminal.acquire()
        try:
            stream: IO[str] = terminal.file  # type: ignore[attr-defined]
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed or broken terminal never stops the metering
            pass
        finally:
            terminal.release()

    def _record(self, line: str) -> logging.LogRecord:
        return self.fallback.makeRecord(self.fallback.name, logging.INFO, __file__, 0, line, None, None)


class CallLog:
    """A store listener (``Store.add_listener``) that emits one line per finished call.

    Keeps the session's running total (the calls with a known cost). ``level`` may be
    changed at any time (``--set tokometer_log=...``); ``emit`` receives the lines of a
    batch of calls, all at once (``TerminalLines`` prints them in one write).
    """

    def __init__(
        self,
        emit: Callable[[list[str]], None],
        *,
        level: str = DEFAULT_LOG_LEVEL,
        color: bool = False,
        tz: tzinfo | None = None,
    ) -> None:
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
        self.emit = emit
        self.level = level
        self.color = color
        self.tz = tz
        self._lock = threading.Lock()
        self._total = Decimal(0)

    @property
    def session_total(self) -> Decimal:
        """What this session's calls with a known price cost so far."""
        with self._lock:
            return self._total

    def __call__(self, records: Iterable[CallRecord]) -> None:
        """Count ``records`` and emit their lines (none at ``quiet``)."""
        lines: list[str] = []
        level = self.level
        with self._lock:
            for record in records:
                if record.cost_usd is not None:
                    self._total += record.cost_usd
                if level == "quiet":
                    continue
                lines.append(format_call_line(record, self._total, color=self.color, tz=self.tz))
                if level == "debug":
                    lines.append(format_call_details(record))
        if lines:
            self.emit(lines)
