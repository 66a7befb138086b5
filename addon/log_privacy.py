"""The proxy's log never shows an exception's text.

A failure while reading a request or an answer may quote what it read (``int('...')`` does, and
so does a KeyError of a body's field), and the log is often kept in a file. So a record the
``tokometer`` logger writes with an exception names the exception's type and keeps the
traceback's frames (where it failed), and drops its message and its chained exceptions' messages.
"""

from __future__ import annotations

import logging
import traceback

LOGGER = "tokometer"
_WITHHELD = "its text is not shown: it may quote a request or an answer"


class WithoutExceptionText(logging.Filter):
    """Rewrites a record's exception into frames and type names, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if not exc_info or exc_info[1] is None:
            return True
        shown = [record.getMessage()]
        exc: BaseException | None = exc_info[1]
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            frames = "".join(traceback.format_tb(exc.__traceback__))
            shown.append(f"Traceback (most recent call last):\n{frames}{type(exc).__name__} ({_WITHHELD})")
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        record.msg, record.args = "\n".join(shown), None
        record.exc_info, record.exc_text = None, None
        return True


def install() -> None:
    """Add the filter to the ``tokometer`` logger, once."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, WithoutExceptionText) for f in logger.filters):
        logger.addFilter(WithoutExceptionText())
