"""End to end: seeing spend as it happens, through a real mitmdump.

The per-call lines in the proxy's terminal, the budget webhook (once per threshold, not per
call), the status line from the live-state file, and `scripts/shell-env --exec`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import CLIENTS, ProxyProcess
from fakeprovider import FakeProvider
from test_e2e import chat_usage, curl_openai_chat, fake_headers, tag

ROOT = Path(__file__).resolve().parent.parent
TIME = r"\d\d:\d\d:\d\d"


@pytest.fixture
def webhook() -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    received.append({"url": f"http://127.0.0.1:{server.server_address[1]}/hook"})
    yield received
    server.shutdown()
    server.server_close()


def test_call_lines_budget_webhook_and_statusline(
    tmp_path: Path, fake_provider: FakeProvider, webhook: list[dict[str, Any]]
) -> None:
    url = webhook.pop(0)["url"]
    policies = f"""
default_environment: development
environments:
  development:
    models: {{allow: [gpt-4o-mini], downgrade: {{gpt-4o: gpt-4o-mini}}}}
    budget: {{usd: 0.002, period: day, alert_at: [0.5]}}
notifications: {{desktop: false, webhook: "{url}"}}
"""
    proxy = ProxyProcess(tmp_path / "p", fake_provider.port, policies=policies)
    try:
        proxy.start()
        # gpt-4o-mini, 1000 in + 1000 out = $0.00075 a call; the cap is $0.002
        assert curl_openai_chat(proxy, tag(), chat_usage(1000, 1000, cached=200)).returncode == 0
        assert curl_openai_chat(proxy, tag(), chat_usage(1000, 1000), model="gpt-4o").returncode == 0
        proxy.wait_rows(2)
        # The live file the statusline reads is rewritten at most every 0.5 s.
        deadline = time.monotonic() + 5
        statusline = [
            str(ROOT / "scripts" / "spend"),
            "statusline",
            "--db",
            str(proxy.db_path),
            "--format",
            "json",
        ]
        while True:
            status = subprocess.run(statusline, capture_output=True, text=True, timeout=30)
            line = json.loads(status.stdout)
            if line["calls"] == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (line["status"], line["environment"], line["calls"]) == ("on", "development", 2)
        assert Decimal(line["today_usd"]) == Decimal("0.000735") + Decimal("0.00075")
        assert curl_openai_chat(proxy, tag(), chat_usage(1000, 1000)).returncode == 0  # crosses the cap
        proxy.wait_rows(3)
        refused = curl_openai_chat(proxy, tag(), chat_usage(10, 10))
        assert refused.returncode != 0 and "budget" in refused.stdout
        blocked = curl_openai_chat(proxy, tag(), chat_usage(10, 10), model="o3")
        assert blocked.returncode != 0
        proxy.terminate()
        log = proxy.log_text()
    finally:
        proxy.cleanup()
    calls = [
        line.split("] ", 1)[-1] for line in log.splitlines() if re.search(rf"\] {TIME} development ", line)
    ]
    assert len(calls) == 5
    assert re.fullmatch(
        rf"{TIME} development  openai gpt-4o-mini  1,000 in / 200 cached / 1,000 out  \$0\.000735  "
        r"session \$0\.000735",
        calls[0],
    ), calls[0]
    assert re.fullmatch(
        rf"{TIME} development  openai gpt-4o -> gpt-4o-mini  1,000 in / 0 cached / 1,000 out  \$0\.00075  "
        r"session \$0\.001485",
        calls[1],
    ), calls[1]
    assert re.fullmatch(
        rf"{TIME} development  openai gpt-4o-mini  OVER BUDGET 429  session \$0\.002235  .+", calls[3]
    )
    assert re.fullmatch(rf"{TIME} development  openai o3  BLOCKED 403  session \$0\.002235  .+", calls[4])
    assert "\x1b[" not in "".join(calls)  # no colour: the log is not a terminal
    # one line per call: mitmproxy's connect, disconnect and streaming lines are not shown
    assert not re.search(r"client connect|server connect|client disconnect|Streaming response", log), log
    # one message per threshold crossed, not per call: the 50% alert, then the cap
    assert [(m["kind"], m["scope_name"]) for m in webhook] == [
        ("budget_alert", "development"),
        ("budget_exhausted", "development"),
    ]
    assert all(isinstance(m["text"], str) and "development" in m["text"] for m in webhook)


def test_shell_env_exec_runs_one_command_through_the_proxy(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    t = tag()
    argv = [
        str(ROOT / "scripts" / "shell-env"), "--port", str(proxy.port), "--confdir", str(proxy.confdir),
        "--exec", "--env", "staging", "--",
        sys.executable, str(CLIENTS / "openai_client.py"), "chat",
    ]  # fmt: skip
    for h in fake_headers(t, chat_usage(40, 2)):
        argv += ["--header", h]
    env = {
        k: v
        for k, v in proxy.client_env().items()
        if k not in ("HTTPS_PROXY", "https_proxy", "SSL_CERT_FILE")
    }
    env["XDG_DATA_HOME"] = str(proxy.tmp / "xdg")
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["event"] == "result"
    proxy.terminate()
    [row] = proxy.rows()
    assert (row["environment"], row["environment_source"], row["input_tokens"]) == ("staging", "process", 40)
    assert len(fake_provider.requests_for(t)) == 1
