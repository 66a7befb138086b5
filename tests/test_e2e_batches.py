"""End to end: OpenAI batch jobs with the real openai SDK.

openai SDK (HTTPS_PROXY) -> mitmdump + tokometer -> the fake OpenAI over HTTPS: the input file is
uploaded (``client.files.create(purpose="batch")``), the batch created and polled
(``client.batches.retrieve``); rows asserted in DuckDB, costs against genai-prices' own
calc_price. One proxy serves the module (each test's rows carry its own feature label).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import ProxyProcess
from fakeprovider import FakeProvider
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from test_e2e import run_client, tag

from addon.api_keys import key_fingerprint

POLICIES = """
default_environment: development
environments:
  development:
    models:
      allow: [gpt-4o-mini]
      downgrade: {gpt-4o: gpt-4o-mini}
  staging: {}
"""
USAGE = {
    "input_tokens": 52_000,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 7_300,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 59_300,
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("batches"), fake_provider.port, policies=POLICIES)
    try:
        p.start()
        yield p
    finally:
        p.cleanup()


def input_file(proxy: ProxyProcess, model: str, lines: int = 3) -> Path:
    path = proxy.tmp / f"requests-{tag()}.jsonl"
    requests = [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Grade answer {i}."}]},
        }
        for i in range(lines)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def batch_client(
    proxy: ProxyProcess, label: str, *args: str, env: str | None = None
) -> tuple[int, list[dict]]:
    """The SDK's upload, create and polls; X-Metering-Tags (and the fake's usage) on the creation only."""
    tags: dict[str, str] = {"feature": label} | ({"env": env, "team": "evals"} if env else {})
    creation = ["X-Metering-Tags=" + json.dumps(tags), "X-Fake-Usage=" + json.dumps(USAGE)]
    argv = [*args]
    for header in creation:
        argv += ["--creation-header", header]
    return run_client(proxy, "openai_batch_client.py", *argv, headers=[f"X-Test-Tag={label}"])


def rows_of(proxy: ProxyProcess, label: str) -> list[dict[str, Any]]:
    return proxy.rows("SELECT * FROM calls WHERE feature = ? ORDER BY ts", [label])


def batch_bill(model: str, row: dict[str, Any]) -> Decimal:
    """What genai-prices says the batch costs: its own batch price (processing=batch)."""
    usage = GPUsage(input_tokens=USAGE["input_tokens"], output_tokens=USAGE["output_tokens"])
    when = row["ts"].replace(tzinfo=UTC)
    context = {"processing": "batch"}
    return calc_price(
        usage,
        model,
        provider_id="openai",
        genai_request_timestamp=when,
        price_context=context,  # type: ignore[arg-type]
    ).total_price


def synchronous_bill(model: str, row: dict[str, Any]) -> Decimal:
    usage = GPUsage(input_tokens=USAGE["input_tokens"], output_tokens=USAGE["output_tokens"])
    when = row["ts"].replace(tzinfo=UTC)
    return calc_price(usage, model, provider_id="openai", genai_request_timestamp=when).total_price


def test_a_batch_is_billed_once_at_half_price_as_its_creation_was_attributed(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    label = tag()
    code, events = batch_client(
        proxy, label, "--file", str(input_file(proxy, "gpt-4o-mini")), "--polls", "4", env="staging"
    )
    assert code == 0, events
    assert [e.get("status") for e in events if e["event"] == "polled"] == [
        "in_progress",
        "completed",
        "completed",
        "completed",
    ]
    sent = fake_provider.requests_for(label)
    assert [(r.method, r.path.split("?")[0]) for r in sent][:2] == [
        ("POST", "/v1/files"),
        ("POST", "/v1/batches"),
    ]
    assert len(sent) == 6 and all("x-metering-tags" not in r.headers for r in sent)
    batch_id = events[1]["data"]["id"]

    started, billed = rows_of(proxy, label)
    assert (started["path"], started["api_flavor"], started["action"], started["status_code"]) == (
        "/v1/batches",
        "batch",
        "allowed",
        200,
    )
    assert (started["price_status"], started["cost_usd"], started["service_tier"]) == (
        "background",
        0,
        "batch",
    )
    assert (started["model_requested"], started["environment"], started["environment_source"]) == (
        "gpt-4o-mini",
        "staging",
        "header",
    )
    assert (billed["path"], billed["api_flavor"], billed["status_code"], billed["service_tier"]) == (
        f"/v1/batches/{batch_id}",
        "batch",
        200,
        "batch",
    )
    # attributed as the creation was, though the retrievals carried no tags
    assert (billed["environment"], billed["environment_source"], billed["team"]) == (
        "staging",
        "header",
        "evals",
    )
    assert (
        billed["key_fingerprint"]
        == started["key_fingerprint"]
        == key_fingerprint("sk-proj-e2eTESTkey0000111122223333444455556666")
    )
    assert (billed["model_requested"], billed["model_reported"]) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert (billed["input_tokens"], billed["output_tokens"], billed["usage_source"]) == (
        52_000,
        7_300,
        "reported",
    )
    assert billed["price_status"] == "priced"
    cost = Decimal(billed["cost_usd"])
    assert (
        cost
        == batch_bill("gpt-4o-mini-2024-07-18", billed)
        == synchronous_bill("gpt-4o-mini-2024-07-18", billed) * Decimal("0.5")
    )
    assert cost == Decimal("0.00609")  # 52,000 x $0.075 + 7,300 x $0.30, per 1M


def test_a_cancelled_batch_is_billed_for_its_work_by_the_retrieval_that_sees_it_cancelled(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    label = tag()
    args = ("--file", str(input_file(proxy, "gpt-4o-mini")), "--polls", "3", "--cancel")
    code, events = batch_client(proxy, label, *args, env="staging")
    assert code == 0, events
    assert [e.get("status") or e["data"]["status"] for e in events[2:]] == [
        "in_progress",
        "cancelling",
        "cancelled",
        "cancelled",
    ]
    _, billed = rows_of(proxy, label)
    batch_id = events[1]["data"]["id"]
    assert (billed["path"], billed["output_tokens"], billed["team"]) == (
        f"/v1/batches/{batch_id}",
        7_300,
        "evals",
    )
    assert Decimal(billed["cost_usd"]) == batch_bill("gpt-4o-mini-2024-07-18", billed)


def test_a_list_of_batches_bills_the_ended_ones_it_shows(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    """``client.batches.list()`` shows the batch ended before any retrieval did: its row bills it;
    the retrievals after add nothing."""
    label = tag()
    args = ("--file", str(input_file(proxy, "gpt-4o-mini")), "--polls", "3", "--list-after", "1")
    code, events = batch_client(proxy, label, *args, env="staging")
    assert code == 0, events
    batch_id = events[1]["data"]["id"]
    [listed] = [e for e in events if e["event"] == "listed"]
    assert {"id": batch_id, "status": "completed"}.items() <= listed["data"][0].items()
    _, billed = rows_of(proxy, label)
    assert (billed["path"], billed["output_tokens"], billed["environment"]) == (
        "/v1/batches",
        7_300,
        "staging",
    )
    assert Decimal(billed["cost_usd"]) == batch_bill("gpt-4o-mini-2024-07-18", billed)


def test_a_disallowed_model_in_the_input_file_refuses_the_batch_before_it_reaches_openai(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    label = tag()
    code, events = batch_client(proxy, label, "--file", str(input_file(proxy, "gpt-4o")), "--polls", "1")
    assert code == 3
    error = events[-1]
    assert error["event"] == "error" and error["status"] == 403
    assert (
        "model gpt-4o is not allowed in environment development (allowed there: gpt-4o-mini"
        in error["message"]
    )
    assert "input file" in error["message"]
    assert [r.path for r in fake_provider.requests_for(label)] == ["/v1/files"]  # never the creation
    [refused] = rows_of(proxy, label)
    assert (refused["action"], refused["model_requested"], refused["model_sent"], refused["status_code"]) == (
        "blocked",
        "gpt-4o",
        None,
        403,
    )
    assert (refused["cost_usd"], refused["path"]) == (0, "/v1/batches")


def test_a_batch_from_a_file_the_proxy_never_saw_is_refused_where_models_are_restricted(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    label = tag()
    code, events = batch_client(proxy, label, "--input-file-id", "file-elsewhere", "--polls", "1")
    assert code == 3 and events[-1]["status"] == 403
    assert "upload the batch's input file through the proxy" in events[-1]["message"]
    assert fake_provider.requests_for(label) == []
    [refused] = rows_of(proxy, label)
    assert (refused["action"], refused["model_requested"]) == ("blocked", None)


# ---------------------------------------------------------------- Anthropic Message Batches

ANTHROPIC_USAGE = {
    "input_tokens": 1000,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 300,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 250,
    "service_tier": "batch",
}


def message_batch_client(
    proxy: ProxyProcess, label: str, *args: str, env: str | None = None, **fake: str
) -> tuple[int, list[dict]]:
    tags: dict[str, str] = {"feature": label} | ({"env": env, "team": "evals"} if env else {})
    argv = [*args]
    for header in ("X-Metering-Tags=" + json.dumps(tags), "X-Fake-Usage=" + json.dumps(ANTHROPIC_USAGE)):
        argv += ["--creation-header", header]
    headers = [f"X-Test-Tag={label}", *(f"X-Fake-{k.replace('_', '-').title()}={v}" for k, v in fake.items())]
    return run_client(proxy, "anthropic_batch_client.py", *argv, headers=headers)


def anthropic_batch_bill(model: str, row: dict[str, Any], requests: int) -> tuple[Decimal, Decimal]:
    """genai-prices' batch price for ``requests`` replies of ANTHROPIC_USAGE, and half its standard one."""
    counts = {"input_tokens": 1400, "cache_read_tokens": 300, "cache_write_tokens": 100, "output_tokens": 250}
    usage = GPUsage(**{name: n * requests for name, n in counts.items()})
    when = row["ts"].replace(tzinfo=UTC)
    batch = calc_price(
        usage,
        model,
        provider_id="anthropic",
        genai_request_timestamp=when,
        price_context={"processing": "batch"},
    ).total_price
    standard = calc_price(usage, model, provider_id="anthropic", genai_request_timestamp=when).total_price
    return batch, standard * Decimal("0.5")


def test_a_message_batch_is_billed_once_from_its_results_one_row_per_model(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    label = tag()
    args = [
        "--request",
        "claude-haiku-4-5",
        "--request",
        "claude-haiku-4-5",
        "--request",
        "claude-sonnet-4-5",
    ]
    args += ["--fail", "claude-haiku-4-5", "--polls", "2", "--downloads", "2"]
    code, events = message_batch_client(proxy, label, *args, env="staging", gzip="1", results_chunk="97")
    assert code == 0, events
    assert [e["status"] for e in events if e["event"] == "polled"] == ["in_progress", "ended"]
    assert [e["types"] for e in events if e["event"] == "results"] == [["errored", *["succeeded"] * 3]] * 2
    downloads = [r for r in fake_provider.requests_for(label) if r.path.endswith("/results")]
    assert len(downloads) == 2 and all(r.gzipped for r in downloads)

    started, *billed = rows_of(proxy, label)
    assert (started["provider"], started["path"], started["api_flavor"], started["price_status"]) == (
        "anthropic",
        "/v1/messages/batches",
        "batch",
        "background",
    )
    assert (started["model_requested"], started["cost_usd"], started["environment"]) == (
        "claude-haiku-4-5",
        0,
        "staging",
    )
    batch_id = events[0]["data"]["id"]
    by_model = {row["model_reported"]: row for row in billed}
    assert sorted(by_model) == [
        "claude-haiku-4-5-20251001",
        "claude-sonnet-4-5",
    ]  # once each: not per download
    for model, requests in (("claude-haiku-4-5-20251001", 2), ("claude-sonnet-4-5", 1)):
        row = by_model[model]
        assert (row["path"], row["service_tier"], row["environment"], row["team"]) == (
            f"/v1/messages/batches/{batch_id}/results",
            "batch",
            "staging",
            "evals",
        )
        assert (
            row["input_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            row["output_tokens"],
        ) == (
            1400 * requests,
            300 * requests,
            100 * requests,
            250 * requests,
        )
        batch, half = anthropic_batch_bill(model, row, requests)
        assert Decimal(row["cost_usd"]) == batch == half


def test_a_message_batch_asking_for_a_disallowed_model_is_refused(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    label = tag()
    code, events = message_batch_client(proxy, label, "--request", "claude-opus-4-1", "--polls", "0")
    assert code == 3 and events[-1]["status"] == 403
    assert "model claude-opus-4-1 is not allowed in environment development" in events[-1]["message"]
    assert fake_provider.requests_for(label) == []
    [refused] = rows_of(proxy, label)
    assert (refused["provider"], refused["action"], refused["model_requested"]) == (
        "anthropic",
        "blocked",
        "claude-opus-4-1",
    )
