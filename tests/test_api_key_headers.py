"""Every header a provider takes an API key in is read: a key bound in policies.yaml ``keys:`` keeps
its environment (and its budget) whichever header carries it, and a request carrying two different
keys in two such headers falls under the rule for several keys (refused where policies are
enforced when they disagree). Before, OpenRouter's keys (and those of every other
OpenAI-compatible host) were read from ``Authorization`` only, while the Anthropic SDK pointed at
one of their Anthropic-compatible endpoints sends its key in ``x-api-key``."""

from __future__ import annotations

import hashlib
import json

import pytest
from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_meter import OPUS, make_flow, run_request

OPENROUTER_KEY = "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef"
OTHER_KEY = "sk-or-v1-fedcba9876543210fedcba9876543210fedcba9876543210"


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _locked_to(key: str, extra: str = "") -> str:
    """An environment allowing *-mini models only (blocked otherwise), ``key`` bound to it."""
    return (
        "environments:\n"
        "  locked:\n"
        '    models: {allow: ["*-mini"], on_disallowed: block}\n'
        "  open:\n"
        '    models: {allow: ["*"]}\n'
        "keys:\n"
        "  intern:\n"
        f"    fingerprint: {_fingerprint(key)}\n"
        "    environment: locked\n"
        f"{extra}"
    )


def _flow(url: str, body: dict, headers: dict[str, str]) -> http.HTTPFlow:
    flow = make_flow(url, body, headers=headers)
    if "authorization" not in {name.lower() for name in headers}:
        del flow.request.headers["authorization"]  # make_flow adds an OpenAI key by default
    return flow


def _refused(flow: http.HTTPFlow) -> bool:
    return flow.response is not None and flow.response.status_code == 403


async def test_an_openrouter_key_sent_as_x_api_key_keeps_its_environment(meter: Meter) -> None:
    """The Anthropic SDK pointed at OpenRouter (``Anthropic(base_url="https://openrouter.ai/api",
    api_key=...)``, OpenRouter's own example) sends the key in ``x-api-key``, which OpenRouter
    accepts. The proxy read OpenRouter keys from ``authorization`` only, so the key was not seen:
    a key bound in policies.yaml to a restricted environment (or carrying its own budget) was
    neither attributed nor limited; the call landed in the default environment and claude-opus
    reached upstream from a key whose environment allows only *-mini models. (The review's test.)"""
    fingerprint = hashlib.sha256(OPENROUTER_KEY.encode()).hexdigest()[:12]
    meter._apply(
        parse_policies(
            "environments:\n"
            "  locked:\n"
            '    models: {allow: ["*-mini"], on_disallowed: block}\n'
            "keys:\n"
            "  intern:\n"
            f"    fingerprint: {fingerprint}\n"
            "    environment: locked\n"
        )
    )
    body = {"model": OPUS, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow(
        "https://openrouter.ai/api/v1/messages",
        body,
        headers={"x-api-key": OPENROUTER_KEY, "anthropic-version": "2023-06-01"},
    )
    del flow.request.headers["authorization"]  # the Anthropic SDK sends x-api-key alone
    await run_request(meter, flow)
    state = meter.call_state(flow)
    record = state.record if state is not None else None
    assert record is None or (record.key_name, record.environment) == ("intern", "locked"), record and (
        record.key_name,
        record.environment,
    )
    assert flow.response is not None and flow.response.status_code == 403, "claude-opus let through"


MESSAGES = {"model": "claude-opus-4-1", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("url", "body", "header"),
    [
        # metered paths
        ("https://openrouter.ai/api/v1/messages", MESSAGES, "x-api-key"),
        ("https://openrouter.ai/api/v1/chat/completions", CHAT, "x-api-key"),
        # DeepSeek's Anthropic-compatible base URL (https://api.deepseek.com/anthropic), which its
        # docs say takes x-api-key; not metered, its model checked (refused where disallowed)
        ("https://api.deepseek.com/anthropic/v1/messages", MESSAGES, "x-api-key"),
        # xAI's Anthropic-compatible /v1/messages (legacy, still listed)
        ("https://api.x.ai/v1/messages", MESSAGES, "x-api-key"),
        # already read before: guards
        ("https://openrouter.ai/api/v1/chat/completions", CHAT, "authorization"),
        ("https://api.anthropic.com/v1/messages", MESSAGES, "x-api-key"),
        ("https://myres.openai.azure.com/openai/deployments/gpt-4o/chat/completions", CHAT, "api-key"),
        ("https://myres.openai.azure.com/openai/v1/chat/completions", CHAT, "authorization"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/chat/completions", CHAT, "x-goog-api-key"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/chat/completions", CHAT, "authorization"),
    ],
)
async def test_a_key_in_any_header_its_provider_takes_keeps_its_environment(
    meter: Meter, url: str, body: dict, header: str
) -> None:
    meter._apply(parse_policies(_locked_to(OPENROUTER_KEY)))
    value = f"Bearer {OPENROUTER_KEY}" if header == "authorization" else OPENROUTER_KEY
    flow = _flow(url, body, {header: value, "anthropic-version": "2023-06-01"})
    await run_request(meter, flow)
    state = meter.call_state(flow)
    if state is not None:
        assert (state.record.key_name, state.record.environment) == ("intern", "locked")
    assert _refused(flow), f"a disallowed model let through with the key in {header}"


async def test_a_gemini_key_in_the_query_of_its_openai_path_keeps_its_environment(meter: Meter) -> None:
    """Gemini's ``?key=`` is read on its OpenAI-compatible path too (a guard)."""
    meter._apply(parse_policies(_locked_to(OPENROUTER_KEY)))
    url = f"https://generativelanguage.googleapis.com/v1beta/openai/chat/completions?key={OPENROUTER_KEY}"
    flow = _flow(url, {**CHAT, "model": "gemini-2.5-pro"}, {})
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and (state.record.key_name, state.record.environment) == ("intern", "locked")
    assert _refused(flow)


@pytest.mark.parametrize("header", ["x-api-key", "api-key", "x-goog-api-key", "authorization"])
async def test_a_custom_host_reads_every_header_a_known_api_takes_a_key_in(meter: Meter, header: str) -> None:
    """A policies.yaml host (a gateway such as LiteLLM) may take the key in any header of the
    APIs it fronts: Claude Code pointed at it sends ``x-api-key``, an Azure client ``api-key``, a
    Gemini client ``x-goog-api-key``, whatever ``api:`` it was declared with."""
    extra = 'providers:\n  gateway: {url: "https://llm.internal.example", api: openai}\n'
    meter._apply(parse_policies(_locked_to(OPENROUTER_KEY, extra)))
    value = f"Bearer {OPENROUTER_KEY}" if header == "authorization" else OPENROUTER_KEY
    flow = _flow("https://llm.internal.example/v1/chat/completions", CHAT, {header: value})
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and (state.record.key_name, state.record.environment) == ("intern", "locked")
    assert _refused(flow)


@pytest.mark.parametrize("bound", ["authorization", "x-api-key"])
async def test_two_different_keys_in_two_headers_bound_apart_are_refused(meter: Meter, bound: str) -> None:
    """A key bound by fingerprint to a restricted environment in one header, another bound to an
    open one in the other: the proxy cannot tell which one OpenRouter reads, so neither binds the
    call and it is refused (send one API key). Before, x-api-key was not read: the Authorization
    key alone decided, and with the locked key in x-api-key the call ran in the open environment."""
    extra = f"  laptop:\n    fingerprint: {_fingerprint(OTHER_KEY)}\n    environment: open\n"
    meter._apply(parse_policies(_locked_to(OPENROUTER_KEY, extra)))
    locked, other = (OPENROUTER_KEY, OTHER_KEY) if bound == "x-api-key" else (OTHER_KEY, OPENROUTER_KEY)
    headers = {"x-api-key": locked, "authorization": f"Bearer {other}"}
    flow = _flow("https://openrouter.ai/api/v1/chat/completions", CHAT, headers)
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert any("2 different API keys" in e for e in state.errors), state.errors
    assert _refused(flow) and state.record.action == "blocked"
    assert b"one API key" in (flow.response.content or b"")  # type: ignore[union-attr]
    # Its code says what is wrong: the model (gpt-4o-mini here) is not (before: model_not_allowed).
    error = json.loads(flow.response.content or b"{}")["error"]  # type: ignore[union-attr]
    assert error["code"] == "api_keys_disagree"


async def test_a_last4_bound_key_in_x_api_key_cannot_be_left_with_a_second_key(meter: Meter) -> None:
    """The key OpenRouter reads (x-api-key) is bound by last4 to the locked environment; the
    caller adds an unmapped key in Authorization. The keys disagree (locked, and the default
    environment, open): refused. Before, Authorization alone was read: the call ran in the open
    default environment with its locked key."""
    policies = (
        "default_environment: open\n"
        "environments:\n"
        "  locked:\n"
        '    models: {allow: ["*-mini"], on_disallowed: block}\n'
        "  open:\n"
        '    models: {allow: ["*"]}\n'
        "keys:\n"
        f'  intern: {{last4: "{OPENROUTER_KEY[-4:]}", environment: locked}}\n'
    )
    meter._apply(parse_policies(policies))
    headers = {"x-api-key": OPENROUTER_KEY, "authorization": f"Bearer {OTHER_KEY}"}
    flow = _flow("https://openrouter.ai/api/v1/chat/completions", CHAT, headers)
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert any("bound to different environments" in e for e in state.errors), state.errors
    assert _refused(flow)


async def test_the_same_key_in_both_headers_is_one_key(meter: Meter) -> None:
    """An SDK sending the key in both headers (the same value) carries one key: no conflict."""
    meter._apply(parse_policies(_locked_to(OPENROUTER_KEY)))
    headers = {"x-api-key": OPENROUTER_KEY, "authorization": f"Bearer {OPENROUTER_KEY}"}
    flow = _flow(
        "https://openrouter.ai/api/v1/chat/completions", {**CHAT, "model": "openai/gpt-4o-mini"}, headers
    )
    await run_request(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and flow.response is None
    assert (state.record.key_name, state.record.environment, state.errors) == ("intern", "locked", [])
