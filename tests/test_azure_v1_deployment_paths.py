"""The Azure OpenAI SDK with the v1 base URL (``AzureOpenAI(base_url="https://R.openai.azure.com/
openai/v1/")``, Microsoft's v1 samples) names the deployment in the path as well as in the body:
openai-python's AzureOpenAI inserts ``/deployments/{model}`` for chat completions, legacy
completions, embeddings, images (generations, edits) and audio (transcriptions, translations,
speech) whenever its base URL has no ``/deployments``, so a chat completion goes to
``/openai/v1/deployments/{name}/chat/completions`` (Responses goes to ``/openai/v1/responses``,
its deployment in the body only). That path is read as the classic ``/openai/deployments/{name}/``
one is: the deployment it names is checked as the model ``azure_deployments`` says it serves, and a
downgrade rewrites it (and the body's ``model``) to the deployment that serves the target, or
refuses when none does.

Before, the path regex wanted ``/openai/deployments/`` at the start: the call was read as a v1
body-model call, the downgrade rewrote the body to team-small and said "downgraded" while the
path still named team-big, the deployment that serves gpt-4o."""

from __future__ import annotations

import json

import pytest
from mitmproxy import http

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import Registry
from tests.test_meter import DAY_BUDGET, make_flow, reserved_for, run_request, sent_body

AZURE_KEY = {"api-key": "0123456789abcdef0123456789abcdef"}
AZURE_POLICIES = """
environments:
  development:
    models:
      allow: ["*-mini"]
      on_disallowed: downgrade
      downgrade: {gpt-4o: gpt-4o-mini}
azure_deployments:
  team-small: gpt-4o-mini
  team-big: gpt-4o
"""


async def test_the_azure_sdk_v1_chat_path_keeps_no_disallowed_deployment(meter: Meter) -> None:
    """``AzureOpenAI(base_url="https://res.openai.azure.com/openai/v1/", api_version="preview")``
    sends chat completions to ``/openai/v1/deployments/{model}/chat/completions``. The downgrade
    rewrote the body to team-small and said "downgraded", while the path still named team-big.
    (The review's test.)"""
    meter._apply(parse_policies(AZURE_POLICIES))
    url = "https://myres.openai.azure.com/openai/v1/deployments/team-big/chat/completions?api-version=preview"
    body = {"model": "team-big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    flow = make_flow(url, body, headers=AZURE_KEY)
    await run_request(meter, flow)
    if flow.response is None:  # let through (downgraded): nothing may still name team-big
        assert "team-big" not in flow.request.path, flow.request.path
        assert sent_body(flow)["model"] != "team-big"


RESOURCE = "https://myres.openai.azure.com"
QUERY = "?api-version=preview"


def v1_path(name: str, rest: str) -> str:
    return f"/openai/v1/deployments/{name}/{rest}{QUERY}"


def body_for(rest: str, model: str | None) -> dict:
    body: dict = {
        "chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100},
        "responses": {"input": "hi", "max_output_tokens": 100},
        "embeddings": {"input": "hi"},
        "completions": {"prompt": "hi", "max_tokens": 100},
        "images/generations": {"prompt": "a cat"},
    }[rest]
    return body if model is None else {"model": model, **body}


def _refused(flow: http.HTTPFlow) -> bool:
    return flow.response is not None and flow.response.status_code == 403


@pytest.mark.parametrize("rest", ["chat/completions", "responses", "embeddings"])
async def test_a_downgrade_rewrites_the_deployment_in_the_path_and_the_body(meter: Meter, rest: str) -> None:
    """Chat completions and embeddings as the SDK sends them; Responses as other clients do
    (``/openai/v1/deployments/{name}/responses``)."""
    meter._apply(parse_policies(AZURE_POLICIES))
    body = body_for(rest, "team-big")
    flow = make_flow(RESOURCE + v1_path("team-big", rest), body, headers=AZURE_KEY)
    await run_request(meter, flow)
    assert flow.response is None
    assert flow.request.path == v1_path("team-small", rest)
    assert sent_body(flow) == {**body, "model": "team-small"}
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == (
        "downgraded",
        "gpt-4o",
        "gpt-4o-mini",
    )


async def test_legacy_completions_on_the_v1_path_keep_no_disallowed_deployment(meter: Meter) -> None:
    """Legacy completions downgrade only to a model serving them: refused here, never sent with
    team-big left in the path."""
    meter._apply(parse_policies(AZURE_POLICIES))
    flow = make_flow(
        RESOURCE + v1_path("team-big", "completions"), body_for("completions", "team-big"), headers=AZURE_KEY
    )
    await run_request(meter, flow)
    if flow.response is None:
        assert "team-big" not in flow.request.path and sent_body(flow)["model"] != "team-big"
    else:
        assert _refused(flow)


async def test_an_allowed_deployment_goes_as_it_came(meter: Meter) -> None:
    meter._apply(parse_policies(AZURE_POLICIES))
    body = body_for("chat/completions", "team-small")
    flow = make_flow(RESOURCE + v1_path("team-small", "chat/completions"), body, headers=AZURE_KEY)
    await run_request(meter, flow)
    assert flow.response is None and flow.request.path == v1_path("team-small", "chat/completions")
    assert sent_body(flow) == body
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == (
        "allowed",
        "gpt-4o-mini",
        "gpt-4o-mini",
    )


async def test_a_path_deployment_with_no_body_model_is_read_and_downgraded(meter: Meter) -> None:
    """A client naming the deployment in the path only (curl, a hand-written client). Before, the
    call was read as naming no model: refused where models are restricted."""
    meter._apply(parse_policies(AZURE_POLICIES))
    body = body_for("chat/completions", None)
    flow = make_flow(RESOURCE + v1_path("team-big", "chat/completions"), body, headers=AZURE_KEY)
    await run_request(meter, flow)
    assert flow.response is None
    assert flow.request.path == v1_path("team-small", "chat/completions")
    assert sent_body(flow) == body  # no model added to the body
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested, record.model_sent) == (
        "downgraded",
        "gpt-4o",
        "gpt-4o-mini",
    )


async def test_a_downgrade_no_deployment_serves_is_refused(meter: Meter) -> None:
    policies = AZURE_POLICIES.replace("{gpt-4o: gpt-4o-mini}", "{gpt-4.1: gpt-4.1-mini}")
    meter._apply(parse_policies(policies + "  team-41: gpt-4.1\n"))
    url = RESOURCE + v1_path("team-41", "chat/completions")
    flow = make_flow(url, body_for("chat/completions", "team-41"), headers=AZURE_KEY)
    await run_request(meter, flow)
    assert _refused(flow)
    assert "no Azure deployment serves gpt-4.1-mini" in flow.response.text  # type: ignore[union-attr]


@pytest.mark.parametrize(("in_path", "in_body"), [("team-big", "team-small"), ("team-small", "team-big")])
async def test_a_path_and_body_naming_different_models_are_refused_where_models_are_restricted(
    meter: Meter, in_path: str, in_body: str
) -> None:
    """Which of the two Azure runs is not known: neither is trusted. Before, the body alone was
    read: team-small there let team-big in the path through."""
    meter._apply(parse_policies(AZURE_POLICIES))
    url = RESOURCE + v1_path(in_path, "chat/completions")
    flow = make_flow(url, body_for("chat/completions", in_body), headers=AZURE_KEY)
    await run_request(meter, flow)
    assert _refused(flow), (flow.request.path, sent_body(flow))


async def test_two_names_of_one_model_are_no_disagreement(meter: Meter) -> None:
    """The path's deployment and the body's name serving the same model: read as that model."""
    meter._apply(parse_policies(AZURE_POLICIES + "  other-small: gpt-4o-mini\n"))
    body = body_for("chat/completions", "other-small")
    flow = make_flow(RESOURCE + v1_path("team-small", "chat/completions"), body, headers=AZURE_KEY)
    await run_request(meter, flow)
    assert flow.response is None
    assert meter.call_state(flow).record.model_requested == "gpt-4o-mini"  # type: ignore[union-attr]


# -- images and audio: not metered on Azure; the model they name is checked, never downgraded ------


@pytest.mark.parametrize(
    ("in_path", "in_body"), [("team-big", None), ("team-big", "team-small"), ("team-small", "team-big")]
)
async def test_an_image_request_on_the_v1_path_is_checked_by_its_path_and_body(
    meter: Meter, in_path: str, in_body: str | None
) -> None:
    """``/openai/v1/deployments/{name}/images/generations``: before, the path's deployment was not
    read; with no body model (or an allowed one) team-big's images went upstream."""
    meter._apply(parse_policies(AZURE_POLICIES))
    url = RESOURCE + v1_path(in_path, "images/generations")
    flow = make_flow(url, body_for("images/generations", in_body), headers=AZURE_KEY)
    await run_request(meter, flow)
    assert _refused(flow), flow.request.path


def _transcription(path: str, model: str) -> http.HTTPFlow:
    boundary = "b0undary"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nRIFF\r\n--{boundary}--\r\n"
    ).encode()
    headers = {**AZURE_KEY, "content-type": f"multipart/form-data; boundary={boundary}"}
    flow = make_flow(RESOURCE + path, form, headers=headers)
    return flow


@pytest.mark.parametrize(("in_path", "in_form"), [("team-big", "team-big"), ("team-small", "team-big")])
async def test_an_audio_request_on_the_v1_path_is_checked_by_its_path_and_form(
    meter: Meter, in_path: str, in_form: str
) -> None:
    meter._apply(parse_policies(AZURE_POLICIES))
    flow = _transcription(v1_path(in_path, "audio/transcriptions"), in_form)
    await run_request(meter, flow)
    assert _refused(flow)


async def test_an_allowed_audio_request_on_the_v1_path_passes(meter: Meter) -> None:
    meter._apply(parse_policies(AZURE_POLICIES))
    flow = _transcription(v1_path("team-small", "audio/transcriptions"), "team-small")
    await run_request(meter, flow)
    assert flow.response is None


def test_the_registry_reads_and_rewrites_the_v1_deployment_path() -> None:
    azure = Registry(azure_deployments={"team-small": "gpt-4o-mini", "team-big": "gpt-4o"}).for_host(
        "r.openai.azure.com"
    )
    assert azure is not None and azure.with_model is not None
    path = "/openai/v1/deployments/team-big/chat/completions?api-version=preview"
    assert azure.request_model(path, None) == "gpt-4o"
    assert azure.request_model(path, {"model": "team-big"}) == "gpt-4o"
    assert azure.request_model(path, {"model": "gpt-4o"}) == "gpt-4o"  # unmapped: its name, the same model
    assert azure.request_model(path, {"model": "team-small"}) is None  # two models: none read
    assert azure.with_model(path, {"model": "team-big", "n": 1}, "gpt-4o-mini") == (
        "/openai/v1/deployments/team-small/chat/completions?api-version=preview",
        {"model": "team-small", "n": 1},
    )
    assert azure.with_model(path, None, "gpt-4o-mini")[0].startswith("/openai/v1/deployments/team-small/")
    with pytest.raises(ValueError, match="no Azure deployment serves o3"):
        azure.with_model(path, {"model": "team-big"}, "o3")
    # the classic path as before: the body is left as it came
    classic = "/openai/deployments/team-big/chat/completions?api-version=2024-10-21"
    assert azure.with_model(classic, {"model": "team-big"}, "gpt-4o-mini") == (
        "/openai/deployments/team-small/chat/completions?api-version=2024-10-21",
        {"model": "team-big"},
    )


async def test_a_disagreement_is_refused_saying_so(meter: Meter) -> None:
    meter._apply(parse_policies(AZURE_POLICIES))
    url = RESOURCE + v1_path("team-small", "chat/completions")
    flow = make_flow(url, body_for("chat/completions", "team-big"), headers=AZURE_KEY)
    await run_request(meter, flow)
    assert _refused(flow)
    assert "its path names deployment 'team-small' and its body 'team-big'" in flow.response.text  # type: ignore[union-attr]
    record = meter.call_state(flow).record  # type: ignore[union-attr]
    assert (record.action, record.model_requested) == ("blocked", None)


async def test_a_disagreement_where_models_are_not_restricted_passes_unrewritten(meter: Meter) -> None:
    meter._apply(parse_policies(AZURE_POLICIES.replace('["*-mini"]', '["*"]')))
    url = RESOURCE + v1_path("team-small", "chat/completions")
    body = body_for("chat/completions", "team-big")
    flow = make_flow(url, body, headers=AZURE_KEY)
    await run_request(meter, flow)
    assert flow.response is None and sent_body(flow) == body


async def test_a_disagreement_is_reserved_at_the_dearer_model(meter: Meter) -> None:
    """Where models are not restricted it passes, its budget reservation at the dearer of the two
    models it may run (not $0, as for a call naming none)."""
    meter._apply(
        parse_policies(DAY_BUDGET + "azure_deployments:\n  team-small: gpt-4o-mini\n  team-big: gpt-4o\n")
    )
    url = RESOURCE + v1_path("team-small", "chat/completions")
    body = body_for("chat/completions", "team-big")
    reserved = await reserved_for(meter, url, body, headers=AZURE_KEY)
    size = len(json.dumps(body)) // 4
    assert reserved == meter.pricer.estimate("azure", "gpt-4o", size, 100) > 0


@pytest.mark.parametrize(
    "path",
    [
        "/openai/v1/deployments%5cteam-big/chat/completions?api-version=preview",
        "/openai/v1/deployments/team-small/..%5Cteam-big/chat/completions?api-version=preview",
        "/openai/deployments%5Cteam-big/chat/completions?api-version=2024-10-21",
        "/openai/v1/deployments\\team-big/chat/completions?api-version=preview",
        "/openai/deployments\\team-big/chat/completions?api-version=2024-10-21",
        "/openai/deployments/team-big\\chat/completions?api-version=2024-10-21",
    ],
)
async def test_a_backslash_escaped_or_not_is_read_as_a_slash_in_an_azure_path(
    meter: Meter, path: str
) -> None:
    """A front end that takes a backslash for a slash (IIS) runs team-big for each of these paths:
    they are read so, and the call is downgraded (nothing left naming team-big) or refused. Before,
    `%5C` made the path be read decoded but kept the backslash, and a bare one was not read at all:
    the body's team-small was checked and team-big ran."""
    meter._apply(parse_policies(AZURE_POLICIES))
    body = {"model": "team-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    flow = make_flow(RESOURCE + path, body, headers=AZURE_KEY)
    await run_request(meter, flow)
    if flow.response is None:
        assert "team-big" not in flow.request.path, flow.request.path
    else:
        assert flow.response.status_code == 403
