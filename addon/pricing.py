"""Cost of one call, from genai-prices (offline snapshot; never guesses a price)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from genai_prices.data_snapshot import get_snapshot

from addon.policies import PriceOverride
from addon.record import CallRecord
from addon.usage import Usage

log = logging.getLogger("tokometer")

SOURCE = f"genai-prices {genai_prices.__version__}"

PRICED = "priced"
UNKNOWN_MODEL = "unknown_model"
NO_USAGE = "no_usage"
NO_MODEL = "no_model"
NOT_BILLED = "not_billed"
ERROR = "error"

# (snapshot id, provider, model) pairs genai-prices could not resolve: a miss costs ~230 µs.
_misses: set[tuple[int, str, str]] = set()
_MAX_MISSES = 10_000


@dataclass(frozen=True, slots=True)
class Price:
    """The price of one call and how it was (or was not) found."""

    cost_usd: Decimal | None
    status: str  # priced | unknown_model | no_usage | no_model | not_billed | error
    source: str | None  # e.g. "genai-prices 0.2.3"
    model: str | None  # the model id genai-prices matched


def _utc(when: datetime) -> datetime:
    """A timezone-aware UTC datetime (naive input is taken as UTC)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _model_ref(model: str) -> str:
    """Strip the ``models/`` prefix Gemini puts on names (not a fuzzy match: the same id)."""
    model = model.strip()
    return model.removeprefix("models/")


def price(
    provider: str,
    model: str | None,
    usage: Usage | None,
    when: datetime,
    status_code: int | None = None,
) -> Price:
    """Price one call; never raises. An unknown model is never priced 0."""
    try:
        if usage is None:
            if status_code is not None and status_code >= 400:
                return Price(Decimal(0), NOT_BILLED, None, None)
            return Price(None, NO_USAGE, None, None)
        if not model or not model.strip():
            return Price(None, NO_MODEL, None, None)
        ref = _model_ref(model)
        miss_key = (id(get_snapshot()), provider.lower(), ref.lower())
        if miss_key in _misses:
            return Price(None, UNKNOWN_MODEL, SOURCE, None)
        gp_usage = GPUsage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
        )
        try:
            calc = calc_price(gp_usage, ref, provider_id=provider, genai_request_timestamp=_utc(when))
        except LookupError:
            if len(_misses) >= _MAX_MISSES:
                _misses.clear()
            _misses.add(miss_key)
            return Price(None, UNKNOWN_MODEL, SOURCE, None)
        return Price(calc.total_price, PRICED, SOURCE, calc.model.id)
    except Exception as exc:
        log.warning("tokometer: pricing %s/%s failed: %s", provider, model, exc)
        return Price(None, ERROR, SOURCE, None)


def price_record(record: CallRecord) -> None:
    """Fill the record's price fields, unless ``price_status`` is already set."""
    if record.price_status is not None:
        return
    p = price(
        record.provider,
        record.model_reported or record.model_sent,
        record.usage,
        record.ts,
        record.status_code,
    )
    record.cost_usd = p.cost_usd
    record.price_status = p.status
    record.price_source = p.source
    record.price_model = p.model


# --- policies.yaml `prices:` and provider-specific names -----------------------------------------

PER_MILLION = Decimal(1_000_000)


def override_cost(override: PriceOverride, usage: Usage) -> Decimal:
    """Each bucket priced once: uncached input, cache reads, cache writes, output."""
    uncached = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens)
    cached = override.input if override.cached_input is None else override.cached_input
    write = override.input if override.cache_write is None else override.cache_write
    total = (
        uncached * override.input
        + usage.cache_read_tokens * cached
        + usage.cache_write_tokens * write
        + usage.output_tokens * override.output
    )
    return total / PER_MILLION


OVERRIDE_SOURCE = "policies.yaml prices"


class Pricer:
    """Prices calls for the store: policies.yaml ``prices:`` first, then genai-prices.

    ``overrides`` maps a model pattern, or ``provider/model`` pattern, to a price;
    the first match in order wins (a dated name matches its base pattern).
    ``price_provider`` maps a row's provider to the genai-prices id and the
    function turning its model ids into genai-prices names (Bedrock's ARNs).
    """

    def __init__(
        self,
        overrides: Sequence[tuple[str, PriceOverride]] = (),
        price_provider: Callable[[str], tuple[str, Callable[[str], str] | None]] | None = None,
    ) -> None:
        self.overrides = tuple(overrides)
        self._price_provider = price_provider
        self._unit_prices: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}

    def estimate(self, provider: str, model: str | None, input_tokens: int, output_tokens: int) -> Decimal:
        """A quick cost estimate (a budget reservation): microseconds once a model's prices are cached."""
        if not model:
            return Decimal(0)
        units = self._unit_prices.get((provider, model))
        if units is None:
            units = self._units(provider, model)
            if len(self._unit_prices) > 10_000:
                self._unit_prices.clear()
            self._unit_prices[(provider, model)] = units
        return input_tokens * units[0] + output_tokens * units[1]

    def _units(self, provider: str, model: str) -> tuple[Decimal, Decimal]:
        """(USD per input token, USD per output token); zeros when no price is known."""
        override = self.override_for(provider, model)
        if override is not None:
            return override.input / PER_MILLION, override.output / PER_MILLION
        price_id, to_name = self._price_provider(provider) if self._price_provider else (provider, None)
        name = to_name(model) if to_name is not None else model
        now = datetime.now(UTC)
        per_input = price(price_id, name, Usage(input_tokens=1_000_000), now).cost_usd
        per_output = price(price_id, name, Usage(output_tokens=1_000_000), now).cost_usd
        return (per_input or Decimal(0)) / PER_MILLION, (per_output or Decimal(0)) / PER_MILLION

    def override_for(self, provider: str, model: str) -> PriceOverride | None:
        from addon.model_rules import model_matches

        for pattern, override in self.overrides:
            if "/" in pattern and not pattern.startswith("models/"):
                scope, _, model_pattern = pattern.partition("/")
                if scope == provider and model_matches(model_pattern, model):
                    return override
            elif model_matches(pattern, model):
                return override
        return None

    def __call__(self, record: CallRecord) -> None:
        if record.price_status is not None:
            return
        model = record.model_reported or record.model_sent
        usage = record.usage
        if usage is not None:
            for candidate in dict.fromkeys(m for m in (model, record.model_sent) if m):
                override = self.override_for(record.provider, candidate)
                if override is not None:
                    record.cost_usd = override_cost(override, usage)
                    record.price_status, record.price_source = PRICED, OVERRIDE_SOURCE
                    record.price_model = candidate
                    return
        provider, to_name = (record.provider, None)
        if self._price_provider is not None:
            provider, to_name = self._price_provider(record.provider)
        if model and to_name is not None:
            model = to_name(model)
        p = price(provider, model, usage, record.ts, record.status_code)
        record.cost_usd, record.price_status = p.cost_usd, p.status
        record.price_source, record.price_model = p.source, p.model
