"""End to end: policies.yaml enforced by a real mitmdump in front of the fake provider.

Downgrades, blocks, budgets, rate limits and live reload, seen from real clients
(openai and anthropic SDKs, curl) and asserted on the rows and on what upstream received.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from conftest import MITMDUMP, ProxyProcess
from fakeprovider import DEFAULT_USAGE, FakeProvider
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from test_e2e import anthropic_usage, chat_usage, curl, curl_openai_chat, fake_headers, run_client, tag

from addon.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent

DEV_POLICY = """
default_environment: development
environments:
  development:
    models:
      allow: [gpt-4o-mini, claude-haiku-4-5]
      on_disallowed: downgrade
      downgrade:
        gpt-4o: gpt-4o-mini
        claude-sonnet-4-5*: claude-haiku-4-5
  production:
    models: {allow: ["*"]}
"""


def start_proxy(tmp_path: Path, fake: FakeProvider, policies: str, name: str = "p") -> ProxyProcess:
    proxy = ProxyProcess(tmp_path / name, fake.port, policies=policies)
    proxy.start()
    return proxy


@pytest.fixture
def proxies(tmp_path: Path, fake_provider: FakeProvider):
    started: list[ProxyProcess] = []

    def start(policies: str, name: str = "p") -> ProxyProcess:
        p = start_proxy(tmp_path, fake_provider, policies, name)
        started.append(p)
        return p

    yield start
    for p in started:
        p.cleanup()


def split_response(curl_output: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of the last response in ``curl -D -`` output (after the CONNECT one)."""
    blocks = curl_output.replace("\r\n", "\n").split("\n\n")
    last = max(i for i, block in enumerate(blocks) if block.startswith("HTTP/"))
    status_line, *lines = blocks[last].split("\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}
    return int(status_line.split()[1]), headers, "\n\n".join(blocks[last + 1 :])


def headers_of(curl_output: str) -> dict[str, str]:
    return split_response(curl_output)[1]


def wait_for_log(proxy: ProxyProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{proxy.log_text()}"
        time.sleep(0.1)


def test_disallowed_model_is_downgraded(proxies, fake_provider: FakeProvider) -> None:
    proxy = proxies(DEV_POLICY)
    t_sdk, t_curl, t_ant = tag(), tag(), tag()
    rc, events = run_client(
        proxy, "openai_client.py", "chat", "--model", "gpt-4o", "--stream",
        headers=fake_headers(t_sdk, chat_usage(1000, 100)),
    )  # fmt: skip
    assert rc == 0 and events[-1]["event"] == "result"
    res = curl_openai_chat(proxy, t_curl, chat_usage(10, 5), model="gpt-4o-2024-08-06", extra=["-D", "-"])
    assert res.returncode == 0, res.stderr
    notice = headers_of(res.stdout)["x-tokometer-notice"]
    assert notice.startswith("downgraded gpt-4o-2024-08-06 -> gpt-4o-mini")
    assert "development" in notice
    rc, _ = run_client(
        proxy, "anthropic_client.py", "--model", "claude-sonnet-4-5",
        headers=fake_headers(t_ant, anthropic_usage(100, 0, 0, 10)),
    )  # fmt: skip
    assert rc == 0
    assert fake_provider.requests_for(t_sdk)[0].json["model"] == "gpt-4o-mini"
    assert fake_provider.requests_for(t_curl)[0].json["model"] == "gpt-4o-mini"
    assert fake_provider.requests_for(t_ant)[0].json["model"] == "claude-haiku-4-5"
    proxy.terminate()
    rows = {r["model_requested"]: r for r in proxy.rows()}
    assert set(rows) == {"gpt-4o", "gpt-4o-2024-08-06", "claude-sonnet-4-5"}
    for requested, sent in [
        ("gpt-4o", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o-mini"),
        ("claude-sonnet-4-5", "claude-haiku-4-5"),
    ]:
        assert (rows[requested]["action"], rows[requested]["model_sent"]) == ("downgraded", sent)
    # priced as what was really used: gpt-4o-mini at 0.15 / 0.60 per 1M
    assert rows["gpt-4o"]["cost_usd"] == Decimal("0.00021")


def test_blocked_model_gets_403_and_upstream_sees_nothing(proxies, fake_provider: FakeProvider) -> None:
    policy = DEV_POLICY.replace("on_disallowed: downgrade", "on_disallowed: block")
    proxy = proxies(policy)
    t = tag()
    rc, events = run_client(proxy, "openai_client.py", "chat", "--model", "o3", headers=fake_headers(t))
    assert rc == 3
    error = events[-1]
    assert error["status"] == 403
    message = error["body"]["message"] if "message" in error["body"] else error["body"]["error"]["message"]
    assert "o3" in message and "development" in message and "gpt-4o-mini" in message
    t_ant = tag()
    rc, events = run_client(
        proxy, "anthropic_client.py", "--model", "claude-opus-4-1", headers=fake_headers(t_ant)
    )
    assert rc == 3 and events[-1]["status"] == 403
    assert fake_provider.requests_for(t) == [] and fake_provider.requests_for(t_ant) == []
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["action"], r["status_code"], r["cost_usd"]) for r in rows] == [
        ("blocked", 403, Decimal(0)),
        ("blocked", 403, Decimal(0)),
    ]
    assert all("not allowed" in r["error"] for r in rows)


def test_a_path_spelled_otherwise_is_checked_and_metered_as_servers_read_it(
    proxies, fake_provider: FakeProvider
) -> None:
    """curl --path-as-is sends ``/v1/./chat/%63ompletions`` as typed: the same API to a server."""
    proxy = proxies(DEV_POLICY)
    t = tag()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    headers = [
        "Authorization: Bearer sk-test-path-as-is-0123456789abcdef",
        f"X-Test-Tag: {t}",
        "X-Fake-Usage: " + json.dumps(chat_usage(1000, 100), separators=(",", ":")),
    ]
    url = "https://api.openai.com/v1/./chat/%63ompletions"
    res = curl(proxy, url, body, headers, ["--path-as-is", "-D", "-"])
    assert res.returncode == 0, res.stderr
    assert headers_of(res.stdout)["x-tokometer-notice"].startswith("downgraded gpt-4o -> gpt-4o-mini")
    [upstream] = fake_provider.requests_for(t)
    assert (upstream.path, upstream.json["model"]) == ("/v1/chat/completions", "gpt-4o-mini")
    proxy.terminate()
    [row] = proxy.rows()
    assert (row["path"], row["api_flavor"], row["action"]) == ("/v1/chat/completions", "chat", "downgraded")
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 100)
    assert row["cost_usd"] == Decimal("0.00021")  # gpt-4o-mini: 1000 x 0.15 + 100 x 0.60 per 1M


def test_a_video_and_a_model_running_request_the_proxy_does_not_meter_are_held_to_the_allowlist(
    proxies, fake_provider: FakeProvider
) -> None:
    """A Sora video asks for a model development does not allow: refused, never downgraded (a video
    job is never rewritten), upstream sees nothing, a row says so. A request to an API the proxy does
    not meter naming no model passes on as before, with no row."""
    policy = DEV_POLICY.replace("gpt-4o-mini, claude", "gpt-4o-mini, sora-2, claude")
    proxy = proxies(policy.replace("gpt-4o: gpt-4o-mini", "gpt-4o: gpt-4o-mini\n        sora-2-pro: sora-2"))
    t = tag()
    headers = ["Authorization: Bearer sk-test-videos-0123456789abcdef", f"X-Test-Tag: {t}"]
    body = {"model": "sora-2-pro", "prompt": "a cat", "seconds": "12"}
    res = curl(proxy, "https://api.openai.com/v1/videos", body, headers, ["-D", "-"])
    status, answer_headers, answer = split_response(res.stdout)
    assert (status, answer_headers["x-tokometer-refused"]) == (403, "blocked")
    message = json.loads(answer)["error"]["message"]
    assert "sora-2-pro" in message and "starts a video job" in message
    assert "refused instead of downgraded" in message
    assert fake_provider.requests_for(t) == []
    passed = tag()
    headers = ["Authorization: Bearer sk-test-videos-0123456789abcdef", f"X-Test-Tag: {passed}"]
    curl(proxy, "https://api.openai.com/v1/vector_stores", {"name": "docs"}, headers)
    [upstream] = fake_provider.requests_for(passed)
    assert upstream.path == "/v1/vector_stores"
    proxy.terminate()
    [row] = proxy.rows()
    assert (row["path"], row["api_flavor"], row["action"], row["status_code"]) == (
        "/v1/videos",
        "video",
        "blocked",
        403,
    )
    assert (row["model_requested"], row["model_sent"], row["cost_usd"]) == ("sora-2-pro", None, Decimal(0))


def test_budget_is_a_hard_cap(proxies, fake_provider: FakeProvider) -> None:
    policy = """
default_environment: development
environments:
  development:
    budget: {usd: 0.0005, period: day, alert_at: [0.5]}
"""
    proxy = proxies(policy)
    t1, t2 = tag(), tag()
    # gpt-4o-mini, 1000 in + 1000 out = 0.00015 + 0.0006 = $0.00075: over the $0.0005 cap
    res = curl_openai_chat(proxy, t1, chat_usage(1000, 1000))
    assert res.returncode == 0, res.stderr
    proxy.wait_rows(1)
    wait_for_log(proxy, "budget")
    res = curl_openai_chat(proxy, t2, chat_usage(10, 10), extra=["-D", "-"])
    assert res.returncode != 0
    status, headers, text = split_response(res.stdout)
    assert status == 429
    assert 0 < int(headers["retry-after"]) <= 86400
    body = json.loads(text)
    assert "development budget of $0.0005 per day" in body["error"]["message"]
    assert fake_provider.requests_for(t2) == []
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["action"], r["status_code"]) for r in rows] == [("allowed", 200), ("over_budget", 429)]
    assert rows[0]["cost_usd"] == Decimal("0.00075") and rows[1]["cost_usd"] == Decimal(0)
    kinds = [e["kind"] for e in proxy.rows("SELECT kind FROM events ORDER BY kind")]
    assert kinds == ["budget_alert", "budget_exhausted"]  # the 50% alert and the cap, once each


def test_back_to_back_calls_well_under_a_cap_all_pass(proxies, fake_provider: FakeProvider) -> None:
    """A user's test: 5 gpt-4o-mini calls one after another without max_tokens (each reserves
    1,000 output tokens, ~$0.0006; each costs $0.000009) under a $0.001 cap. Calls 4 and 5 got
    "budget is spent" 429s at $0.000027 used: a finished call's reservation lingered until the
    store's writer priced it (up to 0.5 s later). Each now gives way to its cost as it finishes."""
    proxy = proxies("environments:\n  qa:\n    budget: {usd: 0.001, period: day}\n")
    tags = [tag() for _ in range(5)]
    for t in tags:
        res = curl_openai_chat(proxy, t, chat_usage(20, 10), more_headers=['X-Metering-Tags: {"env":"qa"}'])
        assert res.returncode == 0, res.stdout + res.stderr
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["environment"], r["action"], r["status_code"]) for r in rows] == [("qa", "allowed", 200)] * 5
    assert sum(r["cost_usd"] for r in rows) == Decimal("0.000045")


def test_rate_limit_answers_429(proxies, fake_provider: FakeProvider) -> None:
    policy = """
default_environment: development
environments:
  development:
    rate_limit: {requests_per_minute: 2}
"""
    proxy = proxies(policy)
    results = [curl_openai_chat(proxy, tag(), chat_usage(5, 5), extra=["-D", "-"]) for _ in range(3)]
    assert [r.returncode for r in results[:2]] == [0, 0]
    assert results[2].returncode != 0
    assert 1 <= int(headers_of(results[2].stdout)["retry-after"]) <= 60
    proxy.terminate()
    actions = [r["action"] for r in proxy.rows()]
    assert actions == ["allowed", "allowed", "rate_limited"]


def test_edits_apply_without_restart_and_invalid_edits_keep_the_last_good(
    proxies, fake_provider: FakeProvider
) -> None:
    policy = DEV_POLICY.replace("on_disallowed: downgrade", "on_disallowed: block")
    proxy = proxies(policy)
    blocked = curl_openai_chat(proxy, tag(), chat_usage(5, 5), model="gpt-4.1")
    assert blocked.returncode != 0 and "not allowed" in blocked.stdout

    proxy.policies_path.write_text(policy.replace("allow: [gpt-4o-mini, claude-haiku-4-5]", 'allow: ["*"]'))
    wait_for_log(proxy, "reloaded")
    t = tag()
    assert curl_openai_chat(proxy, t, chat_usage(5, 5), model="gpt-4.1").returncode == 0
    assert fake_provider.requests_for(t)[0].json["model"] == "gpt-4.1"

    proxy.policies_path.write_text("environments:\n  development:\n    models: {allow: 5}\n")
    wait_for_log(proxy, "the last good policy stays in force")
    assert curl_openai_chat(proxy, tag(), chat_usage(5, 5), model="gpt-4.1").returncode == 0
    proxy.terminate()
    assert [r["action"] for r in proxy.rows()] == ["blocked", "allowed", "allowed"]
    kinds = sorted(e["kind"] for e in proxy.rows("SELECT kind FROM events"))
    assert kinds == ["policy_invalid", "policy_reloaded"]


def test_invalid_policies_at_start_refuse_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "policies.yaml"
    bad.write_text("default_environment: development\nenvironments:\n  development:\n    budget: {usd: -1}\n")
    res = subprocess.run(
        [str(MITMDUMP), "-s", str(ROOT / "addon" / "tokometer.py"), "--listen-host", "127.0.0.1",
         "--listen-port", "0", "--set", f"confdir={tmp_path / 'conf'}",
         "--set", f"tokometer_policies={bad}", "--set", f"tokometer_db={tmp_path / 'db.duckdb'}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 1
    assert "policies.yaml:4: environments.development.budget.usd" in res.stdout + res.stderr
    assert not (tmp_path / "db.duckdb").exists()


def test_no_policies_file_meters_only(tmp_path: Path, fake_provider: FakeProvider) -> None:
    proxy = ProxyProcess(tmp_path / "p", fake_provider.port)
    proxy.policies_path.unlink()
    try:
        proxy.start()
        assert "metering only, nothing enforced" in proxy.session_line
        assert curl_openai_chat(proxy, tag(), chat_usage(5, 5), model="o3").returncode == 0
        proxy.terminate()
        [row] = proxy.rows()
        assert (row["action"], row["environment"]) == ("allowed", "development")
    finally:
        proxy.cleanup()


def started_together(
    one: Callable[[int], subprocess.CompletedProcess[str]],
    gate: threading.Event,
    *,
    refused: int,
    calls: int = 20,
    wait: float = 15,
) -> list[subprocess.CompletedProcess[str]]:
    """``one(i)`` for ``calls`` calls started at once, their answers held at the fake's ``gate``:
    the refusals come back at once, then the gate opens for the admitted ones (if more than
    expected were admitted, they are let through at the deadline, before curl gives up)."""
    try:
        with ThreadPoolExecutor(max_workers=calls) as pool:
            futures = [pool.submit(one, i) for i in range(calls)]
            deadline = time.monotonic() + wait
            while sum(f.done() for f in futures) < refused and time.monotonic() < deadline:
                time.sleep(0.05)
            gate.set()
            return [f.result() for f in futures]
    finally:
        gate.set()


def test_budget_holds_under_concurrency(proxies, fake_provider: FakeProvider) -> None:
    """20 calls started together against a nearly spent cap overshoot it by at most one call."""
    proxy = proxies(
        "default_environment: development\nenvironments:\n  development:\n"
        "    budget: {usd: 0.001, period: day}\n"
    )
    # $0.00075 spent of $0.001
    assert curl_openai_chat(proxy, tag(), chat_usage(1000, 1000)).returncode == 0
    proxy.wait_rows(1)
    time.sleep(0.3)  # priced and counted by the writer thread right after it is journaled
    gate_name = f"gate-{tag()}"
    gate = fake_provider.gate(gate_name)

    def one(i: int) -> subprocess.CompletedProcess[str]:
        body = {
            "model": "gpt-4o-mini",
            "max_tokens": 1000,
            "messages": [{"role": "user", "content": f"n{i}"}],
        }
        headers = [
            "Authorization: Bearer sk-x",
            f"X-Test-Tag: conc-{i}-{gate_name}",
            "X-Fake-Usage: " + json.dumps(chat_usage(1000, 1000)),
            f"X-Fake-Gate: {gate_name}",
        ]
        return curl(proxy, "https://api.openai.com/v1/chat/completions", {**body, "stream": True}, headers)

    results = started_together(one, gate, refused=19, wait=30)
    assert sum(r.returncode == 0 for r in results) == 1
    proxy.terminate()
    rows = proxy.rows("SELECT action, cost_usd FROM calls ORDER BY ts")
    assert sorted(r["action"] for r in rows).count("over_budget") == 19
    spent = sum((r["cost_usd"] or Decimal(0)) for r in rows)
    assert spent == Decimal("0.0015")  # the cap plus at most one call's $0.00075


def seed_outputs(db_path: Path, model: str, outputs: list[int], ts: datetime) -> None:
    """A database made with the project's migrations, holding earlier calls of ``model`` with
    these output tokens (reported usage), as an earlier proxy session would have left them."""
    con = duckdb.connect(str(db_path))
    try:
        migrate(con)
        for i, output in enumerate(outputs):
            con.execute(
                "INSERT INTO calls (id, ts, session_id, environment, provider, host, path, api_flavor, "
                "model_requested, model_sent, action, status_code, streamed, aborted, input_tokens, "
                "output_tokens, reasoning_tokens, usage_source, cost_usd, price_status) VALUES "
                "(?, ?, 'earlier', 'development', 'openai', 'api.openai.com', '/v1/chat/completions', "
                "'chat', ?, ?, 'allowed', 200, false, false, 1000, ?, ?, 'reported', ?, 'priced')",
                [f"earlier-{i}", ts.replace(tzinfo=None), model, model, output, output // 2,
                 Decimal(1000 * 2 + output * 8) / 1_000_000],
            )  # fmt: skip
    finally:
        con.close()


def test_budget_holds_under_concurrency_for_uncapped_reasoning_calls(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    """o3 called without max_tokens writes ~5,000 output tokens a call here (the database says so):
    20 such calls started together against a nearly spent cap each reserve the p90 of o3's recent
    outputs (5,300), not 1,000, so the cap is overshot by at most one call's cost."""
    history = [4000 + 50 * i for i in range(30)]  # 4,000 .. 5,450: p90 5,300 (yesterday and before)
    proxy = ProxyProcess(
        tmp_path / "p",
        fake_provider.port,
        policies="default_environment: development\nenvironments:\n  development:\n"
        "    budget: {usd: 0.1, period: day}\n",
    )
    seed_outputs(proxy.db_path, "o3", history, datetime.now(UTC) - timedelta(days=2))
    proxy.start()
    try:
        usage = json.dumps(chat_usage(1000, 5000, reasoning=4000))
        one_call = Decimal("0.042")  # o3: 1,000 in at $2/M + 5,000 out at $8/M
        cap = Decimal("0.1")
        # $0.042 spent today by gpt-4o (1,000 in at $2.50/M, 3,950 out at $10/M): o3's history is
        # only what the database held at start
        spending = {"model": "gpt-4o", "messages": [{"role": "user", "content": "first"}]}
        first = curl(
            proxy,
            "https://api.openai.com/v1/chat/completions",
            spending,
            [
                "Authorization: Bearer sk-x",
                f"X-Test-Tag: first-{tag()}",
                "X-Fake-Usage: " + json.dumps(chat_usage(1000, 3950)),
            ],
        )
        assert first.returncode == 0, first.stderr
        proxy.wait_rows(31)
        time.sleep(0.3)  # priced and counted by the writer thread right after it is journaled
        gate_name = f"gate-{tag()}"
        gate = fake_provider.gate(gate_name)

        def one(i: int) -> subprocess.CompletedProcess[str]:
            body = {"model": "o3", "messages": [{"role": "user", "content": f"n{i}"}], "stream": True}
            headers = [
                "Authorization: Bearer sk-x",
                f"X-Test-Tag: conc-{i}-{gate_name}",
                f"X-Fake-Usage: {usage}",
                f"X-Fake-Gate: {gate_name}",
            ]
            return curl(proxy, "https://api.openai.com/v1/chat/completions", body, headers)

        results = started_together(one, gate, refused=18)
        proxy.terminate()
        rows = proxy.rows("SELECT action, cost_usd FROM calls WHERE session_id <> 'earlier' ORDER BY ts")
        spent = sum((r["cost_usd"] or Decimal(0)) for r in rows)
        admitted = sum(r.returncode == 0 for r in results)
        assert (admitted, spent) == (2, Decimal("0.126")), f"{admitted=} {spent=} of {cap}"
        assert sorted(r["action"] for r in rows).count("over_budget") == 18
        assert spent - cap <= one_call  # the cap overshot by at most one call's cost
    finally:
        proxy.cleanup()


def test_image_budget_holds_under_concurrency(proxies, fake_provider: FakeProvider) -> None:
    """20 high-quality gpt-image-1 images started together against a nearly spent cap: each reserves
    its image's 4160 output tokens at $40/M (not 1,000 text tokens), so one goes through."""
    usage = DEFAULT_USAGE["images"]  # 50 input (10 image), 4160 output: one 1024x1024 high image
    one_call = calc_price(
        GPUsage(input_tokens=50, input_image_tokens=10, output_tokens=4160, output_image_tokens=4160),
        "gpt-image-1",
        provider_id="openai",
    ).total_price
    cap = Decimal("0.30")  # one image spent: $0.13 left, less than one image
    budget = f"    budget: {{usd: {cap}, period: day}}\n"
    proxy = proxies("default_environment: development\nenvironments:\n  development:\n" + budget)
    url = "https://api.openai.com/v1/images/generations"
    image = {"model": "gpt-image-1", "prompt": "a cat", "quality": "high", "size": "1024x1024"}
    headers = ["Authorization: Bearer sk-x", "X-Fake-Usage: " + json.dumps(usage)]
    assert curl(proxy, url, image, [*headers, f"X-Test-Tag: spent-{tag()}"]).returncode == 0
    proxy.wait_rows(1)
    time.sleep(0.3)  # priced and counted by the writer thread right after it is journaled
    gate_name = f"gate-{tag()}"
    gate = fake_provider.gate(gate_name)

    def one(i: int) -> subprocess.CompletedProcess[str]:
        tagged = [*headers, f"X-Test-Tag: image-{i}-{gate_name}", f"X-Fake-Gate: {gate_name}"]
        return curl(proxy, url, {**image, "prompt": f"cat {i}", "stream": True}, tagged)

    results = started_together(one, gate, refused=19)
    proxy.terminate()
    rows = proxy.rows("SELECT action, cost_usd FROM calls ORDER BY ts")
    spent = sum((r["cost_usd"] or Decimal(0)) for r in rows)
    assert sum(r.returncode == 0 for r in results) == 1, f"{spent=} of {cap}"
    assert sorted(r["action"] for r in rows).count("over_budget") == 19
    assert spent == 2 * one_call == Decimal("0.3334")
    assert spent - cap <= one_call  # the cap overshot by at most one call's cost


def test_image_tool_budget_holds_under_concurrency(proxies, fake_provider: FakeProvider) -> None:
    """20 Responses calls with the image_generation tool (a high 1024x1024 gpt-image-1 image each,
    billed at $40/M apart from the text model's usage) started together against a nearly spent cap:
    each reserves its image's 4,160 tokens with its text (not the text alone), so one goes through.
    The image it wrote is a row of its own (the rows count what OpenAI bills: before, its text alone)."""
    spent_image = calc_price(
        GPUsage(input_tokens=50, input_image_tokens=10, output_tokens=4160, output_image_tokens=4160),
        "gpt-image-1",
        provider_id="openai",
    ).total_price
    tool_image = calc_price(
        GPUsage(output_tokens=4160, output_image_tokens=4160), "gpt-image-1", provider_id="openai"
    ).total_price  # $0.1664: the tool's image, which the response's usage does not report
    usage = {
        "input_tokens": 300,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 100,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 400,
    }
    text = calc_price(GPUsage(input_tokens=300, output_tokens=100), "gpt-4o-mini", provider_id="openai")
    one_call = text.total_price + tool_image  # what OpenAI bills one call
    cap = Decimal("0.30")  # one image spent: $0.1333 left, less than one call
    budget = f"    budget: {{usd: {cap}, period: day}}\n"
    proxy = proxies("default_environment: development\nenvironments:\n  development:\n" + budget)
    image = {"model": "gpt-image-1", "prompt": "a cat", "quality": "high", "size": "1024x1024"}
    spend = ["Authorization: Bearer sk-x", f"X-Test-Tag: spent-{tag()}"]
    assert curl(proxy, "https://api.openai.com/v1/images/generations", image, spend).returncode == 0
    proxy.wait_rows(1)
    time.sleep(0.3)  # priced and counted by the writer thread right after it is journaled
    gate_name = f"gate-{tag()}"
    gate = fake_provider.gate(gate_name)
    tool = {"type": "image_generation", "model": "gpt-image-1", "quality": "high", "size": "1024x1024"}

    def one(i: int) -> subprocess.CompletedProcess[str]:
        body = {"model": "gpt-4o-mini", "input": f"draw cat {i}", "tools": [tool], "stream": True}
        headers = [
            "Authorization: Bearer sk-x",
            f"X-Test-Tag: tool-{i}-{gate_name}",
            "X-Fake-Usage: " + json.dumps(usage),
            f"X-Fake-Gate: {gate_name}",
        ]
        return curl(proxy, "https://api.openai.com/v1/responses", body, headers)

    results = started_together(one, gate, refused=19)
    proxy.terminate()
    rows = proxy.rows("SELECT * FROM calls ORDER BY ts")
    spent = sum((r["cost_usd"] or Decimal(0)) for r in rows)  # what the rows count
    admitted = sum(r.returncode == 0 for r in results)
    assert (admitted, spent) == (1, spent_image + text.total_price + tool_image), (
        f"{admitted=} {spent=} of {cap}"
    )
    assert sorted(r["action"] for r in rows).count("over_budget") == 19
    assert spent - cap <= one_call  # the cap overshot by at most one call's cost
    [call] = [
        r
        for r in rows
        if r["path"] == "/v1/responses" and r["api_flavor"] == "responses" and r["input_tokens"]
    ]
    [image] = [r for r in rows if r["path"] == "/v1/responses" and r["api_flavor"] == "images"]
    assert (call["model_sent"], call["input_tokens"], call["output_tokens"], call["cost_usd"]) == (
        "gpt-4o-mini", 300, 100, text.total_price,
    )  # fmt: skip
    counts = (image["input_tokens"], image["output_tokens"], image["output_image_tokens"])
    assert (image["model_sent"], *counts) == ("gpt-image-1", 0, 4160, 4160)
    assert (image["cost_usd"], image["price_model"], image["usage_source"]) == (
        tool_image, "gpt-image-1", "estimated",
    )  # fmt: skip
    assert tool_image == Decimal("0.1664") and (image["team"], image["tags"]) == (call["team"], call["tags"])


def test_two_proxies_on_one_database_share_a_budget(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """Two mitmdump processes (two sessions) writing one database hold one budget: B counts the
    calls A stored. The user's test: room for 2.67 calls, two through A, then B: one passes, the
    next is refused. Before, B counted only its own calls and the spend loaded at its start."""
    policy = """
default_environment: development
environments:
  development:
    budget: {usd: 0.002, period: day}
"""
    a = ProxyProcess(tmp_path / "a", fake_provider.port, policies=policy)
    b = ProxyProcess(tmp_path / "b", fake_provider.port, policies=policy)
    b.db_path = a.db_path
    try:
        a.start()
        b.start()
        for _ in range(2):  # gpt-4o-mini, 1000 in + 1000 out: $0.00075 each
            assert curl_openai_chat(a, tag(), chat_usage(1000, 1000)).returncode == 0
        a.wait_rows(2)  # stored: A's flush rang B, whose writer read them
        time.sleep(1.0)
        assert curl_openai_chat(b, tag(), chat_usage(1000, 1000)).returncode == 0  # $0.0015 spent
        res = curl_openai_chat(b, tag(), chat_usage(1000, 1000), extra=["-D", "-"])
        assert split_response(res.stdout)[0] == 429, res.stdout
        b.wait_rows(4)
        time.sleep(1.0)
        res = curl_openai_chat(a, tag(), chat_usage(10, 10), extra=["-D", "-"])
        assert split_response(res.stdout)[0] == 429, res.stdout  # and A counts B's call
        # Each proxy has its own live file; the status line combines them, and with A stopped it
        # still reads B's (before, the one shared file said 'off' until B handled a call).
        assert len(list(a.db_path.with_name("spend.duckdb.live").glob("*.json"))) == 2
        a.terminate()
        statusline = [
            str(ROOT / "scripts" / "spend"),
            "statusline",
            "--db",
            str(a.db_path),
            "--format",
            "json",
        ]
        deadline = time.monotonic() + 5
        while True:
            line = json.loads(subprocess.run(statusline, capture_output=True, text=True, timeout=30).stdout)
            if (line["status"], line["calls"]) == ("on", 5) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (line["status"], line["calls"], line["refused_calls"]) == ("on", 5, 2), line
        assert Decimal(line["today_usd"]) == 3 * Decimal("0.00075") + 0  # refusals cost nothing
        b.terminate()
        line = json.loads(subprocess.run(statusline, capture_output=True, text=True, timeout=30).stdout)
        assert line["status"] == "off"
    finally:
        b.cleanup()
        a.cleanup()
    rows = a.rows("SELECT session_id, action FROM calls ORDER BY ts")
    assert [r["action"] for r in rows] == ["allowed", "allowed", "allowed", "over_budget", "over_budget"]
    assert len({r["session_id"] for r in rows}) == 2
    kinds = [e["kind"] for e in a.rows("SELECT kind FROM events WHERE kind LIKE 'budget_%'")]
    assert kinds == ["budget_exhausted"]  # announced once, by one of the two
