"""Behind a company proxy: scripts/proxy chains tokometer to it (mitmproxy's upstream mode).

Unit tests of the choice (addon.upstream_proxy), and end to end: scripts/proxy started with
HTTPS_PROXY naming a small CONNECT proxy on 127.0.0.1 that wants credentials; a metered call and a
tunneled one both go through it, the credentials reach it and never mitmdump's command line.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, ProxyProcess
from fakeprovider import FakeProvider, OtherSite
from test_e2e import chat_usage, curl, curl_openai_chat, tag

from addon.upstream_proxy import UPSTREAM_AUTH_VAR, Upstream, shown_proxy, upstream_from_env


@pytest.mark.parametrize(
    ("environ", "args", "expected"),
    [
        ({}, [], None),
        (
            {"HTTPS_PROXY": "http://proxy.corp:3128"},
            [],
            Upstream("upstream:http://proxy.corp:3128", None, "HTTPS_PROXY"),
        ),
        (
            {"https_proxy": "proxy.corp:3128"},
            [],
            Upstream("upstream:http://proxy.corp:3128", None, "https_proxy"),
        ),
        (
            {"ALL_PROXY": "https://proxy.corp"},
            [],
            Upstream("upstream:https://proxy.corp:443", None, "ALL_PROXY"),
        ),
        (
            {"HTTPS_PROXY": "http://me%40corp:p%3Ass@proxy.corp:8080"},
            [],
            Upstream("upstream:http://proxy.corp:8080", "me@corp:p:ss", "HTTPS_PROXY"),
        ),
        (
            {"HTTPS_PROXY": "http://[fd00::1]:3128"},
            [],
            Upstream("upstream:http://[fd00::1]:3128", None, "HTTPS_PROXY"),
        ),
        # itself (scripts/proxy's default listener), on any loopback spelling
        ({"HTTPS_PROXY": "http://127.0.0.1:8080"}, [], None),
        ({"HTTPS_PROXY": "http://localhost:8080"}, [], None),
        ({"HTTPS_PROXY": "http://localhost:9090"}, ["--listen-port", "9090"], None),
        ({"HTTPS_PROXY": "http://127.0.0.1:9090"}, ["--listen-port=9090"], None),
        # another local proxy (a company's agent on the laptop) is chained to
        (
            {"HTTPS_PROXY": "http://127.0.0.1:3128"},
            [],
            Upstream("upstream:http://127.0.0.1:3128", None, "HTTPS_PROXY"),
        ),
        # a shell shell-env pointed at tokometer: its own value, kept aside
        (
            {
                "TOKOMETER_SHELL_ENV": "HTTPS_PROXY,https_proxy,HTTP_PROXY,http_proxy",
                "HTTPS_PROXY": "http://127.0.0.1:9999",
                "https_proxy": "http://127.0.0.1:9999",
                "TOKOMETER_SAVED_HTTPS_PROXY": "http://proxy.corp:3128",
            },
            [],
            Upstream("upstream:http://proxy.corp:3128", None, "TOKOMETER_SAVED_HTTPS_PROXY"),
        ),
        (
            {"TOKOMETER_SHELL_ENV": "HTTPS_PROXY,https_proxy", "HTTPS_PROXY": "http://127.0.0.1:9999"},
            [],
            None,
        ),
        # not chainable, or the user chose a mode
        ({"HTTPS_PROXY": "socks5://proxy.corp:1080"}, [], None),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, ["--mode", "regular"], None),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, ["--mode=transparent"], None),
    ],
)
def test_which_proxy_is_chained_to(
    environ: dict[str, str], args: list[str], expected: Upstream | None
) -> None:
    assert upstream_from_env(environ, args) == expected


class ConnectProxy:
    """A company proxy: CONNECT only, Basic credentials required; records what it was asked."""

    def __init__(self, user: str, password: str) -> None:
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.connects: list[tuple[str, str | None]] = []  # (target, Proxy-Authorization)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            auth = next((v for k, v in headers.items() if k.lower() == "proxy-authorization"), None)
            self.connects.append((target, auth))
            if method != "CONNECT" or auth != self.expected:
                conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._relay(conn, upstream)

    @staticmethod
    def _relay(a: socket.socket, b: socket.socket) -> None:
        while True:
            ready, _, _ = select.select([a, b], [], [], 30)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)

    def close(self) -> None:
        self._sock.close()


class LauncherProxy(ProxyProcess):
    """``scripts/proxy`` instead of mitmdump (it adds -s and its defaults; later options win)."""

    def _argv(self) -> list[str]:
        argv = super()._argv()
        j = argv.index("-s")
        argv[j - 1 : j + 2] = [str(ROOT / "scripts" / "proxy")]
        return argv


@pytest.fixture
def company_proxy() -> Iterator[ConnectProxy]:
    proxy = ConnectProxy("me@corp", "s3cret:pw")
    yield proxy
    proxy.close()


def test_scripts_proxy_goes_on_through_the_company_proxy(
    tmp_path: Path, fake_provider: FakeProvider, company_proxy: ConnectProxy, other_site: OtherSite
) -> None:
    env = {"HTTPS_PROXY": f"http://me%40corp:s3cret%3Apw@127.0.0.1:{company_proxy.port}"}
    proxy = LauncherProxy(tmp_path / "p", fake_provider.port, env=env)
    try:
        proxy.start()
        assert f"calls go on through the proxy http://127.0.0.1:{company_proxy.port}" in proxy.log_text()
        cmdline = Path(f"/proc/{proxy.proc.pid}/cmdline").read_bytes()  # type: ignore[union-attr]
        assert (
            b"s3cret" not in cmdline and f"upstream:http://127.0.0.1:{company_proxy.port}".encode() in cmdline
        )
        t = tag()
        res = curl_openai_chat(proxy, t, chat_usage(30, 5))
        assert res.returncode == 0, res.stdout + res.stderr
        assert len(fake_provider.requests_for(t)) == 1
        assert company_proxy.connects == [(f"127.0.0.1:{fake_provider.port}", company_proxy.expected)]
        # Another host is tunneled untouched (its own certificate), through the company proxy too.
        res = curl(
            proxy, f"https://localhost:{other_site.port}/", extra=["--cacert", str(other_site.cert_path)]
        )
        assert (res.returncode, res.stdout) == (0, "hello from the other site\n"), res.stderr
        assert company_proxy.connects[1] == (f"localhost:{other_site.port}", company_proxy.expected)
        proxy.terminate()
        [row] = proxy.rows()
        assert (row["input_tokens"], row["output_tokens"], row["status_code"]) == (30, 5, 200)
        assert row["cost_usd"] is not None
        # The credentials are nowhere tokometer or mitmproxy wrote (database, journal, log, confdir).
        written = [p for p in proxy.tmp.rglob("*") if p.is_file()]
        assert any(p.suffix == ".duckdb" for p in written) and proxy.log_path in written
        secrets = (b"s3cret", company_proxy.expected.split()[1].encode())  # as typed, and as sent
        assert not [p for p in written if any(secret in p.read_bytes() for secret in secrets)]
    finally:
        proxy.cleanup()
    assert UPSTREAM_AUTH_VAR not in env  # handed to mitmdump by scripts/proxy, not set here


@pytest.mark.parametrize(
    "args",
    [
        ["-p", "9090"],
        ["-p9090"],
        ["--set", "listen_port=9090"],
        ["--listen-port=9090"],
        ["--listen-port", "9090"],
    ],
)
def test_every_spelling_of_the_listen_port_is_seen_as_itself(args: list[str]) -> None:
    """scripts/proxy -p 9090 with HTTPS_PROXY=http://localhost:9090 chained to itself (502s)."""
    assert upstream_from_env({"HTTPS_PROXY": "http://localhost:9090"}, args) is None


def test_a_malformed_listen_port_is_left_to_mitmdump() -> None:
    chosen = upstream_from_env({"HTTPS_PROXY": "http://proxy.corp:3128"}, ["--listen-port=abc"])
    assert chosen is not None and chosen.mode == "upstream:http://proxy.corp:3128"
    assert upstream_from_env({"HTTPS_PROXY": "http://proxy.corp:notaport"}, []) is None


def test_listening_on_every_interface_this_machines_name_is_itself() -> None:
    import socket

    args = ["--listen-host", "0.0.0.0", "--listen-port", "9090"]
    assert upstream_from_env({"HTTPS_PROXY": f"http://{socket.gethostname()}:9090"}, args) is None
    assert upstream_from_env({"HTTPS_PROXY": "http://127.0.0.1:9090"}, args) is None
    assert upstream_from_env({"HTTPS_PROXY": "http://proxy.corp:9090"}, args) is not None


def test_the_roots_the_shell_trusts_are_the_proxys_for_providers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Behind a company proxy that inspects TLS (its CA in the shell's bundle, kept aside by shell-env),
    mitmproxy verified providers against certifi: every call failed. The shell's roots are passed on."""
    from addon import shell_env, upstream_proxy

    for name in (*shell_env.BUNDLE_VARS, *shell_env.EXTRA_CA_VARS, "TOKOMETER_SHELL_ENV", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    corp = tmp_path / "corp-bundle.pem"
    corp.write_text("-----BEGIN CERTIFICATE-----\nMIIBcorp\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("TOKOMETER_SHELL_ENV", "HTTPS_PROXY,SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "xdg" / "tokometer" / "ca-bundle-x.pem"))
    monkeypatch.setenv("TOKOMETER_SAVED_SSL_CERT_FILE", str(corp))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:8080")
    monkeypatch.setenv("TOKOMETER_SAVED_HTTPS_PROXY", "http://proxy.corp:3128")
    assert upstream_proxy.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["--set", lines[1]] and lines[1].startswith("ssl_verify_upstream_trusted_ca=")
    assert Path(lines[1].split("=", 1)[1]).read_text() == corp.read_text()
    assert lines[2:] == ["--mode", "upstream:http://proxy.corp:3128"]
    # the machine's own roots: nothing to pass (certifi is as good); a choice of the user's own wins
    monkeypatch.delenv("TOKOMETER_SAVED_SSL_CERT_FILE")
    assert upstream_proxy.main([]) == 0
    assert capsys.readouterr().out.splitlines() == ["--mode", "upstream:http://proxy.corp:3128"]
    monkeypatch.setenv("TOKOMETER_SAVED_SSL_CERT_FILE", str(corp))
    assert upstream_proxy.main(["--set", "ssl_verify_upstream_trusted_ca=/mine.pem"]) == 0
    assert capsys.readouterr().out.splitlines() == ["--mode", "upstream:http://proxy.corp:3128"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("socks5h://alice:s3cret@proxy.corp:1080", "socks5h://alice:***@proxy.corp:1080"),
        ("alice:s3cret@proxy.corp:3128", "alice:***@proxy.corp:3128"),  # no scheme
        ("http://alice:s3c@r/t#x@proxy.corp:3128", "http://alice:***@proxy.corp:3128"),  # unescaped @ / #
        ("http://alice:s3c://ret@proxy.corp", "http://alice:***@proxy.corp"),
        ("alice:s3cr://et@proxy:8080", "alice:***@proxy:8080"),  # no scheme, "://" in the password
        ("alice:s3cr://et:x@y@proxy:8080", "alice:***@proxy:8080"),
        ("http://alice:a:b@proxy.corp", "http://alice:***@proxy.corp"),
        ("http://alice:@proxy.corp", "http://alice:***@proxy.corp"),  # an empty one: still not shown
        ("http://alice@proxy.corp:3128", "http://***@proxy.corp:3128"),  # a user alone may be a token
        ("http://proxy.corp:3128", "http://proxy.corp:3128"),
        ("not a url", "not a url"),
    ],
)
def test_a_proxy_url_is_shown_without_its_password(value: str, shown: str) -> None:
    assert shown_proxy(value) == shown


def test_a_proxy_url_no_parser_reads_is_reported_not_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    """``urlsplit`` raises ValueError ("Invalid IPv6 URL") on an unclosed ``[``: the proxy said so
    (without the password) and chained to none, where it raised out of scripts/proxy before."""
    environ = {"HTTPS_PROXY": "http://alice:s3cret@[fd00::1:3128", "ALL_PROXY": "http://proxy.corp:3128"}
    assert upstream_from_env(environ) == Upstream("upstream:http://proxy.corp:3128", None, "ALL_PROXY")
    err = capsys.readouterr().err
    assert err == "tokometer: HTTPS_PROXY=http://alice:***@[fd00::1:3128 is not a URL\n"


def test_a_schemeless_proxy_whose_password_holds_a_scheme_mark_is_reported_without_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``alice:s3cr://et@proxy:8080``: read as the URL of scheme ``alice`` (not an HTTP proxy), and
    its message printed the value whole, password included, taking ``alice:s3cr`` for a scheme."""
    assert upstream_from_env({"HTTPS_PROXY": "alice:s3cr://et@proxy:8080"}) is None
    err = capsys.readouterr().err
    assert err == "tokometer: HTTPS_PROXY=alice:***@proxy:8080 is not an HTTP proxy mitmproxy can chain to\n"
