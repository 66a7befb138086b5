"""Security, end to end: where the proxy listens, who can read its files, and that no secret lands on disk.

- Listening: mitmdump with the addon and no ``--listen-host`` (and ``scripts/proxy``) accepts
  connections on loopback only; ``--listen-host 0.0.0.0`` (or another address) works but logs
  a warning. These proxies run in a network namespace of their own (``unshare -n``) whose
  loopback also carries a non-loopback address, 198.18.0.1 (RFC 2544 benchmark range), so
  "reachable from another interface" is tested by connecting to it without any traffic
  leaving the namespace and without exposing a proxy on this machine's real interfaces.
- Files: the database, its folder, the journal folder and files, the live-state file are
  owner-only (0600 files, 0700 folders), under the usual umask 022 and under umask 000.
  mitmproxy's CA private key (``mitmproxy-ca.pem``, ``mitmproxy-ca.p12`` in its confdir) is 0600.
  The combined CA bundle (``scripts/shell-env``) is 0644 on purpose: it holds only public
  certificates (the system's roots, world-readable in /etc/ssl, and mitmproxy's CA
  certificate, which mitmproxy itself writes 0644 to hand to clients), never a key; it lives
  in tokometer's 0700 data folder anyway.
- Secrets: calls with recognisable API keys (headers and a Gemini ``?key=``) and prompt text,
  streamed, aborted, refused, failed, malformed; then every file under the test's folder
  (database and WAL, journal while it still holds the calls, live state, the proxy's log,
  the events table) is searched for them, bytes and a full SQL dump: none may appear; the
  keys' fingerprints do (the positive control that the search looks in the right places).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ProxyProcess
from fakeprovider import FakeProvider

from addon.api_keys import key_fingerprint
from addon.record import COLUMNS

NS_ADDR = "198.18.0.1"  # a non-loopback address inside the proxy's own network namespace
NS_SETUP = f"ip link set lo up && ip addr add {NS_ADDR}/32 dev lo"
STARTUP_TIMEOUT_S = 20.0
SCRIPT_STARTUP_TIMEOUT_S = 90.0  # scripts/proxy may first (re)install .venv


# ---------------------------------------------------------------- helpers: sockets and namespaces


def _decode_addr(hex_ip: str) -> str:
    """An address of /proc/net/tcp{,6} (host byte order, 32-bit words) as text."""
    raw = bytes.fromhex(hex_ip)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def listening_addrs(pid: int, port: int) -> list[str]:
    """The local addresses with a TCP socket LISTENing on ``port`` in the network namespace of ``pid``."""
    found: list[str] = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            hex_ip, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.append(_decode_addr(hex_ip))
    return sorted(found)


def netns_available() -> bool:
    """Can this machine give a process its own network namespace (root, unshare, ip)?"""
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return False
    res = subprocess.run(["unshare", "-n", "--", "sh", "-c", NS_SETUP], capture_output=True, timeout=10)
    return res.returncode == 0


needs_netns = pytest.mark.skipif(not netns_available(), reason="needs unshare -n (root) and ip")

_CONNECT_PROBE = """
import json, socket, sys
out = {}
for addr in sys.argv[2:]:
    try:
        socket.create_connection((addr, int(sys.argv[1])), timeout=2).close()
        out[addr] = "open"
    except OSError as exc:
        out[addr] = type(exc).__name__
print(json.dumps(out))
"""


def connect_from_namespace(pid: int, port: int, addrs: list[str]) -> dict[str, str]:
    """Try a TCP connection to each address from inside the network namespace of ``pid``."""
    res = subprocess.run(
        [
            "nsenter",
            f"--net=/proc/{pid}/ns/net",
            "--",
            sys.executable,
            "-c",
            _CONNECT_PROBE,
            str(port),
            *addrs,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


class NamespacedProxy(ProxyProcess):
    """A proxy alone in a new network namespace (its loopback also holds ``NS_ADDR``).

    ``listen_host=None`` drops ``--listen-host`` (the addon's default applies); ``launcher``
    ``"scripts/proxy"`` runs the project's launcher instead of mitmdump directly.
    """

    def __init__(
        self, tmp: Path, fake_port: int, listen_host: str | None, launcher: str = "mitmdump"
    ) -> None:
        super().__init__(tmp, fake_port)
        self.listen_host = listen_host
        self.launcher = launcher
        self.command_prefix = ("unshare", "-n", "--", "sh", "-c", NS_SETUP + ' && exec "$@"', "sh")

    def _argv(self) -> list[str]:
        argv = super()._argv()
        i = argv.index("--listen-host")
        if self.listen_host is None:
            del argv[i : i + 2]
        else:
            argv[i + 1] = self.listen_host
        if self.launcher == "scripts/proxy":
            # scripts/proxy adds -s, --listen-host 127.0.0.1 and --listen-port 8080 itself;
            # the later --listen-port wins.
            j = argv.index("-s")
            argv[j - 1 : j + 2] = [str(ROOT / "scripts" / "proxy")]
        return argv

    def start(self) -> None:
        """Start and wait until it listens (seen from its namespace), has its CA and logged its session."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {' '.join(self._argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.tmp,
            )
        timeout = SCRIPT_STARTUP_TIMEOUT_S if self.launcher == "scripts/proxy" else STARTUP_TIMEOUT_S
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.proc.returncode}:\n{self.log_text()}")
            if listening_addrs(self.proc.pid, self.port) and "tokometer: session " in self.log_text():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"proxy not ready after {timeout} s:\n{self.log_text()}")
            time.sleep(0.05)
        time.sleep(0.3)  # the addon's `running` hook (the warning) comes right after the session line
        self.session_lines = self._session_lines()


@pytest.fixture
def namespaced(tmp_path: Path, fake_provider: FakeProvider) -> Iterator[list[NamespacedProxy]]:
    """Collects the namespaced proxies a test starts and stops them all afterwards."""
    started: list[NamespacedProxy] = []
    yield started
    for p in started:
        p.cleanup()


WARNING = "not loopback: other machines can use this proxy"


# ---------------------------------------------------------------- listening


@needs_netns
@pytest.mark.parametrize("launcher", ["mitmdump", "scripts/proxy"])
def test_listens_on_loopback_only_by_default(
    tmp_path: Path, fake_provider: FakeProvider, namespaced: list[NamespacedProxy], launcher: str
) -> None:
    p = NamespacedProxy(tmp_path / "p", fake_provider.port, listen_host=None, launcher=launcher)
    namespaced.append(p)
    p.start()
    assert p.proc is not None
    assert listening_addrs(p.proc.pid, p.port) == ["127.0.0.1"]
    reach = connect_from_namespace(p.proc.pid, p.port, ["127.0.0.1", NS_ADDR])
    assert reach == {"127.0.0.1": "open", NS_ADDR: "ConnectionRefusedError"}
    assert WARNING not in p.log_text()


@needs_netns
@pytest.mark.parametrize("host", ["0.0.0.0", NS_ADDR])
def test_other_interface_is_allowed_with_a_warning(
    tmp_path: Path, fake_provider: FakeProvider, namespaced: list[NamespacedProxy], host: str
) -> None:
    p = NamespacedProxy(tmp_path / "p", fake_provider.port, listen_host=host)
    namespaced.append(p)
    p.start()
    assert p.proc is not None
    assert listening_addrs(p.proc.pid, p.port) == [host]
    reach = connect_from_namespace(p.proc.pid, p.port, [NS_ADDR])
    assert reach == {NS_ADDR: "open"}  # what the warning is about: reachable beyond loopback
    [line] = [ln for ln in p.log_text().splitlines() if WARNING in ln]
    assert f"listening on {host}, not loopback" in line
    assert "--listen-host 127.0.0.1" in line


# ---------------------------------------------------------------- file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _modes(root: Path) -> dict[str, str]:
    """``{relative path: octal mode}`` of everything under ``root`` (root included as ".")."""
    out = {".": oct(_mode(root))}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = oct(_mode(path))
    return out


def _not_private(root: Path) -> dict[str, str]:
    """Entries under ``root`` (and root) that a group or others may read, write or enter."""
    return {name: mode for name, mode in _modes(root).items() if int(mode, 8) & 0o077}


class DefaultPathsProxy(ProxyProcess):
    """The proxy with tokometer's default database location (nothing passed) and a given umask."""

    def __init__(self, tmp: Path, fake_port: int, umask: int) -> None:
        super().__init__(tmp, fake_port)
        self.data_dir = self.home / ".local" / "share" / "tokometer"
        self.db_path = self.data_dir / "spend.duckdb"
        self.command_prefix = ("sh", "-c", f'umask {umask:03o} && exec "$@"', "sh")

    def _argv(self) -> list[str]:
        argv = super()._argv()
        [i] = [n for n, arg in enumerate(argv) if arg.startswith("tokometer_db=")]
        del argv[i - 1 : i + 1]
        return argv

    def _env(self) -> dict[str, str]:
        env = super()._env()
        del env["TOKOMETER_DB"]
        return env


def curl_chat(
    proxy: ProxyProcess,
    key: str,
    prompt: str,
    *,
    stream: bool = False,
    headers: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    path: str = "/v1/chat/completions",
    body: dict[str, Any] | str | None = None,
    host: str = "api.openai.com",
) -> subprocess.CompletedProcess[str]:
    """One call with curl through ``proxy`` (``body`` defaults to a chat request carrying ``prompt``)."""
    if body is None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
        if stream:
            body["stream"] = True
    data = body if isinstance(body, str) else json.dumps(body)
    argv = ["curl", "-sS", "--max-time", "20", *extra, "-H", "content-type: application/json"]
    if key:
        argv += ["-H", f"Authorization: Bearer {key}"]
    for h in headers:
        argv += ["-H", h]
    argv += ["--data-binary", data, f"https://{host}{path}"]
    return subprocess.run(argv, env=proxy.client_env(), capture_output=True, text=True, timeout=40)


class WalWatcher:
    """Records the modes of ``<db>.wal``, polled in a loop (it exists only while the store writes)."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".wal")
        self.modes: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                self.modes.add(stat.S_IMODE(os.stat(self.path).st_mode))

    def __enter__(self) -> WalWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_files_are_owner_only(tmp_path: Path, fake_provider: FakeProvider, umask: int) -> None:
    proxy = DefaultPathsProxy(tmp_path, fake_provider.port, umask)
    try:
        proxy.start()
        key = "sk-proj-modes" + uuid.uuid4().hex
        for i in range(3):
            assert curl_chat(proxy, key, f"hello {i}", stream=i == 1).returncode == 0
        proxy.wait_rows(3)
        data = proxy.data_dir
        journal_dir = data / "spend.duckdb.journal"
        live_dir = data / "spend.duckdb.live"  # one live file per proxy
        deadline = time.monotonic() + 10
        while not list(live_dir.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [live] = live_dir.glob("*.json")
        names = set(_modes(data))
        assert {".", "spend.duckdb", "spend.duckdb.journal", "spend.duckdb.live"} <= names, names
        assert any(n.startswith("spend.duckdb.journal/") and n.endswith(".jsonl") for n in names), names
        assert _not_private(data) == {}, _modes(data)
        assert _mode(data) == 0o700 and _mode(journal_dir) == 0o700 and _mode(live_dir) == 0o700
        assert _mode(proxy.db_path) == 0o600 and _mode(live) == 0o600

        # After kill -9 the journal (maybe still holding calls) is owner-only, and so is
        # everything after the replay.
        for i in range(3):
            assert curl_chat(proxy, key, f"again {i}").returncode == 0
        proxy.kill9()
        journals = list(journal_dir.glob("*.jsonl"))
        assert journals and all(_mode(j) == 0o600 for j in journals)
        assert _not_private(data) == {}, _modes(data)
        proxy.start()
        proxy.wait_rows(6)
        proxy.terminate()
        assert _not_private(data) == {}, _modes(data)
    finally:
        proxy.cleanup()


def test_database_wal_is_owner_only(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """The DuckDB write-ahead log holds the rows being written: as private as the database.

    The database here is in a folder others can read (0755, as with ``--set tokometer_db=``
    in an existing folder), so only the file's own mode protects it. The WAL exists while the
    store writes (and stays after a crash mid-write), so it is watched for during a few flushes.
    """
    proxy = ProxyProcess(tmp_path, fake_provider.port, env={})
    proxy.command_prefix = ("sh", "-c", 'umask 022 && exec "$@"', "sh")
    tmp_path.chmod(0o755)
    try:
        proxy.start()
        key = "sk-proj-wal" + uuid.uuid4().hex
        with WalWatcher(proxy.db_path) as wal:
            for i in range(4):
                assert curl_chat(proxy, key, f"wal {i}").returncode == 0
                proxy.wait_rows(i + 1)
                time.sleep(0.3)
        assert _mode(proxy.db_path) == 0o600
        assert wal.modes, "never saw the WAL while 4 flushes ran"
        assert {oct(m) for m in wal.modes} == {oct(0o600)}, f"{wal.path.name} modes seen"
    finally:
        proxy.cleanup()


def test_ca_private_key_is_owner_only_and_bundle_is_public_only(proxy: ProxyProcess, tmp_path: Path) -> None:
    confdir = proxy.confdir
    key_files = [p for p in confdir.iterdir() if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert sorted(p.name for p in key_files) == ["mitmproxy-ca.pem"]
    for name in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):
        assert _mode(confdir / name) == 0o600, name
    ca_cert = (confdir / "mitmproxy-ca-cert.pem").read_bytes()
    assert b"PRIVATE KEY" not in ca_cert

    # The combined bundle scripts/shell-env writes for SSL_CERT_FILE and friends.
    home = tmp_path / "shell-home"
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_DATA_HOME", "TOKOMETER_DB")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"))
    res = subprocess.run(
        [sys.executable, "-m", "addon.shell_env", "--confdir", str(confdir), "--port", str(proxy.port)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    [bundle] = (home / "data" / "tokometer").glob("ca-bundle-" + "[0-9a-f]" * 12 + ".pem")
    assert f"SSL_CERT_FILE={bundle}" in res.stdout
    content = bundle.read_bytes()
    assert content.rstrip().endswith(ca_cert.rstrip())  # mitmproxy's CA certificate is in it
    assert b"PRIVATE KEY" not in content  # ... and no key material at all
    ca_key = (confdir / "mitmproxy-ca.pem").read_bytes().split(b"-----END")[0]
    assert ca_key.splitlines()[2] not in content
    assert _mode(bundle) == 0o644  # public certificates only: readable by design
    assert _mode(bundle.parent) == 0o700


# ---------------------------------------------------------------- no secret on disk


GEMINI = "generativelanguage.googleapis.com"


def _all_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]


def _leaks(root: Path, secrets: dict[str, bytes]) -> dict[str, list[str]]:
    """``{file: [names of the secrets found in it]}`` over every file under ``root``."""
    found: dict[str, list[str]] = {}
    for path in _all_files(root):
        data = path.read_bytes()
        hits = [name for name, needle in secrets.items() if needle in data]
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


def _sql_dump(proxy: ProxyProcess) -> str:
    """Every value of every table in the database, as text."""
    tables = [
        r["table_name"]
        for r in proxy.rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1"
        )
    ]
    assert "calls" in tables and "events" in tables, tables
    parts = []
    for table in tables:
        for row in proxy.rows(f'SELECT * FROM "{table}"'):
            parts.append(table + ": " + json.dumps(row, default=str, ensure_ascii=False))
    return "\n".join(parts)


def _anthropic(
    proxy: ProxyProcess, prompt: str, auth: str, *, system: str | None = None, stream: bool = False
):
    body: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": prompt}],
    }
    if system is not None:
        body["system"] = system
    if stream:
        body["stream"] = True
    return curl_chat(
        proxy,
        "",
        prompt,
        host="api.anthropic.com",
        path="/v1/messages",
        headers=(auth, "anthropic-version: 2023-06-01"),
        body=body,
    )


def _journaled(journal: str) -> tuple[int, bool]:
    """How many calls the journal text holds, and whether one has an estimate (replay keeps the last line)."""
    lines = [json.loads(line) for line in journal.splitlines() if line.strip()]
    source = COLUMNS.index("usage_source")
    return len({line[0] for line in lines}), any(line[source] == "estimated" for line in lines)


def test_no_key_or_prompt_in_any_file(tmp_path: Path, fake_provider: FakeProvider) -> None:
    core = uuid.uuid4().hex  # every secret carries a unique core; the search looks for the core too
    openai_key = f"sk-proj-LEAKo{core}Q"
    anthropic_key = f"sk-ant-api03-LEAKa{core}Z"
    budget_key = f"sk-ant-api03-LEAKb{core}V"
    oauth_token = f"sk-ant-oat01-LEAKt{core}Y"
    gemini_key = f"AIzaLEAKg{core}X"
    gemini_header_key = f"AIzaLEAKh{core}W"
    keys = (openai_key, anthropic_key, budget_key, oauth_token, gemini_key, gemini_header_key)
    prompt = f"PROMPT-LEAK-{core}-please keep this private"
    system = f"SYSTEM-LEAK-{core}"
    names = (
        "openai_key",
        "anthropic_key",
        "budget_key",
        "oauth_token",
        "gemini_query_key",
        "gemini_header_key",
    )
    secrets = {name: k.encode() for name, k in zip(names, keys, strict=True)}
    secrets.update(prompt=prompt.encode(), system=system.encode(), core=core.encode())
    policies = (
        "default_environment: development\n"
        "keys:\n"
        "  leak-budget:\n"
        f"    fingerprint: {key_fingerprint(budget_key)}\n"
        "    environment: development\n"
        "    budget: {usd: 0.00003, period: day, alert_at: [0.5]}\n"
    )
    fake = f"127.0.0.1:{fake_provider.port}"
    gemini_map = rf"|//{GEMINI.replace('.', r'\.')}/|//{fake}/"
    proxy = ProxyProcess(
        tmp_path,
        fake_provider.port,
        policies=policies,
        extra_args=("--set", "tokometer_log=debug", "--map-remote", gemini_map),
        # A wide terminal: mitmdump's flow lines cut URLs at its width (COLUMNS) minus 25.
        env={"COLUMNS": "400"},
    )
    gate = f"leak-{core}"
    journal_dir = proxy.db_path.with_name(proxy.db_path.name + ".journal")
    try:
        proxy.start()
        import duckdb

        # Session 1 holds a read-only connection: the store cannot write, the journal keeps every call.
        reader = duckdb.connect(str(proxy.db_path), read_only=True)
        try:
            responses_body = {"model": "gpt-4o-mini", "instructions": system, "input": prompt, "stream": True}
            gemini_body = {"contents": [{"parts": [{"text": prompt}]}]}
            gemini_path = "/v1beta/models/gemini-2.5-flash"
            results = [
                curl_chat(proxy, openai_key, prompt),
                curl_chat(proxy, openai_key, prompt, stream=True),  # usage injected: body rewritten
                curl_chat(proxy, openai_key, prompt, path="/v1/responses", body=responses_body),
                curl_chat(
                    proxy,
                    openai_key,
                    prompt,
                    path="/v1/embeddings",
                    body={"model": "text-embedding-3-small", "input": prompt},
                ),
                curl_chat(proxy, openai_key, prompt, headers=("X-Fake-Status: 400",)),  # upstream error
                curl_chat(proxy, openai_key, prompt, body=f"{prompt} is not JSON"),  # malformed body
                _anthropic(proxy, prompt, f"x-api-key: {anthropic_key}", system=system, stream=True),
                _anthropic(proxy, prompt, f"Authorization: Bearer {oauth_token}"),
                curl_chat(
                    proxy,
                    "",
                    prompt,
                    host=GEMINI,
                    path=f"{gemini_path}:generateContent?key={gemini_key}",
                    body=gemini_body,
                ),
                curl_chat(
                    proxy,
                    "",
                    prompt,
                    host=GEMINI,
                    path=f"{gemini_path}:streamGenerateContent?alt=sse",
                    headers=(f"x-goog-api-key: {gemini_header_key}",),
                    body=gemini_body,
                ),
            ]
            for r in results:
                assert r.returncode == 0, (r.args, r.stderr)
            # A stream the client abandons halfway: its tokens are estimated from the prompt.
            aborted = curl_chat(
                proxy,
                openai_key,
                prompt,
                stream=True,
                headers=(f"X-Fake-Gate: {gate}",),
                extra=("--max-time", "2"),
            )
            assert aborted.returncode == 28, aborted  # curl: timed out
            calls = len(results) + 1
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                journal = "".join(j.read_text() for j in journal_dir.glob("*.jsonl"))
                # every call is journaled (a stream also at its final event), and the aborted
                # one again with its estimate
                if _journaled(journal) == (calls, True):
                    break
                time.sleep(0.1)
            proxy.kill9()
        finally:
            reader.close()
            fake_provider.gate(gate).set()

        # The journal holds every call (positive control: the key fingerprints are in it) ...
        journal = "".join(j.read_text() for j in journal_dir.glob("*.jsonl"))
        assert _journaled(journal) == (calls, True), journal
        assert key_fingerprint(openai_key) in journal and key_fingerprint(anthropic_key) in journal
        # ... and no file may hold a secret, journal and log included (checked at the end).
        leaks_after_kill = _leaks(tmp_path, secrets)

        # Session 2 replays the journal; the budgeted key crosses its cap (events) and is refused.
        proxy.start()
        proxy.wait_rows(calls)
        for _ in range(2):
            assert _anthropic(proxy, prompt, f"x-api-key: {budget_key}").returncode == 0
        proxy.wait_rows(calls + 2)
        proxy.terminate()  # flushes the events too
        rows = proxy.rows()
        assert len(rows) == calls + 2
        assert [r["action"] for r in rows if r["key_name"] == "leak-budget"] == ["allowed", "over_budget"]
        assert any(r["aborted"] and r["usage_source"] == "estimated" for r in rows), rows
        assert {r["status_code"] for r in rows} >= {200, 400, 404, 429}

        dump = _sql_dump(proxy)
        assert "events: " in dump and "budget_" in dump
        for key in keys:
            assert key_fingerprint(key) in dump, key  # the fingerprint may (and does) appear
        assert "leak-budget" in proxy.log_text()  # the debug lines were written (and searched)
        in_db = sorted(name for name, value in secrets.items() if value.decode() in dump)
        found = {"after kill -9": leaks_after_kill, "at the end": _leaks(tmp_path, secrets)}
        assert (in_db, found) == ([], {"after kill -9": {}, "at the end": {}})
    finally:
        fake_provider.gate(gate).set()
        proxy.cleanup()


def test_sigkill_leaves_no_secret_behind(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """A proxy killed mid-stream (hooks never run) leaves nothing but what a clean stop would."""
    core = uuid.uuid4().hex
    key, prompt = f"sk-proj-KILL{core}", f"PROMPT-KILL-{core}"
    proxy = ProxyProcess(tmp_path, fake_provider.port, extra_args=("--set", "tokometer_log=debug"))
    gate = f"kill-{core}"
    try:
        proxy.start()
        client = subprocess.Popen(
            [
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-H",
                f"Authorization: Bearer {key}",
                "-H",
                f"X-Fake-Gate: {gate}",
                "-H",
                "content-type: application/json",
                "--data-binary",
                json.dumps(
                    {
                        "model": "gpt-4o-mini",
                        "stream": True,
                        "messages": [{"role": "user", "content": prompt}],
                    }
                ),
                "https://api.openai.com/v1/chat/completions",
            ],
            env=proxy.client_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert fake_provider.wait_gate_reached(gate, 10)
        assert proxy.proc is not None
        os.kill(proxy.proc.pid, signal.SIGKILL)
        proxy.proc.wait(5)
        client.wait(20)
        assert _leaks(tmp_path, {"key": key.encode(), "prompt": prompt.encode()}) == {}
    finally:
        fake_provider.gate(gate).set()
        proxy.cleanup()
