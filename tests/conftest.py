"""Shared fixtures: the fake provider and a real ``mitmdump`` running the tokometer addon."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings as hypothesis_settings

# Under CI (.ci/run sets CI) the property tests draw the same examples on every run, so CI's result
# depends only on the commit; run by hand, they draw new ones each time.
hypothesis_settings.register_profile("tokometer-ci", derandomize=True, database=None, deadline=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("tokometer-ci")

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from fakeprovider import FakeProvider, OtherSite, port_is_open  # noqa: E402

if TYPE_CHECKING:
    from addon.meter import Meter

ROOT = TESTS_DIR.parent
ADDON = ROOT / "addon" / "tokometer.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
CLIENTS = TESTS_DIR / "clients"

OPENAI_KEY = "sk-proj-e2eTESTkey0000111122223333444455556666"
ANTHROPIC_KEY = "sk-ant-api03-e2eTESTkey7777888899990000aaaabbbbcccc"

SESSION_RE = re.compile(r"tokometer: session ")
STARTUP_TIMEOUT_S = 20.0

# Variables that would make a client or the proxy leave the sandbox.
_SCRUB = (
    "APP_ENV",
    "TEAM",
    "FEATURE",
    "TOKOMETER_ENVIRONMENT",
    "TOKOMETER_POLICIES",
    "TOKOMETER_SET_APP_ENV",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "AWS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_DIR",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_PROFILE",
    "ANTHROPIC_CONFIG_DIR",
    "ANTHROPIC_IDENTITY_TOKEN",
    "ANTHROPIC_IDENTITY_TOKEN_FILE",
    "TOKOMETER_DB",
    "TOKOMETER_ENV",
    "TOKOMETER_POLICIES",
    # what shell-env sets or keeps aside in a shell pointed at a proxy, and trust it reads
    "TOKOMETER_SHELL_ENV",
    "TOKOMETER_UPSTREAM_AUTH",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "DENO_CERT",
    "CODEX_CA_CERTIFICATE",
    "NODE_USE_ENV_PROXY",
    "AIOHTTP_TRUST_ENV",
    # boto3's retries, endpoint and profile
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_PROFILE",
)
_SCRUB_PREFIXES = ("TOKOMETER_SAVED_",)


def scrubbed_environ() -> dict[str, str]:
    """This process's environment without what could route a test's traffic or trust elsewhere."""
    return {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith(_SCRUB_PREFIXES)}


def free_port() -> int:
    """A TCP port the OS reports free on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyProcess:
    """A ``mitmdump -s addon/tokometer.py`` process with its own confdir, home and database."""

    def __init__(
        self,
        tmp: Path,
        fake_port: int,
        script: Path | None = ADDON,
        extra_args: tuple[str, ...] = (),
        require_session_line: bool = True,
        policies: str = "default_environment: development\n",
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.confdir = tmp / "confdir"
        self.home = tmp / "home"
        self.client_home = tmp / "client-home"
        self.db_path = tmp / "spend.duckdb"
        self.log_path = tmp / "mitmdump.log"
        # Each proxy gets its own policies file: the checkout's example must not change what tests see.
        self.policies_path = tmp / "policies.yaml"
        tmp.mkdir(parents=True, exist_ok=True)
        self.policies_path.write_text(policies)
        self.extra_env = env or {}
        self.ca_path = self.confdir / "mitmproxy-ca-cert.pem"
        for d in (self.confdir, self.home, self.client_home):
            d.mkdir(parents=True, exist_ok=True)
        self.fake_port = fake_port
        self.script = script
        self.extra_args = extra_args
        self.require_session_line = require_session_line
        self.port = free_port()
        self.command_prefix: tuple[str, ...] = ()  # e.g. setpriv, to run as another user
        self.proc: subprocess.Popen[bytes] | None = None
        self.session_lines: list[str] = []

    # ------------------------------------------------------------ lifecycle

    def _argv(self) -> list[str]:
        argv = [*self.command_prefix, str(MITMDUMP)]
        if self.script is not None:
            argv += ["-s", str(self.script)]
        fake = f"127.0.0.1:{self.fake_port}"
        argv += [
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(self.port),
            "--set",
            f"confdir={self.confdir}",
            "--set",
            "ssl_insecure=true",
        ]
        if self.script is not None:
            argv += [
                "--set",
                f"tokometer_db={self.db_path}",
                "--set",
                f"tokometer_policies={self.policies_path}",
            ]
        argv += [
            "--map-remote",
            rf"|//api\.openai\.com/|//{fake}/",
            "--map-remote",
            rf"|//api\.anthropic\.com/|//{fake}/",
            *self.extra_args,
        ]
        return argv

    def _env(self) -> dict[str, str]:
        env = scrubbed_environ()
        env.update(
            HOME=str(self.home),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_STATE_HOME=str(self.home / ".local" / "state"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            TOKOMETER_DB=str(self.db_path),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start mitmdump and wait until it listens, has its CA and (with the addon) logged its session."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        sessions_before = len(self._session_lines())
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
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {self.proc.returncode}:\n{self.log_text()}")
            ready = port_is_open(self.port) and self.ca_path.exists()
            if ready and self.require_session_line:
                ready = len(self._session_lines()) > sessions_before
            if ready:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mitmdump not ready after {STARTUP_TIMEOUT_S} s:\n{self.log_text()}")
            time.sleep(0.05)
        self.session_lines = self._session_lines()

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the addon flushes on shutdown) and wait; SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise RuntimeError(f"mitmdump ignored SIGTERM for {timeout} s:\n{self.log_text()}") from None
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL at once, no shutdown hooks."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> None:
        """Start again on the same port, confdir and database (stops a running process first)."""
        if self.alive():
            self.terminate()
        self.start()

    def cleanup(self) -> None:
        """Teardown: never leave the process behind."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.terminate(timeout=8.0)
        except RuntimeError:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)

    # ------------------------------------------------------------ logs

    def log_text(self) -> str:
        """Everything mitmdump printed so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _session_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if SESSION_RE.search(line)]

    @property
    def session_line(self) -> str:
        """The ``tokometer: session ...`` line of the latest start."""
        assert self.session_lines, "no session line logged"
        return self.session_lines[-1]

    # ------------------------------------------------------------ clients

    def client_env(self) -> dict[str, str]:
        """Environment for a client subprocess that goes through this proxy like a developer's would."""
        env = scrubbed_environ()
        proxy = f"http://127.0.0.1:{self.port}"
        env.update(
            HTTPS_PROXY=proxy,
            https_proxy=proxy,
            SSL_CERT_FILE=str(self.ca_path),
            CURL_CA_BUNDLE=str(self.ca_path),
            REQUESTS_CA_BUNDLE=str(self.ca_path),
            HOME=str(self.client_home),
            OPENAI_API_KEY=OPENAI_KEY,
            ANTHROPIC_API_KEY=ANTHROPIC_KEY,
            PYTHONUNBUFFERED="1",
        )
        return env

    # ------------------------------------------------------------ database

    def rows(
        self,
        sql: str = "SELECT * FROM calls ORDER BY ts",
        params: list[Any] | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Run a query on a read-only connection, retrying while the writer holds the lock.

        First asks the proxy to store the calls it holds, as ``scripts/spend`` does.
        """
        import duckdb

        from addon.store import request_flush

        request_flush(self.db_path, timeout=min(timeout, 2.0))
        deadline = time.monotonic() + timeout
        while True:
            try:
                con = duckdb.connect(str(self.db_path), read_only=True)
                try:
                    cur = con.execute(sql, params or [])
                    names = [d[0] for d in cur.description]
                    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
                finally:
                    con.close()
            except (duckdb.IOException, duckdb.CatalogException, duckdb.ConnectionException) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"cannot query {self.db_path}: {exc}") from exc
                time.sleep(0.1)

    def count(self) -> int:
        """Rows in ``calls`` now (0 when the file or table does not exist yet)."""
        if not self.db_path.exists():
            return 0
        try:
            return int(self.rows("SELECT count(*) AS n FROM calls", timeout=3.0)[0]["n"])
        except AssertionError:
            return 0

    def wait_rows(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll until ``calls`` has at least ``n`` rows; return all rows ordered by ts."""
        deadline = time.monotonic() + timeout
        while True:
            have = self.count()
            if have >= n:
                return self.rows()
            if time.monotonic() > deadline:
                raise AssertionError(f"expected >= {n} rows in calls, found {have} after {timeout} s")
            time.sleep(0.1)


def remapped_proxies(
    tmp: Path, fake_port: int, remap: dict[str, int | str]
) -> Iterator[Callable[..., ProxyProcess]]:
    """For a fixture: ``start(policies)`` starts a proxy that also sends each URL pattern of
    ``remap`` (a ``--map-remote`` regex, e.g. ``//bedrock-runtime\\.us-east-1\\.amazonaws\\.com/``)
    to a fake on 127.0.0.1 (its port, or a port and path: ``"PORT/v1/"``); all are stopped after."""
    started: list[ProxyProcess] = []

    def start(policies: str = "default_environment: development\n") -> ProxyProcess:
        args: list[str] = []
        for pattern, to in remap.items():
            target = str(to) if "/" in str(to) else f"{to}/"
            args += ["--map-remote", f"|{pattern}|//127.0.0.1:{target}"]
        p = ProxyProcess(tmp / f"p{len(started)}", fake_port, extra_args=tuple(args), policies=policies)
        started.append(p)
        p.start()
        return p

    yield start
    for p in started:
        p.cleanup()


def one_proxy(
    tmp: Path, fake_port: int, policies: str, extra_args: tuple[str, ...] = ()
) -> Iterator[ProxyProcess]:
    """For a (module) fixture: a started proxy to the fake on ``fake_port``, cleaned up after."""
    proxy = ProxyProcess(tmp, fake_port, extra_args=extra_args, policies=policies)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.cleanup()


def tagged_headers(env: str, t: str, more: dict[str, str] | None = None) -> dict[str, str]:
    """A test client's headers: the metering tags (environment ``env``, tag ``t``) and X-Test-Tag."""
    return {"X-Metering-Tags": json.dumps({"env": env, "test": t}), "X-Test-Tag": t, **(more or {})}


def run_json_client(
    proxy: ProxyProcess, script: str, *args: str, codes: tuple[int, ...] = (0,)
) -> tuple[int, list[dict[str, Any]]]:
    """Run ``tests/clients/<script>`` through the proxy; its exit code (one of ``codes``, or the
    test fails with its output and the proxy's log) and the JSON lines it printed."""
    argv = [sys.executable, str(CLIENTS / script), *args]
    res = subprocess.run(argv, env=proxy.client_env(), capture_output=True, text=True, timeout=60)
    if res.returncode not in codes:
        raise AssertionError(
            f"client failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n{proxy.log_text()}"
        )
    return res.returncode, [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def received(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A WebSocket test client's lines for the messages it received."""
    return [line for line in lines if line["event"] == "recv"]


def rows_for(proxy: ProxyProcess, t: str, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The rows tagged ``t`` (X-Metering-Tags), once there are ``n``, oldest first."""
    sql = "SELECT * FROM calls WHERE tags LIKE ? ORDER BY ts, id"
    deadline = time.monotonic() + timeout
    while True:
        rows = proxy.rows(sql, [f"%{t}%"]) if proxy.db_path.exists() else []
        if len(rows) >= n or time.monotonic() > deadline:
            assert len(rows) == n, f"expected {n} rows tagged {t}, got {len(rows)}: {rows}"
            return rows
        time.sleep(0.1)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def proxy_store_gives_up_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's store gives up its first flush at start after 0.3 s, not 5 (another process
    holds the file); its writer thread keeps trying."""
    import addon.meter
    from addon.store import Store

    class QuickStore(Store):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.start_timeout = 0.3

    monkeypatch.setattr(addon.meter, "Store", QuickStore)


@pytest.fixture(autouse=True)
def process_umask_kept() -> Iterator[None]:
    """A test that runs the addon's ``running`` in this process narrows its umask, as the proxy
    does for itself (0o077): every later test's files and child processes would inherit that."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    """The addon in a taddons context, its store a ``CollectingStore`` (unit tests of the hooks)."""
    from meter_helpers import CollectingStore
    from mitmproxy.test import taddons

    from addon.meter import Meter

    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = CollectingStore()  # type: ignore[assignment]
        yield addon


@pytest.fixture(scope="session")
def fake_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProvider]:
    """The fake OpenAI + Anthropic HTTPS API on 127.0.0.1."""
    fake = FakeProvider(tmp_path_factory.mktemp("fakeprovider"))
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def other_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtherSite]:
    """A non-LLM HTTPS site with its own self-signed certificate."""
    site = OtherSite(tmp_path_factory.mktemp("othersite"))
    yield site
    site.close()


@pytest.fixture
def proxy(tmp_path: Path, fake_provider: FakeProvider) -> Iterator[ProxyProcess]:
    """A fresh mitmdump running the tokometer addon, with its own confdir and database."""
    p = ProxyProcess(tmp_path, fake_provider.port)
    try:
        p.start()
        yield p
    finally:
        p.cleanup()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the mitmdump log to the report of a failed test that used ``proxy``."""
    rep = yield
    if rep.failed:
        p = getattr(item, "funcargs", {}).get("proxy")
        if isinstance(p, ProxyProcess):
            rep.sections.append((f"mitmdump log ({rep.when})", p.log_text()))
    return rep
