"""Normalised token usage: the one shape every provider parser returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, normalised across providers.

    ``input_tokens`` is ALL input: uncached, cache reads and cache writes.
    ``output_tokens`` is all billed output, reasoning included.
    Each bucket is priced exactly once: cached tokens are a subset of input,
    reasoning tokens a subset of output.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(slots=True)
class Metered:
    """What a parser learned from a response: usage, the reported model, problems."""

    usage: Usage | None = None
    model: str | None = None
    error: str | None = None
    # A cost the provider itself reported for the call (OpenRouter's usage.cost), in USD.
    provider_cost: Decimal | None = None
    # The completion text seen, kept in memory only (never stored), for an offline token
    # estimate when the provider reports no usage (an aborted stream, say). None if not collected.
    output_text: str | None = field(default=None, compare=False)
