"""The provider registry, Azure deployments, custom hosts and policies.yaml prices."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from addon.meter import Meter
from addon.policies import PolicyError, parse_policies
from addon.pricing import Pricer
from addon.providers import Registry, custom_provider
from addon.record import CallRecord
from addon.usage import Usage


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("api.openai.com", "openai"),
        ("API.Anthropic.com.", "anthropic"),
        ("generativelanguage.googleapis.com", "google"),
        ("bedrock-runtime.eu-west-1.amazonaws.com", "aws"),
        ("my-res.openai.azure.com", "azure"),
        ("my-res.cognitiveservices.azure.com", "azure"),
        ("api.deepseek.com", "deepseek"),
        ("openrouter.ai", "openrouter"),
        ("api.x.ai", "x-ai"),
        ("api.perplexity.ai", "perplexity"),
        ("evil.openai.azure.com.attacker.example", None),
        ("example.org", None),
    ],
)
def test_hosts(host: str, name: str | None) -> None:
    found = Registry().for_host(host, 443)
    assert (found.name if found else None) == name


def test_custom_hosts_are_bound_to_their_port() -> None:
    registry = Registry(custom=(custom_provider("ollama", "localhost", 11434, "openai"),))
    assert registry.for_host("localhost", 11434).name == "ollama"  # type: ignore[union-attr]
    assert registry.for_host("localhost", 8000) is None
    assert "^localhost:11434$" in registry.allow_host_patterns()
    assert registry.price_provider("ollama") == ("ollama", None)


def test_azure_deployments_stand_for_models() -> None:
    azure = Registry(azure_deployments={"prod-4o": "gpt-4o", "cheap": "gpt-4o-mini"}).for_host(
        "r.openai.azure.com"
    )
    assert azure is not None and azure.with_model is not None
    path = "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    assert azure.request_model(path, {"messages": []}) == "gpt-4o"
    assert azure.with_model(path, {}, "gpt-4o-mini") == (
        "/openai/deployments/cheap/chat/completions?api-version=2024-10-21",
        {},
    )
    with pytest.raises(ValueError, match="no Azure deployment serves o3"):
        azure.with_model(path, {}, "o3")
    assert azure.request_model("/openai/deployments/unmapped/chat/completions", None) == "unmapped"


def record(provider: str, model: str, usage: Usage) -> CallRecord:
    r = CallRecord(
        id="x",
        ts=datetime(2026, 11, 28, 12, tzinfo=UTC),
        session_id="s",
        environment="development",
        provider=provider,
        host="h",
        path="/p",
        api_flavor="chat",
        model_sent=model,
    )
    r.set_usage(usage)
    return r


def test_prices_from_policies_come_first_and_price_each_bucket_once() -> None:
    policies = parse_policies(
        """
providers:
  ollama: {url: "http://localhost:11434", api: openai}
prices:
  "ollama/*": {input: 0, output: 0}
  gpt-4o: {input: 2, cached_input: 1, cache_write: 3, output: 8}
"""
    )
    pricer = Pricer(policies.prices, price_provider=Registry().price_provider)
    negotiated = record("openai", "gpt-4o-2024-08-06", Usage(1000, 200, 100, 500, 50))
    pricer(negotiated)
    # (700 * 2 + 200 * 1 + 100 * 3 + 500 * 8) / 1M
    assert negotiated.cost_usd == Decimal("0.0059") and negotiated.price_source == "policies.yaml prices"
    # priced under the entry's name: the dated snapshot folds into it, as genai-prices' calls do
    assert negotiated.price_model == "gpt-4o"
    local = record("ollama", "llama3.1:8b", Usage(5000, 0, 0, 100, 0))
    pricer(local)
    assert (local.cost_usd, local.price_status, local.price_model) == (Decimal(0), "priced", "llama3.1:8b")
    listed = record("openai", "gpt-4o-mini", Usage(1000, 0, 0, 1000, 0))
    pricer(listed)
    assert listed.cost_usd == Decimal("0.00075") and (listed.price_source or "").startswith("genai-prices")


def test_bedrock_ids_are_priced_under_aws() -> None:
    pricer = Pricer(price_provider=Registry().price_provider)
    r = record(
        "aws",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
        Usage(1000, 0, 0, 100, 0),
    )
    pricer(r)
    assert r.price_status == "priced" and r.cost_usd is not None and r.cost_usd > 0


def test_policy_sections_are_validated() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policies(
            """
providers:
  bad: {url: "ftp://x", api: openai}
  odd: {url: "http://localhost:1234", api: grpc}
prices:
  m1: {input: 1}
  m2: {input: -1, output: 2}
"""
        )
    assert str(err.value).splitlines() == [
        "policies.yaml:3: providers.bad.url: must be http(s)://host[:port]",
        "policies.yaml:4: providers.odd.api: must be one of openai, anthropic",
        "policies.yaml:6: prices.m1.output: is required (USD per million tokens)",
        "policies.yaml:7: prices.m2.input: must not be negative (got -1)",
    ]


async def test_signed_bedrock_calls_are_refused_not_rewritten(tmp_path) -> None:
    meter = Meter()
    with taddons.context(meter) as tctx:
        policy = tmp_path / "p.yaml"
        policy.write_text(
            "environments:\n  development:\n    models:\n      allow: ['*haiku*']\n"
            "      downgrade: {'*sonnet*': us.anthropic.claude-haiku-4-5-20251001-v1:0}\n"
        )
        tctx.configure(meter, tokometer_db=str(tmp_path / "db.duckdb"), tokometer_policies=str(policy))
        submitted: list[CallRecord] = []
        meter.store = type(
            "S", (), {"submit": lambda self, r: submitted.append(r), "close": lambda self: None}
        )()  # type: ignore[assignment]
        url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
        auth = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE123/20261128/us-east-1/bedrock/aws4_request, "
        auth += "Signature=abc"
        flow = tflow.tflow(
            req=http.Request.make("POST", url, json.dumps({"messages": []}), {"authorization": auth})
        )
        original = (flow.request.path, flow.request.content)
        meter.requestheaders(flow)
        await meter.request(flow)
        assert flow.response is not None and flow.response.status_code == 403
        assert "signed" in flow.response.text
        assert (flow.request.path, flow.request.content) == original
        await meter.response(flow)
        [row] = submitted
        assert (row.provider, row.action, row.model_sent) == ("aws", "blocked", None)
        assert row.model_requested == "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


async def test_unreadable_model_fails_closed_where_models_are_restricted(tmp_path) -> None:
    meter = Meter()
    with taddons.context(meter) as tctx:
        policy = tmp_path / "p.yaml"
        policy.write_text("environments:\n  development:\n    models: {allow: [gpt-4o-mini]}\n")
        tctx.configure(meter, tokometer_db=str(tmp_path / "db.duckdb"), tokometer_policies=str(policy))
        deep = b'{"model": "o3", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        flow = tflow.tflow(req=http.Request.make("POST", "https://api.openai.com/v1/chat/completions", deep))
        meter.requestheaders(flow)
        await meter.request(flow)
        assert flow.response is not None and flow.response.status_code == 403
        assert "could not be read" in flow.response.text


@pytest.mark.parametrize(
    ("host", "path", "flavor"),
    [
        ("api.anthropic.com", "/v1/messages", "messages"),
        ("api.anthropic.com", "/v1/chat/completions", "chat"),  # its OpenAI SDK compatibility
        ("api.anthropic.com", "/v1/embeddings", None),  # not served there
        ("api.anthropic.com", "/v1/messages/count_tokens", None),
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent", "generate"),
        ("generativelanguage.googleapis.com", "/v1beta/openai/chat/completions", "chat"),
        ("generativelanguage.googleapis.com", "/v1beta/openai/embeddings", "embeddings"),
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:countTokens", None),
        ("generativelanguage.googleapis.com", "/v1beta/openai/models", None),
    ],
)
def test_openai_shaped_paths_on_anthropic_and_gemini_hosts(host: str, path: str, flavor: str | None) -> None:
    provider = Registry().for_host(host)
    assert provider is not None and provider.flavor_for_path(path) == flavor


def test_an_openai_shaped_call_on_the_gemini_host_reads_and_rewrites_its_body() -> None:
    google = Registry().by_name("google")
    assert google is not None and google.with_model is not None
    path, body = "/v1beta/openai/chat/completions", {"model": "gemini-2.5-pro", "messages": []}
    assert google.request_model(path, body) == "gemini-2.5-pro"
    assert google.with_model(path, body, "gemini-2.5-flash") == (
        path,
        {"model": "gemini-2.5-flash", "messages": []},
    )
    native = "/v1beta/models/gemini-2.5-pro:generateContent"
    assert google.request_model(native, {"model": "ignored"}) == "gemini-2.5-pro"
    assert (
        google.with_model(native, {}, "gemini-2.5-flash")[0]
        == "/v1beta/models/gemini-2.5-flash:generateContent"
    )
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    chat = json.dumps({"model": "gemini-2.5-pro", "choices": [], "usage": usage}).encode()
    assert google.parse_response("chat", chat, {}).usage == Usage(input_tokens=100, output_tokens=20)
    assert google.stream_framing(path, "text/event-stream") == "sse"
    assert google.stream_parser("chat").__class__.__module__ == "addon.providers.openai_api"
