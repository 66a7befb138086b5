"""Review 29, end to end (real mitmdump + the addon, the fake provider over HTTPS, real curl and
scripts/shell-env): only the claims found broken.

Verified working end to end and not kept here: a block_list kill (444) is a $0 ``not_billed`` row
that takes no rate-limit slot; an upstream connect failure's three SDK tries are three $0 rows,
502 each, never 429 under a 1-per-minute limit; a ``--server-replay`` answer (plain and streamed)
is not billed and takes no slot; a body whose ``Content-Encoding: utf-8`` fails leaves its
completion (or prompt) in no file nor log; Veo ``:predictLongRunning`` by curl (Gemini API and
Vertex AI) and Sora ``client.videos.create`` billed at the listed rates, the budget refusing once
spent; scripts/proxy shows a SOCKS proxy's password as ``***``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

from conftest import OPENAI_KEY, ROOT, ProxyProcess, scrubbed_environ
from fakeprovider import FakeProvider, make_cert
from test_e2e import curl, curl_openai_chat

RPM1 = """
default_environment: development
environments:
  development:
    rate_limit: {requests_per_minute: 1}
"""


def test_a_call_block_listed_with_a_status_keeps_its_attribution_and_is_not_called_upstreams(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    """``block_list=:~u chat/completions:403``: mitmproxy answers 403 itself. The row is $0
    ``not_billed`` and the next call is not 429 (right), but it lost everything the request hook
    reads (model, X-Metering-Tags, user, process: all NULL, ``environment_source`` NULL) and its
    ``error`` says ``upstream answered 403`` though the provider was never called. The same
    block with 444 (a kill) keeps them all and says ``Connection killed.``."""
    proxy = ProxyProcess(
        tmp_path,
        fake_provider.port,
        policies=RPM1,
        extra_args=("--set", "block_list=:~u chat/completions:403"),
    )
    try:
        proxy.start()
        t = os.urandom(6).hex()
        tags = json.dumps({"test": t})
        usage = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
        res = curl_openai_chat(proxy, t, usage, more_headers=[f"X-Metering-Tags: {tags}"])
        assert res.returncode != 0 and fake_provider.requests_for(t) == []
        body = {"model": "gpt-4o-mini", "input": "hi"}
        auth = [f"Authorization: Bearer {OPENAI_KEY}"]
        nxt = curl(
            proxy,
            "https://api.openai.com/v1/responses",
            body,
            auth,
            ["-o", "/dev/null", "-w", "%{http_code}"],
        )
        assert nxt.stdout == "200"
        [row] = proxy.rows("SELECT * FROM calls WHERE path = '/v1/chat/completions'")
        assert (row["cost_usd"], row["price_status"]) == (Decimal(0), "not_billed")
        got = (row["model_requested"], row["tags"], row["client_process"], row["environment_source"])
        assert got == ("gpt-4o-mini", tags, "curl", "default")  # was (None, None, None, None)
        assert not row["error"].startswith("upstream answered")  # was 'upstream answered 403'
    finally:
        proxy.cleanup()


def test_shell_env_prints_no_socks_proxys_password(tmp_path: Path) -> None:
    """``HTTPS_PROXY=socks5h://alice:PASSWORD@127.0.0.1:1``: scripts/proxy shows it as
    ``alice:***``, but ``scripts/shell-env`` prints it whole on stdout,
    ``export TOKOMETER_SAVED_HTTPS_PROXY=socks5h://alice:PASSWORDz9q@127.0.0.1:1`` (to put it back on
    ``--unset``; ``"$HTTPS_PROXY"`` would keep it aside without printing it)."""
    pw = "PASSWORDz9q"
    home = tmp_path / "h"
    (home / ".mitmproxy").mkdir(parents=True)
    cert, _key = make_cert(tmp_path, "ca", ["localhost"])  # stands in for mitmproxy's CA
    shutil.copy(cert, home / ".mitmproxy" / "mitmproxy-ca-cert.pem")
    env = {**scrubbed_environ(), "HOME": str(home), "HTTPS_PROXY": f"socks5h://alice:{pw}@127.0.0.1:1"}
    res = subprocess.run(
        [str(ROOT / "scripts" / "shell-env")], env=env, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    assert "export HTTPS_PROXY=http://127.0.0.1:" in res.stdout
    assert pw not in res.stdout + res.stderr
