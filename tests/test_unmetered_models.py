"""unmetered_models: the model a request the proxy does not meter names, and which run none."""

from __future__ import annotations

import json

import pytest

from addon.unmetered_models import (
    NamedModel,
    body_model,
    default_model,
    form_model,
    path_model,
    resource_model,
    runs_no_model,
)


@pytest.mark.parametrize(
    ("provider", "path", "free"),
    [
        ("anthropic", "/v1/messages/count_tokens", True),
        ("openai", "/v1/responses/input_tokens?x=1", True),
        ("google", "/v1beta/models/gemini-2.5-pro:countTokens", True),
        ("vertex", "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:computeTokens", True),
        ("vertex", "/v1/projects/p/locations/l/publishers/anthropic/models/count-tokens:rawPredict", True),
        ("aws", "/model/anthropic.claude-3-haiku/count-tokens", True),
        ("openai", "/v1/moderations", True),
        ("mistral", "/v1/moderations", False),  # billed there
        ("google", "/upload/v1beta/files?upload_id=x", True),  # a JSON file's bytes name no call's model
        ("openai", "/v1/uploads/upload_1/parts", True),
        ("openai", "/v1/files", True),
        ("vertex", "/v1/projects/p/locations/l/publishers/google/models/veo-3.0:fetchPredictOperation", True),
        ("openai", "/v1/videos", False),
        ("google", "/v1beta/models/gemini-2.5-pro:batchGenerateContent", False),
    ],
)
def test_what_runs_no_billed_model(provider: str, path: str, free: bool) -> None:
    assert runs_no_model(provider, path) is free


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (json.dumps({"model": "sora-2-pro", "prompt": "x"}).encode(), NamedModel("sora-2-pro")),
        (b'  \n{"\\u006dodel": "sora-2"}', NamedModel("sora-2")),  # an escaped key is still "model"
        (json.dumps({"modelId": "amazon.nova-reel-v1:1"}).encode(), NamedModel("amazon.nova-reel-v1:1")),
        (
            json.dumps({"model": "publishers/google/models/gemini-2.5-pro"}).encode(),
            NamedModel("gemini-2.5-pro"),
        ),
        (json.dumps({"model": None, "name": "x"}).encode(), NamedModel()),
        (json.dumps({"name": "docs"}).encode(), NamedModel()),
        (json.dumps([{"model": "x"}]).encode(), NamedModel()),  # no object: names none
        (b'{"model": "x"', NamedModel()),  # not JSON: the provider cannot read it either
        (b'\x89PNG"model"', NamedModel()),  # a file's bytes are never decoded
        (b"", NamedModel()),
        (json.dumps({"model": 4}).encode(), NamedModel()),  # no string: names no model
        (json.dumps({"baseModel": "models/gemini-2.5-pro"}).encode(), NamedModel("gemini-2.5-pro")),
        (json.dumps({"base_model": "gpt-4.1"}).encode(), NamedModel("gpt-4.1")),
        (b'\xef\xbb\xbf{"model": "sora-2-pro"}', NamedModel("sora-2-pro")),  # a UTF-8 byte order mark
        ('{"model": "sora-2-pro"}'.encode("utf-16"), NamedModel("sora-2-pro")),
        ('{"model": "sora-2-pro"}'.encode("utf-32-le"), NamedModel("sora-2-pro")),
        (b"\x00\x00\x00\x10binary-event-stream", NamedModel()),
        (json.dumps({"data_source": {"type": "responses", "model": "o3"}}).encode(), NamedModel("o3")),
        (json.dumps({"model": "gpt-4.1", "data_source": {"model": "o3"}}).encode(), NamedModel("gpt-4.1")),
        (json.dumps({"data_source": {"type": "jsonl"}}).encode(), NamedModel()),
        (json.dumps({"model": {"displayName": "churn"}}).encode(), NamedModel()),  # Vertex models:upload
        (json.dumps({"model": "projects/p/locations/l/models/1234567890"}).encode(), NamedModel()),
        (json.dumps({"model": "  "}).encode(), NamedModel(problem="its model is not a model's name")),
        (json.dumps({"model": "m" * 201}).encode(), NamedModel(problem="its model is not a model's name")),
    ],
)
def test_the_model_a_body_names(content: bytes, named: NamedModel) -> None:
    assert body_model(content) == named


def test_a_resource_name_is_read_as_its_model() -> None:
    assert resource_model("models/gemini-2.5-flash") == "gemini-2.5-flash"
    assert resource_model("projects/p/locations/l/publishers/google/models/x-1") == "x-1"
    assert resource_model("openai/gpt-4o-mini") == "openai/gpt-4o-mini"
    assert resource_model("projects/p/locations/l/models/1234567890") is None  # Model Registry: no LLM


FORM = "multipart/form-data; boundary=b"


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n--b--\r\n',
         NamedModel("sora-2-pro")),
        (b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na model ship\r\n--b--\r\n',
         NamedModel()),
        (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2\r\n'
         b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n--b--\r\n',
         NamedModel(problem="2 different model fields in the form: its model cannot be read")),
    ],
    ids=["model", "none", "two"],
)  # fmt: skip
def test_the_model_a_form_names(content: bytes, named: NamedModel) -> None:
    assert form_model(content, FORM) == named


def test_a_path_running_a_default_model() -> None:
    assert default_model("openai", "/v1/videos?x=1") == "sora-2"
    assert default_model("openai", "/v1/videos/video_1/remix") is None
    assert default_model("mistral", "/v1/videos") is None


def test_a_model_named_in_a_path_no_metered_operation_reads() -> None:
    path = "/model/amazon.nova-sonic-v1%3A0/invoke-with-bidirectional-stream"
    assert path_model("aws", path) == "amazon.nova-sonic-v1:0"
    assert path_model("aws", "/model/amazon.nova-sonic-v1:0/invoke") is None  # read by request_model
    assert path_model("openai", path) is None
