"""End to end: AWS Bedrock with the real boto3 SDK (SigV4-signed requests, event streams).

boto3 -> mitmdump + tokometer -> a fake bedrock-runtime over HTTPS on 127.0.0.1; rows asserted in DuckDB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import certifi
import pytest
from conftest import CLIENTS, ROOT, remapped_proxies
from fake_bedrock import HOST, USAGE, WORDS, FakeBedrock
from fakeprovider import FakeProvider

MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def bedrock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeBedrock]:
    fake = FakeBedrock(tmp_path_factory.mktemp("bedrock"))
    yield fake
    fake.close()


@pytest.fixture
def bproxy(tmp_path: Path, fake_provider: FakeProvider, bedrock: FakeBedrock):
    remap = {r"//bedrock-runtime\.us-east-1\.amazonaws\.com/": bedrock.port}
    yield from remapped_proxies(tmp_path, fake_provider.port, remap)


def bedrock_client(
    env: dict[str, str], *args: str, prefix: list[str] | None = None
) -> tuple[int, list[dict]]:
    """Run the boto3 client (after ``prefix``, e.g. shell-env --exec); its exit code and events."""
    res = subprocess.run(
        [*(prefix or []), sys.executable, str(CLIENTS / "bedrock_client.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode in (0, 3), res.stdout + res.stderr
    return res.returncode, events


# us.anthropic.claude-haiku-4-5 is a geographic (regional) inference profile: 10% over the global
# rates. Per 1M tokens: input 1.10, cache read 0.11, cache write (5 min) 1.375, output 5.50.
# Counts: 100 input (the cache reads and writes not included), 30 read, 10 written, 20 output.
COST = (
    Decimal(100) * Decimal("1.10")
    + Decimal(30) * Decimal("0.11")
    + Decimal(10) * Decimal("1.375")
    + Decimal(20) * Decimal("5.50")
) / 10**6
# amazon.nova-lite-v1:0 per 1M: input 0.06, cache read 0.015, output 0.24; no cache-write price, so
# the 10 written are input.
NOVA_COST = (
    Decimal(110) * Decimal("0.06") + Decimal(30) * Decimal("0.015") + Decimal(20) * Decimal("0.24")
) / 10**6


def test_boto3_bedrock_operations_through_shell_env_are_metered(bproxy, bedrock: FakeBedrock) -> None:
    """boto3 trusts AWS_CA_BUNDLE when it is set, and then nothing else: run through ``shell-env
    --exec``, all four operations verify and are metered with Bedrock's counts (input without the
    cache in Converse and the headers)."""
    proxy = bproxy()
    env = {k: v for k, v in proxy.client_env().items() if not k.endswith(("_PROXY", "_proxy"))}
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(name)
    # A bundle of the public roots in AWS_CA_BUNDLE, as many machines set it (this one does): boto3
    # then reads nothing else, so without shell-env setting it too, every call fails to verify.
    env |= AWS_ENV | {"XDG_DATA_HOME": str(proxy.tmp / "xdg"), "AWS_CA_BUNDLE": certifi.where()}
    shell_env = [
        str(ROOT / "scripts" / "shell-env"),
        "--port",
        str(proxy.port),
        "--confdir",
        str(proxy.confdir),
    ]
    operations = ("converse", "converse-stream", "invoke", "invoke-stream")
    for operation in operations:
        code, events = bedrock_client(env, operation, prefix=[*shell_env, "--exec", "--"])
        assert code == 0, events
        assert [e["text"] for e in events if e["event"] == "chunk"] == (
            [] if "stream" not in operation else WORDS
        )
        assert next(e for e in events if e["event"] == "result")["text"] == "".join(WORDS)
        assert {"event": "attempts", "n": 1} in events
    paths = [path.rsplit("/", 1)[1] for path, _, _ in bedrock.requests[-4:]]
    assert paths == ["converse", "converse-stream", "invoke", "invoke-with-response-stream"]
    assert all(
        h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIA") for _, h, _ in bedrock.requests
    )
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["provider"], r["api_flavor"], r["streamed"]) for r in rows] == [
        ("aws", "converse", False),
        ("aws", "converse_stream", True),
        ("aws", "invoke", False),
        ("aws", "invoke_stream", True),
    ]
    for row in rows:
        assert row["host"] == HOST and row["model_requested"] == MODEL and row["action"] == "allowed"
        counts = (
            row["input_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            row["output_tokens"],
        )
        assert counts == (140, 30, 10, 20)
        assert (row["usage_source"], row["status_code"], row["error"]) == ("reported", 200, None)
        assert row["cost_usd"] == COST
        assert row["key_fingerprint"] is not None  # of the access key id; the secret never leaves the client
    assert USAGE["inputTokens"] + USAGE["cacheReadInputTokens"] + USAGE["cacheWriteInputTokens"] == 140


def test_boto3_reads_tokometer_refusals_and_does_not_retry_them(bproxy, bedrock: FakeBedrock) -> None:
    """A model outside the allowlist (Bedrock requests are signed: refused, never rewritten) and a
    spent budget: boto3 raises AccessDeniedException with tokometer's message, after one request."""
    policies = """default_environment: production
environments:
  production:
    models:
      allow: ["amazon.nova-*"]
    budget: {usd: 0.00002, period: day}
"""
    proxy = bproxy(policies)
    env = proxy.client_env() | AWS_ENV | {"AWS_CA_BUNDLE": str(proxy.ca_path)}
    sent = len(bedrock.requests)
    code, events = bedrock_client(env, "converse")
    assert code == 3
    [error] = [e for e in events if e["event"] == "error"]
    assert (error["code"], error["status"]) == ("AccessDeniedException", 403)
    assert error["message"].startswith(f"tokometer: model {MODEL} is not allowed in environment production")
    assert {"event": "attempts", "n": 1} in events
    nova = ("--model", "amazon.nova-lite-v1:0")
    for stored in (2, 3):  # $0.0000118 each: the second starts under the cap and ends over it
        code, events = bedrock_client(env, "converse", *nova)
        assert code == 0, events
        # Priced and counted: until then the call's reservation (1,000 output tokens: $0.00024)
        # holds the cap, and the next one would be refused for it.
        proxy.wait_rows(stored)
    code, events = bedrock_client(env, "converse-stream", *nova)
    assert code == 3
    [error] = [e for e in events if e["event"] == "error"]
    assert (error["code"], error["status"]) == ("AccessDeniedException", 403)  # a 429 boto3 legacy retries
    assert error["message"].startswith("tokometer: production budget of $0.00002 per day is spent")
    assert {"event": "attempts", "n": 1} in events  # not retried: one row, not three
    assert len(bedrock.requests) == sent + 2
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["action"], r["status_code"]) for r in rows] == [
        ("blocked", 403),
        ("allowed", 200),
        ("allowed", 200),
        ("over_budget", 403),
    ]
    assert [r["cost_usd"] for r in rows] == [0, NOVA_COST, NOVA_COST, 0]
