"""Round 18 fixes beyond the reviewer's cases: the preset API's other paths are not metered, a
blank model part before @preset/ reads as the bare preset, and every cap spelling is read at the
largest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addon.meter import Meter
from addon.model_rules import preset_model
from addon.policies import parse_policies
from addon.providers import BUILTIN
from addon.reservation import max_output_tokens
from addon.unmetered_models import runs_no_model
from tests.test_meter import CollectingStore, make_flow, run_request, submitted
from tests.test_review_round18 import PRESET_SAVED

OPENROUTER = next(p for p in BUILTIN if p.name == "openrouter")


@pytest.mark.parametrize(
    ("path", "flavor"),
    [
        ("/api/v1/presets/my-preset/chat/completions", None),
        ("/api/v1/presets/my-preset/responses", None),
        ("/api/v1/presets/my-preset/messages", None),
        ("/api/v1/presets/v1/messages", None),  # ends in /v1/messages: was read as a Messages call
        ("/api/v1/presets/v1/chat/completions?x=1", None),
        ("/api/v1/chat/completions", "chat"),  # the calls themselves are still metered
        ("/api/v1/responses", "responses"),
        ("/api/v1/messages", "messages"),
    ],
)
def test_openrouter_preset_api_paths_are_not_metered(path: str, flavor: str | None) -> None:
    assert OPENROUTER.flavor_for_path(path) == flavor


async def test_saving_a_preset_on_a_restricted_environment_passes_without_a_row(tmp_path: Path) -> None:
    """An allowlist without gpt-4o: saving a preset naming it is passed through (no 403: it runs
    nothing, as token counting runs nothing, so it is not held as an unmetered call), no row."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = CollectingStore()  # type: ignore[assignment]
        addon._apply(parse_policies("environments:\n  development:\n    models: {allow: [gpt-4o-mini]}\n"))
        body: dict[str, Any] = {"model": "openai/gpt-4o", "input": "hi", "max_output_tokens": 1024}
        flow = make_flow("https://openrouter.ai/api/v1/presets/v1/responses", body)
        await run_request(addon, flow)
        assert flow.response is None  # let through, not refused
        flow.response = http.Response.make(200, json.dumps(PRESET_SAVED).encode())
        addon.responseheaders(flow)
        await addon.response(flow)
        assert await submitted(addon) == []


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (" @preset/x", ""),
        ("\t\n @preset/x", ""),
        ("models/ @preset/x", ""),
        ("openai/gpt-4o@preset/x", "openai/gpt-4o"),
        ("@preset/x", ""),
        # blank to JavaScript's trim() too: U+FEFF (ZWNBSP), alone or among other blanks
        ("\ufeff@preset/x", ""),
        ("\ufeff \ufeff\u00a0@preset/x", ""),
        # not blank: U+200B is trimmed by neither; a model beside U+FEFF is that model as written
        ("\u200b@preset/x", "\u200b"),
        ("\ufeffopenai/gpt-4o@preset/x", "\ufeffopenai/gpt-4o"),
    ],
)
def test_a_blank_model_part_before_a_preset_is_the_bare_preset(model: str, named: str) -> None:
    assert preset_model(model) == named


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"max_tokens": 1, "max_output_tokens": 16000}, 16000),
        ({"max_output_tokens": 10, "max_completion_tokens": 300, "max_tokens": 20}, 300),
        ({"max_tokens": 5, "inferenceConfig": {"maxTokens": 900}}, 900),
        ({"max_tokens": 5, "generationConfig": {"maxOutputTokens": 700}}, 700),
        ({"max_tokens": 800, "generation_config": {"max_output_tokens": 700}}, 800),
        # non-integers are not caps (as before): the whole number beside them is read
        ({"max_tokens": 1, "max_output_tokens": "16000"}, 1),
        ({"max_tokens": 1, "max_output_tokens": 16000.0}, 1),
        ({"max_tokens": 1, "max_output_tokens": True}, 1),
        ({"max_tokens": 0, "max_output_tokens": -5}, None),
        ({"inferenceConfig": "x", "max_output_tokens": 40}, 40),
        # Bedrock InvokeModel's native spellings, read beside the others at the largest
        ({"maxTokens": 1200}, 1200),  # AI21 Jurassic-2
        ({"prompt": "\n\nHuman: hi\n\nAssistant:", "max_tokens_to_sample": 300}, 300),  # Claude v2
        ({"max_gen_len": 512, "max_tokens": 64}, 512),  # Llama
        ({"inferenceConfig": {"maxTokens": 50, "max_new_tokens": 5000}}, 5000),  # Nova
        ({"textGenerationConfig": {"maxTokenCount": 700}, "max_tokens": 90}, 700),  # Titan
        ({"textGenerationConfig": {"maxTokenCount": "70"}}, None),
        ({"textGenerationConfig": [70], "inferenceConfig": {"max_new_tokens": 0}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_every_cap_spelling_is_read_at_the_largest(body: dict[str, Any] | None, cap: int | None) -> None:
    assert max_output_tokens(body) == cap


def test_only_openrouter_preset_api_runs_no_model() -> None:
    """The preset API is OpenRouter's: the same path elsewhere is held as an unmetered call."""
    assert runs_no_model("openrouter", "/api/v1/presets/my-preset/chat/completions?x=1")
    assert not runs_no_model("openai", "/api/v1/presets/my-preset/chat/completions")
    assert not runs_no_model("openrouter", "/api/v1/preset/chat/completions")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/presets/my-preset/chat/completions",
        "/api/v1/presets/my_preset.v2/responses?x=1",
        "/api/v1/presets/A-1/messages/",
    ],
)
def test_the_documented_preset_api_shape_runs_no_model(path: str) -> None:
    assert runs_no_model("openrouter", path)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/presets/x/..\\..\\chat/completions",  # /api/v1/chat/completions to a WHATWG parser
        "/api/v1/presets/x\\..\\../chat/completions",
        "/api/v1/presets/../chat/completions",  # dots alone are no slug (a path not read yet)
        "/api/v1/presets/./chat/completions",
        "/api/v1/presets/x/y/chat/completions",
        "/api/v1/presets/x%2F..%2F..%2Fchat/completions",
        "/api/v1/presets/x/completions",
        "/api/v1/presets/x/embeddings",
        "/api/v1/presets//chat/completions",
        "/api/v1/presets/chat/completions",
    ],
)
def test_another_path_under_presets_is_not_the_preset_api(path: str) -> None:
    assert not runs_no_model("openrouter", path)
