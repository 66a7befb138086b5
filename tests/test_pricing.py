"""Pricing: hand-computed figures from list prices (per 1M tokens), exact Decimals."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from addon import pricing
from addon.pricing import Price, price, price_record
from addon.record import CallRecord
from addon.usage import Usage

WHEN = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SOURCE = "genai-prices 0.2.3"


def test_gpt4o_with_cache_reads() -> None:
    # 800 uncached x 2.50 + 200 cached x 1.25 + 500 output x 10, per 1M tokens
    # = 0.002 + 0.00025 + 0.005
    got = price("openai", "gpt-4o", Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500), WHEN)
    assert got == Price(Decimal("0.00725"), "priced", SOURCE, "gpt-4o")


def test_anthropic_cache_reads_and_writes() -> None:
    # input 10,000 in total = 4,000 uncached + 4,000 cache reads + 2,000 cache writes
    # 4,000 x 3 + 4,000 x 0.30 + 2,000 x 3.75 + 1,000 output x 15, per 1M
    # = 0.012 + 0.0012 + 0.0075 + 0.015
    usage = Usage(input_tokens=10_000, cache_read_tokens=4_000, cache_write_tokens=2_000, output_tokens=1_000)
    got = price("anthropic", "claude-sonnet-4-5", usage, WHEN)
    assert got.cost_usd == Decimal("0.0357")
    assert got.status == "priced"
    assert got.model == "claude-sonnet-4-5"


def test_reasoning_is_priced_once_as_output() -> None:
    # claude-haiku-4-5: 1 in / 5 out. Output 3,000 of which 2,000 thinking: 3,000 x 5, not 5,000 x 5.
    # 1,000 x 1 + 3,000 x 5 = 0.001 + 0.015
    usage = Usage(input_tokens=1_000, output_tokens=3_000, reasoning_tokens=2_000)
    assert price("anthropic", "claude-haiku-4-5", usage, WHEN).cost_usd == Decimal("0.016")


def test_dated_model_name_resolves_to_its_model() -> None:
    usage = Usage(input_tokens=10_000, cache_read_tokens=4_000, cache_write_tokens=2_000, output_tokens=1_000)
    got = price("anthropic", "claude-sonnet-4-5-20250929", usage, WHEN)
    assert got == Price(Decimal("0.0357"), "priced", SOURCE, "claude-sonnet-4-5")
    # a dated OpenAI snapshot with the same price as the alias
    got = price(
        "openai",
        "gpt-4o-2024-08-06",
        Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500),
        WHEN,
    )
    assert (got.cost_usd, got.model) == (Decimal("0.00725"), "gpt-4o")


def test_dated_snapshot_with_its_own_price_is_not_collapsed() -> None:
    # gpt-4o-2024-05-13 is 5 in / 15 out with no cache discount: 1,000 x 5 + 500 x 15
    got = price(
        "openai",
        "gpt-4o-2024-05-13",
        Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500),
        WHEN,
    )
    assert (got.cost_usd, got.model) == (Decimal("0.0125"), "gpt-4o-2024-05-13")


def test_long_context_tier() -> None:
    # claude-sonnet-4-5 above 200k input: 6 in / 22.5 out. 300,000 x 6 + 1,000 x 22.5
    got = price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=300_000, output_tokens=1_000), WHEN)
    assert got.cost_usd == Decimal("1.8225")


def test_gemini_models_prefix_is_stripped() -> None:
    # gemini-2.5-flash 0.30 in / 2.50 out: 1,000 x 0.30 + 1,000 x 2.50
    got = price("google", "models/gemini-2.5-flash", Usage(input_tokens=1000, output_tokens=1000), WHEN)
    assert got == Price(Decimal("0.0028"), "priced", SOURCE, "gemini-2.5-flash")


def test_unknown_model_is_never_priced_zero() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    first = price("openai", "gpt-9-imaginary", usage, WHEN)
    assert first == Price(None, "unknown_model", SOURCE, None)
    # the cached miss answers the same
    assert price("openai", "gpt-9-imaginary", usage, WHEN) == first
    # a provider genai-prices does not know
    assert price("nosuchprovider", "gpt-4o", usage, WHEN).status == "unknown_model"


def test_no_usage_no_model_not_billed_and_error() -> None:
    usage = Usage(input_tokens=10, output_tokens=5)
    assert price("openai", "gpt-4o", None, WHEN) == Price(None, "no_usage", None, None)
    assert price("openai", "gpt-4o", None, WHEN, status_code=200) == Price(None, "no_usage", None, None)
    assert price("openai", "gpt-4o", None, WHEN, status_code=429) == Price(
        Decimal(0), "not_billed", None, None
    )
    assert price("openai", None, usage, WHEN) == Price(None, "no_model", None, None)
    assert price("openai", "", usage, WHEN).status == "no_model"
    # impossible usage (more cache reads than input): genai-prices raises, we never do
    bad = price("openai", "gpt-4o", Usage(input_tokens=100, cache_read_tokens=200, output_tokens=5), WHEN)
    assert bad == Price(None, "error", SOURCE, None)


def test_unexpected_exception_is_status_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(pricing, "calc_price", boom)
    monkeypatch.setattr(pricing, "_linear", {})  # no cached rates: genai-prices is asked
    got = price("openai", "gpt-4o", Usage(input_tokens=1, output_tokens=1), WHEN)
    assert (got.cost_usd, got.status) == (None, "error")


def test_naive_timestamp_is_taken_as_utc() -> None:
    usage = Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500)
    assert price("openai", "gpt-4o", usage, datetime(2026, 11, 1, 12, 0)).cost_usd == Decimal("0.00725")


def _record(**kwargs: object) -> CallRecord:
    base: dict[str, object] = {
        "id": "c1",
        "ts": WHEN,
        "session_id": "s",
        "environment": "dev",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "api_flavor": "chat",
        "status_code": 200,
    }
    base.update(kwargs)
    return CallRecord(**base)  # type: ignore[arg-type]


def test_price_record_prefers_reported_model() -> None:
    record = _record(model_sent="gpt-4o", model_reported="gpt-4o-2024-05-13")
    record.set_usage(Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500))
    price_record(record)
    assert record.cost_usd == Decimal("0.0125")
    assert (record.price_status, record.price_source, record.price_model) == (
        "priced",
        SOURCE,
        "gpt-4o-2024-05-13",
    )


def test_price_record_falls_back_to_model_sent() -> None:
    record = _record(model_sent="gpt-4o")
    record.set_usage(Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500))
    price_record(record)
    assert (record.cost_usd, record.price_model) == (Decimal("0.00725"), "gpt-4o")


def test_price_record_error_without_usage_is_not_billed() -> None:
    record = _record(model_sent="gpt-4o", status_code=500)
    price_record(record)
    assert (record.cost_usd, record.price_status) == (Decimal(0), "not_billed")


def test_price_record_keeps_a_status_already_set() -> None:
    record = _record(model_sent="gpt-4o", price_status="not_billed", cost_usd=Decimal(0))
    record.set_usage(Usage(input_tokens=1000, output_tokens=500))
    price_record(record)
    assert (record.cost_usd, record.price_status, record.price_source) == (Decimal(0), "not_billed", None)


def test_linear_shortcut_matches_genai_prices_for_every_model_in_the_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cached per-model rates give exactly what calc_price gives, for every model it knows,
    below and above tier thresholds; time-of-day and tiered models keep being exact."""
    from genai_prices import Usage as GPUsage
    from genai_prices import calc_price
    from genai_prices.data_snapshot import get_snapshot

    monkeypatch.setattr(pricing, "_linear", {})
    usages = [
        Usage(input_tokens=1_000, cache_read_tokens=100, output_tokens=50),
        Usage(input_tokens=12_345, cache_read_tokens=2_000, cache_write_tokens=345, output_tokens=6_789),
        Usage(input_tokens=250_000, cache_read_tokens=10_000, output_tokens=1_000),  # above 200k tiers
        Usage(input_tokens=0, output_tokens=0),
    ]
    compared = shortcut = 0
    for provider in get_snapshot().providers:
        for model in provider.models:
            for usage in usages:
                try:
                    expected = calc_price(
                        GPUsage(
                            input_tokens=usage.input_tokens,
                            cache_read_tokens=usage.cache_read_tokens,
                            cache_write_tokens=usage.cache_write_tokens,
                            output_tokens=usage.output_tokens,
                        ),
                        model.id,
                        provider_id=provider.id,
                        genai_request_timestamp=WHEN,
                    ).total_price
                except Exception:
                    continue
                got = price(provider.id, model.id, usage, WHEN)
                assert got.cost_usd == expected, (provider.id, model.id, usage)
                compared += 1
            shortcut += pricing._linear.get((id(get_snapshot()), provider.id, model.id)) is not None
    assert compared > 5_000
    assert shortcut > 1_500  # most models have plain per-token prices


def test_linear_shortcut_is_not_used_for_prices_by_time_of_day_or_above_a_tier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pricing, "_linear", {})
    usage = Usage(input_tokens=1_000, output_tokens=100)
    price("deepseek", "deepseek-chat", usage, WHEN)
    key = (id(pricing.get_snapshot()), "deepseek", "deepseek-chat")
    assert key in pricing._linear and pricing._linear[key] is None  # time-of-day prices
    price("anthropic", "claude-sonnet-4-5", usage, WHEN)
    linear = pricing._linear[(id(pricing.get_snapshot()), "anthropic", "claude-sonnet-4-5")]
    assert linear is not None and linear.max_input_tokens == 200_000
    assert linear.cost(Usage(input_tokens=200_001, output_tokens=1)) is None
    # 300k in x 6 + 1k out x 22.50 per 1M: the >200k tier, priced by genai-prices
    big = price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=300_000, output_tokens=1_000), WHEN)
    assert big.cost_usd == Decimal("1.8225")


def test_one_hour_cache_writes_web_searches_and_service_tiers_are_priced_as_genai_prices_does() -> None:
    """Each against genai-prices' own numbers: claude-sonnet-4-5 input $3, 5m writes $3.75, 1h
    writes $6, output $15 per 1M, web searches $10 per 1,000; gpt-5 $1.25 / $10, flex half."""
    sonnet = Usage(
        input_tokens=10_100, cache_write_tokens=10_000, cache_write_1h_tokens=10_000, output_tokens=50
    )
    assert price("anthropic", "claude-sonnet-4-5", sonnet, WHEN).cost_usd == Decimal("0.06105")
    five_minutes = Usage(input_tokens=10_100, cache_write_tokens=10_000, output_tokens=50)
    assert price("anthropic", "claude-sonnet-4-5", five_minutes, WHEN).cost_usd == Decimal("0.03855")
    searching = Usage(input_tokens=100, output_tokens=50, web_searches=3)
    assert price("anthropic", "claude-sonnet-4-5", searching, WHEN).cost_usd == Decimal("0.03105")
    gpt5 = Usage(input_tokens=1000, output_tokens=1000)
    assert price("openai", "gpt-5", gpt5, WHEN).cost_usd == Decimal("0.01125")
    assert price("openai", "gpt-5", gpt5, WHEN, service_tier="default").cost_usd == Decimal("0.01125")
    assert price("openai", "gpt-5", gpt5, WHEN, service_tier="flex").cost_usd == Decimal("0.005625")
    assert price("openai", "gpt-5", gpt5, WHEN, service_tier="priority").cost_usd == Decimal("0.0225")
    assert price("openai", "gpt-5", gpt5, WHEN).cost_usd == Decimal("0.01125")  # the shortcut is untouched
    record = CallRecord(
        id="t", ts=WHEN, session_id="s", environment="development", provider="openai",
        host="api.openai.com", path="/v1/chat/completions", api_flavor="chat", model_sent="gpt-5",
        service_tier="flex",
    )  # fmt: skip
    record.set_usage(gpt5)
    price_record(record)
    assert (record.cost_usd, record.price_status) == (Decimal("0.005625"), "priced")


# -- tiers, fallbacks and the US geo together (review of the tier fallback) ---------------------

REVIEW_WHEN = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_gemini_flex_halves_the_tokens_not_the_grounding_fee() -> None:
    """gemini-2.5-flash, 10k in / 1k out, one grounded prompt, served flex: the tokens' $0.0055 is
    halved, the $35 per 1,000 grounded prompts is a fee per request and stays ($0.035)."""
    usage = Usage(input_tokens=10_000, output_tokens=1_000, web_searches=1)
    got = price("google", "gemini-2.5-flash", usage, REVIEW_WHEN, service_tier="flex")
    assert got.cost_usd == Decimal("0.00275") + Decimal("0.035")
    assert got.source == f"{pricing.SOURCE} x0.5 (flex)"


def test_a_tiered_call_priced_as_text_is_still_priced() -> None:
    """Image input with cache hits that genai-prices cannot split is priced as text; with a service
    tier genai-prices has no price for, the same (it was stored as an error, cost NULL)."""
    usage = Usage(input_tokens=10_000, cache_read_tokens=5_000, output_tokens=1_000, input_image_tokens=2_000)
    plain = price("openai", "gpt-image-1", usage, REVIEW_WHEN)
    tiered = price("openai", "gpt-image-1", usage, REVIEW_WHEN, service_tier="priority")
    assert plain.status == "priced" and plain.cost_usd is not None
    assert (tiered.status, tiered.cost_usd) == ("priced", plain.cost_usd)
    assert tiered.source == f"{pricing.SOURCE} (priority tier: standard rate)"


def test_a_tier_with_its_own_price_is_found_once_per_model() -> None:
    """Whether genai-prices prices a tier apart is asked once per (model, tier), not on every call."""
    pricing._tier_prices.clear()
    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    flex = price("openai", "gpt-5", usage, REVIEW_WHEN, service_tier="flex")
    standard = price("openai", "gpt-5", usage, REVIEW_WHEN)
    assert flex.cost_usd == standard.cost_usd / 2 and flex.source == pricing.SOURCE  # genai-prices' own
    assert list(pricing._tier_prices.values()) == [True]
    price("openai", "gpt-5", usage, REVIEW_WHEN, service_tier="flex")
    assert len(pricing._tier_prices) == 1


def test_us_only_inference_costs_more_under_a_prices_entry_too() -> None:
    """A policies.yaml rate for claude-opus-4-6 ($5 / $25) is the global rate: US-only is 1.1x."""
    from addon.policies import PriceOverride
    from addon.pricing import Pricer

    pricer = Pricer([("claude-opus-4-6", PriceOverride(input=Decimal(5), output=Decimal(25)))])
    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    got = pricer.price_usage("anthropic", ("claude-opus-4-6",), usage, REVIEW_WHEN, inference_geo="us")
    assert got.cost_usd == Decimal("0.0825")
    assert got.source == "policies.yaml prices x1.1 (inference_geo us)"
    plain = pricer.price_usage("anthropic", ("claude-opus-4-6",), usage, REVIEW_WHEN)
    assert (plain.cost_usd, plain.source) == (Decimal("0.075"), "policies.yaml prices")


def test_file_searches_never_take_the_token_only_shortcut() -> None:
    """A model priced once (its per-token shortcut cached) still charges a later call's file
    searches ($2.50 per 1,000): gpt-4.1, 1,000 in / 100 out + 2 searches = $0.0028 + $0.005."""
    usage = Usage(input_tokens=1_000, output_tokens=100)
    assert price("openai", "gpt-4.1", usage, REVIEW_WHEN).cost_usd == Decimal("0.0028")
    searched = Usage(input_tokens=1_000, output_tokens=100, file_searches=2)
    assert price("openai", "gpt-4.1", searched, REVIEW_WHEN).cost_usd == Decimal("0.0078")


def test_a_call_priced_as_text_keeps_its_tier_and_geo_factors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A modality split genai-prices cannot price falls back to text; a Gemini flex call is then
    halved and a US-only Anthropic call 1.1x on those text prices (the fallback's own counts)."""
    real = pricing.calc_price

    def no_splits(usage: object, *args: object, **kwargs: object) -> object:
        if getattr(usage, "input_audio_tokens", None):
            raise ValueError("cannot split audio and cache reads")
        return real(usage, *args, **kwargs)

    monkeypatch.setattr(pricing, "calc_price", no_splits)
    audio = Usage(input_tokens=10_000, cache_read_tokens=5_000, output_tokens=1_000, input_audio_tokens=2_000)
    text = Usage(input_tokens=10_000, cache_read_tokens=5_000, output_tokens=1_000)
    for provider, model, extra, factor in (
        ("google", "gemini-2.5-flash", {"service_tier": "flex"}, Decimal("0.5")),
        ("anthropic", "claude-opus-4-6", {"inference_geo": "us"}, Decimal("1.1")),
    ):
        as_text = price(provider, model, text, REVIEW_WHEN).cost_usd
        assert price(provider, model, audio, REVIEW_WHEN).cost_usd == as_text
        got = price(provider, model, audio, REVIEW_WHEN, **extra)  # type: ignore[arg-type]
        assert (got.status, got.cost_usd) == ("priced", as_text * factor), provider


def test_the_tier_probe_runs_once_per_model_and_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether genai-prices prices a tier apart costs two calc_price calls the first time, none after."""
    pricing._tier_prices.clear()
    calls: list[object] = []
    real = pricing.calc_price

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("price_context"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pricing, "calc_price", counting)
    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    price("google", "gemini-2.5-flash", usage, REVIEW_WHEN, service_tier="priority")
    first = len(calls)
    price("google", "gemini-2.5-flash", usage, REVIEW_WHEN, service_tier="priority")
    assert first == 3 and len(calls) - first == 1  # the call, then the probe's two; then the call alone


def test_the_us_only_factor_is_anthropics_alone() -> None:
    """inference_geo 'us' costs 1.1x on Anthropic only; another provider's call is priced as without."""
    from addon.policies import PriceOverride
    from addon.pricing import Pricer

    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    plain = price("openai", "gpt-4.1", usage, REVIEW_WHEN)
    assert price("openai", "gpt-4.1", usage, REVIEW_WHEN, inference_geo="us") == plain
    pricer = Pricer([("gpt-4.1", PriceOverride(input=Decimal(2), output=Decimal(8)))])
    overridden = pricer.price_usage("openai", ("gpt-4.1",), usage, REVIEW_WHEN, inference_geo="us")
    assert (overridden.cost_usd, overridden.source) == (Decimal("0.028"), "policies.yaml prices")


@pytest.mark.parametrize(
    ("provider", "model"),
    [("anthropic", "claude-sonnet-4-5"), ("google", "gemini-2.5-pro"), ("openai", "gpt-4o")],
)
@pytest.mark.parametrize(
    ("input_tokens", "output_tokens"), [(1_000, 500), (150_000, 4_096), (300_000, 4_096)]
)
def test_a_budget_reservation_is_the_list_price_of_its_tokens(
    provider: str, model: str, input_tokens: int, output_tokens: int
) -> None:
    """The reservation's per-token prices were read at a million input tokens: past a model's
    long-context threshold (200k for Sonnet 4.5 and Gemini 2.5 Pro), so every reservation for
    those models took twice the input price. It is now the price of the call's own tokens."""
    from genai_prices import Usage as GPUsage
    from genai_prices import calc_price

    pricer = pricing.Pricer()
    exact = calc_price(
        GPUsage(input_tokens=input_tokens, output_tokens=output_tokens), model, provider_id=provider
    ).total_price
    assert pricer.estimate(provider, model, input_tokens, output_tokens) == exact
