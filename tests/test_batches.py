"""Batch jobs: the pure readers of addon.providers.batches (OpenAI's Batch API).

Input files are read for their models without keeping their content; Batch objects for their
usage, which is billed once the batch has ended.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon import pricing
from addon.policies import PriceOverride
from addon.pricing import Pricer, price
from addon.providers import batches
from addon.providers.batches import BatchInput, parse_batch, read_upload, scan_input, uploaded_file_id
from addon.usage import Usage

BOUNDARY = "----tokometerBoundary42"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


def line(
    model: str | None = "gpt-4o-mini", *, max_tokens: int | None = 100, text: str = "hello", **more: object
) -> bytes:
    """One request of an input file (a chat completion)."""
    body: dict[str, object] = {"messages": [{"role": "user", "content": text}]}
    if model is not None:
        body = {"model": model, **body}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(more)
    request = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(request).encode()


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart body of (name, content, filename) parts, as the openai SDK sends one."""
    out = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


# ---------------------------------------------------------------- input files


def test_the_models_lines_size_and_output_caps_of_an_input_file() -> None:
    data = b"\n".join(
        [
            line("gpt-4o-mini", max_tokens=100),
            line("gpt-4o-mini", max_tokens=None),
            line("gpt-4o-mini", max_tokens=None, max_completion_tokens=250),
            b"",  # blank lines are not requests
            line("gpt-4o", max_tokens=7),
        ]
    )
    found = scan_input(data + b"\n")
    models = ("gpt-4o", "gpt-4o-mini")
    assert found == BatchInput(
        models,
        lines=4,
        size=len(data) + 1,
        output_caps=357,
        uncapped=1,
        unreadable=0,
        uncapped_by_model=(("gpt-4o-mini", 1),),
        by_model=found.by_model,
    )
    # Each model's requests: their bytes (the lines), caps and uncapped lines.
    assert [(m, caps, uncapped) for m, _, caps, uncapped in found.by_model] == [
        ("gpt-4o", 7, 0),
        ("gpt-4o-mini", 350, 1),
    ]
    assert sum(size for _, size, _, _ in found.by_model) == len(data) - 4  # the lines, less newlines
    assert found.output_tokens(1000) == 1357
    assert found.error is None


def test_a_line_without_a_cap_reserves_what_its_model_writes() -> None:
    """Each uncapped line reserves what an uncapped call to its model reserves (the p90 of its
    recent outputs here), never under the fallback; a line whose model cannot be read, the most
    any of the batch's models reserves."""
    data = b"\n".join(
        [
            line("o3", max_tokens=None),
            line("o3", max_tokens=None),
            line("o3", max_tokens=500),
            line("gpt-4o-mini", max_tokens=None),
            line(None, max_tokens=None),
        ]
    )
    found = scan_input(data)
    assert (found.uncapped, found.uncapped_by_model) == (4, (("gpt-4o-mini", 1), ("o3", 2)))
    p90 = {"o3": 5300, "gpt-4o-mini": 400}
    assert found.output_tokens(1000, p90.__getitem__) == 500 + 2 * 5300 + 1000 + 5300
    assert found.output_tokens(1000) == 500 + 4 * 1000  # no history given: the fallback a line
    # remembered before the models' lines were kept: every uncapped line, the most reserved
    old = BatchInput.from_entry({k: v for k, v in found.to_entry().items() if k != "uncapped_by_model"})
    assert old is not None and old.uncapped_by_model == ()
    assert old.output_tokens(1000, p90.__getitem__) == 500 + 4 * 5300


def test_a_model_named_inside_a_prompt_or_a_nested_object_is_not_the_requests_model() -> None:
    prompt = 'Reply as JSON: {"model": "gpt-5-pro"}'  # a string: its quotes are escaped in the line
    tool = {"type": "image_generation", "model": "gpt-image-1"}  # nested: the body's own model wins
    data = line("gpt-4o-mini", text=prompt) + b"\n" + line("gpt-4o-mini", tools=[tool])
    assert scan_input(data).models == ("gpt-4o-mini",)


def test_an_escaped_model_key_or_value_is_still_read() -> None:
    """JSON may spell a key or value with \\u escapes: the model is the one OpenAI decodes."""
    escaped_key = b'{"custom_id":"a","body":{"\\u006dodel":"gpt-5-pro","messages":[]}}'
    escaped_value = b'{"custom_id":"b","body":{"model":"gpt\\u002d5-pro","messages":[]}}'
    both = b'{"custom_id":"c","body":{"mod\\u0065l":"o3","tools":[{"type":"x","model":"gpt-4o-mini"}]}}'
    assert scan_input(escaped_key).models == ("gpt-5-pro",)
    assert scan_input(escaped_value).models == ("gpt-5-pro",)
    assert scan_input(both).models == ("o3",)


def test_lines_without_a_readable_model_are_counted() -> None:
    data = b"\n".join([line("gpt-4o-mini"), line(None), b"{not json", b'{"body": {"model": 42}}'])
    found = scan_input(data)
    assert (found.models, found.lines, found.unreadable) == (("gpt-4o-mini",), 4, 3)


def test_a_file_of_many_models_is_cut_short() -> None:
    data = b"\n".join(line(f"model-{i}") for i in range(batches.MAX_MODELS + 5))
    found = scan_input(data)
    assert len(found.models) == batches.MAX_MODELS and found.unreadable == 5
    assert found.error is not None and "models" in found.error


def test_crlf_lines_and_a_last_line_without_newline() -> None:
    data = line("gpt-4o-mini") + b"\r\n" + line("gpt-4o-mini", max_tokens=5)
    found = scan_input(data)
    assert (found.lines, found.output_caps, found.models) == (2, 105, ("gpt-4o-mini",))


def test_an_entry_round_trips_and_a_bad_one_is_refused() -> None:
    found = scan_input(line("gpt-4o-mini") + b"\n" + line(None))
    assert BatchInput.from_entry(json.loads(json.dumps(found.to_entry()))) == found
    uncapped = scan_input(line("gpt-4o-mini", max_tokens=None) + b"\n" + line("o3", max_tokens=None))
    assert BatchInput.from_entry(json.loads(json.dumps(uncapped.to_entry()))) == uncapped
    odd = {**uncapped.to_entry(), "uncapped_by_model": {"o3": -1, "gpt-4o-mini": True, "o1": 3}}
    assert BatchInput.from_entry(odd).uncapped_by_model == ()  # type: ignore[union-attr]
    for bad in ({}, {"models": "gpt-4o"}, {"models": [1], "lines": 1}, [], None, {"models": [], "lines": -1}):
        assert BatchInput.from_entry(bad) is None


# ---------------------------------------------------------------- uploads


def test_a_batch_upload_is_read_and_other_purposes_are_not() -> None:
    jsonl = line("gpt-4o-mini") + b"\n" + line("gpt-4o-mini") + b"\n"
    body = form(("purpose", b"batch", None), ("file", jsonl, "requests.jsonl"))
    found = read_upload(body, CTYPE)
    assert found is not None and (found.models, found.lines, found.size) == (("gpt-4o-mini",), 2, len(jsonl))
    # the purpose may come after the file
    assert read_upload(form(("file", jsonl, "r.jsonl"), ("purpose", b"batch", None)), CTYPE) == found
    assert read_upload(form(("purpose", b"fine-tune", None), ("file", jsonl, "r.jsonl")), CTYPE) is None
    assert read_upload(form(("file", jsonl, "r.jsonl")), CTYPE) is None  # no purpose: not a batch's
    assert read_upload(jsonl, "application/jsonl") is None  # not a form


def test_a_batch_upload_without_its_file_says_so() -> None:
    found = read_upload(form(("purpose", b"batch", None)), CTYPE)
    assert found is not None and found.models == () and found.error is not None
    cut = form(("purpose", b"batch", None), ("file", line(), "r.jsonl"))[:-60]
    found = read_upload(cut, CTYPE)
    assert found is not None and found.error is not None


def test_the_file_id_of_an_upload_answer() -> None:
    answer = {"id": "file-abc123", "object": "file", "bytes": 120, "purpose": "batch", "filename": "r.jsonl"}
    assert uploaded_file_id(json.dumps(answer).encode()) == "file-abc123"
    too_long = json.dumps({"id": "x" * 500}).encode()
    for bad in (b"", b"{", b"[]", b'{"object": "file"}', b'{"id": 5}', too_long):
        assert uploaded_file_id(bad) is None


def test_the_input_file_of_a_creation() -> None:
    assert batches.input_file_id({"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}) == "file-1"
    for bad in (None, {}, {"input_file_id": 3}, {"input_file_id": ""}):
        assert batches.input_file_id(bad) is None


# ---------------------------------------------------------------- Batch objects

BATCH = {
    "id": "batch_abc",
    "object": "batch",
    "endpoint": "/v1/chat/completions",
    "input_file_id": "file-abc",
    "completion_window": "24h",
    "status": "validating",
    "model": None,
    "usage": None,
}
USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 200},
    "output_tokens": 900,
    "output_tokens_details": {"reasoning_tokens": 300},
    "total_tokens": 2100,
}


def test_a_batch_being_validated_has_no_usage_yet() -> None:
    metered = parse_batch(json.dumps(BATCH).encode())
    assert (metered.response_id, metered.response_status, metered.usage, metered.error) == (
        "batch_abc",
        "validating",
        None,
        None,
    )
    assert metered.service_tier == "batch"
    assert batches.outcome(metered) == "wait"


def test_a_completed_batch_carries_its_usage_and_model() -> None:
    done = BATCH | {"status": "completed", "model": "gpt-4o-mini-2024-07-18", "usage": USAGE}
    metered = parse_batch(json.dumps(done).encode())
    assert metered.usage == Usage(
        input_tokens=1200, cache_read_tokens=200, output_tokens=900, reasoning_tokens=300
    )
    assert (metered.model, metered.service_tier, metered.error) == ("gpt-4o-mini-2024-07-18", "batch", None)
    assert batches.outcome(metered) == "bill"


@pytest.mark.parametrize(
    ("status", "usage", "outcome"),
    [
        ("in_progress", USAGE, "wait"),  # a running total: billed once the batch has ended
        ("finalizing", USAGE, "wait"),
        ("cancelling", None, "wait"),
        ("cancelled", USAGE, "bill"),  # the work done before the cancel is billed
        ("expired", USAGE, "bill"),  # likewise the work done within the window
        ("completed", None, "bill"),  # ended, no usage reported: a row without usage says so
        ("expired", None, "bill"),
        ("failed", None, "drop"),  # validation failed: nothing ran
        ("cancelled", {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}, "drop"),  # nothing ran
    ],
)
def test_what_a_batch_status_means_for_its_bill(status: str, usage: dict | None, outcome: str) -> None:
    metered = parse_batch(json.dumps(BATCH | {"status": status, "usage": usage}).encode())
    assert batches.outcome(metered) == outcome
    if outcome == "bill" and usage is None:
        assert metered.error is not None and "no usage" in metered.error


def test_a_failed_batch_says_why() -> None:
    failed = BATCH | {
        "status": "failed",
        "errors": {"data": [{"code": "invalid_model", "message": "Model not found", "line": 1}]},
    }
    metered = parse_batch(json.dumps(failed).encode())
    assert metered.error == "batch failed: invalid_model: Model not found"


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"object": "list", "data": []}', b'{"error": {"message": "No such batch"}}'],
)
def test_anything_else_is_no_batch(body: bytes) -> None:
    metered = parse_batch(body)
    assert metered.response_id is None and metered.usage is None and metered.error
    assert batches.outcome(metered) == "wait"  # nothing to go by: the entry stays


def test_the_paths() -> None:
    assert batches.flavor_for_path("/v1/batches") == "batch"
    assert batches.flavor_for_path("/v1/batches?x=1") == "batch"
    for other in ("/v1/batches/batch_1", "/v1/batches/batch_1/cancel", "/v1/messages/batches", "/v1/files"):
        assert batches.flavor_for_path(other) is None
    assert batches.is_upload_path("/v1/files") and not batches.is_upload_path("/v1/files/file-1/content")


# ---------------------------------------------------------------- prices

BEFORE_BATCH_PRICES = datetime(2026, 10, 1, 12, tzinfo=UTC)  # genai-prices' batch prices start 2026-10-14
WITH_BATCH_PRICES = datetime(2026, 11, 20, 12, tzinfo=UTC)


def standard(model: str, when: datetime, provider: str = "openai", **counts: int) -> Decimal:
    usage = GPUsage(**counts)
    return calc_price(usage, model, provider_id=provider, genai_request_timestamp=when).total_price


def batch_price(model: str, when: datetime, provider: str = "openai", **counts: int) -> Decimal:
    context = {"processing": "batch"}
    return calc_price(
        GPUsage(**counts), model, provider_id=provider, genai_request_timestamp=when, price_context=context
    ).total_price  # type: ignore[arg-type]


def test_without_a_batch_price_in_genai_prices_a_batch_costs_exactly_half() -> None:
    """OpenAI: "a 50% cost discount vs. the synchronous APIs" (its Batch API FAQ)."""
    counts = {"input_tokens": 10_000, "cache_read_tokens": 2_000, "output_tokens": 3_000}
    got = price("openai", "gpt-4o-mini", Usage(**counts), BEFORE_BATCH_PRICES, service_tier="batch")
    assert got.cost_usd == standard("gpt-4o-mini", BEFORE_BATCH_PRICES, **counts) * Decimal("0.5")
    assert (got.status, got.source) == ("priced", f"{pricing.SOURCE} x0.5 (batch)")
    assert batch_price("gpt-4o-mini", BEFORE_BATCH_PRICES, **counts) == standard(
        "gpt-4o-mini", BEFORE_BATCH_PRICES, **counts
    )  # genai-prices has none then: its standard price


def test_genai_prices_own_batch_price_wins_where_it_has_one() -> None:
    """From 2026-10-14 genai-prices 0.2.3 prices batches itself (price_context processing=batch):
    half of input and output; for gpt-4o-mini no batch rate for cached input, so cached tokens
    cost the batch input rate, which the flat half would not say."""
    counts = {"input_tokens": 10_000, "cache_read_tokens": 2_000, "output_tokens": 3_000}
    got = price("openai", "gpt-4o-mini", Usage(**counts), WITH_BATCH_PRICES, service_tier="batch")
    assert got.cost_usd == batch_price("gpt-4o-mini", WITH_BATCH_PRICES, **counts) == Decimal("0.00165")
    assert got.source == pricing.SOURCE
    plain = {"input_tokens": 10_000, "output_tokens": 3_000}  # without cache reads: exactly half
    got = price("openai", "gpt-4o-mini", Usage(**plain), WITH_BATCH_PRICES, service_tier="batch")
    assert got.cost_usd == standard("gpt-4o-mini", WITH_BATCH_PRICES, **plain) * Decimal("0.5")


def test_whether_genai_prices_prices_a_batch_is_asked_per_day() -> None:
    """The same model before and after genai-prices' batch prices start: each day asks again."""
    pricing._tier_prices.clear()
    counts = {"input_tokens": 10_000, "cache_read_tokens": 2_000, "output_tokens": 3_000}
    before = price("openai", "gpt-4o-mini", Usage(**counts), BEFORE_BATCH_PRICES, service_tier="batch")
    after = price("openai", "gpt-4o-mini", Usage(**counts), WITH_BATCH_PRICES, service_tier="batch")
    assert before.source.endswith("x0.5 (batch)") and after.source == pricing.SOURCE  # type: ignore[union-attr]


def test_an_anthropic_batch_is_priced_as_one_too() -> None:
    counts = {"input_tokens": 10_000, "cache_read_tokens": 2_000, "cache_write_tokens": 1_000}
    counts["output_tokens"] = 3_000
    usage = Usage(**counts)
    old = price("anthropic", "claude-3-5-haiku", usage, WITH_BATCH_PRICES, service_tier="batch")
    half = standard("claude-3-5-haiku", WITH_BATCH_PRICES, "anthropic", **counts) * Decimal("0.5")
    assert old.cost_usd == half and old.source == f"{pricing.SOURCE} x0.5 (batch)"
    new = price("anthropic", "claude-haiku-4-5", usage, WITH_BATCH_PRICES, service_tier="batch")
    assert new.cost_usd == batch_price("claude-haiku-4-5", WITH_BATCH_PRICES, "anthropic", **counts)


@pytest.mark.parametrize(
    ("provider", "model", "when"),
    [
        ("anthropic", "claude-sonnet-4-5", WITH_BATCH_PRICES),
        ("anthropic", "claude-sonnet-4-5", BEFORE_BATCH_PRICES),
        ("openai", "gpt-5.4", WITH_BATCH_PRICES),
    ],
)
def test_a_batch_s_summed_usage_is_not_priced_at_a_long_context_tier(
    provider: str, model: str, when: datetime
) -> None:
    """A batch's usage is the sum of its requests (OpenAI's Batch object; Anthropic's results,
    summed per model): a long-context tier (over 200k input tokens a request, Sonnet 4.5 twice
    the input rate) is a request's, so 100 requests of 50k tokens cost 100 times one of them."""
    one = {"input_tokens": 50_000, "cache_read_tokens": 10_000, "cache_write_tokens": 5_000}
    one["output_tokens"] = 2_000
    if provider == "openai":
        del one["cache_write_tokens"]
    hundred = {name: 100 * n for name, n in one.items()}
    single = price(provider, model, Usage(**one), when, service_tier="batch")
    summed = price(provider, model, Usage(**hundred), when, service_tier="batch")
    assert single.cost_usd is not None and summed.cost_usd == 100 * single.cost_usd
    per_request = batch_price(model, WITH_BATCH_PRICES, provider, **one)
    if when == WITH_BATCH_PRICES:
        assert single.cost_usd == per_request  # genai-prices' own batch price, below its tier
    assert Pricer().estimate(
        provider, model, 5_000_000, 200_000, service_tier="batch"
    ) == 100 * Pricer().estimate(provider, model, 50_000, 2_000, service_tier="batch")


def test_a_prices_entry_costs_half_in_a_batch_and_so_does_a_reservation() -> None:
    pricer = Pricer([("gpt-4o-mini", PriceOverride(input=Decimal(1), output=Decimal(4)))])
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    got = pricer.price_usage("openai", ("gpt-4o-mini",), usage, WITH_BATCH_PRICES, service_tier="batch")
    assert (got.cost_usd, got.source) == (Decimal("2.5"), "policies.yaml prices x0.5 (batch)")
    million = 1_000_000
    assert pricer.estimate("openai", "gpt-4o-mini", million, million, service_tier="batch") == Decimal("2.5")
    assert Pricer().estimate("openai", "gpt-4o", million, million, service_tier="batch") == Decimal("6.25")


def test_a_list_of_batches_is_read_batch_by_batch() -> None:
    page = {
        "object": "list",
        "data": [
            BATCH | {"id": "batch_1", "status": "completed", "usage": USAGE},
            BATCH | {"id": "batch_2", "status": "in_progress"},
            {"id": "x", "object": "file"},
            "junk",
        ],
        "first_id": "batch_1",
        "has_more": False,
    }
    done, running = batches.parse_list(json.dumps(page).encode())
    assert (done.response_id, batches.outcome(done), done.usage.output_tokens) == ("batch_1", "bill", 900)  # type: ignore[union-attr]
    assert (running.response_id, batches.outcome(running)) == ("batch_2", "wait")
    for bad in (
        b"",
        b"[]",
        b'{"object": "list"}',
        b'{"object": "list", "data": {}}',
        json.dumps(BATCH).encode(),
    ):
        assert batches.parse_list(bad) == []


# ---------------------------------------------------------------- Anthropic Message Batches

ANTHROPIC_USAGE = {
    "input_tokens": 1000,
    "cache_creation_input_tokens": 200,
    "cache_read_input_tokens": 300,
    "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 400,
    "service_tier": "batch",
}


def anthropic_request(
    model: object = "claude-haiku-4-5", max_tokens: object = 1024, **params: object
) -> dict:
    return {
        "custom_id": "q1",
        "params": {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi"}]}
        | params,
    }


def result_line(kind: str = "succeeded", model: str = "claude-haiku-4-5-20251001", **usage: object) -> bytes:
    if kind != "succeeded":
        result: dict[str, object] = {"type": kind}
        if kind == "errored":
            result["error"] = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
        return json.dumps({"custom_id": "q", "result": result}).encode()
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": 'He said "usage": {"input_tokens": 9}'}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": ANTHROPIC_USAGE | usage,
    }
    return json.dumps({"custom_id": "q", "result": {"type": "succeeded", "message": message}}).encode()


def test_the_requests_of_a_message_batch_are_read_one_by_one() -> None:
    body = {
        "requests": [
            anthropic_request(),
            anthropic_request("claude-sonnet-4-5", 500),
            anthropic_request("claude-haiku-4-5", None),
            anthropic_request(None),
            {"custom_id": "x"},
        ],
        "other": {"requests": [anthropic_request("claude-opus-4-1")]},  # not the batch's
    }
    data = json.dumps(body).encode()
    found = batches.read_inline(data)
    assert found == BatchInput(
        ("claude-haiku-4-5", "claude-sonnet-4-5"),
        lines=5,
        size=len(data),
        output_caps=2048 + 500,
        uncapped=2,
        unreadable=2,
        uncapped_by_model=(("claude-haiku-4-5", 1),),
        by_model=found.by_model,
    )
    assert [(m, caps, uncapped) for m, _, caps, uncapped in found.by_model] == [
        ("claude-haiku-4-5", 1024, 1),
        ("claude-sonnet-4-5", 500, 0),
    ]
    assert BatchInput.from_entry(found.to_entry()).by_model == found.by_model  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{",
        b'{"requests": {}}',
        b'{"requests": [1, 2',
        "\ufeff{}".encode(),
        b"\xff\xfe",
        b'{"a" 1}',
    ],
)
def test_a_message_batch_that_is_not_json_says_so(body: bytes) -> None:
    found = batches.read_inline(body)
    assert found.models == () and (found.error is not None or found.lines == 0)


def test_a_message_batch_object() -> None:
    obj = {
        "id": "msgbatch_01",
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
        "results_url": None,
    }
    metered = batches.parse_message_batch(json.dumps(obj).encode())
    assert (metered.response_id, metered.response_status, metered.service_tier) == (
        "msgbatch_01",
        "in_progress",
        "batch",
    )
    assert batches.outcome(metered) == "wait"
    ended = batches.parse_message_batch(json.dumps(obj | {"processing_status": "ended"}).encode())
    assert batches.outcome(ended) == "wait"  # no usage in it: its results download bills it
    assert batches.parse_message_batch(b'{"type": "error"}').response_id is None
    assert batches.anthropic_flavor_for_path("/v1/messages/batches") == "batch"
    assert batches.anthropic_flavor_for_path("/v1/messages/batches/msgbatch_01") is None


def test_results_are_summed_per_model_and_only_succeeded_lines_count() -> None:
    lines = [
        result_line(),
        result_line("errored"),
        result_line(output_tokens=100),
        result_line("canceled"),
        result_line("expired"),
        result_line(model="claude-sonnet-4-5-20250929", inference_geo="us"),
    ]
    reader = batches.ResultsReader()
    data = b"\n".join(lines) + b"\n"
    for i in range(0, len(data), 7):
        reader.feed(data[i : i + 7])
    reader.close()
    usage = {(m, g): u for (m, g), u in reader.usage_by_model().items()}
    haiku = usage[("claude-haiku-4-5-20251001", None)]
    assert (haiku.input_tokens, haiku.cache_read_tokens, haiku.cache_write_tokens, haiku.output_tokens) == (
        3000,
        600,
        400,
        500,
    )
    sonnet = usage[("claude-sonnet-4-5-20250929", "us")]
    assert (sonnet.input_tokens, sonnet.output_tokens) == (1500, 400)
    assert (reader.lines, reader.succeeded, reader.unreadable) == (6, 3, 0)


def test_a_results_line_the_quick_path_cannot_read_is_decoded() -> None:
    """The model spelled with an escape, the usage nested deeper than usual: decoded whole."""
    odd = result_line().replace(b'"model": "claude-haiku', b'"model": "claude\\u002dhaiku')
    deep = json.loads(result_line())
    deep["result"]["message"]["usage"]["extra"] = {"a": {"b": {"c": 1}}}
    reader = batches.ResultsReader()
    reader.feed(odd + b"\n" + json.dumps(deep).encode() + b"\n{broken\n")
    reader.close()
    [(key, usage)] = reader.usage_by_model().items()
    assert key == ("claude-haiku-4-5-20251001", None) and usage.output_tokens == 800
    assert (reader.lines, reader.succeeded, reader.unreadable) == (3, 2, 1)


def test_an_upload_parsers_could_read_differently_counts_as_unreadable() -> None:
    """Two files, two purposes, a false delimiter, two Content-Disposition headers: OpenAI might
    read another file than the proxy did, so the file's models count as unknown."""
    good, bad = line("gpt-4o-mini") + b"\n", line("gpt-5-pro") + b"\n"
    two_files = form(("purpose", b"batch", None), ("file", good, "a.jsonl"), ("file", bad, "b.jsonl"))
    two_purposes = form(("purpose", b"batch", None), ("purpose", b"batch", None), ("file", good, "a.jsonl"))
    fake_delimiter = form(("purpose", b"batch", None), ("file", good, "a.jsonl")).replace(
        f"--{BOUNDARY}--".encode(), f"--{BOUNDARY}x\r\n\r\n{bad.decode()}\r\n--{BOUNDARY}--".encode()
    )
    two_dispositions = form(("purpose", b"batch", None), ("file", good, "a.jsonl")).replace(
        b'name="file"; filename="a.jsonl"\r\n',
        b'name="file"; filename="a.jsonl"\r\nContent-Disposition: form-data; name="x"\r\n',
    )
    for body in (two_files, two_purposes, fake_delimiter, two_dispositions):
        found = read_upload(body, CTYPE)
        assert found is not None and found.models == () and found.error is not None, body[:300]
