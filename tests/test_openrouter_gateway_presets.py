"""OpenRouter's preset API behind a ``providers:`` gateway priced as OpenRouter.

``POST /api/v1/presets/{slug}/chat/completions`` (``/responses``, ``/messages``) saves a preset and
runs nothing (``values.saves_openrouter_preset``). On openrouter.ai it passes unmetered; a gateway
priced as OpenRouter (``pricing_provider: openrouter``) forwards it as it is, and there it was
metered as a call: on an ``api: openai`` gateway the chat and Responses saves reserved a call's
cost ($0.04 for 4,000 gpt-4o output tokens) and left a row; where models are restricted, a save
naming a model the allowlist refuses was refused 403 (as an unmetered call, or as the call it is not).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from meter_helpers import make_flow, run_request
from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import BUILTIN, custom_provider
from addon.unmetered_models import runs_no_model
from tests.test_meter import submitted
from tests.test_review_round18 import PRESET_SAVED

GATEWAY = "https://llm.internal.example"
SAVES = ("chat/completions", "responses", "messages")
BODY: dict[str, Any] = {
    "model": "openai/gpt-4o",
    "max_tokens": 4000,
    "messages": [{"role": "user", "content": "hi"}],
}


def gateway(api: str, pricing: str = "openrouter") -> str:
    return f'providers:\n  orgw: {{url: "{GATEWAY}", api: {api}, pricing_provider: {pricing}}}\n'


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("path", "saves"),
    [
        ("/api/v1/presets/my-preset/chat/completions", True),
        ("/api/v1/presets/my_preset.v2/responses?x=1", True),
        ("/api/v1/presets/A-1/messages", True),
        ("/api/v1/presets/x/..\\..\\chat/completions", False),  # read as any path is
        ("/api/v1/presets/x/y/chat/completions", False),
        ("/api/v1/chat/completions", False),
    ],
)
def test_an_openrouter_priced_gateway_does_not_meter_the_preset_api(api: str, path: str, saves: bool) -> None:
    priced_as_openrouter = custom_provider("orgw", "llm.internal.example", 443, api, "openrouter")
    if saves:
        assert priced_as_openrouter.flavor_for_path(path) is None
        assert runs_no_model("orgw", path, priced_as="openrouter")
    else:
        assert not runs_no_model("orgw", path, priced_as="openrouter")


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("path", "saves"),
    [
        ("/openrouter/api/v1/presets/my-preset/chat/completions", True),  # LiteLLM's pass-through
        ("/v1/acct/gw/openrouter/api/v1/presets/my_preset.v2/responses?x=1", True),
        ("/openrouter/api/v1/presets/A-1/messages/", True),
        ("/openrouter/api/v1/presets/../chat/completions", False),  # the slug's shape stays strict
        ("/openrouter/api/v1/presets/x/..\\..\\chat/completions", False),
        ("/openrouter/api/v1/presets/x/y/chat/completions", False),
        ("/openrouter/api/v1/presets/chat/completions", False),
        ("/openrouter/xapi/v1/presets/x/chat/completions", False),  # not its segments
        ("/openrouter/api/v1/chat/completions", False),
    ],
)
def test_the_preset_api_under_a_gateways_base_path_is_not_metered(api: str, path: str, saves: bool) -> None:
    """A gateway serving OpenRouter under a base path: the preset API is matched as its calls are
    (by suffix), with the same strict slug. Before, a chat or Responses save there was metered as a
    call, and a /messages one held for the allowlist as an unmetered request naming a model."""
    priced_as_openrouter = custom_provider("orgw", "llm.internal.example", 443, api, "openrouter")
    as_its_api_reads_it = custom_provider("gw", "llm.internal.example", 443, api, "openai").flavor_for_path(
        path
    )
    expected = None if saves else as_its_api_reads_it
    assert priced_as_openrouter.flavor_for_path(path) == expected
    assert runs_no_model("orgw", path, priced_as="openrouter") is saves


def test_openrouter_itself_reads_only_its_own_preset_path() -> None:
    """On openrouter.ai the preset API is /api/v1/presets/... only: a path under another base is
    read as any path is (metered as chat), as before."""
    openrouter = next(p for p in BUILTIN if p.name == "openrouter")
    path = "/openrouter/api/v1/presets/my-preset/chat/completions"
    assert openrouter.flavor_for_path(path) == "chat"
    assert not runs_no_model("openrouter", path, priced_as="openrouter")
    assert openrouter.flavor_for_path("/api/v1/presets/my-preset/chat/completions") is None  # control


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_other_gateways_read_the_path_as_before(api: str) -> None:
    """The preset API is OpenRouter's: a gateway priced otherwise reads the path as its API does."""
    other = custom_provider("litellm", "llm.internal.example", 443, api, "openai")
    path = "/api/v1/presets/my-preset/chat/completions"
    assert other.flavor_for_path(path) == "chat"
    assert not runs_no_model("litellm", path, priced_as="openai")


async def save(meter: Meter, suffix: str) -> http.HTTPFlow:
    """Save a preset through the gateway; answered as OpenRouter answers it."""
    flow = make_flow(f"{GATEWAY}/api/v1/presets/my-preset/{suffix}", BODY)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    return flow


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_preset_save_behind_the_gateway_reserves_nothing_and_leaves_no_row(
    meter: Meter, api: str
) -> None:
    """Before, on api: openai, the chat and Responses saves each reserved $0.0400575 and were
    recorded as calls (api: anthropic: the chat save)."""
    meter._apply(
        parse_policies(gateway(api) + "environments:\n  development:\n    budget: {usd: 100, period: day}\n")
    )
    for suffix in SAVES:
        flow = await save(meter, suffix)
        assert flow.response is None  # let through
        assert meter.enforcer.budgets.reserved() == {}, suffix
        assert meter.call_state(flow) is None, suffix
        flow.response = http.Response.make(
            200, json.dumps(PRESET_SAVED), {"content-type": "application/json"}
        )
        meter.responseheaders(flow)
        await meter.response(flow)
    assert await submitted(meter) == []


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_preset_save_behind_the_gateway_passes_a_restricted_environment(
    meter: Meter, api: str
) -> None:
    """An allowlist without gpt-4o: saving a preset naming it runs nothing and passes, as on
    openrouter.ai. Before, each save was refused 403."""
    allow = (
        'environments:\n  development:\n    models: {allow: ["openai/gpt-4o-mini"], on_disallowed: block}\n'
    )
    meter._apply(parse_policies(gateway(api) + allow))
    for suffix in SAVES:
        flow = await save(meter, suffix)
        assert flow.response is None, suffix


async def test_the_gateways_calls_are_still_metered(meter: Meter) -> None:
    meter._apply(
        parse_policies(
            gateway("openai") + "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
        )
    )
    flow = make_flow(f"{GATEWAY}/api/v1/chat/completions", BODY)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert meter.call_state(flow).record.api_flavor == "chat"  # type: ignore[union-attr]
    assert meter.enforcer.budgets.reserved() != {}
