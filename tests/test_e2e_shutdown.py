"""End to end: what happens to calls in flight when the proxy stops."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import CLIENTS, ProxyProcess
from fakeprovider import FakeProvider
from test_e2e import chat_usage, fake_headers, tag


def test_sigterm_mid_stream_keeps_the_call(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    """mitmproxy calls `done` before `error` for a stream still running: the row must not be lost."""
    t = tag()
    gate_name = f"gate-{t}"
    gate = fake_provider.gate(gate_name)
    argv = [sys.executable, str(CLIENTS / "openai_client.py"), "chat", "--stream"]
    for h in fake_headers(t, chat_usage(300, 50), gate=gate_name):
        argv += ["--header", h]
    client = subprocess.Popen(
        argv, env=proxy.client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None
        first = json.loads(client.stdout.readline())
        assert first["event"] == "chunk"  # the stream is running, upstream holds the rest
        assert proxy.terminate() is not None
    finally:
        gate.set()
        client.kill()
        client.communicate()
    [row] = proxy.rows()
    assert (row["streamed"], row["aborted"], row["status_code"]) == (True, True, 200)
    assert "proxy shut down mid-call" in row["error"]
    # No usage chunk arrived before the stop: the row carries tiktoken's estimate of the prompt.
    assert row["usage_source"] == "estimated" and row["input_tokens"] > 0


def test_calls_after_mitmproxy_reloads_the_script_are_still_metered(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    """mitmproxy reloads a script whose file changes (a git pull). It then calls ``running`` from
    sync code, which refused Interception's coroutine and skipped the Meter's: no store, and no
    call recorded for the rest of the run."""
    import os
    import time

    from conftest import ADDON

    def call(label: str) -> None:
        argv = [sys.executable, str(CLIENTS / "openai_client.py"), "chat"]
        for header in fake_headers(label, chat_usage(300, 50)):
            argv += ["--header", header]
        subprocess.run(argv, env=proxy.client_env(), check=True, capture_output=True, timeout=30)

    call(tag())
    stat = ADDON.stat()
    try:
        os.utime(ADDON, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # "changed"
        deadline = time.monotonic() + 15
        while proxy.log_text().count("tokometer: session ") < 2:
            assert time.monotonic() < deadline, proxy.log_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.utime(ADDON, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    call(tag())
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [(300, 50), (300, 50)]
    assert len({r["session_id"] for r in rows}) == 2  # the reloaded addon is a new session
