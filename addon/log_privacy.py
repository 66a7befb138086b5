"""The proxy's log never shows what an exception read.

A failure while reading a request or an answer may quote what it read (``int('...')`` does, and
so does a KeyError of a body's field), and the log is often kept in a file. So a record the
``tokometer`` logger writes names such an exception by its type, whether it comes as the record's
``exc_info`` (its traceback's frames are kept: where it failed) or as one of its ``%`` arguments.
The text of an exception that cannot quote a body is kept: the file system's (``OSError``: a
path), a JSON decoder's (a position), the database's, and the addon's own (a policies.yaml error,
a decoding failure named by its encoding: each written not to quote a body).
"""

from __future__ import annotations

import json
import logging
import traceback

LOGGER = "tokometer"
WITHHELD = "its text is not shown: it may quote a request or an answer"
# Modules whose exceptions' texts never quote a request or an answer.
_SAFE_MODULES = ("addon", "duckdb", "_duckdb")


def text_is_safe(exc: BaseException) -> bool:
    """May ``exc``'s text be logged? Only where it cannot quote a body (see the module)."""
    if isinstance(exc, OSError | json.JSONDecodeError):  # a path; a position ("line 1 column 2")
        return True
    return type(exc).__module__.split(".", 1)[0] in _SAFE_MODULES


def shown(exc: BaseException) -> str:
    """``exc`` as the log may show it: its type, and its text where that is safe."""
    if text_is_safe(exc):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} ({WITHHELD})"


def _withheld(exc: BaseException) -> BaseException | str:
    """A ``%`` argument as the message shows it: a safe exception as it was, else its type."""
    return exc if text_is_safe(exc) else shown(exc)


class WithoutExceptionText(logging.Filter):
    """Rewrites a record's exceptions (``exc_info``, ``%`` arguments) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, BaseException) for a in args):
            record.args = tuple(_withheld(a) if isinstance(a, BaseException) else a for a in args)
        exc_info = record.exc_info
        if not exc_info or exc_info[1] is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: a handler would report it; show it as written
            message = str(record.msg)
        parts = [message]
        exc: BaseException | None = exc_info[1]
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            frames = "".join(traceback.format_tb(exc.__traceback__))
            parts.append(f"Traceback (most recent call last):\n{frames}{shown(exc)}")
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        record.msg, record.args = "\n".join(parts), None
        record.exc_info, record.exc_text = None, None
        return True


def install() -> None:
    """Add the filter to the ``tokometer`` logger, once."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, WithoutExceptionText) for f in logger.filters):
        logger.addFilter(WithoutExceptionText())
