"""One finished call as it is journaled and stored: a row of table ``calls``."""

from __future__ import annotations

import dataclasses
import json
import json.encoder
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from addon.usage import USAGE_COUNTS, Usage

# How a row billed apart names its call in ``error`` (addon.anthropic_models ADVISOR_NOTE and
# DECLINED_NOTE, addon.image_tool ROW_NOTE and the SVG author's), group 2 the call's id: all a
# row written without ``parent_id`` says (before m010; a previous version's journal line replayed
# after it; an older proxy still inserting into a migrated file).
BILLED_APART_NOTE = (
    r"^(the advisor tool's tokens \(usage\.iterations advisor_message\)"
    r"|the tokens of a hop that declined \(server-side fallback, usage\.iterations\)"
    r"|the image_generation tool's images"
    r"|the image_generation tool's SVG author tokens \(svg_usage\)) of call ([^\s:;]+)(:|;|$)"
)
_BILLED_APART = re.compile(BILLED_APART_NOTE)

# A call's own row (``is_call_row`` in SQL): not a part of a call, whether ``parent_id`` names it
# or, where nothing linked it, its ``error`` (``BILLED_APART_NOTE``). A background response's or
# batch's creation row is its own row, its retrieval rows parts of it; the reports count such a
# call on one representative row, a retrieval row once one is stored (addon.spend_reports
# ``_shadow_calls``, ``is_call``), so that its call, usage, cost and model are one row's.
# BILLED_APART_SQL: a row billed apart from its call, by its ``error``: true for the parts
# ``billed_apart`` makes (not for a background response's retrieval row).
BILLED_APART_SQL = "coalesce(regexp_matches(error, '" + BILLED_APART_NOTE.replace("'", "''") + "'), false)"
CALL_ROW_SQL = f"parent_id IS NULL AND NOT {BILLED_APART_SQL}"


def is_call_row(record: CallRecord) -> bool:
    """Is ``record`` a call's own row (``CALL_ROW_SQL``), not a part of a call?"""
    return record.parent_id is None and not (record.error and _BILLED_APART.match(record.error))


@dataclass(slots=True)
class CallRecord:
    """A row of ``calls``. Field names are the column names, a contract.

    New fields go at the end only (as migrations add columns): journal lines are arrays in
    field order, and a test checks that order against the migrated table's.
    """

    id: str
    ts: datetime  # UTC, when the request started
    session_id: str
    environment: str
    provider: str
    host: str
    path: str
    api_flavor: str
    duration_ms: float | None = None
    ttft_ms: float | None = None
    model_requested: str | None = None
    model_sent: str | None = None
    model_reported: str | None = None
    action: str = "allowed"
    status_code: int | None = None
    streamed: bool = False
    aborted: bool = False
    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_source: str = "none"  # reported | estimated | none
    cost_usd: Decimal | None = None
    # priced | unknown_model | no_usage | no_model | not_billed | subscription | error
    price_status: str | None = None
    price_source: str | None = None
    price_model: str | None = None
    key_fingerprint: str | None = None
    error: str | None = None
    # attribution (who and what made the call; see addon.attribution)
    environment_source: str | None = None  # header | key | process | host | forced | default
    team: str | None = None
    feature: str | None = None
    tags: str | None = None  # JSON object of the X-Metering-Tags keys beyond env/team/feature
    user_name: str | None = None
    client_pid: int | None = None
    client_process: str | None = None
    client_cwd: str | None = None
    repo: str | None = None
    git_branch: str | None = None
    key_name: str | None = None  # the policies.yaml `keys:` entry the API key matched
    # priced apart (migration m004): a subset of cache_write_tokens, searches, the service tier
    cache_write_1h_tokens: int | None = None
    web_searches: int | None = None
    service_tier: str | None = None
    # by modality (migration m005): subsets of the input, output and cache-read counts
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    input_image_tokens: int | None = None
    output_image_tokens: int | None = None
    cache_audio_read_tokens: int | None = None
    # priced apart (migration m006): hosted file searches (OpenAI's file_search tool calls)
    file_searches: int | None = None
    # where inference ran (migration m007): Anthropic's usage.inference_geo, "us" costs 1.1x
    inference_geo: str | None = None
    # audio billed by its duration (migration m008): whisper-1's transcriptions, in seconds
    audio_seconds: float | None = None
    # answers the call asked for (migration m009): OpenAI's n (a legacy completion's best_of, its
    # prompts), Gemini's candidateCount; NULL for one. The output history is of one answer's.
    answers: int | None = None
    # the call this row is a part of (migration m010): set by ``billed_apart`` and on a background
    # response's retrieval row; NULL for a call's own row (``is_call_row``, ``CALL_ROW_SQL``)
    parent_id: str | None = None

    def set_usage(self, usage: Usage | None, source: str = "reported") -> None:
        """Copy normalised usage onto the row (``None`` leaves the counts empty)."""
        if usage is None:
            return
        self.input_tokens = usage.input_tokens
        self.cache_read_tokens = usage.cache_read_tokens
        self.cache_write_tokens = usage.cache_write_tokens
        self.output_tokens = usage.output_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.cache_write_1h_tokens = usage.cache_write_1h_tokens or None
        self.web_searches = usage.web_searches or None
        self.input_audio_tokens = usage.input_audio_tokens or None
        self.output_audio_tokens = usage.output_audio_tokens or None
        self.input_image_tokens = usage.input_image_tokens or None
        self.output_image_tokens = usage.output_image_tokens or None
        self.cache_audio_read_tokens = usage.cache_audio_read_tokens or None
        self.file_searches = usage.file_searches or None
        self.audio_seconds = usage.audio_seconds or None
        self.usage_source = source

    @property
    def usage(self) -> Usage | None:
        """The row's counts as a ``Usage``, or ``None`` when none were recorded."""
        if self.input_tokens is None and self.output_tokens is None:
            return None
        # Positional, in Usage's field order (checked below, at import): 14 keywords cost ~1.4 us
        # more, and Usage is built for every call priced.
        return Usage(
            self.input_tokens or 0,
            self.cache_read_tokens or 0,
            self.cache_write_tokens or 0,
            self.output_tokens or 0,
            self.reasoning_tokens or 0,
            self.cache_write_1h_tokens or 0,
            self.web_searches or 0,
            self.input_audio_tokens or 0,
            self.output_audio_tokens or 0,
            self.input_image_tokens or 0,
            self.output_image_tokens or 0,
            self.cache_audio_read_tokens or 0,
            self.file_searches or 0,
            self.audio_seconds or 0,
        )

    def make_storable(self) -> None:
        """Escape what DuckDB cannot store: lone surrogates, from a JSON ``"\\udc80"`` in a request
        or a path that is not UTF-8 (``os.readlink``), become ``\\udc80`` text. Never raises."""
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    setattr(self, name, value.encode("utf-8", "backslashreplace").decode("utf-8"))

    def to_json(self) -> str:
        """One journal line (no newline): a JSON array of the values in ``COLUMNS`` order.

        An array, not an object: half the CPU of naming 40 keys on every call's line.
        """
        values = list(_values(self))
        ts = self.ts
        if ts.tzinfo is not None and ts.utcoffset():
            ts = ts.astimezone(UTC)  # the store casts the text to a (UTC) TIMESTAMP as it is
        values[_TS] = ts.isoformat()
        if self.cost_usd is not None:
            values[_COST] = str(self.cost_usd)
        return _encode(values)

    @classmethod
    def from_json(cls, line: str | bytes) -> CallRecord:
        """Parse a journal line written by ``to_json`` (or by versions that wrote an object).

        An array shorter than ``COLUMNS`` (written before columns were added) leaves the
        later fields at their defaults.
        """
        parsed = json.loads(line)
        if isinstance(parsed, list):
            if len(parsed) > len(COLUMNS):
                raise ValueError(f"{len(parsed)} values for {len(COLUMNS)} columns (a newer version's?)")
            data = dict(zip(COLUMNS, parsed, strict=False))
        elif isinstance(parsed, dict):
            known = set(COLUMNS)
            data = {k: v for k, v in parsed.items() if k in known}
        else:
            raise ValueError("a journal line is a JSON array or object")
        data["ts"] = datetime.fromisoformat(data["ts"])
        if data.get("cost_usd") is not None:
            data["cost_usd"] = Decimal(data["cost_usd"])
        return cls(**data)


COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CallRecord))
_values = operator.attrgetter(*COLUMNS)
_TEXT_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(CallRecord) if f.type in ("str", "str | None")
)
# CallRecord.usage passes Usage's fields by position, in this order.
_USAGE_ORDER = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
    "web_searches",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "cache_audio_read_tokens",
    "file_searches",
    "audio_seconds",
)
if tuple(f.name for f in dataclasses.fields(Usage)) != _USAGE_ORDER:  # pragma: no cover
    raise ImportError("addon.usage.Usage's fields changed: update CallRecord.usage and _USAGE_ORDER")
_TS = COLUMNS.index("ts")
_COST = COLUMNS.index("cost_usd")


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def _make_encoder() -> Callable[[list[object]], str]:
    """``json.JSONEncoder(separators=(",", ":")).encode`` for a journal line's flat list of
    scalars, calling the C encoder directly: ``encode`` builds one for every call through
    ``iterencode``. Without the circular-reference check, which a row's values (strings,
    numbers, booleans, None) never need: the output is the same. ~2 us less a line (5.7 -> 3.7)."""
    encoder = getattr(json.encoder, "c_make_encoder", None)
    if encoder is None:  # a Python without the C accelerator
        return json.JSONEncoder(separators=(",", ":")).encode
    iterencode = encoder(
        None,  # markers: no circular-reference check
        _unserializable,
        json.encoder.encode_basestring_ascii,  # ensure_ascii, as JSONEncoder's default
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
    return lambda values: "".join(iterencode(values, 0))


_encode = _make_encoder()


def billed_apart(
    parent: CallRecord,
    row_id: str,
    flavor: str,
    *,
    requested: str | None,
    sent: str | None,
    reported: str | None,
    action: str,
    note: str,
    inference_geo: str | None,
) -> CallRecord:
    """A row of what the call ``parent`` spent that is billed apart (a tool's images, an SVG
    author's or an advisor's tokens, a declined hop's): the call's attribution, status and timing;
    its own flavor, models, decision and ``inference_geo``; no usage or price yet; ``note`` as its
    error; ``parent_id`` the call's id (reports count the two rows as one call)."""
    return dataclasses.replace(
        parent,
        id=row_id,
        api_flavor=flavor,
        model_requested=requested,
        model_sent=sent,
        model_reported=reported,
        action=action,
        ttft_ms=None,
        service_tier=None,
        inference_geo=inference_geo,
        cost_usd=None,
        price_status=None,
        price_source=None,
        price_model=None,
        usage_source="none",
        error=note[:1000],
        parent_id=parent.parent_id or parent.id,
        **dict.fromkeys(USAGE_COUNTS),  # type: ignore[arg-type]
    )
