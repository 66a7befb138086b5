"""Vertex AI (Gemini and Claude on *aiplatform.googleapis.com): hosts, paths, rewrites, parsing, prices."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.model_rules import model_matches
from addon.policies import PriceOverride
from addon.pricing import Pricer
from addon.providers import Registry, vertex_api
from addon.usage import Usage

REGISTRY = Registry()
VERTEX = REGISTRY.by_name("vertex")
P = "/v1/projects/my-proj/locations/us-east5/publishers"
GEMINI = "/v1beta1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash"
WHEN = datetime(2026, 11, 2, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "host",
    [
        "aiplatform.googleapis.com",
        "us-central1-aiplatform.googleapis.com",
        "europe-west4-aiplatform.googleapis.com",
        "aiplatform.us.rep.googleapis.com",
        "aiplatform.eu.rep.googleapis.com",
        "US-EAST5-AIPLATFORM.googleapis.com.",
    ],
)
def test_vertex_hosts_are_the_vertex_provider(host: str) -> None:
    assert REGISTRY.for_host(host) is VERTEX


@pytest.mark.parametrize(
    "host",
    [
        "aiplatform.googleapis.com.evil.com",
        "us-central1-aiplatform.googleapis.com.evil.com",
        "evilaiplatform.googleapis.com",
        "aiplatform.googleapis.co",
        "notaiplatform.us.rep.googleapis.com",
        "-aiplatform.googleapis.com",
    ],
)
def test_look_alike_hosts_are_neither_metered_nor_intercepted(host: str) -> None:
    assert REGISTRY.for_host(host) is None
    assert not any(re.search(p, f"{host}:443") for p in REGISTRY.allow_host_patterns())


def test_vertex_hosts_are_intercepted_with_anchored_patterns() -> None:
    patterns = [p for p in REGISTRY.allow_host_patterns() if "aiplatform" in p]
    assert all(p.startswith("^") and p.endswith(":443$") for p in patterns)
    for host in (
        "aiplatform.googleapis.com",
        "asia-northeast1-aiplatform.googleapis.com",
        "aiplatform.eu.rep.googleapis.com",
    ):
        assert any(re.search(p, f"{host}:443") for p in patterns)
    assert not any(re.search(p, "aiplatform.googleapis.com:8443") for p in patterns)


@pytest.mark.parametrize(
    ("path", "flavor", "model"),
    [
        (f"{GEMINI}:generateContent", "generate", "gemini-2.5-flash"),
        (f"{GEMINI}:streamGenerateContent?alt=sse", "stream", "gemini-2.5-flash"),
        (GEMINI.replace("v1beta1", "v1") + ":generateContent", "generate", "gemini-2.5-flash"),
        (
            "/v1/projects/p/locations/global/publishers/google/models/gemini-3-pro-preview:generateContent",
            "generate",
            "gemini-3-pro-preview",
        ),
        (
            "/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent?key=x",
            "generate",
            "gemini-2.5-flash",
        ),
        (
            f"{P}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
            "messages",
            "claude-sonnet-4-5@20250929",
        ),
        (
            f"{P}/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
            "messages",
            "claude-sonnet-4-5@20250929",
        ),
        (f"{P}/anthropic/models/claude-opus-4-6%3ArawPredict", "messages", "claude-opus-4-6"),
        (
            f"{P}/anthropic/models/claude-haiku-4-5%4020251001:rawPredict",
            "messages",
            "claude-haiku-4-5@20251001",
        ),
        # Not billed, passed through: token counting (both publishers), embeddings, other publishers.
        (f"{P}/anthropic/models/count-tokens:rawPredict", None, "count-tokens"),
        (f"{GEMINI}:countTokens", None, "gemini-2.5-flash"),
        (f"{GEMINI}:computeTokens", None, "gemini-2.5-flash"),
        (f"{P}/google/models/text-embedding-005:predict", None, "text-embedding-005"),
        (f"{P}/meta/models/llama-4:rawPredict", None, "llama-4"),
        (f"{P}/google/models/gemini-2.5-flash:rawPredict", None, "gemini-2.5-flash"),
        (f"{P}/anthropic/models/claude-opus-4-6:generateContent", None, "claude-opus-4-6"),
        ("/v1/projects/p/locations/us-central1/batchPredictionJobs", None, None),
        ("/v1beta1/publishers/google/models", None, None),
        ("/v1/projects/p/locations/l/endpoints/123:generateContent", None, None),
    ],
)
def test_paths_flavors_and_models(path: str, flavor: str | None, model: str | None) -> None:
    assert vertex_api.flavor_for_path(path) == VERTEX.flavor_for_path(path) == flavor
    assert VERTEX.request_model(path, {"model": "ignored"}) == model


def test_path_facts_project_and_location() -> None:
    facts = vertex_api.path_facts(f"{P}/anthropic/models/claude-opus-4-6:rawPredict")
    assert facts == vertex_api.PathFacts(
        credential="vertex:my-proj", tags={"gcp_project": "my-proj"}, geo="us-east5"
    )
    express = vertex_api.path_facts("/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent")
    assert express == vertex_api.PathFacts()
    assert vertex_api.path_facts("/v1/projects/p/locations/l/batchPredictionJobs") is None


def test_with_model_rewrites_the_path_only() -> None:
    body = {"contents": []}
    path, new_body = VERTEX.with_model(
        f"{GEMINI}:streamGenerateContent?alt=sse", body, "gemini-2.5-flash-lite"
    )
    assert (
        path == GEMINI.replace("gemini-2.5-flash", "gemini-2.5-flash-lite") + ":streamGenerateContent?alt=sse"
    )
    assert new_body is body
    claude = f"{P}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    for target, sent in (
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5@20251001"),  # Anthropic's dated id, the Vertex way
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5@20251001"),
        ("claude-opus-4-6", "claude-opus-4-6"),
    ):
        assert VERTEX.with_model(claude, None, target) == (f"{P}/anthropic/models/{sent}:rawPredict", None)
    with pytest.raises(ValueError, match="not a Claude model"):
        VERTEX.with_model(claude, None, "gemini-2.5-flash")
    with pytest.raises(ValueError, match="is a Claude model"):
        VERTEX.with_model(f"{GEMINI}:generateContent", None, "claude-haiku-4-5")
    with pytest.raises(ValueError):
        VERTEX.with_model("/v1/projects/p/locations/l/batchPredictionJobs", None, "gemini-2.5-flash")


def test_stream_framing() -> None:
    assert VERTEX.stream_framing(f"{GEMINI}:streamGenerateContent?alt=sse", "text/event-stream") == "sse"
    assert VERTEX.stream_framing(f"{GEMINI}:streamGenerateContent", "application/json") == "json_array"
    assert VERTEX.stream_framing(f"{GEMINI}:generateContent", "application/json") is None
    stream = f"{P}/anthropic/models/claude-opus-4-6:streamRawPredict"
    assert VERTEX.stream_framing(stream, "text/event-stream; charset=utf-8") == "sse"
    assert VERTEX.stream_framing(stream, "application/json") is None


def test_parsers_are_the_publishers_own() -> None:
    claude = {
        "type": "message",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {
            "input_tokens": 100,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 30,
            "output_tokens": 20,
        },
    }
    metered = VERTEX.parse_response("messages", json.dumps(claude).encode(), {})
    assert metered.usage == Usage(
        input_tokens=140, cache_read_tokens=30, cache_write_tokens=10, output_tokens=20
    )
    assert metered.model == "claude-sonnet-4-5-20250929"
    gemini = {
        "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 100,
            "candidatesTokenCount": 50,
            "thoughtsTokenCount": 10,
            "cachedContentTokenCount": 20,
            "trafficType": "ON_DEMAND",
        },
        "modelVersion": "gemini-2.5-flash",
    }
    metered = VERTEX.parse_response("generate", json.dumps(gemini).encode(), {})
    assert metered.usage == Usage(
        input_tokens=100, cache_read_tokens=20, output_tokens=60, reasoning_tokens=10
    )
    assert VERTEX.parse_response("messages", b"not json", {}).error == "response body is not JSON"
    assert type(VERTEX.stream_parser("messages")).__module__ == "addon.providers.anthropic_api"
    assert type(VERTEX.stream_parser("stream")).__module__ == "addon.providers.gemini_api"


def test_keys_are_express_api_keys_only_never_the_oauth_token() -> None:
    assert VERTEX.key_headers == ("x-goog-api-key",) and VERTEX.key_query == ("key",)


def test_dated_vertex_ids_match_their_base_model() -> None:
    assert model_matches("claude-haiku-4-5", "claude-haiku-4-5@20251001")
    assert model_matches("claude-sonnet-4-5", "claude-sonnet-4-5@20250929")
    assert not model_matches("claude-sonnet-4", "claude-sonnet-4-5@20250929")
    assert not model_matches("claude-haiku-4-5", "claude-haiku-4-5@latest")


# --- prices ------------------------------------------------------------------------------------

PRICER = Pricer(price_provider=REGISTRY.price_provider, geo_surcharge=REGISTRY.geo_surcharge)
CLAUDE_USAGE = Usage(input_tokens=1_400, cache_read_tokens=300, cache_write_tokens=100, output_tokens=200)
GP_CLAUDE = GPUsage(input_tokens=1_400, cache_read_tokens=300, cache_write_tokens=100, output_tokens=200)


def _exact(model: str, provider: str, usage: GPUsage = GP_CLAUDE) -> Decimal:
    return calc_price(usage, model, provider_id=provider, genai_request_timestamp=WHEN).total_price


@pytest.mark.parametrize(
    ("model", "geo", "factor", "price_model"),
    [
        ("claude-sonnet-4-5@20250929", "global", 1, "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "us-east5", Decimal("1.1"), "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "europe-west1", Decimal("1.1"), "claude-sonnet-4-5"),
        ("claude-haiku-4-5@20251001", "eu", Decimal("1.1"), "claude-haiku-4-5"),  # multi-region
        ("claude-opus-4-6", "us", Decimal("1.1"), "claude-opus-4-6"),
        ("claude-opus-4-6", "global", 1, "claude-opus-4-6"),
        # Older than Sonnet 4.5: the same price everywhere.
        ("claude-sonnet-4@20250514", "us-east5", 1, "claude-sonnet-4-0"),
        ("claude-opus-4-1@20250805", "us-east5", 1, "claude-opus-4-1"),
        ("claude-3-5-haiku@20241022", "us-east5", 1, "claude-3-5-haiku-latest"),
    ],
)
def test_claude_on_vertex_costs_anthropic_list_price_and_10_percent_more_off_global(
    model: str, geo: str, factor: Decimal, price_model: str
) -> None:
    p = PRICER.price_usage("vertex", (model,), CLAUDE_USAGE, WHEN, inference_geo=geo)
    assert (p.status, p.model) == ("priced", price_model)
    assert p.cost_usd == _exact(model, "anthropic") * factor
    note = "(vertex: anthropic list price)" + (f" x1.1 (regional endpoint {geo})" if factor != 1 else "")
    assert p.source == f"genai-prices 0.2.3 {note}"


def test_gemini_on_vertex_costs_google_list_price_wherever_it_runs() -> None:
    usage = Usage(input_tokens=1_000, cache_read_tokens=200, output_tokens=600, reasoning_tokens=100)
    exact = _exact(
        "gemini-2.5-flash", "google", GPUsage(input_tokens=1_000, cache_read_tokens=200, output_tokens=600)
    )
    for geo in ("us-central1", "global", "eu", None):
        p = PRICER.price_usage("vertex", ("gemini-2.5-flash",), usage, WHEN, inference_geo=geo)
        assert (p.cost_usd, p.status, p.source) == (
            exact,
            "priced",
            "genai-prices 0.2.3 (vertex: google list price)",
        )
    assert exact == Decimal("0.001746")  # 800 x 0.30 + 200 x 0.03 + 600 x 2.50 per 1M


def test_a_vertex_geo_is_not_anthropics_us_only_inference() -> None:
    """Vertex's "us" multi-region is priced by Vertex's rule once, never also as inference_geo us."""
    p = PRICER.price_usage("vertex", ("claude-sonnet-4@20250514",), CLAUDE_USAGE, WHEN, inference_geo="us")
    assert p.cost_usd == _exact("claude-sonnet-4", "anthropic")
    direct = PRICER.price_usage("anthropic", ("claude-opus-4-6",), CLAUDE_USAGE, WHEN, inference_geo="us")
    assert direct.cost_usd == _exact("claude-opus-4-6", "anthropic") * Decimal("1.1")


def test_unknown_vertex_models_are_never_priced_zero() -> None:
    for model in ("claude-nonexistent-9", "gemini-nonexistent", "my-tuned-model"):
        p = PRICER.price_usage("vertex", (model,), CLAUDE_USAGE, WHEN, inference_geo="us-east5")
        assert (p.cost_usd, p.status) == (None, "unknown_model")
    assert PRICER.price_usage("vertex", (None,), CLAUDE_USAGE, WHEN).status == "no_model"


def test_prices_entries_for_vertex_take_the_regional_premium_too() -> None:
    pricer = Pricer(
        [("vertex/claude-*", PriceOverride(input=Decimal(2), output=Decimal(10)))],
        price_provider=REGISTRY.price_provider,
        geo_surcharge=REGISTRY.geo_surcharge,
    )
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000)
    regional = pricer.price_usage("vertex", ("claude-opus-4-6",), usage, WHEN, inference_geo="us-east5")
    assert regional.cost_usd == Decimal(3) * Decimal("1.1")
    assert regional.source == "policies.yaml prices x1.1 (vertex regional endpoint us-east5)"
    assert (
        pricer.price_usage("vertex", ("claude-opus-4-6",), usage, WHEN, inference_geo="global").cost_usd == 3
    )


def test_registry_price_ids_follow_the_model() -> None:
    assert REGISTRY.price_provider("vertex", "claude-opus-4-6")[0] == "anthropic"
    assert REGISTRY.price_provider("vertex", "gemini-2.5-pro")[0] == "google"
    assert REGISTRY.price_provider("vertex")[0] == "vertex"  # no model: nothing to look up
    assert REGISTRY.geo_surcharge("anthropic") is None and REGISTRY.geo_surcharge("vertex") is not None


# -- review (each fails before its fix) ----------------------------------------------------------

OPENAPI = "/v1beta1/projects/my-proj/locations/us-central1/endpoints/openapi/chat/completions"


def test_flex_and_priority_paygo_are_read_from_vertex_traffic_type() -> None:
    """Vertex reports Flex / Priority PayGo and provisioned throughput in usageMetadata.trafficType
    (no serviceTier): flex costs half of the standard price (docs: "a 50% discount"), priority and
    provisioned keep the standard price with a note."""

    def body(traffic: str) -> bytes:
        meta = {"promptTokenCount": 1_000_000, "candidatesTokenCount": 100_000, "trafficType": traffic}
        return json.dumps({"candidates": [{"finishReason": "STOP"}], "usageMetadata": meta}).encode()

    tiers = {t: VERTEX.parse_response("generate", body(t), {}).service_tier for t in (
        "ON_DEMAND", "ON_DEMAND_FLEX", "ON_DEMAND_PRIORITY", "PROVISIONED_THROUGHPUT"
    )}  # fmt: skip
    assert tiers == {
        "ON_DEMAND": None,
        "ON_DEMAND_FLEX": "flex",
        "ON_DEMAND_PRIORITY": "priority",
        "PROVISIONED_THROUGHPUT": "provisioned",
    }
    stream = VERTEX.stream_parser("stream")
    stream.feed(body("ON_DEMAND_FLEX"))
    assert stream.result().service_tier == "flex"
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000)
    standard = PRICER.price_usage("vertex", ("gemini-2.5-flash",), usage, WHEN, inference_geo="global")
    flex = PRICER.price_usage(
        "vertex", ("gemini-2.5-flash",), usage, WHEN, service_tier="flex", inference_geo="global"
    )
    provisioned = PRICER.price_usage(
        "vertex", ("gemini-2.5-flash",), usage, WHEN, service_tier="provisioned", inference_geo="global"
    )
    assert standard.cost_usd == _exact(
        "gemini-2.5-flash", "google", GPUsage(input_tokens=1_000_000, output_tokens=100_000)
    )
    assert flex.cost_usd == standard.cost_usd / 2  # type: ignore[operator]
    assert (
        provisioned.cost_usd == standard.cost_usd
        and "(provisioned tier: standard rate)" in provisioned.source
    )  # type: ignore[operator]


@pytest.mark.parametrize(
    "model", ["claude-opus-4@20250514", "claude-sonnet-4@20250514", "claude-opus-4-1@20250805"]
)
def test_every_documented_vertex_claude_id_is_priced_and_reserved(model: str) -> None:
    """Anthropic's Vertex table names Opus 4 claude-opus-4@20250514: genai-prices knows it only as
    claude-opus-4-20250514, so the row was unknown_model and the budget reservation $0."""
    p = PRICER.price_usage("vertex", (model,), CLAUDE_USAGE, WHEN)
    assert p.status == "priced" and p.cost_usd == _exact(model.replace("@", "-"), "anthropic")
    assert PRICER.estimate("vertex", model, 1_000, 100) > 0


def test_the_openai_compatible_endpoint_is_metered() -> None:
    """The openai SDK pointed at Vertex (endpoints/openapi/chat/completions): a billed chat call,
    its model in the body with a publisher prefix, read and priced as Gemini's."""
    body = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}
    assert VERTEX.flavor_for_path(OPENAPI) == "chat"
    assert VERTEX.flavor_for_path(OPENAPI.replace("/chat/completions", "/embeddings")) is None
    assert VERTEX.request_model(OPENAPI, body) == "gemini-2.5-flash"
    path, rewritten = VERTEX.with_model(OPENAPI, body, "gemini-2.5-flash-lite")
    assert (path, rewritten["model"], rewritten["messages"]) == (
        OPENAPI,
        "google/gemini-2.5-flash-lite",
        body["messages"],
    )
    with pytest.raises(ValueError):
        VERTEX.with_model(OPENAPI, body, "claude-haiku-4-5")
    facts = vertex_api.path_facts(OPENAPI)
    assert facts is not None and (facts.credential, facts.geo) == ("vertex:my-proj", "us-central1")
    choice = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    answer = {
        "id": "x", "object": "chat.completion", "model": "google/gemini-2.5-flash", "choices": [choice],
        "usage": {"prompt_tokens": 1_000, "completion_tokens": 100, "total_tokens": 1_100},
    }  # fmt: skip
    metered = VERTEX.parse_response("chat", json.dumps(answer).encode(), {})
    assert (metered.usage, metered.model) == (
        Usage(input_tokens=1_000, output_tokens=100),
        "google/gemini-2.5-flash",
    )
    p = PRICER.price_usage("vertex", (metered.model,), metered.usage, WHEN, inference_geo="us-central1")
    expected = _exact("gemini-2.5-flash", "google", GPUsage(input_tokens=1_000, output_tokens=100))
    assert (p.status, p.cost_usd) == ("priced", expected)
    assert VERTEX.stream_framing(OPENAPI, "text/event-stream") == "sse"


async def test_an_api_key_beside_the_oauth_token_cannot_unbind_the_project() -> None:
    """A project bound in keys: stays bound when an API key is sent too (header or ?key=): the
    header's claim of production cannot move the call out of development."""
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow

    from addon.api_keys import key_fingerprint
    from addon.meter import Meter
    from addon.policies import parse_policies

    policies = f"""
environments:
  development:
    models: {{allow: ["gemini-2.5-flash*"], on_disallowed: block}}
  production: {{}}
keys:
  dev-project: {{fingerprint: '{key_fingerprint("vertex:dev-proj")}', environment: development}}
"""
    url = "https://us-central1-aiplatform.googleapis.com/v1beta1/projects/dev-proj/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
    for query, extra in (
        ("", [(b"x-goog-api-key", b"AIza-any-key-at-all")]),
        ("?key=AIza-any-key-at-all", []),
    ):
        meter = Meter()
        with taddons.context(meter):
            meter._apply(parse_policies(policies))
            headers = http.Headers(
                [
                    (b"content-type", b"application/json"),
                    (b"authorization", b"Bearer ya29.fake-oauth-token"),
                    (b"x-metering-tags", b'{"env":"production"}'),
                    *extra,
                ]
            )
            flow = tflow.tflow(req=http.Request.make("POST", url + query, body, headers))
            meter.requestheaders(flow)
            await meter.request(flow)
            state = meter.call_state(flow)
            assert state is not None
            assert (state.record.environment, state.record.key_name) == ("development", "dev-project")
            assert (
                flow.response is not None and flow.response.status_code == 403
            )  # gemini-2.5-pro: not allowed


def test_a_budget_reservation_carries_the_regional_premium() -> None:
    """Claude Sonnet 4.5 on a regional endpoint is billed 1.1x the list price: its budget
    reservation was the global price, ~10% low, so a budget could be overshot by that much."""
    model = "claude-sonnet-4-5@20250929"
    regional = PRICER.estimate("vertex", model, 100_000, 10_000, geo="us-east5")
    global_ = PRICER.estimate("vertex", model, 100_000, 10_000, geo="global")
    assert global_ == Decimal("0.45")  # $3/M in, $15/M out
    assert regional == global_ * Decimal("1.1")
    # Older Claude and Gemini cost the same everywhere; no geo keeps the list price.
    assert PRICER.estimate("vertex", "claude-sonnet-4@20250514", 100_000, 0, geo="us-east5") == Decimal("0.3")
    assert PRICER.estimate("vertex", model, 100_000, 10_000) == global_
    # Other providers ignore a geo they do not price by.
    assert PRICER.estimate("openai", "gpt-4o", 100_000, 0, geo="us") == Decimal("0.25")
