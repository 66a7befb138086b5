"""End to end: Gemini with the google-genai SDK, and an OpenAI-compatible custom host from policies.yaml.

Real clients -> mitmdump + tokometer -> fake providers over HTTPS on 127.0.0.1; rows asserted in DuckDB.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import CLIENTS, ProxyProcess, remapped_proxies
from fake_gemini import FakeGemini
from fakeprovider import FakeProvider
from test_e2e import chat_usage, curl, fake_headers, run_client, tag

# gemini-2.5-flash, per 1M: input 0.30, cached input 0.03, output 2.50 (thinking billed as output).
# 100 input of which 20 cached, 50 candidates + 10 thoughts:
GEMINI_COST = (
    Decimal(80) * Decimal("0.30") + Decimal(20) * Decimal("0.03") + Decimal(60) * Decimal("2.50")
) / 10**6


@pytest.fixture(scope="module")
def gemini(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGemini]:
    fake = FakeGemini(tmp_path_factory.mktemp("gemini"))
    yield fake
    fake.close()


@pytest.fixture
def gproxy(tmp_path: Path, fake_provider: FakeProvider, gemini: FakeGemini):
    # Gemini's OpenAI compatibility to the OpenAI fake, the rest to the Gemini one
    remap = {
        r"//generativelanguage\.googleapis\.com/v1beta/openai/": f"{fake_provider.port}/v1/",
        r"//generativelanguage\.googleapis\.com/": gemini.port,
    }
    yield from remapped_proxies(tmp_path, fake_provider.port, remap)


def gemini_client(proxy: ProxyProcess, *args: str) -> list[dict]:
    res = subprocess.run(
        [sys.executable, str(CLIENTS / "gemini_client.py"), *args],
        env=proxy.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def test_the_openai_sdk_pointed_at_anthropic_or_gemini_is_metered(
    gproxy, fake_provider: FakeProvider
) -> None:
    """Their OpenAI compatibility (base_url .../v1/ and .../v1beta/openai/): OpenAI-shaped calls on
    their hosts, priced as their models. Anthropic documents stream_options, so a stream that did
    not ask for usage gets it added (and hidden); Gemini's is left as the client sent it."""
    proxy = gproxy()
    label = tag()
    for base, model in (
        ("https://api.anthropic.com/v1/", "claude-haiku-4-5"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/", "gemini-2.5-flash"),
    ):
        for stream in ((), ("--stream",)):
            res = subprocess.run(
                [
                    sys.executable,
                    str(CLIENTS / "openai_client.py"),
                    "chat",
                    "--model",
                    model,
                    *stream,
                    "--header",
                    f"X-Test-Tag={label}",
                ],
                env=proxy.client_env() | {"OPENAI_BASE_URL": base},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode == 0, res.stdout + res.stderr
            events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
            if stream:  # what the client asked for: no usage chunk
                assert all(e["data"].get("usage") is None for e in events if e["event"] == "chunk")
    sent = fake_provider.requests_for(label)
    assert [r.path for r in sent] == ["/v1/chat/completions"] * 4
    assert [r.json.get("stream_options") for r in sent] == [None, {"include_usage": True}, None, None]
    rows = proxy.wait_rows(4)  # the last one's tokens are counted offline first
    assert [(r["provider"], r["host"], r["api_flavor"], r["streamed"], r["usage_source"]) for r in rows] == [
        ("anthropic", "api.anthropic.com", "chat", False, "reported"),
        ("anthropic", "api.anthropic.com", "chat", True, "reported"),
        ("google", "generativelanguage.googleapis.com", "chat", False, "reported"),
        ("google", "generativelanguage.googleapis.com", "chat", True, "estimated"),
    ]
    # 100 in, 20 out: claude-haiku-4-5 at $1 / $5 per 1M, gemini-2.5-flash at $0.30 / $2.50
    haiku, flash = Decimal("0.0002"), Decimal("0.00008")
    assert [r["cost_usd"] for r in rows[:3]] == [haiku, haiku, flash]
    assert rows[2]["path"] == "/v1beta/openai/chat/completions" and rows[3]["price_status"] == "priced"
    assert [r["model_requested"] for r in rows] == ["claude-haiku-4-5"] * 2 + ["gemini-2.5-flash"] * 2


def test_gemini_sdk_plain_and_streamed(gproxy, gemini: FakeGemini) -> None:
    proxy = gproxy()
    plain = gemini_client(proxy)
    assert plain[-1]["text"] == "Hello!"
    streamed = gemini_client(proxy, "--stream")
    assert [e["text"] for e in streamed if e["event"] == "chunk"] == ["Hel", "lo", "!"]
    assert "alt=sse" in gemini.requests[-1][0]
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["provider"], r["api_flavor"], r["streamed"]) for r in rows] == [
        ("google", "generate", False),
        ("google", "stream", True),
    ]
    for row in rows:
        assert row["host"] == "generativelanguage.googleapis.com"
        assert row["model_requested"] == "gemini-2.5-flash" and row["model_reported"] == "gemini-2.5-flash"
        assert (
            row["input_tokens"],
            row["cache_read_tokens"],
            row["output_tokens"],
            row["reasoning_tokens"],
        ) == (
            100,
            20,
            60,
            10,
        )
        assert row["cost_usd"] == GEMINI_COST and row["price_status"] == "priced"
        assert row["key_fingerprint"] is not None and "?" not in row["path"]


def test_gemini_json_array_stream_with_the_key_in_the_query(gproxy, gemini: FakeGemini) -> None:
    proxy = gproxy()
    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?key=AIza-q"
    res = curl(proxy, url, {"contents": [{"parts": [{"text": "hi"}]}]})
    assert res.returncode == 0, res.stderr
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in json.loads(res.stdout)] == [
        "Hel",
        "lo",
        "!",
    ]
    proxy.terminate()
    [row] = proxy.rows()
    assert (row["api_flavor"], row["streamed"], row["input_tokens"], row["output_tokens"]) == (
        "stream",
        True,
        100,
        60,
    )
    assert row["path"] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"  # no key in the row
    assert row["key_fingerprint"] is not None


def test_gemini_downgrade_rewrites_the_path(gproxy, gemini: FakeGemini) -> None:
    proxy = gproxy(
        "default_environment: development\nenvironments:\n  development:\n    models:\n"
        "      allow: [gemini-2.5-flash]\n      downgrade: {gemini-2.5-pro: gemini-2.5-flash}\n"
    )
    gemini_client(proxy, "--model", "gemini-2.5-pro", "--stream")
    assert re.match(r"^/v1(beta)?/models/gemini-2\.5-flash:streamGenerateContent\?", gemini.requests[-1][0])
    assert "alt=sse" in gemini.requests[-1][0]
    proxy.terminate()
    [row] = proxy.rows()
    assert (row["action"], row["model_requested"], row["model_sent"]) == (
        "downgraded",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
    )


def test_custom_openai_compatible_host_with_its_own_prices(gproxy, fake_provider: FakeProvider) -> None:
    policies = f"""
default_environment: development
providers:
  local-llm: {{url: "https://127.0.0.1:{fake_provider.port}", api: openai}}
prices:
  "local-llm/llama-3.1-8b*": {{input: 0.10, output: 0.20}}
"""
    proxy = gproxy(policies)
    t = tag()
    res = curl(
        proxy,
        f"https://127.0.0.1:{fake_provider.port}/v1/chat/completions",
        {"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "hi"}]},
        headers=[
            f"X-Test-Tag: {t}",
            "X-Fake-Usage: " + json.dumps(chat_usage(1000, 500)),
            "Authorization: Bearer x",
        ],
    )
    assert res.returncode == 0, res.stderr
    rc, _ = run_client(proxy, "openai_client.py", "chat", headers=fake_headers(tag(), chat_usage(10, 5)))
    assert rc == 0
    proxy.terminate()
    rows = {r["provider"]: r for r in proxy.rows()}
    local = rows["local-llm"]
    assert (local["host"], local["model_requested"], local["input_tokens"], local["output_tokens"]) == (
        "127.0.0.1",
        "llama-3.1-8b-instruct",
        1000,
        500,
    )
    assert local["cost_usd"] == Decimal("0.0002") and local["price_source"] == "policies.yaml prices"
    assert rows["openai"]["price_source"].startswith("genai-prices")  # the built-in host is unaffected


# --- The Interactions API (client.interactions.create) ------------------------------------------


def interactions_client(proxy: ProxyProcess, *args: str, ok: bool = True) -> list[dict]:
    res = subprocess.run(
        [sys.executable, str(CLIENTS / "gemini_interactions_client.py"), *args],
        env=proxy.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (res.returncode == 0) is ok, res.stdout + res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def _interaction_counts(row: dict) -> tuple[int, int, int, int]:
    return row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"]


def test_gemini_interactions_sdk_plain_and_streamed(gproxy, gemini: FakeGemini) -> None:
    """client.interactions.create, plain and stream=True: one row each, with the interaction's
    usage (input with its cached part, output with the thoughts) and gemini-2.5-flash's price."""
    proxy = gproxy()
    [plain] = interactions_client(proxy)
    assert (plain["status"], plain["text"]) == ("completed", "Hello!")
    streamed = interactions_client(proxy, "--stream")
    assert [e["text"] for e in streamed if e["event"] == "step.delta" and e["text"]] == ["Hel", "lo", "!"]
    assert streamed[-1]["usage"]["total_input_tokens"] == 100  # the client got the final event
    # The SDK calls the GA path, /v1/interactions; /v1beta/interactions is the same API.
    sent = [r[0] for r in gemini.requests[-2:]]
    assert all(re.fullmatch(r"/v1(beta)?/interactions", path) for path in sent), sent
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["provider"], r["api_flavor"], r["streamed"], r["aborted"]) for r in rows] == [
        ("google", "interactions", False, False),
        ("google", "interactions", True, False),
    ]
    for row in rows:
        assert (row["host"], row["path"]) == ("generativelanguage.googleapis.com", sent[0])
        assert row["model_requested"] == "gemini-2.5-flash" and row["model_reported"] == "gemini-2.5-flash"
        assert _interaction_counts(row) == (100, 20, 60, 10)
        assert row["cost_usd"] == GEMINI_COST and row["price_status"] == "priced"
        assert row["usage_source"] == "reported" and row["key_fingerprint"] is not None


def test_gemini_interactions_background_is_billed_once_when_finished(gproxy, gemini: FakeGemini) -> None:
    """background=True: the POST answers in_progress ($0, 'background'); of the polls (in
    progress, completed, completed again) only the first to see it completed is billed, as the
    call that started it."""
    proxy = gproxy()
    [done] = interactions_client(proxy, "--background")
    assert done["status"] == "completed" and done["text"] == "Hello!"
    gets = [r[0] for r in gemini.requests if "/interactions/" in r[0]]
    assert len(gets) == 3
    retrieved = gets[-1].partition("?")[0]  # the SDK sends ?stream=false
    assert re.fullmatch(rf"/v1(beta)?/interactions/{done['id']}", retrieved), retrieved
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["api_flavor"], r["price_status"]) for r in rows] == [
        ("interactions", "background"),
        ("interactions", "priced"),
    ]
    start, billed = rows
    assert start["cost_usd"] == 0 and start["input_tokens"] is None
    assert billed["path"] == retrieved
    assert _interaction_counts(billed) == (100, 20, 60, 10) and billed["cost_usd"] == GEMINI_COST
    assert billed["model_requested"] == "gemini-2.5-flash"
    assert billed["key_fingerprint"] == start["key_fingerprint"] is not None


def test_gemini_interactions_error_is_recorded_unbilled(gproxy) -> None:
    proxy = gproxy()
    [error] = interactions_client(proxy, "--model", "gemini-9-missing", ok=False)
    assert error["status"] == 404, error
    proxy.terminate()
    [row] = proxy.rows()
    assert (row["api_flavor"], row["status_code"], row["price_status"], row["cost_usd"]) == (
        "interactions",
        404,
        "not_billed",
        0,
    )


def test_gemini_interactions_model_outside_the_allowlist(gproxy, gemini: FakeGemini) -> None:
    """A disallowed model is downgraded in the body (plain and streamed); a disallowed agent has
    no model to be swapped for and is refused with the API's error shape, never sent."""
    proxy = gproxy(
        "default_environment: development\nenvironments:\n  development:\n    models:\n"
        "      allow: [gemini-2.5-flash]\n      downgrade: {gemini-2.5-pro: gemini-2.5-flash, "
        "'deep-research-*': gemini-2.5-flash}\n"
    )
    for stream in ((), ("--stream",)):
        interactions_client(proxy, "--model", "gemini-2.5-pro", *stream)
        assert gemini.requests[-1][2]["model"] == "gemini-2.5-flash"
    sent = len(gemini.requests)
    [refused] = interactions_client(proxy, "--agent", "deep-research-pro-preview-12-2025", ok=False)
    assert refused["status"] == 403 and "tokometer:" in refused["message"]
    assert len(gemini.requests) == sent  # never reached the provider
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["action"], r["model_requested"], r["model_sent"]) for r in rows] == [
        ("downgraded", "gemini-2.5-pro", "gemini-2.5-flash"),
        ("downgraded", "gemini-2.5-pro", "gemini-2.5-flash"),
        ("blocked", "deep-research-pro-preview-12-2025", None),
    ]
    assert [r["cost_usd"] for r in rows] == [GEMINI_COST, GEMINI_COST, 0]
