"""A LiteLLM fallback object's members as its attempt runs with them (round 12): they stay set for
the later entries of its list, a cap written as null (or as no positive whole number) leaves the
hop uncapped, and its image tools are held to the allowlist where they are written."""

from __future__ import annotations

import json

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers.fallback_lists import litellm_fallbacks
from tests import test_meter

GATEWAY = (
    'providers:\n  litellm: {url: "https://llm.internal.example", api: openai, pricing_provider: openai}\n'
)
GATEWAY_RESPONSES = "https://llm.internal.example/v1/responses"
ONLY_MINI = """\
environments:
  development:
    models:
      allow: [gpt-4o-mini, gpt-image-1-mini]
      on_disallowed: downgrade
      downgrade: {gpt-image-1: gpt-image-1-mini}
"""
TOOL = {"type": "image_generation", "model": "gpt-image-1", "quality": "low"}


def test_an_objects_members_carry_over_to_the_later_entries_of_its_list_only() -> None:
    """Before, each entry ran with its own object's members only: "b" (after an object setting
    16000) had no hop caps, and the object's null cap was dropped (the request's kept)."""
    found = litellm_fallbacks(
        {
            "model": "x",
            "max_tokens": 100,
            "fallbacks": [
                {"model": "a", "max_tokens": 16000, "n": 2},
                "b",
                {"model": "c", "max_tokens": None},
                {"gpt-4o": ["d"]},
            ],
            "context_window_fallbacks": ["e"],  # another list: LiteLLM's other call, not carried
        }
    )
    assert found is not None and found.error is None
    assert found.models == ("a", "b", "c", "d", "e")
    first = (("max_tokens", 16000), ("n", 2))
    cleared = (("max_tokens", None), ("n", 2))
    assert found.hop_caps == ((0, first), (1, first), (2, cleared), (3, cleared))


def test_a_cap_that_is_no_positive_whole_number_leaves_the_hop_uncapped() -> None:
    for written in (None, 0, -5, "16000", True, 1.5):
        found = litellm_fallbacks({"fallbacks": [{"model": "a", "max_output_tokens": written}]})
        assert found is not None and found.hop_caps == ((0, (("max_output_tokens", None),)),), written
    found = litellm_fallbacks({"fallbacks": [{"model": "a", "max_output_tokens": 300}]})
    assert found is not None and found.hop_caps == ((0, (("max_output_tokens", 300),)),)


def test_objects_setting_tools_are_found_where_they_are_written() -> None:
    found = litellm_fallbacks(
        {
            "fallbacks": [
                {"model": "a", "tools": [TOOL]},
                "b",
                {"model": "c", "fallbacks": [{"model": "d", "tools": []}, {"model": "e", "tools": None}]},
            ]
        }
    )
    assert found is not None and found.tool_objects == (("fallbacks", 0), ("fallbacks", 2, "fallbacks", 0))


async def test_an_image_tool_in_a_fallback_object_is_downgraded_where_it_is_written(meter: Meter) -> None:
    """Before, both objects' gpt-image-1 went upstream as written, where only -mini is allowed."""
    meter._apply(parse_policies(GATEWAY + ONLY_MINI))
    body = {
        "model": "gpt-4o-mini",
        "input": "draw",
        "fallbacks": [
            {"model": "gpt-4o-mini", "tools": [{"type": "function", "name": "f"}, TOOL]},
            {"model": "gpt-4o-mini", "fallbacks": [{"model": "gpt-4o-mini", "tools": [TOOL]}]},
        ],
    }
    flow = test_meter.make_flow(GATEWAY_RESPONSES, body)
    await test_meter.run_request(meter, flow)
    assert flow.response is None
    mini = {**TOOL, "model": "gpt-image-1-mini"}
    first, second = body["fallbacks"]  # type: ignore[misc]
    assert json.loads(flow.request.content or b"") == {
        **body,
        "fallbacks": [
            {**first, "tools": [{"type": "function", "name": "f"}, mini]},
            {**second, "fallbacks": [{"model": "gpt-4o-mini", "tools": [mini]}]},
        ],
    }
    notice = meter.call_state(flow).notice  # type: ignore[union-attr]
    assert notice is not None
    assert notice.startswith(
        "fallbacks[0]: image_generation tool: downgraded gpt-image-1 -> gpt-image-1-mini"
    )
    assert "; fallbacks[1].fallbacks[0]: image_generation tool: downgraded" in notice


async def test_a_refused_image_tool_in_a_fallback_object_says_where_it_is(meter: Meter) -> None:
    meter._apply(
        parse_policies(GATEWAY + ONLY_MINI.replace("on_disallowed: downgrade", "on_disallowed: block"))
    )
    body = {
        "model": "gpt-4o-mini",
        "input": "draw",
        "fallbacks": ["gpt-4o-mini", {"model": "gpt-4o-mini", "tools": [TOOL]}],
    }
    flow = test_meter.make_flow(GATEWAY_RESPONSES, body)
    await test_meter.run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "the image_generation tool's model, in its fallbacks[1] object" in flow.response.text  # type: ignore[operator]


async def test_an_image_tool_in_a_chat_calls_fallback_object_is_no_image_tool(meter: Meter) -> None:
    """Only Responses runs image_generation tools: a chat call's object is left as written."""
    meter._apply(
        parse_policies(GATEWAY + ONLY_MINI.replace("on_disallowed: downgrade", "on_disallowed: block"))
    )
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "fallbacks": [{"model": "gpt-4o-mini", "tools": [TOOL]}],
    }
    flow = test_meter.make_flow("https://llm.internal.example/v1/chat/completions", body)
    await test_meter.run_request(meter, flow)
    assert flow.response is None and json.loads(flow.request.content or b"") == body
