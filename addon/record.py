"""One finished call as it is journaled and stored: a row of table ``calls``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from addon.usage import Usage


@dataclass(slots=True)
class CallRecord:
    """A row of ``calls``. Field names are the column names, a contract."""

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
    price_status: str | None = None  # priced | unknown_model | no_usage | no_model | not_billed | error
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

    def set_usage(self, usage: Usage | None, source: str = "reported") -> None:
        """Copy normalised usage onto the row (``None`` leaves the counts empty)."""
        if usage is None:
            return
        self.input_tokens = usage.input_tokens
        self.cache_read_tokens = usage.cache_read_tokens
        self.cache_write_tokens = usage.cache_write_tokens
        self.output_tokens = usage.output_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.usage_source = source

    @property
    def usage(self) -> Usage | None:
        """The row's counts as a ``Usage``, or ``None`` when none were recorded."""
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return Usage(
            input_tokens=self.input_tokens or 0,
            cache_read_tokens=self.cache_read_tokens or 0,
            cache_write_tokens=self.cache_write_tokens or 0,
            output_tokens=self.output_tokens or 0,
            reasoning_tokens=self.reasoning_tokens or 0,
        )

    def to_json(self) -> str:
        """One journal line (no newline)."""
        data = {name: getattr(self, name) for name in COLUMNS}
        data["ts"] = self.ts.isoformat()
        data["cost_usd"] = None if self.cost_usd is None else str(self.cost_usd)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> CallRecord:
        """Parse a journal line written by ``to_json``."""
        data = json.loads(line)
        data["ts"] = datetime.fromisoformat(data["ts"])
        if data.get("cost_usd") is not None:
            data["cost_usd"] = Decimal(data["cost_usd"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CallRecord))
