"""Bad input, fuzzed (hypothesis): the batch readers the addon runs on bytes from the network.

Properties: nothing raises (random bytes, truncated and cut JSONL, random forms and Batch
objects); an input file's models are the requests' own ``body.model`` whatever the prompts,
nested objects and JSON escapes hold; a file read between any two offsets reads as that slice.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_batches import BOUNDARY, CTYPE, form

from addon.providers import batches
from addon.providers.batches import parse_batch, read_upload, scan_input, uploaded_file_id

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
MODELS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda m: "\ufffd" not in m
)
# keys of nested objects: "model" among them (a tool's own), never a max-tokens setting
KEYS = st.sampled_from(["model", "x", "body"]) | TEXT.filter(lambda k: "max_" not in k)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, set[str], int]:
    """A JSONL input file of 1-8 requests: (bytes, their models, their output caps)."""
    lines, models, caps = [], set(), 0
    for i in range(draw(st.integers(1, 8))):
        model = draw(MODELS)
        body: dict[str, Any] = {"messages": [{"role": "user", "content": draw(TEXT)}]}
        if draw(st.booleans()):  # a tool with a model of its own, before or after the body's
            body["tools"] = [{"type": "image_generation", "model": draw(MODELS), "extra": draw(JSON_VALUES)}]
        cap = draw(st.none() | st.integers(1, 100_000))
        if cap is not None:
            body["max_tokens"] = cap
            caps += cap
        body = {"model": model, **body} if draw(st.booleans()) else {**body, "model": model}
        request = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        text = json.dumps(request, ensure_ascii=draw(st.booleans()))
        if draw(st.booleans()):  # a writer that escapes the key's letters
            text = text.replace('"model": ', '"\\u006dodel": ', 1)
        lines.append(text.encode())
        models.add(model)
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"])), models, caps


@FUZZ
@given(case=requests())
def test_a_files_models_are_its_requests_own(case: tuple[bytes, set[str], int]) -> None:
    data, models, caps = case
    found = scan_input(data)
    assert set(found.models) == models and found.unreadable == 0
    assert found.lines == data.strip().count(b"\n") + 1
    # a cap read from a line's text is the body's (a tool's own is never a max-tokens key)
    assert found.output_caps == caps


@FUZZ
@given(case=requests(), data=st.data())
def test_a_cut_file_never_raises_and_reads_as_its_slice(
    case: tuple[bytes, set[str], int], data: st.DataObject
) -> None:
    body = case[0]
    start = data.draw(st.integers(0, len(body)))
    end = data.draw(st.integers(start, len(body)))
    found = scan_input(body, start, end)
    assert found == scan_input(body[start:end])
    assert set(found.models) <= case[1] | {m for line in body.splitlines() for m in _any_models(line)}
    assert found.lines >= found.unreadable >= 0


def _any_models(line: bytes) -> set[str]:
    """Every string value of a ``model`` key anywhere in a line (what a cut line may expose)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key == "model" and isinstance(inner, str):
                    found.add(inner)
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    with contextlib.suppress(ValueError):
        walk(json.loads(line))
    return found


@FUZZ
@given(body=st.binary(max_size=3000), start=st.integers(-5, 3000), end=st.none() | st.integers(-5, 3000))
def test_random_bytes_never_raise(body: bytes, start: int, end: int | None) -> None:
    found = scan_input(body, start, end)
    assert found.lines >= 0 and found.size >= 0
    parse_batch(body)
    uploaded_file_id(body)
    batches.outcome(parse_batch(body))


@FUZZ
@given(body=st.binary(max_size=2000), content_type=st.text(max_size=80))
def test_any_upload_never_raises(body: bytes, content_type: str) -> None:
    read_upload(body, content_type)
    read_upload(body, CTYPE)
    read_upload(b"--" + BOUNDARY.encode() + b"\r\n" + body, CTYPE)


@FUZZ
@given(case=requests(), purpose_first=st.booleans(), cut=st.integers(0, 400))
def test_an_upload_is_read_wherever_its_purpose_is_and_never_raises_cut(
    case: tuple[bytes, set[str], int], purpose_first: bool, cut: int
) -> None:
    purpose = ("purpose", b"batch", None)
    upload = ("file", case[0], "requests.jsonl")
    body = form(purpose, upload) if purpose_first else form(upload, purpose)
    found = read_upload(body, CTYPE)
    assert found is not None and set(found.models) == case[1]
    read_upload(body[: max(0, len(body) - cut)], CTYPE)


BATCH_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.none() | TEXT | st.integers(),
        "object": st.sampled_from(["batch", "list", None, 3]),
        "status": st.sampled_from([*batches.RUNNING, *batches.ENDED, "paused", None, 7]),
        "model": st.none() | TEXT,
        "usage": JSON_VALUES
        | st.fixed_dictionaries(
            {},
            optional={
                "input_tokens": st.integers() | st.floats() | st.none() | TEXT,
                "output_tokens": st.integers() | st.floats() | st.none(),
                "input_tokens_details": JSON_VALUES,
                "output_tokens_details": JSON_VALUES,
            },
        ),
        "errors": JSON_VALUES,
    },
)


@FUZZ
@given(obj=BATCH_FIELDS, data=st.data())
def test_any_batch_object_never_raises_and_cut_too(obj: dict[str, Any], data: st.DataObject) -> None:
    body = json.dumps(obj).encode()
    metered = parse_batch(body)
    assert batches.outcome(metered) in ("wait", "bill", "drop")
    if metered.response_status in batches.RUNNING:
        assert batches.outcome(metered) == "wait"
    cut = data.draw(st.integers(0, len(body)))
    batches.outcome(parse_batch(body[:cut]))


# ---------------------------------------------------------------- Anthropic Message Batches


@st.composite
def message_batches(draw: st.DrawFn) -> tuple[bytes, set[str], int]:
    """A Message Batch creation's body: (bytes, its requests' models, their max_tokens)."""
    requests, models, caps = [], set(), 0
    for i in range(draw(st.integers(0, 6))):
        model = draw(MODELS)
        cap = draw(st.integers(1, 64_000))
        params = {"model": model, "max_tokens": cap, "messages": [{"role": "user", "content": draw(TEXT)}]}
        if draw(st.booleans()):
            params["metadata"] = draw(JSON_VALUES)
        requests.append({"custom_id": f"q{i}", "params": params})
        models.add(model)
        caps += cap
    body: dict[str, Any] = {"requests": requests}
    if draw(st.booleans()):
        body = {"extra": draw(JSON_VALUES), **body}
    text = json.dumps(body, ensure_ascii=draw(st.booleans()), indent=draw(st.none() | st.integers(0, 2)))
    return text.encode(), models, caps


@FUZZ
@given(case=message_batches(), cut=st.integers(0, 200))
def test_a_message_batchs_models_are_its_requests_and_a_cut_one_says_so(
    case: tuple[bytes, set[str], int], cut: int
) -> None:
    body, models, caps = case
    found = batches.read_inline(body)
    assert (set(found.models), found.output_caps, found.unreadable, found.error) == (models, caps, 0, None)
    if 0 < cut < len(body):
        cut_short = batches.read_inline(body[:-cut])
        assert cut_short.error is not None and set(cut_short.models) <= models


@FUZZ
@given(body=st.binary(max_size=2000))
def test_any_message_batch_body_never_raises(body: bytes) -> None:
    batches.read_inline(body)
    batches.read_inline(b'{"requests": [' + body)
    batches.parse_message_batch(body)


RESULT_USAGE = st.fixed_dictionaries(
    {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)},
    optional={
        "cache_read_input_tokens": st.integers(0, 10**5),
        "cache_creation_input_tokens": st.integers(0, 10**5),
        "service_tier": st.just("batch"),
    },
)


@st.composite
def results(draw: st.DrawFn) -> bytes:
    """A Message Batch's results: succeeded lines (some with tool inputs holding "usage" and
    "model" keys), errored, canceled and expired ones, and now and then a broken one."""
    lines = []
    for i in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["succeeded", "succeeded", "errored", "canceled", "expired", "broken"]))
        if kind == "broken":
            lines.append(draw(st.binary(max_size=40)).replace(b"\n", b" "))
            continue
        result: dict[str, Any] = {"type": kind}
        if kind == "succeeded":
            content: list[Any] = [{"type": "text", "text": draw(TEXT)}]
            if draw(st.booleans()):
                content.append(
                    {"type": "tool_use", "input": {"usage": draw(JSON_VALUES), "model": draw(MODELS)}}
                )
            result["message"] = {
                "id": f"msg_{i}",
                "type": "message",
                "model": draw(st.sampled_from(["claude-haiku-4-5", "claude-sonnet-4-5"])),
                "content": content,
                "usage": draw(RESULT_USAGE),
            }
        lines.append(
            json.dumps({"custom_id": f"q{i}", "result": result}, ensure_ascii=draw(st.booleans())).encode()
        )
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"]))


def _read(data: bytes, splits: list[int]) -> batches.ResultsReader:
    reader = batches.ResultsReader()
    last = 0
    for at in sorted(splits):
        reader.feed(data[last:at])
        last = at
    reader.feed(data[last:])
    reader.close()
    return reader


@FUZZ
@given(data=results(), st_data=st.data())
def test_results_read_the_same_however_they_are_split(data: bytes, st_data: st.DataObject) -> None:
    whole = _read(data, [])
    splits = st_data.draw(st.lists(st.integers(0, len(data)), max_size=12))
    split = _read(data, splits)
    assert split.usage_by_model() == whole.usage_by_model()
    assert (split.lines, split.succeeded, split.unreadable) == (
        whole.lines,
        whole.succeeded,
        whole.unreadable,
    )
    expected: dict[str, int] = {}
    for line in data.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            obj = json.loads(line)
            if isinstance(obj, dict) and obj["result"]["type"] == "succeeded":
                message = obj["result"]["message"]
                expected[message["model"]] = (
                    expected.get(message["model"], 0) + message["usage"]["output_tokens"]
                )
    assert {model: usage.output_tokens for (model, _), usage in whole.usage_by_model().items()} == expected


@FUZZ
@given(data=st.binary(max_size=3000), st_data=st.data())
def test_random_results_never_raise(data: bytes, st_data: st.DataObject) -> None:
    _read(data, st_data.draw(st.lists(st.integers(0, len(data)), max_size=8)))
