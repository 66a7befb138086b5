"""End to end: a Sora video with the real openai SDK (``client.videos.create``, a multipart form with a
2 MB reference image) through the proxy to the fake OpenAI; its row asserted in DuckDB: billed at
what the job says, reserved against the budget, an error answer not billed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import ProxyProcess
from fakeprovider import FakeProvider
from test_e2e import run_client

POLICIES = """
default_environment: development
environments:
  development:
    models:
      allow: [sora-2, sora-2-pro]
    budget: {usd: 100, period: day}
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("videos"), fake_provider.port, policies=POLICIES)
    try:
        p.start()
        yield p
    finally:
        p.cleanup()


def video(proxy: ProxyProcess, label: str, *args: str, **fake: str) -> tuple[int, list[dict]]:
    """``client.videos.create`` through the proxy; its row carries ``label`` as its feature."""
    headers = [f"X-Test-Tag={label}", "X-Metering-Tags=" + json.dumps({"feature": label})]
    headers += [f"X-Fake-{k.replace('_', '-').title()}={v}" for k, v in fake.items()]
    return run_client(proxy, "openai_media_client.py", "video", *args, headers=headers)


def row_of(proxy: ProxyProcess, label: str) -> dict[str, Any]:
    [row] = proxy.rows("SELECT * FROM calls WHERE feature = ?", [label])
    return row


def test_a_sora_video_is_billed_at_what_its_job_says(
    proxy: ProxyProcess, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    image = tmp_path / "reference.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2_000_000))
    code, events = video(
        proxy, "sora-pro", "--model", "sora-2-pro", "--seconds", "4", "--size", "1792x1024",
        "--file", str(image), video_seconds="8",
    )  # fmt: skip
    assert code == 0
    assert events[-1]["job"]["seconds"] == "8" and events[-1]["job"]["status"] == "queued"
    [upstream] = fake_provider.requests_for("sora-pro")
    assert upstream.form["model"] == b"sora-2-pro" and len(upstream.body) > 2_000_000  # sent whole
    row = row_of(proxy, "sora-pro")
    assert (row["api_flavor"], row["path"], row["status_code"], row["action"]) == (
        "video", "/v1/videos", 200, "allowed"
    )  # fmt: skip
    assert (row["model_requested"], row["model_reported"]) == ("sora-2-pro", "sora-2-pro")
    # the job's 8 s (the request asked 4) of sora-2-pro at 1792x1024, $0.50/s
    assert (row["cost_usd"], row["price_status"]) == (Decimal("4.00"), "priced")
    assert "8 s x $0.5/s" in row["price_source"]


def test_a_video_answered_with_an_error_is_not_billed(proxy: ProxyProcess) -> None:
    code, events = video(proxy, "sora-error", "--model", "sora-2", "--seconds", "12", status="400")
    assert code == 3 and events[-1]["status"] == 400
    row = row_of(proxy, "sora-error")
    assert (row["api_flavor"], row["status_code"], row["cost_usd"], row["price_status"]) == (
        "video", 400, Decimal(0), "not_billed"
    )  # fmt: skip
