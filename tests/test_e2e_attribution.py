"""End to end: who made a call. Real client processes -> mitmdump + tokometer -> fake provider.

Each test starts its own proxy with its own policies.yaml and asserts the attribution
columns of the rows in DuckDB.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import CLIENTS, OPENAI_KEY, ProxyProcess
from fakeprovider import FakeProvider
from test_e2e import chat_usage, curl_openai_chat, tag

ROOT = Path(__file__).resolve().parent.parent
ME = pwd.getpwuid(os.getuid()).pw_name


def git_repo(parent: Path, name: str, branch: str) -> Path:
    """A folder that looks like a git checkout (HEAD on ``branch``), with a src/ subfolder."""
    repo = parent / name
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    (repo / "src").mkdir()
    return repo / "src"


def openai_call(
    proxy: ProxyProcess,
    t: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    headers: Sequence[str] = (),
) -> int:
    """One openai-SDK chat call from a client process of its own; returns the client's pid."""
    argv = [sys.executable, str(CLIENTS / "openai_client.py"), "chat", "--header", f"X-Test-Tag={t}"]
    usage = json.dumps(chat_usage(100, 20), separators=(",", ":"))
    argv += ["--header", f"X-Fake-Usage={usage}"]
    for h in headers:
        argv += ["--header", h]
    proc = subprocess.Popen(
        argv,
        env={**proxy.client_env(), **(env or {})},
        cwd=cwd or proxy.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"client failed:\n{out}\n{err}"
    return proc.pid


@pytest.fixture
def proxy_with(tmp_path: Path, fake_provider: FakeProvider) -> Iterator:
    """Factory: a proxy with the given policies.yaml text and proxy environment."""
    started: list[ProxyProcess] = []

    def start(policies: str = "default_environment: development\n", **env: str) -> ProxyProcess:
        p = ProxyProcess(tmp_path / f"proxy{len(started)}", fake_provider.port, policies=policies, env=env)
        started.append(p)
        p.start()
        return p

    yield start
    for p in started:
        p.cleanup()


def test_processes_are_attributed_by_their_own_environment(
    proxy_with, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    proxy = proxy_with()
    shop = git_repo(tmp_path, "shop-api", "feature/cheaper")
    t1, t2, t3 = tag(), tag(), tag()
    pid1 = openai_call(proxy, t1, env={"APP_ENV": "staging", "TEAM": "checkout", "FEATURE": "cart"}, cwd=shop)
    pid2 = openai_call(proxy, t2, env={"APP_ENV": "prod"})
    pid3 = openai_call(proxy, t3)
    proxy.terminate()
    rows = {r["client_pid"]: r for r in proxy.rows()}
    assert set(rows) == {pid1, pid2, pid3}, [
        (r["client_pid"], r["error"], r["user_name"]) for r in rows.values()
    ]
    staging, production, default = rows[pid1], rows[pid2], rows[pid3]
    assert (staging["environment"], staging["environment_source"]) == ("staging", "process")
    assert (staging["team"], staging["feature"]) == ("checkout", "cart")
    assert (staging["repo"], staging["git_branch"], staging["client_cwd"]) == (
        "shop-api",
        "feature/cheaper",
        str(shop),
    )
    assert staging["client_process"].startswith("python")
    assert staging["user_name"] == ME
    assert (production["environment"], production["environment_source"]) == ("production", "process")
    assert (default["environment"], default["environment_source"]) == ("development", "default")
    assert default["team"] is None and default["repo"] is None
    assert all(r["error"] is None for r in rows.values())


def test_header_wins_over_process_and_never_reaches_upstream(proxy_with, fake_provider: FakeProvider) -> None:
    proxy = proxy_with()
    t = tag()
    header = '{"env":"production","team":"backend","feature":"search","ticket":"T-42"}'
    openai_call(proxy, t, env={"APP_ENV": "staging", "TEAM": "other"}, headers=[f"X-Metering-Tags={header}"])
    proxy.terminate()
    [row] = proxy.rows()
    assert (row["environment"], row["environment_source"]) == ("production", "header")
    assert (row["team"], row["feature"]) == ("backend", "search")
    assert json.loads(row["tags"]) == {"ticket": "T-42"}
    [seen] = fake_provider.requests_for(t)
    assert "x-metering-tags" not in seen.headers


def test_key_mapping_decides_without_a_header(proxy_with, fake_provider: FakeProvider) -> None:
    ci_key = "sk-ci-0000000000000000000000000000Zq9x"
    policies = f"""
default_environment: development
keys:
  ci-openai:
    last4: "{ci_key[-4:]}"
    environment: staging
    team: platform
    feature: evals
"""
    proxy = proxy_with(policies)
    t_key, t_other = tag(), tag()
    openai_call(proxy, t_key, env={"APP_ENV": "production", "OPENAI_API_KEY": ci_key})
    openai_call(proxy, t_other, env={"APP_ENV": "production"})
    proxy.terminate()
    rows = {r["key_name"]: r for r in proxy.rows()}
    assert set(rows) == {"ci-openai", None}
    mapped = rows["ci-openai"]
    assert (mapped["environment"], mapped["environment_source"]) == ("staging", "key")
    assert (mapped["team"], mapped["feature"]) == ("platform", "evals")
    assert ci_key not in json.dumps(mapped, default=str)
    assert (rows[None]["environment"], rows[None]["environment_source"]) == ("production", "process")


def test_malformed_header_is_ignored_and_the_row_says_why(proxy_with, fake_provider: FakeProvider) -> None:
    proxy = proxy_with()
    t = tag()
    openai_call(proxy, t, env={"APP_ENV": "staging"}, headers=["X-Metering-Tags={env: production"])
    proxy.terminate()
    [row] = proxy.rows()
    assert (row["environment"], row["environment_source"]) == ("staging", "process")
    assert row["input_tokens"] == 100 and row["cost_usd"] is not None
    assert "X-Metering-Tags ignored: not valid JSON" in row["error"]
    assert "x-metering-tags" not in fake_provider.requests_for(t)[0].headers


def test_host_rule_and_forced_environment(proxy_with, fake_provider: FakeProvider) -> None:
    import socket

    host = socket.gethostname()
    proxy = proxy_with(
        f'default_environment: development\nattribution:\n  hosts:\n    "{host[:2]}*": staging\n'
    )
    openai_call(proxy, tag())
    openai_call(proxy, tag(), env={"APP_ENV": "production"})
    proxy.terminate()
    by_source = {r["environment_source"]: r["environment"] for r in proxy.rows()}
    assert by_source == {"host": "staging", "process": "production"}

    forced = proxy_with("default_environment: development\n", TOKOMETER_ENVIRONMENT="staging")
    curl_openai_chat(forced, tag(), chat_usage(5, 5))
    forced.terminate()
    [row] = forced.rows()
    assert (row["environment"], row["environment_source"]) == ("staging", "forced")


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_another_users_process_falls_back_cleanly(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """A proxy without privileges cannot read another user's process: no crash, default environment.

    The proxy runs as root with every capability dropped (so, like any user, it may not read
    another user's /proc/PID/environ or fds); the client is curl running as `nobody`.
    """
    nobody = pwd.getpwnam("nobody")
    proxy = ProxyProcess(tmp_path / "p", fake_provider.port)
    proxy.command_prefix = ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--")
    shared = Path(tempfile.mkdtemp(prefix="tokometer-ca-"))
    try:
        proxy.start()
        os.chmod(shared, 0o755)
        ca = shared / "ca.pem"
        shutil.copy(proxy.ca_path, ca)
        os.chmod(ca, 0o644)
        t = tag()
        usage = json.dumps(chat_usage(100, 20), separators=(",", ":"))
        env = {**proxy.client_env(), "APP_ENV": "production", "CURL_CA_BUNDLE": str(ca), "HOME": str(shared)}
        res = subprocess.run(
            [
                "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--",
                "curl", "-sS", "--fail-with-body", "https://api.openai.com/v1/chat/completions",
                "-H", f"Authorization: Bearer {OPENAI_KEY}", "-H", "Content-Type: application/json",
                "-H", f"X-Test-Tag: {t}", "-H", f"X-Fake-Usage: {usage}",
                "-d", '{"model":"gpt-4o-mini","messages":[]}',
            ],
            env=env, cwd=shared, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        proxy.terminate()
        [row] = proxy.rows()
        assert (row["environment"], row["environment_source"]) == ("development", "default")
        assert row["user_name"] == "nobody"  # the socket's owner is still known from /proc/net/tcp
        assert row["input_tokens"] == 100 and row["cost_usd"] is not None
        assert "calling process" not in (row["error"] or "")
    finally:
        proxy.cleanup()
        shutil.rmtree(shared, ignore_errors=True)


def test_shell_env_eval_then_curl_and_openai_sdk(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t_curl, t_sdk = tag(), tag()
    xdg = proxy.tmp / "client-xdg"
    usage = json.dumps(chat_usage(10, 2), separators=(",", ":"))
    script = f"""
set -euo pipefail
eval "$({ROOT}/scripts/shell-env --port {proxy.port} --confdir {proxy.confdir} --env staging)"
echo "vars: $HTTPS_PROXY $https_proxy $NO_PROXY $APP_ENV"
echo "trust: $SSL_CERT_FILE $REQUESTS_CA_BUNDLE $CURL_CA_BUNDLE $NODE_EXTRA_CA_CERTS"
curl -sS --fail-with-body https://api.openai.com/v1/chat/completions \\
  -H "Authorization: Bearer $OPENAI_API_KEY" -H "Content-Type: application/json" \\
  -H "X-Test-Tag: {t_curl}" -H 'X-Fake-Usage: {usage}' -d '{{"model":"gpt-4o-mini","messages":[]}}' >/dev/null
{sys.executable} {CLIENTS / "openai_client.py"} chat --header X-Test-Tag={t_sdk} >/dev/null
eval "$({ROOT}/scripts/shell-env --unset)"
echo "after: ${{HTTPS_PROXY:-unset}} ${{SSL_CERT_FILE:-unset}} ${{APP_ENV:-unset}}"
"""
    env = {k: v for k, v in proxy.client_env().items() if k not in ("HTTPS_PROXY", "https_proxy")}
    for name in ("SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        env.pop(name, None)
    env["XDG_DATA_HOME"] = str(xdg)
    res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    [bundle] = (xdg / "tokometer").glob(
        "ca-bundle-" + "[0-9a-f]" * 12 + ".pem"
    )  # named after the roots and the CA
    proxy_url = f"http://127.0.0.1:{proxy.port}"
    lines = res.stdout.splitlines()
    assert lines[0] == f"vars: {proxy_url} {proxy_url} localhost,127.0.0.1,::1 staging"
    assert lines[1] == f"trust: {bundle} {bundle} {bundle} {proxy.ca_path}"
    assert lines[-1] == "after: unset unset unset"
    text = bundle.read_text()
    assert text.endswith(proxy.ca_path.read_text())
    assert text.count("BEGIN CERTIFICATE") > 50  # the public roots are kept
    proxy.terminate()
    rows = proxy.rows()
    assert len(rows) == 2 and {r["environment"] for r in rows} == {"staging"}
    assert {r["client_process"] for r in rows} == {"curl", os.path.basename(sys.executable)[:15]}
    assert len(fake_provider.requests_for(t_curl)) == 1 and len(fake_provider.requests_for(t_sdk)) == 1


def test_shell_env_without_a_ca_says_how_to_fix(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(ROOT / "scripts" / "shell-env"), "--confdir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
    )
    assert res.returncode == 1 and res.stdout == ""
    assert "does not exist yet" in res.stderr and "scripts/proxy" in res.stderr
    assert OPENAI_KEY not in res.stderr
