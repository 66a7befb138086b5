"""The calling process lookup: against this machine's real /proc and a fake /proc tree."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from addon.client_process import (
    _proc_hex_address,
    find_socket,
    git_checkout,
    lookup_client_process,
)

NAMES = frozenset({"APP_ENV", "TEAM", "FEATURE"})
linux_only = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


def connecting_client(port: int, connections: int = 1, **popen: object) -> subprocess.Popen[bytes]:
    """A Python child that opens ``connections`` to 127.0.0.1:``port`` and holds them until stdin ends."""
    code = "import socket, sys\n"
    code += f"held = [socket.create_connection(('127.0.0.1', {port})) for _ in range({connections})]\n"
    code += "sys.stdin.read()\n"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, **popen)  # type: ignore[call-overload]


def test_proc_hex_addresses() -> None:
    assert _proc_hex_address("127.0.0.1", 8080) == ("tcp", "0100007F:1F90")
    assert _proc_hex_address("::1", 443) == ("tcp6", "00000000000000000000000001000000:01BB")
    assert _proc_hex_address("::ffff:127.0.0.1", 1) == ("tcp6", "0000000000000000FFFF00000100007F:0001")


@linux_only
def test_real_client_process_is_found_with_its_environment(tmp_path: Path) -> None:
    repo = tmp_path / "shop-api"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/feature/cheaper-models\n")
    (repo / "src").mkdir()
    server = socket.create_server(("127.0.0.1", 0))
    env = {**os.environ, "APP_ENV": "staging", "TEAM": "checkout", "SECRET": "not-read"}
    child = connecting_client(server.getsockname()[1], env=env, cwd=repo / "src")
    try:
        conn, (ip, port) = server.accept()
        found = lookup_client_process(ip, port, NAMES)
        assert found.pid == child.pid
        assert found.env == {"APP_ENV": "staging", "TEAM": "checkout"}
        assert found.cwd == str(repo / "src")
        assert (found.repo, found.git_branch) == ("shop-api", "feature/cheaper-models")
        assert found.name and found.name.startswith("python")
        assert found.user == __import__("pwd").getpwuid(os.getuid()).pw_name
        assert found.problem is None
        conn.close()
    finally:
        child.communicate(b"")
        server.close()


@linux_only
def test_a_process_with_several_connections_is_described_once_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK's connection pool: the second connection reuses the description, within DESCRIBED_FOR."""
    from addon import client_process

    server = socket.create_server(("127.0.0.1", 0))
    env = {**os.environ, "APP_ENV": "staging"}
    child = connecting_client(server.getsockname()[1], 3, env=env, cwd=tmp_path)
    described: list[int] = []
    real_describe = client_process._describe

    def counting_describe(pid: int, *args: object) -> client_process.ClientProcess:
        described.append(pid)
        return real_describe(pid, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(client_process, "_describe", counting_describe)
    monkeypatch.setattr(client_process, "_described", {})
    conns = [server.accept() for _ in range(3)]
    try:
        first = lookup_client_process(*conns[0][1], NAMES)
        second = lookup_client_process(*conns[1][1], NAMES)
        assert first.pid == child.pid and first.env == {"APP_ENV": "staging"} and first.cwd == str(tmp_path)
        assert second is first and described == [child.pid]
        assert lookup_client_process(*conns[1][1], frozenset({"TEAM"})).env == {}  # other names asked
        assert described == [child.pid, child.pid]
        monkeypatch.setattr(client_process, "DESCRIBED_FOR", 0.0)  # expired: read again
        third = lookup_client_process(*conns[2][1], NAMES)
        assert third is not first and third == first and len(described) == 3
    finally:
        for conn, _ in conns:
            conn.close()
        child.communicate(b"")
        server.close()


@linux_only
def test_a_process_that_execs_another_program_is_described_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """exec keeps the pid and the start time, not the program, its name or its environment."""
    from addon import client_process

    monkeypatch.setattr(client_process, "_described", {})
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    second = f"import socket, sys; s = socket.create_connection(('127.0.0.1', {port})); sys.stdin.read()"
    first = (
        "import os, socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "sys.stdin.readline()\n"
        "env = {**os.environ, 'APP_ENV': 'prod'}\n"
        f"os.execve(sys.executable, [sys.executable, '-c', {second!r}], env)\n"
    )
    env = {**os.environ, "APP_ENV": "dev"}
    child = subprocess.Popen([sys.executable, "-c", first], env=env, stdin=subprocess.PIPE)
    try:
        conn_a, addr_a = server.accept()
        before = lookup_client_process(*addr_a, NAMES)
        assert before.pid == child.pid and before.env == {"APP_ENV": "dev"}
        assert child.stdin is not None
        child.stdin.write(b"exec\n")
        child.stdin.flush()
        conn_b, addr_b = server.accept()
        after = lookup_client_process(*addr_b, NAMES)
        assert after.pid == child.pid and after.env == {"APP_ENV": "prod"}
        conn_a.close()
        conn_b.close()
    finally:
        child.communicate(b"")
        server.close()


@linux_only
def test_exited_client_falls_back_cleanly() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {server.getsockname()[1]}))",
        ],
        check=True,
    )
    assert child.returncode == 0
    conn, (ip, port) = server.accept()
    found = lookup_client_process(ip, port, NAMES)
    assert found.pid is None and found.env == {}
    assert found.problem is not None
    conn.close()
    server.close()


def _fake_proc(tmp_path: Path, *, environ_readable: bool) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    header = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    )
    line = "   0: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 1000 0 424242 1\n"
    (proc / "net" / "tcp").write_text(header + line)
    (proc / "net" / "tcp6").write_text(header)
    pid_dir = proc / "4321"
    (pid_dir / "fd").mkdir(parents=True)
    os.symlink("socket:[424242]", pid_dir / "fd" / "7")
    (pid_dir / "comm").write_text("node\n")
    os.symlink(str(tmp_path), pid_dir / "cwd")
    environ = pid_dir / "environ"
    if environ_readable:
        environ.write_bytes(b"PATH=/bin\0APP_ENV=production\0FEATURE=search\0")
    else:
        os.mkdir(environ)  # reading it fails like another user's would (EISDIR / EACCES)
    return proc


def test_fake_proc_lookup(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, environ_readable=True)
    assert find_socket("127.0.0.1", 0xD431, proc) == (424242, 1000)
    found = lookup_client_process("127.0.0.1", 0xD431, NAMES, proc)
    assert (found.pid, found.name, found.cwd) == (4321, "node", str(tmp_path))
    assert found.env == {"APP_ENV": "production", "FEATURE": "search"}


def test_a_closed_connection_on_the_same_local_port_is_skipped(tmp_path: Path) -> None:
    """/proc/net/tcp may list a TIME_WAIT entry (inode 0, uid 0) for the client's port before
    the live socket: matching it lost the caller (a flaky lookup seen under load)."""
    proc = _fake_proc(tmp_path, environ_readable=True)
    table = (proc / "net" / "tcp").read_text().splitlines(keepends=True)
    time_wait = "   0: 0100007F:D431 0100007F:01BB 06 00000000:00000000 03:00000A3F 00000000 0 0 0 3\n"
    (proc / "net" / "tcp").write_text(table[0] + time_wait + table[1])
    assert find_socket("127.0.0.1", 0xD431, proc) == (424242, 1000)
    assert lookup_client_process("127.0.0.1", 0xD431, NAMES, proc).pid == 4321


def test_unreadable_environment_falls_back_cleanly(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, environ_readable=False)
    found = lookup_client_process("127.0.0.1", 0xD431, NAMES, proc)
    assert found.pid == 4321 and found.env == {}
    assert "environment unreadable" in (found.problem or "")


def test_unknown_connection(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, environ_readable=True)
    found = lookup_client_process("127.0.0.1", 1, NAMES, proc)
    assert found.pid is None and "not found" in (found.problem or "")


def test_git_checkout_of_a_worktree(tmp_path: Path) -> None:
    main = tmp_path / "main" / ".git" / "worktrees" / "wt"
    main.mkdir(parents=True)
    (main / "HEAD").write_text("ref: refs/heads/spike\n")
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {main}\n")
    assert git_checkout(str(wt)) is not None
    (tmp_path / "main" / ".git" / "worktrees" / "wt" / "commondir").write_text("../..\n")
    checkout = git_checkout(str(wt))
    assert checkout is not None and (checkout.repo, checkout.branch) == ("main", "spike")
    (tmp_path / "main" / ".git" / "config").write_text(
        '[core]\n\tbare = false\n[remote "origin"]\n\turl = git@github.com:acme/shop-api.git\n'
    )
    checkout = git_checkout(str(wt))
    assert checkout is not None and checkout.repo == "shop-api"
    assert git_checkout(str(tmp_path / "elsewhere")) is None


@linux_only
def test_a_process_seen_before_is_checked_first_and_found_again() -> None:
    """A client's second connection is matched from the recently seen pids, without a /proc scan."""
    import addon.client_process as cp

    server = socket.create_server(("127.0.0.1", 0))
    child = connecting_client(server.getsockname()[1], 2)
    try:
        first, (ip1, port1) = server.accept()
        second, (ip2, port2) = server.accept()
        assert lookup_client_process(ip1, port1, NAMES).pid == child.pid
        assert list(cp._recent)[-1] == child.pid
        scans: list[object] = []
        real_scandir = os.scandir

        def counting_scandir(path: object) -> object:
            scans.append(path)
            return real_scandir(path)  # type: ignore[arg-type]

        cp.os.scandir = counting_scandir  # type: ignore[assignment]
        try:
            assert lookup_client_process(ip2, port2, NAMES).pid == child.pid
        finally:
            cp.os.scandir = real_scandir
        assert scans == []  # found among the recent pids: /proc was not listed
        first.close()
        second.close()
    finally:
        child.communicate(b"")
        server.close()


def _netlink_available() -> bool:
    """Does sock_diag answer here? (Some sandboxes refuse netlink: the lookup then reads /proc.)"""
    from addon.client_process import find_socket_netlink

    try:
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        accepted, peer = server.accept()
        try:
            found = find_socket_netlink(peer[0], peer[1], *accepted.getsockname())
            return found is not None and found[0] == os.fstat(client.fileno()).st_ino
        finally:
            for s in (accepted, client, server):
                s.close()
    except (OSError, AttributeError):
        return False


needs_netlink = pytest.mark.skipif(not _netlink_available(), reason="no netlink sock_diag here")


def _connected_pair(listen: tuple[str, int], family: int, *, dual: bool = False) -> tuple[socket.socket, ...]:
    server = socket.socket(family)
    if dual:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        server.bind(listen)
    except OSError as exc:  # a machine without IPv6
        server.close()
        pytest.skip(f"cannot listen on {listen[0]}: {exc}")
    server.listen()
    target = "127.0.0.1" if dual else listen[0]
    client = socket.create_connection((target, server.getsockname()[1]))
    accepted, _ = server.accept()
    return server, client, accepted


@linux_only
@needs_netlink
@pytest.mark.parametrize(
    ("listen", "family", "dual"),
    [
        (("127.0.0.1", 0), socket.AF_INET, False),
        (("::1", 0), socket.AF_INET6, False),
        (("::", 0), socket.AF_INET6, True),  # an IPv4 client, seen as ::ffff:127.0.0.1
    ],
)
def test_netlink_and_proc_net_find_the_same_socket(listen: tuple[str, int], family: int, dual: bool) -> None:
    from addon.client_process import find_socket_netlink

    server, client, accepted = _connected_pair(listen, family, dual=dual)
    try:
        peer, here = accepted.getpeername(), accepted.getsockname()
        expected = os.fstat(client.fileno()).st_ino, os.getuid()
        assert find_socket(peer[0], peer[1]) == expected
        assert find_socket_netlink(peer[0], peer[1], here[0], here[1]) == expected
        assert find_socket_netlink(peer[0], peer[1], here[0], here[1] + 1) is None  # no such connection
    finally:
        for s in (client, accepted, server):
            s.close()


@linux_only
@needs_netlink
def test_with_the_servers_address_the_socket_is_asked_of_the_kernel_not_read_from_proc_net(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import addon.client_process as cp

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    child = connecting_client(port)
    try:
        conn, (ip, client_port) = server.accept()
        here = conn.getsockname()
        read_proc_net: list[tuple[object, ...]] = []
        monkeypatch.setattr(cp, "_netlink_usable", True)
        monkeypatch.setattr(cp, "find_socket", lambda *a: read_proc_net.append(a))
        assert lookup_client_process(ip, client_port, NAMES, server=here).pid == child.pid
        assert read_proc_net == []
        # Where netlink is refused (a sandbox), /proc/net is read instead.

        def refused(*args: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(cp, "find_socket_netlink", refused)
        monkeypatch.setattr(cp, "find_socket", find_socket)
        assert lookup_client_process(ip, client_port, NAMES, server=here).pid == child.pid
        assert cp._netlink_usable is False
        conn.close()
    finally:
        child.communicate(b"")
        server.close()
