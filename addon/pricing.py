"""Cost of one call, from genai-prices (offline snapshot; never guesses a price)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import genai_prices
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, PriceCalculation, TieredPrices

from addon.model_rules import (
    FUSION_DEFAULT_JUDGE,
    FUSION_DEFAULT_PANEL,
    OPENROUTER_FUSION,
    preset_model,
    provider_id,
)
from addon.policies import Policies, PriceOverride
from addon.providers.openai_media import MEDIA_FLAVORS, unpriced_reason
from addon.record import CallRecord
from addon.usage import Usage

log = logging.getLogger("tokometer")

SOURCE = f"genai-prices {genai_prices.__version__}"

PRICED = "priced"
UNKNOWN_MODEL = "unknown_model"
NO_USAGE = "no_usage"
NO_MODEL = "no_model"
NOT_BILLED = "not_billed"
# A call made with a flat-fee plan's key (Claude Pro/Max): $0 per call, its tokens still counted.
SUBSCRIPTION = "subscription"
# An OpenAI background response's start ("queued"): $0 here, billed on the row of its retrieval.
BACKGROUND = "background"
SUBSCRIPTION_SOURCE = "subscription plan (OAuth token): no per-token charge"
ERROR = "error"

# (snapshot id, provider, model) pairs genai-prices could not resolve: a miss costs ~230 µs.
_misses: set[tuple[int, str, str]] = set()
_MAX_MISSES = 10_000


PER_MILLION = Decimal(1_000_000)
SECONDS_PER_HOUR = Decimal(3600)
# A provider's own pricing by place: (model, inference_geo) -> (factor, price_source note), or None.
GeoSurcharge = Callable[[str | None, str | None], tuple[Decimal, str] | None]


@dataclass(frozen=True, slots=True)
class LinearPrice:
    """A model's price as a plain sum of per-token rates, for prompts up to ``max_input_tokens``.

    Rates are USD per million tokens; ``per_call`` is a fixed price per request, if any.
    Above ``max_input_tokens`` a tier's rates apply (genai-prices decides); ``None``: no tiers.
    Taken from genai-prices' own results for small amounts, then checked against it.
    """

    model_id: str
    per_call: Decimal
    uncached_input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    max_input_tokens: int | None = None

    def cost(self, usage: Usage) -> Decimal | None:
        """The price of ``usage``, or None when it is not this price's to say (genai-prices decides)."""
        if self.max_input_tokens is not None and usage.input_tokens > self.max_input_tokens:
            return None
        uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        if min(uncached, usage.cache_read_tokens, usage.cache_write_tokens, usage.output_tokens) < 0:
            return None
        total = (
            uncached * self.uncached_input
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
            + usage.output_tokens * self.output
        )
        return self.per_call + total / PER_MILLION


_BASIS_TOKENS = 1_000  # the amounts the rates are read from: below every tier's start
_CHECK_USAGE = Usage(input_tokens=777, cache_read_tokens=211, cache_write_tokens=97, output_tokens=389)


def linear_price(calc: PriceCalculation, usage: Usage) -> LinearPrice | None:
    """The linear form of the price genai-prices just used, if it has one; None otherwise.

    Prices that change with the time of day or the date (a list of conditional prices) have
    none; tiered prices have one up to the first tier. It must reproduce genai-prices exactly.
    """
    prices = calc.model.prices
    if not isinstance(prices, ModelPrice) or calc.model_price is not prices:
        return None
    tiered = [value for value in vars(prices).values() if isinstance(value, TieredPrices)]
    tier_starts = [tier.start for value in tiered for tier in value.tiers]
    limit = min(tier_starts, default=None)
    if limit is not None and limit < 2 * _BASIS_TOKENS:
        return None

    def total(**counts: int) -> Decimal:
        return prices.calc_price(GPUsage(**counts))["total_price"]

    def per_million(**counts: int) -> Decimal:
        return (total(**counts) - per_call) * (1_000_000 // _BASIS_TOKENS)

    n = _BASIS_TOKENS
    per_call = total()
    linear = LinearPrice(
        model_id=calc.model.id,
        per_call=per_call,
        uncached_input=per_million(input_tokens=n),
        cache_read=per_million(input_tokens=n, cache_read_tokens=n),
        cache_write=per_million(input_tokens=n, cache_write_tokens=n),
        output=per_million(output_tokens=n),
        max_input_tokens=limit,
    )
    check = _CHECK_USAGE
    expected = total(
        input_tokens=check.input_tokens,
        cache_read_tokens=check.cache_read_tokens,
        cache_write_tokens=check.cache_write_tokens,
        output_tokens=check.output_tokens,
    )
    if linear.cost(check) != expected:
        return None
    own = linear.cost(usage)
    if own is not None and own != calc.total_price:
        return None
    return linear


# (snapshot id, provider, model) -> its linear price, or None when it has none (calc_price each time).
# calc_price costs ~100 µs a call (unit registry, validation); a linear price ~2 µs.
_linear: dict[tuple[int, str, str], LinearPrice | None] = {}
_MAX_LINEAR = 10_000


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


OPENROUTER = "openrouter"
# OpenRouter's variants that run the model itself at its price: routing (:nitro the fastest
# providers, :floor the cheapest, :exacto the most accurate; :online adds its web search plugin,
# billed apart per result: a reservation at the model's price is a floor), :thinking and
# :extended (where genai-prices lists no price of their own), :beta (self-moderated). Never
# :free, which OpenRouter serves at $0 (genai-prices lists those it knows, at $0): an unlisted
# one stays unpriced rather than priced as the paid model.
_OPENROUTER_SAME_PRICE = frozenset({"nitro", "floor", "online", "exacto", "thinking", "extended", "beta"})


# The invocations of the Fusion tool a reservation counts (as an advisor's consultations:
# advisors.ADVISOR_USES_RESERVED, a bound, not a cap).
FUSION_INVOCATIONS_RESERVED = 3
# A bare ``@preset/slug`` (its model set at OpenRouter, unknown here) reserves as the dearest of
# these many models of OpenRouter's price list, by output and by input rate (a ceiling).
_CEILING_CANDIDATES = 3


@functools.cache
def openrouter_ceiling_models() -> tuple[str, ...]:
    """The models of genai-prices' OpenRouter list with the highest output and input rates (a
    bare preset's reservation is the dearest of them at its tokens). Read once."""
    rates: list[tuple[Decimal, Decimal, str]] = []
    provider = get_snapshot().find_provider(None, OPENROUTER, None)
    for model in provider.models if provider is not None else ():
        listed = model.prices if isinstance(model.prices, list) else [model.prices]
        for prices in listed:  # conditional prices (by date, by time of day): each
            prices = getattr(prices, "prices", prices)
            if isinstance(prices, ModelPrice):
                rates.append((_rate(prices.output_mtok), _rate(prices.input_mtok), model.id))
    by_output = sorted(rates, reverse=True)[:_CEILING_CANDIDATES]
    by_input = sorted(rates, key=lambda r: (r[1], r[0]), reverse=True)[:_CEILING_CANDIDATES]
    return tuple(dict.fromkeys(r[2] for r in (*by_output, *by_input)))


def _rate(value: object) -> Decimal:
    """A per-1M-token rate as listed (a tiered one: its base rate), 0 when none."""
    if isinstance(value, TieredPrices):
        value = value.base
    return Decimal(str(value)) if isinstance(value, int | float | Decimal) else Decimal(0)


def openrouter_priced_as(model: str) -> str | None:
    """The id an OpenRouter variant ``model`` is priced as when genai-prices does not list it
    (``anthropic/claude-opus-4.1:nitro`` -> ``anthropic/claude-opus-4.1``), or None."""
    found = provider_id(model)
    if found is None or found.form != "vendor" or found.variant not in _OPENROUTER_SAME_PRICE:
        return None
    return model.strip().removeprefix("models/")[: -len(found.variant) - 1]


def _model_ref(model: str) -> str:
    """Strip the ``models/`` prefix Gemini puts on names (not a fuzzy match: the same id)."""
    model = model.strip()
    return model.removeprefix("models/")


# Audio and image counts, handed to genai-prices under the same names (subsets it prices apart).
_MODALITY_COUNTS = (
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "cache_audio_read_tokens",
)

# Anthropic's US-only inference (usage.inference_geo "us", Opus 4.6 and later: older models refuse
# the parameter) costs 1.1x on every token price; per-search fees are not tokens and stay as they are.
US_INFERENCE = Decimal("1.1")

# Service tiers priced as the model's own prices (no variant): the linear shortcut applies.
_BASE_TIERS = frozenset({None, "", "default", "auto", "standard", "on_demand"})
# A batch job's rows (OpenAI's Batch API, Anthropic's Message Batches): genai-prices prices them
# with ``price_context={"processing": "batch"}`` where it has a batch price (from 2026-10-14 on).
BATCH = "batch"
HALF = Decimal("0.5")
# A tier genai-prices has no price for, at a factor the provider documents exactly (Gemini's Flex
# inference: "50% discount", ai.google.dev/gemini-api/docs/optimization; OpenAI's Batch API: "50%
# cost discount vs. the synchronous APIs", help.openai.com Batch API FAQ; Anthropic's Message
# Batches, "reducing costs by 50%", its batch-processing guide). Any other such tier (Gemini
# priority, "75% to 100% more"; Bedrock's flex and priority) keeps the standard price, and its
# price_source says "(<tier> tier: standard rate)" so a report can tell.
_TIER_FACTORS = {("google", "flex"): HALF, ("openai", BATCH): HALF, ("anthropic", BATCH): HALF}
_FEE_COUNTS = frozenset({"web_searches", "storage_searches"})  # per call, not per token
# (snapshot, provider, model ref, tier, UTC day) -> whether genai-prices prices that tier apart then
# (a tier's price may start on a date: its batch and priority prices did in October 2026)
_tier_prices: dict[tuple[int, str, str, str, date], bool] = {}
_TIER_PROBE = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}


def _tier_priced(
    snapshot: int, provider: str, ref: str, tier: str, day: date, calculate: Callable[..., PriceCalculation]
) -> bool:
    """Whether genai-prices has a price of its own for ``tier`` on this model on ``day`` (known once
    per model and day)."""
    key = (snapshot, provider, ref, tier, day)
    known = _tier_prices.get(key)
    if known is None:
        try:
            probe = dict(_TIER_PROBE)
            known = calculate(probe).total_price != calculate(probe, tiered=False).total_price
        except Exception:  # cannot tell: take genai-prices' price as it is
            known = True
        if len(_tier_prices) >= _MAX_LINEAR:
            _tier_prices.clear()
        _tier_prices[key] = known
    return known


def _price_context(service_tier: str | None) -> dict[str, str] | None:
    """genai-prices' price context of a tier: OpenAI's tiers are priced by ``service_tier``,
    Anthropic's fast mode by ``speed``, batch jobs (either) by ``processing``."""
    if service_tier in _BASE_TIERS:
        return None
    context = {"service_tier": str(service_tier), "speed": str(service_tier)}
    if service_tier == BATCH:
        context["processing"] = BATCH
    return context


def _below_tiers(calc: PriceCalculation, counts: dict[str, float]) -> PriceCalculation:
    """``calc`` at the rates below the model's long-context tiers: a batch's usage is the sum of
    its requests, and a tier (over 200k input tokens) is one request's, not the sum's."""
    prices = calc.model_price
    values = vars(prices)
    if not any(isinstance(value, TieredPrices) for value in values.values()):
        return calc
    flat = ModelPrice(**{k: v.base if isinstance(v, TieredPrices) else v for k, v in values.items()})
    found = flat.calc_price(GPUsage(**counts))
    return dataclasses.replace(
        calc,
        input_price=found["input_price"],
        output_price=found["output_price"],
        total_price=found["total_price"],
        model_price=flat,
    )


def _prices_audio_time(calc: PriceCalculation) -> bool:
    """Whether the model's price has a rate per hour of audio (genai-prices' ``audio_hours``)."""
    prices = calc.model_price
    return any(getattr(prices, name, None) for name in ("audio_hours", "input_audio_hours"))


def price(
    provider: str,
    model: str | None,
    usage: Usage | None,
    when: datetime,
    status_code: int | None = None,
    service_tier: str | None = None,
    inference_geo: str | None = None,
    surcharge: tuple[Decimal, str] | None = None,
) -> Price:
    """Price one call; never raises. An unknown model is never priced 0.

    Anthropic calls whose ``inference_geo`` is ``"us"`` cost 1.1x on their tokens
    (``price_source`` says so); so does a ``surcharge`` (factor, note), e.g. Vertex's regional
    endpoints.

    One-hour cache writes, web searches (Anthropic's, OpenAI's, Gemini's grounding) and a
    service tier other than the default (OpenAI's flex and priority, Anthropic's fast mode) are
    priced by genai-prices itself, not by the linear shortcut.
    """
    try:
        if usage is None:
            if status_code is not None and status_code >= 400:
                return Price(Decimal(0), NOT_BILLED, None, None)
            return Price(None, NO_USAGE, None, None)
        if not model or not model.strip():
            return Price(None, NO_MODEL, None, None)
        ref = _model_ref(model)
        snapshot = id(get_snapshot())
        linear_key = (snapshot, provider, ref)
        us_only = inference_geo == "us" and provider == "anthropic"
        factor_of_place = surcharge[0] if surcharge is not None else Decimal(1)
        place_notes = [surcharge[1]] if surcharge is not None else []
        plain = (
            not us_only
            and factor_of_place == 1
            and service_tier in _BASE_TIERS
            and not (
                usage.cache_write_1h_tokens
                or usage.web_searches
                or usage.file_searches
                or usage.has_modalities
                or usage.audio_seconds
            )
        )
        known = _linear.get(linear_key) if plain else None
        if known is not None:
            cost = known.cost(usage)
            if cost is not None:
                return Price(cost, PRICED, " ".join([SOURCE, *place_notes]), known.model_id)
        miss_key = (snapshot, provider.lower(), ref.lower())
        if miss_key in _misses:
            return Price(None, UNKNOWN_MODEL, SOURCE, None)
        counts: dict[str, float] = {
            "input_tokens": usage.input_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "output_tokens": usage.output_tokens,
        }
        if usage.cache_write_1h_tokens:
            counts["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
        if usage.web_searches:
            counts["web_searches"] = usage.web_searches
        if usage.file_searches:  # genai-prices' "storage searches" (storage_searches_kcount)
            counts["storage_searches"] = usage.file_searches
        if usage.has_modalities:
            # All of them, zeros too: genai-prices will not guess how cache reads split by modality.
            counts.update((name, getattr(usage, name)) for name in _MODALITY_COUNTS)
        if usage.audio_seconds:  # genai-prices' per-hour audio price (whisper-1: $0.36)
            counts["audio_seconds"] = usage.audio_seconds
        context = _price_context(service_tier)

        def calculate(counts: dict[str, float], tiered: bool = True) -> PriceCalculation:
            calc = calc_price(
                GPUsage(**counts),
                ref,
                provider_id=provider,
                genai_request_timestamp=_utc(when),
                price_context=context if tiered else None,  # type: ignore[arg-type]
            )
            return _below_tiers(calc, counts) if service_tier == BATCH else calc

        used = counts  # the counts genai-prices priced (text only if it could not split them)
        try:
            calc = calculate(counts)
        except LookupError:
            if len(_misses) >= _MAX_MISSES:
                _misses.clear()
            _misses.add(miss_key)
            return Price(None, UNKNOWN_MODEL, SOURCE, None)
        except Exception as exc:
            if not usage.has_modalities:
                raise
            # A split genai-prices cannot price (image input with cache hits, say): as text.
            log.debug("tokometer: %s/%s priced as text: %s", provider, model, exc)
            used = {k: v for k, v in counts.items() if k not in _MODALITY_COUNTS}
            calc = calculate(used)
        if usage.audio_seconds and not _prices_audio_time(calc):
            # Seconds of audio, and no price per hour of it: 0 would be a guess, not a price.
            return Price(None, UNKNOWN_MODEL, f"{SOURCE} (no price per hour of audio)", calc.model.id)
        if plain and linear_key not in _linear:
            if len(_linear) >= _MAX_LINEAR:
                _linear.clear()
            try:
                _linear[linear_key] = linear_price(calc, usage)
            except Exception:  # no shortcut, still a price
                _linear[linear_key] = None
        factor, notes = Decimal(1), []
        tier_day = _utc(when).date()
        if context is not None and not _tier_priced(
            snapshot, provider, ref, str(service_tier), tier_day, calculate
        ):
            # genai-prices has no price for this tier of this model: it gave the standard one.
            exact = _TIER_FACTORS.get((provider, str(service_tier).lower()))
            if exact is not None:
                factor, notes = exact, [f"x{exact} ({service_tier})"]
            else:
                notes = [f"({service_tier} tier: standard rate)"]
        if us_only:
            factor *= US_INFERENCE
            notes.insert(0, "x1.1 (inference_geo us)")
        factor *= factor_of_place
        notes[:0] = place_notes
        total = calc.total_price
        if factor != 1:  # on the tokens only: per-search fees are not tokens
            tokens = calculate({k: v for k, v in used.items() if k not in _FEE_COUNTS}).total_price
            total = tokens * factor + (calc.total_price - tokens)
        return Price(total, PRICED, " ".join([SOURCE, *notes]), calc.model.id)
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
        record.service_tier,
        record.inference_geo,
    )
    record.cost_usd = p.cost_usd
    record.price_status = p.status
    record.price_source = p.source
    record.price_model = p.model
    _say_why_unpriced(record)


def _say_why_unpriced(record: CallRecord) -> None:
    """An image or transcription call without usage is never estimated offline: its
    ``price_source`` says why it has no price (DALL·E's per-image billing, a text answer...)."""
    if record.price_status == NO_USAGE and record.api_flavor in MEDIA_FLAVORS:
        record.price_source = f"{SOURCE}: {unpriced_reason(record.api_flavor, record.model_sent)}"


# --- policies.yaml `prices:` and provider-specific names -----------------------------------------


def override_prices(override: PriceOverride, usage: Usage) -> bool:
    """Can this ``prices:`` entry price this usage: its tokens (if any) and its audio seconds (if any)?"""
    has_tokens = bool(usage.input_tokens or usage.output_tokens)
    if usage.audio_seconds:
        return override.usd_per_hour is not None and (not has_tokens or override.prices_tokens)
    return override.prices_tokens


def override_cost(override: PriceOverride, usage: Usage) -> Decimal:
    """Each bucket priced once: uncached input, cache reads, cache writes, output; and audio billed
    by its duration at the hourly price. Only for usage the entry can price (``override_prices``)."""
    total = Decimal(0)
    if override.input is not None and override.output is not None:
        uncached = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens)
        cached = override.input if override.cached_input is None else override.cached_input
        write = override.input if override.cache_write is None else override.cache_write
        tokens = (
            uncached * override.input
            + usage.cache_read_tokens * cached
            + usage.cache_write_tokens * write
            + usage.output_tokens * override.output
        )
        total += tokens / PER_MILLION
    if usage.audio_seconds and override.usd_per_hour is not None:
        total += Decimal(str(usage.audio_seconds)) * override.usd_per_hour / SECONDS_PER_HOUR
    return total


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
        price_provider: Callable[..., tuple[str, Callable[[str], str] | None]] | None = None,
        geo_surcharge: Callable[[str], GeoSurcharge | None] | None = None,
    ) -> None:
        self.overrides = tuple(overrides)
        self._price_provider = price_provider  # (row provider[, model]) -> (price id, name mapping)
        self._geo_surcharge = geo_surcharge  # row provider -> its own geo pricing, if any

    def estimate(
        self,
        provider: str,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        geo: str | None = None,
        service_tier: str | None = None,
        output_image_tokens: int = 0,
        input_image_tokens: int = 0,
    ) -> Decimal:
        """A quick cost estimate (a budget reservation): the list price of these tokens.

        Priced as a call is (``prices:`` first, genai-prices' long-context tiers included):
        microseconds once the model's linear price is known, a full calculation past its first
        tier. ``geo`` is where the path says the call runs: a provider's own geo premium
        (Vertex's regional endpoints) applies to the reservation as it will to the bill; so does
        ``service_tier`` (a batch job's price). ``output_image_tokens``, a part of the output, and
        ``input_image_tokens``, a part of the input, are priced at the model's image rates, as a GPT
        image model's reported usage is.
        """
        if not model:
            return Decimal(0)
        stand_in = self._openrouter_stand_in(provider, model, input_tokens, output_tokens, geo, service_tier)
        if stand_in is not None:
            return stand_in
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            input_image_tokens=input_image_tokens,
            output_image_tokens=output_image_tokens,
        )
        price = self.price_usage(provider, (model,), usage, datetime.now(UTC), service_tier=service_tier)
        cost = price.cost_usd or Decimal(0)
        if geo is not None and self._geo_surcharge is not None:
            own_geo = self._geo_surcharge(provider)
            surcharge = own_geo(model, geo) if own_geo is not None else None
            if surcharge is not None and surcharge[0] != 1:
                cost *= surcharge[0]
        return cost

    def _openrouter_stand_in(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        geo: str | None,
        service_tier: str | None,
    ) -> Decimal | None:
        """The reservation of an OpenRouter id no price list has, where the provider is priced as
        OpenRouter: ``m@preset/slug`` at ``m``; a bare ``@preset/slug`` (or one whose ``m`` is
        blank: its model OpenRouter's preset's, unknown here) at the dearest model OpenRouter lists
        (``openrouter_ceiling_models``: a ceiling, so a budget holds whatever the preset runs);
        ``openrouter/fusion`` as its default judge writing the answer plus, at each of
        ``FUSION_INVOCATIONS_RESERVED`` invocations, its default panel and judge. None for any other
        id (or provider)."""
        named = preset_model(model)
        if named is None and model != OPENROUTER_FUSION:
            return None
        if self._override_match(provider, model) is not None:
            return None  # a `prices:` entry for the id as written wins
        price_id = self._price_provider(provider, model)[0] if self._price_provider is not None else provider
        if price_id != OPENROUTER:
            return None

        def at(one: str) -> Decimal:
            return self.estimate(provider, one, input_tokens, output_tokens, geo, service_tier)

        if named:
            return at(named)
        if named is not None:  # "@preset/slug"
            return max((at(one) for one in openrouter_ceiling_models()), default=Decimal(0))
        panel = sum((at(one) for one in (*FUSION_DEFAULT_PANEL, FUSION_DEFAULT_JUDGE)), Decimal(0))
        return at(FUSION_DEFAULT_JUDGE) + FUSION_INVOCATIONS_RESERVED * panel

    def override_for(self, provider: str, model: str) -> PriceOverride | None:
        found = self._override_match(provider, model)
        return found[1] if found is not None else None

    def _override_match(self, provider: str, model: str) -> tuple[str, PriceOverride] | None:
        """The first ``prices:`` entry matching ``model``: (the model it is priced under, its price).

        That model is the entry's own name (a dated snapshot folds into it, as genai-prices'
        calls do), or the model's base name when the entry is a glob.
        """
        if not self.overrides:  # most policies have none: no import statement on every call
            return None
        from addon.model_rules import base_model, is_pattern, model_matches, strip_prefix

        for pattern, override in self.overrides:
            model_pattern = pattern
            if "/" in pattern and not pattern.startswith("models/"):
                scope, _, model_pattern = pattern.partition("/")
                if scope != provider:
                    continue
            if model_matches(model_pattern, model, as_written=True):  # a price is for the id as written
                priced_as = base_model(model) if is_pattern(model_pattern) else strip_prefix(model_pattern)
                return priced_as, override
        return None

    @classmethod
    def for_policies(cls, policies: Policies) -> Pricer:
        """The pricer the proxy uses under ``policies``: its ``prices:``, its providers' price ids."""
        from addon.providers import registry_for

        registry = registry_for(policies)
        return cls(
            policies.prices, price_provider=registry.price_provider, geo_surcharge=registry.geo_surcharge
        )

    def __call__(self, record: CallRecord) -> None:
        if record.price_status is not None:
            return
        p = self.price_usage(
            record.provider,
            (record.model_reported or record.model_sent, record.model_sent),
            record.usage,
            record.ts,
            record.status_code,
            record.service_tier,
            record.inference_geo,
        )
        record.cost_usd, record.price_status = p.cost_usd, p.status
        record.price_source, record.price_model = p.source, p.model
        _say_why_unpriced(record)

    def price_usage(
        self,
        provider: str,
        models: Sequence[str | None],
        usage: Usage | None,
        when: datetime,
        status_code: int | None = None,
        service_tier: str | None = None,
        inference_geo: str | None = None,
    ) -> Price:
        """A call's price: a ``prices:`` entry matching one of ``models`` (in order), else
        genai-prices for the first, under the provider's price id and model name. Anthropic's
        US-only inference costs 1.1x on a ``prices:`` rate too (its rates are the global ones),
        as does a provider's own geo surcharge (Vertex's regional endpoints); a batch job's row
        costs half of it (the rate is the synchronous one)."""
        price_id, to_name = (provider, None)
        first = next((m for m in models if m), None)
        if self._price_provider is not None:
            price_id, to_name = self._price_provider(provider, first)
        surcharge, place = None, inference_geo
        own_geo = self._geo_surcharge(provider) if self._geo_surcharge is not None else None
        if own_geo is not None:
            # The row's geo is where the provider ran it (Vertex: the endpoint's location), not
            # Anthropic's inference_geo: only the provider's own rule applies.
            surcharge, inference_geo = own_geo(first, place), None
        if usage is not None:
            for candidate in dict.fromkeys(m for m in models if m):
                found = self._override_match(provider, candidate)
                # An entry without the price this usage needs (tokens, or seconds: usd_per_hour)
                # leaves it to genai-prices.
                if found is not None and override_prices(found[1], usage):
                    priced_as, override = found
                    cost, notes = override_cost(override, usage), []
                    if surcharge is not None and surcharge[0] != 1:
                        cost *= surcharge[0]
                        notes.append(f"x{surcharge[0]} ({provider} regional endpoint {place})")
                    elif inference_geo == "us" and price_id == "anthropic":
                        cost *= US_INFERENCE
                        notes.append("x1.1 (inference_geo us)")
                    if service_tier == BATCH:  # an entry is the synchronous rate: a batch costs half
                        cost *= HALF
                        notes.append(f"x{HALF} (batch)")
                    return Price(cost, PRICED, " ".join([OVERRIDE_SOURCE, *notes]), priced_as)
        model = models[0] if models else None
        if model and to_name is not None:
            model = to_name(model)
        found = price(price_id, model, usage, when, status_code, service_tier, inference_geo, surcharge)
        if found.status == UNKNOWN_MODEL and price_id == OPENROUTER and model:
            # OpenRouter's variants (anthropic/claude-opus-4.1:nitro) are listed where their price
            # differs (gpt-4o:extended, the $0 :free ones); another runs the model at its price.
            plain = openrouter_priced_as(model)
            if plain is not None:
                return price(
                    price_id, plain, usage, when, status_code, service_tier, inference_geo, surcharge
                )
        return found
