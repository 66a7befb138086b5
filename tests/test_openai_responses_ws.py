"""The Responses-over-WebSocket readers: creates, their rewrite, the server events that bill."""

from __future__ import annotations

import json

import pytest
from fake_responses_ws import (
    RESPONSE_USAGE,
    create_event,
    dumps,
    request_error,
    response_created,
    response_terminal,
    text_delta,
    web_search_call,
)

from addon.providers import openai_api
from addon.providers import openai_responses_ws as rws
from addon.providers.values import WS_PIECE


def test_endpoint_is_the_responses_path_only() -> None:
    assert rws.OPENAI.matches("/v1/responses") and rws.OPENAI.matches("/v1/responses/")
    assert not rws.OPENAI.matches("/v1/responses/resp_1") and not rws.OPENAI.matches("/v1/realtime")


def test_a_create_names_its_model_and_lane() -> None:
    data = dumps(create_event("gpt-5", "lane-a", max_output_tokens=50))
    assert rws.may_be_create(data)
    create = rws.read_create(data)
    assert create is not None
    assert (create.model, create.stream_id, create.body["max_output_tokens"]) == ("gpt-5", "lane-a", 50)
    nameless = rws.read_create(dumps(create_event(None)))
    assert nameless is not None and (nameless.model, nameless.stream_id) == (None, None)
    assert rws.read_create(dumps({"type": "response.create", "model": "  "})).model is None  # type: ignore[union-attr]
    assert rws.read_create(dumps({"type": "response.create", "model": 5})).model is None  # type: ignore[union-attr]
    steer = dumps({"type": "response.steer", "previous_response_id": "resp_1", "input": "response.create"})
    assert rws.read_create(steer) is None
    assert not rws.may_be_create(dumps({"type": "response.steer", "input": "hi"}))
    assert rws.read_create(b"not json") is None and rws.read_create(b"[1]") is None


def test_the_rewrite_changes_only_the_models_value() -> None:
    data = b'{"type": "response.create",  "model" : "gpt-5", "input": "x \\"model\\": \\"gpt-5\\"", "z": 1}'
    out = rws.with_model(data, "gpt-5-mini")
    assert out == data.replace(b'"gpt-5", "input"', b'"gpt-5-mini", "input"')
    # The same pair twice (a tool naming the same model): written out again, only the top level changed.
    twice = dumps(create_event("gpt-5", tools=[{"type": "image_generation", "model": "gpt-5"}]))
    obj = json.loads(rws.with_model(twice, "gpt-5-mini"))
    assert obj["model"] == "gpt-5-mini" and obj["tools"][0]["model"] == "gpt-5"
    with pytest.raises(ValueError):
        rws.with_model(dumps(create_event(None)), "gpt-5-mini")


def test_a_non_ascii_create_over_one_fragment_is_rewritten_as_ascii() -> None:
    text = "Grüße, 東京 " * 800  # ~12 KB of UTF-8: three fragments, characters cut at their edges
    data = json.dumps(create_event("gpt-5", input=text), ensure_ascii=False).encode()
    assert len(data) > WS_PIECE and not data.isascii()
    out = rws.with_model(data, "gpt-5-mini")
    assert out.isascii() and json.loads(out) == {**json.loads(data), "model": "gpt-5-mini"}
    small = json.dumps(create_event("gpt-5", input="Grüße"), ensure_ascii=False).encode()
    assert rws.with_model(small, "gpt-5-mini") == small.replace(b'"gpt-5"', b'"gpt-5-mini"')


def test_error_event_is_the_sockets_shape() -> None:
    error = {"message": "no", "type": "invalid_request_error", "param": None, "code": "model_not_allowed"}
    assert json.loads(rws.error_event(error, 403, "a")) == {
        "type": "error",
        "status": 403,
        "error": error,
        "stream_id": "a",
    }
    assert "stream_id" not in json.loads(rws.error_event(error, 429, None))


def test_deltas_are_never_decoded_and_what_bills_always_is() -> None:
    assert not rws.might_matter(dumps(text_delta("resp_1", 0, "a", text='"usage" "error"')))
    assert not rws.might_matter(dumps({"type": "response.output_item.added", "item": {"type": "message"}}))
    for event in (
        response_created("resp_1", "gpt-5"),
        response_terminal("resp_1", "gpt-5", RESPONSE_USAGE),
        request_error("nope"),
    ):
        assert rws.might_matter(dumps(event))


def test_started_and_terminal_events() -> None:
    started = rws.read_server_event(dumps(response_created("resp_1", "gpt-5", "a")))
    assert started == rws.Started("resp_1", "a")
    output = [web_search_call(1), web_search_call(2), {"type": "file_search_call", "id": "fs"}]
    ended = rws.read_server_event(
        dumps(
            response_terminal(
                "resp_1", "gpt-5-2025-08-07", RESPONSE_USAGE, "a", output=output, service_tier="flex"
            )
        )
    )
    assert isinstance(ended, rws.Ended) and (ended.response_id, ended.stream_id) == ("resp_1", "a")
    metered = ended.metered
    usage = metered.usage
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        1200,
        200,
        300,
        100,
    )
    assert (usage.web_searches, usage.file_searches) == (2, 1)
    assert (metered.model, metered.service_tier, metered.response_status, metered.error) == (
        "gpt-5-2025-08-07",
        "flex",
        "completed",
        None,
    )
    # The same normalisation as the HTTP stream's final event.
    assert (
        metered.usage
        == openai_api.response_metered(
            "response.completed",
            json.loads(dumps(response_terminal("r", "m", RESPONSE_USAGE, output=output)))["response"],
            b"",
        ).usage
    )


def test_incomplete_failed_and_usage_less_terminals_say_why() -> None:
    incomplete = rws.read_server_event(
        dumps(response_terminal("r", "gpt-5", RESPONSE_USAGE, status="incomplete"))
    )
    assert isinstance(incomplete, rws.Ended)
    assert incomplete.metered.error == "response incomplete: max_output_tokens"
    assert incomplete.metered.usage is not None and incomplete.metered.usage.input_tokens == 1200
    failed = rws.read_server_event(dumps(response_terminal("r", "gpt-5", RESPONSE_USAGE, status="failed")))
    assert isinstance(failed, rws.Ended) and failed.metered.error == "server_error: it broke"
    bare = rws.read_server_event(dumps(response_terminal("r", "gpt-5", None)))
    assert isinstance(bare, rws.Ended)
    assert (bare.metered.usage, bare.metered.error) == (None, "no usage in response.completed")


def test_request_errors_and_stream_errors() -> None:
    rejected = rws.read_server_event(dumps(request_error("The model bad-1 does not exist.", "b", 404)))
    assert rejected == rws.Rejected("b", "model_not_found: The model bad-1 does not exist.", 404)
    mid_stream = dumps({"type": "error", "sequence_number": 4, "code": "x", "message": "y"})
    assert rws.read_server_event(mid_stream) is None
    assert rws.read_server_event(dumps({"type": "error", "error": "oops", "status": "x"})) == rws.Rejected(
        None, "oops", None
    )
    for other in (b"", b"\xff", b"null", dumps({"type": "response.in_progress", "response": {"id": "r"}})):
        assert rws.read_server_event(other) is None
