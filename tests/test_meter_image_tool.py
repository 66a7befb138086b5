"""The addon's hooks on Responses calls with the image_generation tool (taddons and tflow, no network):
the tool's model held to the allowlist, and the images it wrote a row of their own at its rates."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from mitmproxy import http
from test_meter import feed, make_flow, run_request, stream_response
from test_openai_media import TOOL_USAGE, image_call, image_tool_stream, sse_of, tool_response

from addon.budgets import Scope
from addon.image_tool import ImageToolCall, call_from_json, call_to_json
from addon.meter import NOTICE_HEADER, Meter
from addon.policies import parse_policies
from addon.providers.openai_media import ImageTool
from addon.record import CallRecord

RESPONSES = "https://api.openai.com/v1/responses"
DEVELOPMENT = Scope("environment", "development")
BUDGET = "    budget: {usd: 100, period: day}\n"
ONLY_MINI = """\
environments:
  development:
    models:
      allow: [gpt-4o-mini, gpt-image-1-mini]
      on_disallowed: downgrade
      downgrade: {gpt-image-1: gpt-image-1-mini}
"""
BLOCKING = ONLY_MINI.replace("on_disallowed: downgrade", "on_disallowed: block")
NO_TARGET = ONLY_MINI.replace("      downgrade: {gpt-image-1: gpt-image-1-mini}\n", "")


def records(meter: Meter) -> list[CallRecord]:
    return meter.store.records  # type: ignore[union-attr]


def call_body(tool: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "input": "draw a cat",
        "tools": [{"type": "image_generation", **tool}],
        **extra,
    }


def bill(model: str, **counts: int) -> Decimal:
    return calc_price(GPUsage(**counts), model, provider_id="openai").total_price


async def answer(meter: Meter, flow: http.HTTPFlow, body: dict[str, Any]) -> None:
    flow.response = http.Response.make(200, json.dumps(body).encode(), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)


def priced(meter: Meter) -> list[CallRecord]:
    """The rows submitted, priced as the store's writer prices them."""
    rows = records(meter)
    for row in rows:
        meter._price(row)
    return rows


async def test_the_tools_image_is_a_row_of_its_own_at_the_image_models_rate(meter: Meter) -> None:
    """Before, the row counted gpt-4o-mini's usage alone: the image, which OpenAI bills apart at
    gpt-image-1's $40/M (4,160 tokens for high 1024x1024: $0.1664), was in no row."""
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1", "quality": "high", "size": "1024x1024"}))
    await run_request(meter, flow)
    assert flow.response is None
    await answer(meter, flow, tool_response([image_call()]))
    images, text = priced(meter)  # the images first: counted before the call gives back its reservation
    assert (text.api_flavor, text.model_sent, text.input_tokens, text.output_tokens, text.error) == (
        "responses",
        "gpt-4o-mini",
        300,
        100,
        None,
    )
    assert text.cost_usd == bill("gpt-4o-mini", input_tokens=300, output_tokens=100)
    assert (images.api_flavor, images.path, images.provider, images.status_code) == (
        "images",
        "/v1/responses",
        "openai",
        200,
    )
    assert (images.model_requested, images.model_sent, images.model_reported, images.action) == (
        "gpt-image-1",
        "gpt-image-1",
        None,
        "allowed",
    )
    assert (images.input_tokens, images.output_tokens, images.output_image_tokens) == (0, 4160, 4160)
    assert (images.usage_source, images.price_model, images.cost_usd) == (
        "estimated",
        "gpt-image-1",
        Decimal("0.1664"),
    )
    assert images.error == (
        f"the image_generation tool's images of call {text.id}: 1 image(s) (high 1024x1024) counted "
        "from OpenAI's per-image table; the response reports no tool_usage, so the image model's input "
        "tokens are not counted"
    )
    assert images.id != text.id and (images.environment, images.ts) == (text.environment, text.ts)


async def test_the_tools_usage_is_taken_as_reported_when_the_answer_has_it(meter: Meter) -> None:
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1-mini", "quality": "low"}))
    await run_request(meter, flow)
    echo = [{"type": "image_generation", "model": "gpt-image-1-mini", "quality": "low"}]
    await answer(meter, flow, tool_response([image_call(quality="low")], tool_usage=TOOL_USAGE, tools=echo))
    images, _ = priced(meter)
    assert (images.model_sent, images.model_reported, images.usage_source) == (
        "gpt-image-1-mini",
        "gpt-image-1-mini",
        "reported",
    )
    assert (images.input_tokens, images.input_image_tokens, images.output_tokens) == (49, None, 272)
    assert images.cost_usd == bill(
        "gpt-image-1-mini", input_tokens=49, output_tokens=272, output_image_tokens=272
    )
    assert images.error is not None and "9 cached input tokens counted at the uncached rate" in images.error


async def test_a_streamed_answer_counts_its_partial_images_and_journals_both_rows_ahead(meter: Meter) -> None:
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1", "partial_images": 2}, stream=True))
    await run_request(meter, flow)
    stream_response(flow, meter)
    data = sse_of(image_tool_stream(2, size=200_000))
    assert feed(flow, data, 16384) == data  # passed on byte for byte
    await meter.response(flow)
    images, text = priced(meter)
    assert text.streamed and not text.aborted and text.input_tokens == 300
    # medium 1536x1024 as the call says it used: 1,568 tokens, and 100 per partial image
    assert (images.output_tokens, images.output_image_tokens, images.streamed) == (1768, 1768, True)
    assert images.cost_usd == bill("gpt-image-1", output_tokens=1768, output_image_tokens=1768)
    # journaled at the final event (a kill -9 after it keeps both), then submitted under the same ids
    assert meter.store.journaled == [images.id, text.id]  # type: ignore[union-attr]


async def test_a_stream_cut_after_its_image_still_counts_the_image(meter: Meter) -> None:
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1", "partial_images": 1}, stream=True))
    await run_request(meter, flow)
    stream_response(flow, meter)
    stream = flow.response.stream  # type: ignore[union-attr]
    stream(sse_of(image_tool_stream(1, final=False)))  # type: ignore[operator]
    meter.error(flow)  # the client hung up before the final event
    await asyncio.gather(*meter._estimates)
    images, text = priced(meter)
    assert text.aborted and text.usage_source == "estimated"
    assert (images.aborted, images.output_tokens, images.usage_source) == (True, 1568 + 100, "estimated")
    assert images.error is not None and images.error.endswith(
        "read from the stream's image events (it ended before its final event)"
    )


async def test_no_image_written_no_images_row(meter: Meter) -> None:
    flow = make_flow(RESPONSES, call_body({}))
    await run_request(meter, flow)
    await answer(meter, flow, tool_response([image_call("failed")]))
    [text] = records(meter)
    assert text.api_flavor == "responses"


async def test_without_policies_the_tools_own_model_prices_its_images(meter: Meter) -> None:
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1.5", "quality": "high", "size": "1024x1536"}))
    await run_request(meter, flow)
    await answer(meter, flow, tool_response([image_call(quality="high", size="1024x1536")]))
    images, _ = priced(meter)
    assert (images.model_sent, images.output_image_tokens, images.price_model) == (
        "gpt-image-1.5",
        6240,
        "gpt-image-1.5",
    )
    assert images.cost_usd == bill("gpt-image-1.5", output_tokens=6240, output_image_tokens=6240)


async def test_a_disallowed_tool_model_is_downgraded_by_rewriting_only_it(meter: Meter) -> None:
    """Before, the tool's model went upstream unchecked: gpt-image-1 ran where only -mini is allowed."""
    meter._apply(parse_policies(ONLY_MINI + BUDGET))
    tool = {"quality": "high", "size": "1024x1024", "model": "gpt-image-1"}
    sent = call_body(tool, max_output_tokens=200)
    flow = make_flow(RESPONSES, sent)
    prompt_tokens = len(flow.request.content) // 4
    await run_request(meter, flow)
    assert flow.response is None
    upstream = json.loads(flow.request.content)
    assert upstream == {**sent, "tools": [{**sent["tools"][0], "model": "gpt-image-1-mini"}]}
    # reserved at the model that will run: -mini's $8/M for the image
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == bill(
        "gpt-4o-mini", input_tokens=prompt_tokens, output_tokens=200
    ) + bill("gpt-image-1-mini", output_tokens=4160, output_image_tokens=4160)
    echo = [{"type": "image_generation", "model": "gpt-image-1-mini"}]
    await answer(meter, flow, tool_response([image_call()], tools=echo))
    assert flow.response.headers[NOTICE_HEADER] == (  # type: ignore[union-attr]
        "image_generation tool: downgraded gpt-image-1 -> gpt-image-1-mini: gpt-image-1 is not allowed "
        "in development (policies.yaml)"
    )
    images, text = priced(meter)
    assert (text.action, text.model_requested, text.model_sent) == ("allowed", "gpt-4o-mini", "gpt-4o-mini")
    assert (images.action, images.model_requested, images.model_sent, images.price_model) == (
        "downgraded",
        "gpt-image-1",
        "gpt-image-1-mini",
        "gpt-image-1-mini",
    )
    assert images.cost_usd == bill("gpt-image-1-mini", output_tokens=4160, output_image_tokens=4160)


async def test_a_downgraded_call_and_tool_both_rewritten(meter: Meter) -> None:
    meter._apply(parse_policies(ONLY_MINI.replace("{gpt-image-1:", "{gpt-4o: gpt-4o-mini, gpt-image-1:")))
    sent = call_body({"model": "gpt-image-1"}) | {"model": "gpt-4o"}
    flow = make_flow(RESPONSES, sent)
    await run_request(meter, flow)
    upstream = json.loads(flow.request.content)
    assert (upstream["model"], upstream["tools"][0]["model"]) == ("gpt-4o-mini", "gpt-image-1-mini")
    await answer(meter, flow, tool_response([image_call()]))
    notice = flow.response.headers[NOTICE_HEADER]  # type: ignore[union-attr]
    assert notice.startswith("downgraded gpt-4o -> gpt-4o-mini") and "; image_generation tool: " in notice
    images, text = records(meter)
    assert (text.action, text.model_requested, text.model_sent) == ("downgraded", "gpt-4o", "gpt-4o-mini")
    assert (images.action, images.model_sent) == ("downgraded", "gpt-image-1-mini")


@pytest.mark.parametrize(
    ("policy", "tool", "refused", "why"),
    [
        (BLOCKING, {"model": "gpt-image-1"}, "gpt-image-1", "(the image_generation tool's model)"),
        (NO_TARGET, {"model": "gpt-image-1"}, "gpt-image-1", "(the image_generation tool's model)"),
        (  # the server's default, checked as it and not allowed
            ONLY_MINI,
            {},
            "gpt-image-2.6-sunburst",
            "(the image_generation tool's model: the tool names none, and gpt-image-2.6-sunburst is "
            "its default)",
        ),
        (ONLY_MINI, {"model": 42}, "(unreadable)", "could not be read"),  # fail closed
        (ONLY_MINI, {"model": " "}, "(unreadable)", "could not be read"),
        (ONLY_MINI, {"model": "gpt-image-1-mini" + "x" * 190}, "(unreadable)", "could not be read"),  # > 200
    ],
)
async def test_a_tool_model_that_cannot_run_refuses_the_call(
    meter: Meter, policy: str, tool: dict[str, Any], refused: str, why: str
) -> None:
    meter._apply(parse_policies(policy + BUDGET))
    flow = make_flow(RESPONSES, call_body(tool))
    sent = flow.request.content
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403  # upstream never contacted
    message = json.loads(flow.response.content)["error"]["message"]
    assert message.startswith(f"tokometer: model {refused} is not allowed in environment development")
    assert why in message and flow.request.content == sent
    assert meter.enforcer.budgets.reserved() == {}  # its reservation withdrawn
    await meter.response(flow)
    [row] = priced(meter)
    assert (row.action, row.model_requested, row.model_sent, row.status_code, row.cost_usd) == (
        "blocked",
        refused,
        None,
        403,
        Decimal(0),
    )


@pytest.mark.parametrize(
    ("said", "asked"),
    [
        ({"quality": "auto", "size": "auto"}, {}),  # the SDK's types allow auto in the item
        ({"quality": None, "size": None}, {}),  # neither the item nor the tool says
        ({"quality": "auto", "size": "1024x1024"}, {"size": "1024x1024"}),  # the quality not said
    ],
)
async def test_a_tool_usage_is_taken_when_the_images_quality_or_size_is_not_named(
    meter: Meter, said: dict[str, Any], asked: dict[str, Any]
) -> None:
    """The images counted at the largest quality or size are an upper bound, no bill: before, a
    correct tool_usage (272 output tokens, low 1024x1024) was replaced by the largest (6,240)."""
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1-mini", **asked}))
    await run_request(meter, flow)
    echo = [{"type": "image_generation", "model": "gpt-image-1-mini"}]
    await answer(meter, flow, tool_response([image_call(**said)], tool_usage=TOOL_USAGE, tools=echo))
    images, _ = priced(meter)
    assert (images.output_tokens, images.usage_source) == (272, "reported")


@pytest.mark.parametrize(
    ("model", "said", "output"),
    [
        ("gpt-image-2", {}, 0),  # no table: a skipped record's 0 output tokens
        ("gpt-image-1-mini", {"quality": "auto", "size": "auto"}, 0),  # the table's count an upper bound
    ],
)
async def test_a_skipped_tool_usage_record_is_not_taken_when_the_count_is_an_upper_bound(
    meter: Meter, model: str, said: dict[str, Any], output: int
) -> None:
    """Two images written, tool_usage reporting no (or too few) output tokens: before, a model
    without a per-image table took it as it was (the images ~$0). The largest-image count is taken."""
    tools = [{"type": "image_generation", "model": model}]
    flow = make_flow(RESPONSES, call_body(tools[0]))
    await run_request(meter, flow)
    usage = {"image_gen": {"input_tokens": 50, "output_tokens": output, "total_tokens": 50 + output}}
    await answer(
        meter, flow, tool_response([image_call(**said), image_call(**said)], tools=tools, tool_usage=usage)
    )
    images, _ = priced(meter)
    assert (images.input_tokens, images.output_tokens, images.usage_source) == (50, 2 * 6240, "estimated")
    assert f"reports {output} output tokens, fewer than" in (images.error or "")


@pytest.mark.parametrize("output", [600, 250])
async def test_an_untabled_models_tool_usage_above_the_least_an_image_costs_is_taken(
    meter: Meter, output: int
) -> None:
    """Without a table nothing says what its image costs: any output reported is taken (250 for two
    images was billed as 12,480 when gpt-image-1's smallest image was taken as a floor)."""
    tools = [{"type": "image_generation", "model": "gpt-image-2"}]
    flow = make_flow(RESPONSES, call_body(tools[0]))
    await run_request(meter, flow)
    usage = {"image_gen": {"input_tokens": 50, "output_tokens": output, "total_tokens": 50 + output}}
    await answer(meter, flow, tool_response([image_call(), image_call()], tools=tools, tool_usage=usage))
    images, _ = priced(meter)
    assert (images.output_tokens, images.usage_source) == (output, "reported")


IMAGE_GLOB = ONLY_MINI.replace("gpt-image-1-mini]", "'gpt-image-*']")
DEFAULT_DOWNGRADED = ONLY_MINI.replace("{gpt-image-1:", "{'gpt-image-2*': gpt-image-1-mini, gpt-image-1:")


@pytest.mark.parametrize(
    ("policy", "written"),
    [
        (IMAGE_GLOB, "gpt-image-2.6-sunburst"),  # every image model allowed: the default, pinned
        (DEFAULT_DOWNGRADED, "gpt-image-1-mini"),  # the default downgraded: its image target
    ],
)
async def test_a_tool_naming_no_model_runs_its_checked_default_written_in(
    meter: Meter, policy: str, written: str
) -> None:
    """Before, a tool naming no model (the SDK's usual call) was refused wherever models were
    restricted, even where its default is allowed or downgraded to an allowed image model."""
    meter._apply(parse_policies(policy))
    flow = make_flow(RESPONSES, call_body({}))
    await run_request(meter, flow)
    assert flow.response is None, json.loads(flow.response.content)["error"]["message"]
    assert json.loads(flow.request.content)["tools"][0]["model"] == written  # never an unchecked default
    await answer(meter, flow, tool_response([image_call()]))
    images, _ = records(meter)
    assert (images.model_requested, images.model_sent) == ("gpt-image-2.6-sunburst", written)


async def test_a_tool_naming_no_model_under_tool_choice_none_is_left_as_it_is(meter: Meter) -> None:
    """tool_choice none: the tool cannot run, so its default is not refused (before, the call was)."""
    meter._apply(parse_policies(ONLY_MINI))
    flow = make_flow(RESPONSES, call_body({}, tool_choice="none"))
    sent = flow.request.content
    await run_request(meter, flow)
    assert flow.response is None and flow.request.content == sent


async def test_an_unreadable_tool_model_passes_where_every_model_is_allowed(meter: Meter) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: ['*']}\n"))
    flow = make_flow(RESPONSES, call_body({"model": 42}))
    await run_request(meter, flow)
    assert flow.response is None


async def test_a_background_responses_images_are_billed_by_the_retrieval_that_bills_it(meter: Meter) -> None:
    post = make_flow(RESPONSES, call_body({"model": "gpt-image-1-mini"}, background=True))
    await run_request(meter, post)
    queued = {"id": "resp_bg", "object": "response", "status": "queued", "background": True, "output": []}
    await answer(meter, post, queued | {"model": "gpt-4o-mini", "usage": None})
    [started] = records(meter)  # queued: billed later, and no image yet
    done = tool_response([image_call()], tools=[{"type": "image_generation", "model": "gpt-image-1-mini"}])
    for _ in range(2):  # the second retrieval bills nothing again
        get = make_flow(f"{RESPONSES}/resp_bg", b"", method="GET")
        await run_request(meter, get)
        await answer(meter, get, done | {"id": "resp_bg", "background": True})
    _, images, billed = priced(meter)
    assert (billed.input_tokens, billed.path, images.path) == (
        300,
        "/v1/responses/resp_bg",
        "/v1/responses/resp_bg",
    )
    assert (images.api_flavor, images.model_sent, images.output_image_tokens) == (
        "images",
        "gpt-image-1-mini",
        4160,
    )
    assert images.cost_usd == bill("gpt-image-1-mini", output_tokens=4160, output_image_tokens=4160)
    assert started.price_status == "background"


CATCH_ALL = """\
environments:
  development:
    models:
      allow: [gpt-4o-mini]
      on_disallowed: downgrade
      downgrade: {'*': gpt-4o-mini}
"""


async def test_a_text_model_target_is_never_written_into_the_image_tool(meter: Meter) -> None:
    """Before, a catch-all's target (a text model) was written in as tools[0].model: upstream rejects
    a tool told to run gpt-4o-mini. A target that is no image model counts as none: refused."""
    meter._apply(parse_policies(CATCH_ALL))
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1.5"}) | {"model": "gpt-4o"})
    sent = flow.request.content
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    message = json.loads(flow.response.content)["error"]["message"]
    assert message.startswith("tokometer: model gpt-image-1.5 is not allowed in environment development")
    assert "its downgrade target gpt-4o-mini is not an image model" in message
    assert flow.request.content == sent


async def test_an_image_model_target_of_a_catch_all_is_written_in(meter: Meter) -> None:
    meter._apply(
        parse_policies(
            CATCH_ALL.replace("[gpt-4o-mini]", "[gpt-4o-mini, gpt-image-1-mini]").replace(
                "{'*': gpt-4o-mini}", "{'gpt-image-*': gpt-image-1-mini, '*': gpt-4o-mini}"
            )
        )
    )
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1.5"}) | {"model": "gpt-4o"})
    await run_request(meter, flow)
    upstream = json.loads(flow.request.content)
    assert (upstream["model"], upstream["tools"][0]["model"]) == ("gpt-4o-mini", "gpt-image-1-mini")


@pytest.mark.parametrize(
    ("policy", "author", "reserved_as"),
    [
        ("environments:\n  development:\n    models: {allow: ['*']}\n", "o3-pro", "o3-pro"),
        (  # downgraded: reserved at the model sent
            ONLY_MINI.replace("{gpt-image-1:", "{o3-pro: gpt-4o-mini, gpt-image-1:"),
            "o3-pro",
            "gpt-4o-mini",
        ),
    ],
)
async def test_the_svg_authors_output_is_reserved_at_its_text_rate(
    meter: Meter, policy: str, author: str, reserved_as: str
) -> None:
    """Before, the SVG author's tokens (billed on a row of their own) were in no reservation."""
    meter._apply(parse_policies(policy + BUDGET))
    sent = call_body(svg_tool({"model": author}), max_output_tokens=200, max_tool_calls=2)
    flow = make_flow(RESPONSES, sent)
    size = len(flow.request.content)
    await run_request(meter, flow)
    assert flow.response is None
    reserved = meter.enforcer.budgets.reserved()[DEVELOPMENT]
    text_and_images = meter.cost_estimate(
        "openai", size, {**sent, "tools": [{"type": "image_generation", **svg_tool(None)}]}
    )("gpt-4o-mini")
    # its p90 here (none yet: 1,000), for each of the 2 image calls the tool may make, at its rate;
    # never the request's cap (200), which is the text model's
    assert reserved - text_and_images == bill(reserved_as, output_tokens=2000) > 0


async def test_a_tool_naming_no_model_runs_the_servers_default_where_every_model_is_allowed(
    meter: Meter,
) -> None:
    """Unrestricted, nothing is refused: the images are billed as the default the openai SDK 3.57
    types name, which genai-prices has no price for, so priced at gpt-image-1's rate, as reserved
    (the row says so). Before, the row was unknown_model: $0 to every budget."""
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: ['*']}\n" + BUDGET))
    flow = make_flow(RESPONSES, call_body({}, max_output_tokens=200))
    prompt_tokens = len(flow.request.content) // 4
    await run_request(meter, flow)
    assert flow.response is None and "model" not in json.loads(flow.request.content)["tools"][0]
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == bill(
        "gpt-4o-mini", input_tokens=prompt_tokens, output_tokens=200
    ) + bill("gpt-image-1", output_tokens=6240, output_image_tokens=6240)
    await answer(meter, flow, tool_response([image_call()]))
    images, _ = priced(meter)
    assert (images.model_requested, images.model_sent, images.price_status, images.price_model) == (
        "gpt-image-2.6-sunburst",
        "gpt-image-2.6-sunburst",
        "priced",  # counted as the largest tabled image, at gpt-image-1's rate
        "gpt-image-1",
    )
    assert (images.output_image_tokens, images.usage_source) == (6240, "estimated")
    assert images.cost_usd == bill("gpt-image-1", output_tokens=6240, output_image_tokens=6240)
    assert images.error is not None and images.error.endswith(
        "the tool names no model: priced as gpt-image-2.6-sunburst, its default "
        "(genai-prices has no price for it); no price for gpt-image-2.6-sunburst: priced at "
        "gpt-image-1's rates, as reserved (an estimate)"
    )


async def test_a_reported_tool_usage_of_a_model_without_a_price_is_priced_at_the_reservations_rate(
    meter: Meter,
) -> None:
    """Before, the default's reported tokens were unknown_model, $0 to budgets."""
    flow = make_flow(RESPONSES, call_body({}))
    await run_request(meter, flow)
    echo = [{"type": "image_generation", "model": "gpt-image-2.6-sunburst"}]
    await answer(meter, flow, tool_response([image_call()], tool_usage=TOOL_USAGE, tools=echo))
    images, _ = priced(meter)
    assert (images.model_reported, images.price_status, images.usage_source) == (
        "gpt-image-2.6-sunburst",
        "priced",
        "estimated",
    )
    assert images.cost_usd == bill("gpt-image-1", input_tokens=49, output_tokens=272, output_image_tokens=272)
    # only a tool's images row: an Images API call's at a model without a price is as it was
    unpriced = {"cost_usd": None, "price_status": None, "price_source": None, "price_model": None}
    other = dataclasses.replace(images, path="/v1/images/generations", error=None, **unpriced)
    meter._price(other)
    assert (other.price_status, other.cost_usd) == ("unknown_model", None)


def svg_tool(author: Any) -> dict[str, Any]:
    return {"model": "gpt-image-1-mini", "output_format": "svg", "svg": author}


@pytest.mark.parametrize(
    ("policy", "author", "refused", "why"),
    [
        (BLOCKING, {"model": "o3-pro"}, "o3-pro", "(the image_generation tool's SVG author model"),
        (ONLY_MINI, {"model": "o3-pro"}, "o3-pro", "(the image_generation tool's SVG author model"),
        (  # a target that is an image model cannot author SVG
            ONLY_MINI.replace("{gpt-image-1:", "{o3-pro: gpt-image-1-mini, gpt-image-1:"),
            {"model": "o3-pro"},
            "o3-pro",
            "its downgrade target gpt-image-1-mini is an image model, not an SVG author",
        ),
        (ONLY_MINI, {"model": 42}, "(unreadable)", "svg.model) could not be read"),  # fail closed
        (ONLY_MINI, "o3-pro", "(unreadable)", "svg.model) could not be read"),
    ],
)
async def test_the_svg_author_model_is_held_to_the_allowlist(
    meter: Meter, policy: str, author: Any, refused: str, why: str
) -> None:
    """Before, tools[i].svg.model (the text model writing an SVG) went upstream unchecked."""
    meter._apply(parse_policies(policy))
    flow = make_flow(RESPONSES, call_body(svg_tool(author)))
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    message = json.loads(flow.response.content)["error"]["message"]
    assert message.startswith(f"tokometer: model {refused} is not allowed in environment development")
    assert why in message


async def test_the_svg_author_model_is_downgraded_by_rewriting_only_it(meter: Meter) -> None:
    policy = ONLY_MINI.replace("{gpt-image-1:", "{o3-pro: gpt-4o-mini, gpt-image-1:")
    meter._apply(parse_policies(policy))
    sent = call_body(svg_tool({"model": "o3-pro", "reasoning": {"effort": "low"}}))
    flow = make_flow(RESPONSES, sent)
    await run_request(meter, flow)
    assert flow.response is None
    upstream = json.loads(flow.request.content)
    tool = sent["tools"][0]
    assert upstream == {**sent, "tools": [{**tool, "svg": {**tool["svg"], "model": "gpt-4o-mini"}}]}
    await answer(meter, flow, tool_response([]))
    assert (
        "image_generation tool's SVG author: downgraded o3-pro -> gpt-4o-mini"
        in (
            flow.response.headers[NOTICE_HEADER]  # type: ignore[union-attr]
        )
    )


def test_a_kept_image_tool_call_keeps_a_long_downgrade() -> None:
    """Before, a model name over 64 characters (read up to any length, or a policy's target) was
    written with a background response but not read back: the downgrade silently lost. Both now
    keep MAX_TOOL_MODEL_NAME (200) characters, the bound a tool's model is read to."""
    long = "gpt-image-1-" + "x" * 100
    tool = ImageTool(0, long, True, "high", "auto")  # its svg_model kept in call.svg
    call = ImageToolCall(
        long, "gpt-image-1-mini", "downgraded", tool, ("o3-" + "y" * 100, "gpt-4o-mini", "downgraded")
    )
    assert call_from_json(json.loads(json.dumps(call_to_json(call)))) == call
    azure = dataclasses.replace(call, deployment="img-" + "d" * 100)  # Azure: the deployment sent
    assert call_from_json(json.loads(json.dumps(call_to_json(azure)))) == azure
    target = "z" * 300  # longer than any name a tool is read with: shortened, both ways the same
    kept = call_from_json(call_to_json(ImageToolCall(long, target, "downgraded", tool)))
    assert kept is not None and (kept.requested, kept.sent, kept.action) == (long, "z" * 200, "downgraded")


SVG_DOWNGRADE = ONLY_MINI.replace("{gpt-image-1:", "{o3-pro: gpt-4o-mini, gpt-image-1:")
AUTHOR_USAGE = {"input_tokens": 10, "output_tokens": 50, "reasoning_tokens": 0, "total_tokens": 60}


@pytest.mark.parametrize("background", [False, True])
async def test_a_downgraded_svg_authors_row_says_so(meter: Meter, background: bool) -> None:
    """Before, the SVG author's row said allowed and named the model sent as requested; a background
    response's retrieval (which bills it) knew nothing of the downgrade made on the POST."""
    meter._apply(parse_policies(SVG_DOWNGRADE))
    post = make_flow(RESPONSES, call_body(svg_tool({"model": "o3-pro"}), background=background))
    await run_request(meter, post)
    author = AUTHOR_USAGE | {"model": "gpt-4o-mini-2024-07-18"}  # the dated name it reports
    done = tool_response([image_call(svg_usage=author)])
    flow = post
    if background:
        queued = {"id": "resp_sv", "object": "response", "status": "queued", "background": True, "output": []}
        await answer(meter, post, queued | {"model": "gpt-4o-mini", "usage": None})
        flow = make_flow(f"{RESPONSES}/resp_sv", b"", method="GET")
        await run_request(meter, flow)
        done |= {"id": "resp_sv", "background": True}
    await answer(meter, flow, done)
    [svg] = [row for row in priced(meter) if row.model_reported == "gpt-4o-mini-2024-07-18"]
    assert (svg.action, svg.model_requested, svg.model_sent) == ("downgraded", "o3-pro", "gpt-4o-mini")


async def test_an_allowed_svg_author_passes_as_sent(meter: Meter) -> None:
    meter._apply(parse_policies(ONLY_MINI))
    flow = make_flow(RESPONSES, call_body(svg_tool({"model": "gpt-4o-mini"})))
    sent = flow.request.content
    await run_request(meter, flow)
    assert flow.response is None and flow.request.content == sent


async def test_an_untabled_models_images_cost_what_their_reservation_counts(meter: Meter) -> None:
    """Before, gpt-image-2's images without tool_usage had no usage: reserved as the largest image,
    then billed $0, so a hard cap never saw them. Each now counts as that largest image at its rate."""
    tools = [{"type": "image_generation", "model": "gpt-image-2"}]
    flow = make_flow(RESPONSES, call_body(tools[0] | {"type": "image_generation"}))
    await run_request(meter, flow)
    await answer(meter, flow, tool_response([image_call(), image_call()], tools=tools))
    images, _ = priced(meter)
    assert (images.model_sent, images.output_image_tokens, images.usage_source) == (
        "gpt-image-2",
        12480,
        "estimated",
    )
    assert images.cost_usd == bill("gpt-image-2", output_tokens=12480, output_image_tokens=12480) > 0


async def test_a_background_responses_images_keep_the_tools_downgrade(meter: Meter) -> None:
    """Before, the retrieval that bills the images knew nothing of the tool's downgrade (made on the
    POST): its row said allowed, at the default model, when the response did not echo its tools."""
    meter._apply(parse_policies(ONLY_MINI))
    post = make_flow(RESPONSES, call_body({"model": "gpt-image-1"}, background=True))
    await run_request(meter, post)
    assert json.loads(post.request.content)["tools"][0]["model"] == "gpt-image-1-mini"
    queued = {"id": "resp_dg", "object": "response", "status": "queued", "background": True, "output": []}
    await answer(meter, post, queued | {"model": "gpt-4o-mini", "usage": None})
    get = make_flow(f"{RESPONSES}/resp_dg", b"", method="GET")
    await run_request(meter, get)
    await answer(meter, get, tool_response([image_call()]) | {"id": "resp_dg", "background": True})
    _, images, _ = priced(meter)
    assert (images.action, images.model_requested, images.model_sent) == (
        "downgraded",
        "gpt-image-1",
        "gpt-image-1-mini",
    )
    assert images.cost_usd == bill("gpt-image-1-mini", output_tokens=4160, output_image_tokens=4160)


async def test_the_svg_authors_tokens_are_a_row_at_its_own_rates(meter: Meter) -> None:
    """Before, an image call's svg_usage (the SVG author model's tokens) was in no row."""
    flow = make_flow(RESPONSES, call_body(svg_tool({"model": "o3"})))
    await run_request(meter, flow)
    author = {
        "model": "o3",
        "input_tokens": 100,
        "output_tokens": 500,
        "reasoning_tokens": 300,
        "total_tokens": 600,
    }
    echo = [{"type": "image_generation", "model": "gpt-image-1-mini"}]
    await answer(meter, flow, tool_response([image_call(svg_usage=author)], tools=echo))
    images, svg, text = priced(meter)
    assert (images.api_flavor, images.model_sent) == ("images", "gpt-image-1-mini")
    assert (svg.api_flavor, svg.model_sent, svg.input_tokens, svg.output_tokens, svg.reasoning_tokens) == (
        "responses",
        "o3",
        100,
        500,
        300,
    )
    assert svg.usage_source == "reported" and svg.id not in (images.id, text.id)
    assert svg.cost_usd == bill("o3", input_tokens=100, output_tokens=500)
    assert svg.error == f"the image_generation tool's SVG author tokens (svg_usage) of call {text.id}"


AZURE_RESPONSES = "https://myres.openai.azure.com/openai/v1/responses"
DEPLOYMENT_HEADER = "x-ms-oai-image-generation-deployment"
# Azure: img-small serves the allowed gpt-image-1-mini, img-big gpt-image-1 (downgraded to -mini).
AZURE_IMAGES = ONLY_MINI + "azure_deployments:\n  img-small: gpt-image-1-mini\n  img-big: gpt-image-1\n"


async def test_an_azure_tool_naming_no_model_is_refused_where_models_are_restricted(meter: Meter) -> None:
    """Azure runs the deployment its x-ms-oai-image-generation-deployment header names, not OpenAI's
    default: checking (and writing in) that default let an unchecked deployment run. Without the
    header nothing says which deployment runs: refused."""
    meter._apply(parse_policies(IMAGE_GLOB.replace("gpt-4o-mini,", "gpt-4o-mini, gpt-4.1,")))
    body = {"model": "gpt-4.1", "input": "draw", "tools": [{"type": "image_generation"}]}
    flow = make_flow(AZURE_RESPONSES, body, headers={"api-key": "k"})  # no image deployment header
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert (
        "on azure the one it runs is not known: name it"
        in json.loads(flow.response.content)["error"]["message"]
    )


@pytest.mark.parametrize(("named", "sent"), [("img-small", "img-small"), ("img-big", "img-small")])
async def test_an_azure_tools_model_is_a_deployment_checked_as_the_model_it_serves(
    meter: Meter, named: str, sent: str
) -> None:
    """Azure's tools[i].model names a deployment: img-small (serving the allowed gpt-image-1-mini)
    was refused as a model not allowed, and img-big downgraded had gpt-image-1-mini written in,
    which is no deployment. Its images row is priced at the model the deployment sent serves."""
    meter._apply(parse_policies(AZURE_IMAGES))
    flow = make_flow(AZURE_RESPONSES, call_body({"model": named}), headers={"api-key": "k"})
    await run_request(meter, flow)
    assert flow.response is None
    assert json.loads(flow.request.content)["tools"][0]["model"] == sent
    await answer(
        meter, flow, tool_response([image_call()], tools=[{"type": "image_generation", "model": sent}])
    )
    [images] = [row for row in priced(meter) if row.api_flavor == "images"]
    requested = "gpt-image-1" if named == "img-big" else "gpt-image-1-mini"
    assert (images.model_requested, images.model_sent, images.price_model) == (
        requested,
        "gpt-image-1-mini",
        "gpt-image-1-mini",
    )
    assert images.cost_usd == bill("gpt-image-1-mini", output_tokens=4160)  # high 1024x1024
    assert "the model Azure deployment img-small serves" in (images.error or "")


async def test_an_azure_tools_downgrade_no_deployment_serves_is_refused(meter: Meter) -> None:
    meter._apply(parse_policies(ONLY_MINI + "azure_deployments:\n  img-big: gpt-image-1\n"))
    flow = make_flow(AZURE_RESPONSES, call_body({"model": "img-big"}), headers={"api-key": "k"})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    message = json.loads(flow.response.content)["error"]["message"]
    assert "no Azure deployment serves its downgrade target gpt-image-1-mini" in message


@pytest.mark.parametrize(
    ("header", "written"),
    [("img-small", "img-small"), ("img-big", "img-small"), ("gpt-image-1-mini", "gpt-image-1-mini")],
)
async def test_an_azure_tool_naming_no_model_runs_the_header_deployment_as_checked(
    meter: Meter, header: str, written: str
) -> None:
    """A tool naming no model runs the deployment the header names: checked as the model it serves
    (an unmapped name as itself), not refused; a downgrade rewrites the header, not the tool."""
    meter._apply(parse_policies(AZURE_IMAGES))
    headers = {"api-key": "k", DEPLOYMENT_HEADER: header}
    flow = make_flow(AZURE_RESPONSES, call_body({}), headers=headers)
    await run_request(meter, flow)
    assert flow.response is None
    assert flow.request.headers[DEPLOYMENT_HEADER] == written
    assert "model" not in json.loads(flow.request.content)["tools"][0]


async def test_an_azure_header_deployment_not_allowed_is_refused(meter: Meter) -> None:
    """The header's deployment is checked as the model it serves (it was refused as naming none,
    whatever the header said: where models are unrestricted, it ran unchecked)."""
    meter._apply(parse_policies(BLOCKING + "azure_deployments:\n  img-big: gpt-image-1.5\n"))
    headers = {"api-key": "k", DEPLOYMENT_HEADER: "img-big"}
    flow = make_flow(AZURE_RESPONSES, call_body({}), headers=headers)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    message = json.loads(flow.response.content)["error"]["message"]
    assert (
        "x-ms-oai-image-generation-deployment header's deployment img-big, serving gpt-image-1.5" in message
    )


async def test_an_openai_tool_ignores_the_azure_header(meter: Meter) -> None:
    meter._apply(parse_policies(IMAGE_GLOB))
    flow = make_flow(RESPONSES, call_body({}), headers={DEPLOYMENT_HEADER: "img-big"})
    await run_request(meter, flow)
    assert flow.response is None
    assert json.loads(flow.request.content)["tools"][0]["model"] == "gpt-image-2.6-sunburst"


async def test_an_images_api_row_is_never_priced_as_a_tools_images(meter: Meter) -> None:
    """An Images API row's error is upstream's words: one starting as a tool's images row does was
    priced at gpt-image-1's rates instead of staying unknown_model."""
    from addon.image_tool import ROW_NOTE

    flow = make_flow("https://api.openai.com/v1/images/generations", {"model": "gpt-image-9", "prompt": "x"})
    await run_request(meter, flow)
    usage = {"input_tokens": 10, "output_tokens": 1000, "total_tokens": 1010}
    body = {"error": {"message": ROW_NOTE + " spoofed"}, "usage": usage}
    flow.response = http.Response.make(200, json.dumps(body).encode(), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = priced(meter)
    assert (row.api_flavor, row.price_status, row.cost_usd) == ("images", "unknown_model", None)


async def test_the_tools_images_are_held_as_the_calls_reservation_gives_way(meter: Meter) -> None:
    """The call's reservation, which holds its tool's images too, gives way to its own row's cost as
    it finishes (on the event loop, before the store's writer prices anything): its images row is
    priced and held then too, so no check in between misses them; the writer counts both once."""
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: ['*']}\n" + BUDGET))
    flow = make_flow(RESPONSES, call_body({"model": "gpt-image-1", "quality": "high", "size": "1024x1024"}))
    flow.request.timestamp_start = datetime.now(UTC).timestamp()  # today's budget
    await run_request(meter, flow)
    assert flow.response is None and meter.enforcer.budgets.reserved()
    await answer(meter, flow, tool_response([image_call()]))
    images, text = records(meter)
    assert images.cost_usd == Decimal("0.1664") and text.cost_usd is not None  # priced as they finished
    tracker = meter.enforcer.budgets
    assert tracker.reserved() == {} and tracker._held == {DEVELOPMENT: images.cost_usd + text.cost_usd}
    priced(meter)  # the writer's round: its pricer leaves both rows as they are
    meter._on_finished([images, text])
    [budget] = tracker.status(datetime.now(UTC))
    assert budget["spent"] == images.cost_usd + text.cost_usd
    assert tracker._held == {} and tracker.reserved() == {}
