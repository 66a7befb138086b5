"""Azure OpenAI's v1 API (``/openai/v1/chat/completions``, ``/openai/v1/responses``...): the body's
``model`` names a deployment, read through policies.yaml ``azure_deployments`` as the classic
``/openai/deployments/{name}/...`` path's is (allowlist, pricing, the row's model), and a downgrade
writes the deployment that serves the target, or refuses when none does.

Before: the body's model was read as a raw model name, so a deployment such as ``team-small``
(serving the allowed gpt-4o-mini) was refused in a restricted environment, ``team-big`` (gpt-4o)
was neither downgraded nor priced as gpt-4o, and a downgrade wrote a model name where Azure wants
a deployment.
"""

from __future__ import annotations

import json

import pytest

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import Registry
from tests.test_meter import DAY_BUDGET, make_flow, reserved_for, run_request, sent_body

RESOURCE = "https://myres.openai.azure.com"
CHAT = f"{RESOURCE}/openai/v1/chat/completions"
RESPONSES = f"{RESOURCE}/openai/v1/responses"
CLASSIC = f"{RESOURCE}/openai/deployments/{{name}}/chat/completions?api-version=2024-10-21"
AZURE_KEY = {"api-key": "0123456789abcdef0123456789abcdef"}
DEPLOYMENTS = "azure_deployments:\n  team-small: gpt-4o-mini\n  team-big: gpt-4o\n"
DOWNGRADING = """
environments:
  development:
    models:
      allow: ["*-mini"]
      on_disallowed: downgrade
      downgrade: {gpt-4o: gpt-4o-mini, gpt-4.1: gpt-4.1-mini}
"""


def body_for(url: str, model: str) -> dict:
    if url == RESPONSES:
        return {"model": model, "input": "hi", "max_output_tokens": 1000}
    return {"model": model, "messages": [], "max_tokens": 1000}


@pytest.mark.parametrize("url", [CHAT, RESPONSES])
async def test_a_mapped_deployment_is_checked_as_the_model_it_serves(meter: Meter, url: str) -> None:
    meter._apply(parse_policies(DOWNGRADING + DEPLOYMENTS))
    body = body_for(url, "team-small")
    flow = make_flow(url, body, headers=AZURE_KEY)
    await run_request(meter, flow)
    assert flow.response is None
    assert sent_body(flow) == body  # the deployment goes upstream as it came
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == (
        "allowed",
        "gpt-4o-mini",
        "gpt-4o-mini",
    )


@pytest.mark.parametrize("url", [CHAT, RESPONSES])
async def test_a_downgrade_writes_the_deployment_serving_the_target(meter: Meter, url: str) -> None:
    meter._apply(parse_policies(DOWNGRADING + DEPLOYMENTS))
    body = body_for(url, "team-big")
    flow = make_flow(url, body, headers=AZURE_KEY)
    await run_request(meter, flow)
    assert flow.response is None
    assert sent_body(flow) == {**body, "model": "team-small"}
    state = meter.call_state(flow)
    assert state is not None
    assert (state.record.action, state.record.model_requested, state.record.model_sent) == (
        "downgraded",
        "gpt-4o",
        "gpt-4o-mini",
    )


async def test_a_downgrade_no_deployment_serves_is_refused(meter: Meter) -> None:
    meter._apply(parse_policies(DOWNGRADING + "azure_deployments:\n  team-41: gpt-4.1\n"))
    flow = make_flow(CHAT, body_for(CHAT, "team-41"), headers=AZURE_KEY)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "no Azure deployment serves gpt-4.1-mini" in flow.response.text
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == ("blocked", "gpt-4.1", None)


async def test_the_v1_path_reads_a_deployment_as_the_classic_path_does(meter: Meter) -> None:
    """Same rules, same row, whichever way the deployment is named."""
    meter._apply(parse_policies(DOWNGRADING + DEPLOYMENTS))
    rows = []
    for flow in (
        make_flow(CLASSIC.format(name="team-big"), {"messages": [], "max_tokens": 1000}, headers=AZURE_KEY),
        make_flow(CHAT, body_for(CHAT, "team-big"), headers=AZURE_KEY),
    ):
        await run_request(meter, flow)
        record = meter.call_state(flow).record  # type: ignore[union-attr]
        rows.append((record.action, record.model_requested, record.model_sent))
    assert rows[0] == rows[1] == ("downgraded", "gpt-4o", "gpt-4o-mini")


async def test_the_reservation_prices_the_model_the_deployment_serves(meter: Meter) -> None:
    meter._apply(parse_policies(DAY_BUDGET + DEPLOYMENTS))
    body = body_for(CHAT, "team-big")
    reserved = await reserved_for(meter, CHAT, body, headers=AZURE_KEY)
    size = len(json.dumps(body)) // 4
    assert reserved == meter.pricer.estimate("azure", "gpt-4o", size, 1000) > 0


def test_an_unmapped_deployment_is_read_as_its_name() -> None:
    azure = Registry(azure_deployments={"team-small": "gpt-4o-mini"}).for_host("r.openai.azure.com")
    assert azure is not None and azure.with_model is not None
    assert azure.request_model("/openai/v1/chat/completions", {"model": "team-small"}) == "gpt-4o-mini"
    assert azure.request_model("/openai/v1/chat/completions", {"model": "gpt-4o"}) == "gpt-4o"
    assert azure.with_model("/openai/v1/responses", {"model": "x", "input": "hi"}, "gpt-4o-mini") == (
        "/openai/v1/responses",
        {"model": "team-small", "input": "hi"},
    )
    with pytest.raises(ValueError, match="no Azure deployment serves o3"):
        azure.with_model("/openai/v1/responses", {"model": "x"}, "o3")
