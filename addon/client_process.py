"""Which local process opened a client connection, and what its environment says.

On Linux the kernel is asked for the client's socket (its inode and owner) over netlink
(sock_diag, one exact lookup by the connection's addresses: ~7 µs), or, where that is not
allowed, /proc/net/tcp(6) is read (the kernel prints every socket: ~0.4 ms and more with
many connections). Then /proc/*/fd is scanned for the process holding that socket. Callers
run it once per client connection, in a worker thread (see ``addon.attribution``). Where
/proc is missing (macOS), psutil is used if it is installed. A process that opens several
connections (an SDK's pool) is described once every ``DESCRIBED_FOR`` seconds, not per connection.
Lookups run in their own small thread pool (``start_lookup``), so token estimates and upload reads
in the default executor cannot hold them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import pwd
import socket
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
# How long a process's description (name, cwd, environment, git checkout: ~0.2 ms to read) is
# reused for its next connections. An exec is a new description (see _identity); a chdir or a
# git checkout within these seconds is not seen.
DESCRIBED_FOR = 5.0
_DESCRIBED_MAX = 256
# How long, in all, a call waits for its calling process when the answer decides whether it
# passes (users have budgets or rate limits): a lookup is 3-15 ms, but a loaded host can be slow.
DECIDING_LOOKUP_TIMEOUT = 12.0
NOT_IN_TIME = "calling process not identified in time"
# What a row says instead once a lookup that answered late names its process (and, where no user
# limit decided the call, its user): the call was attributed without it (no variable of its read).
IDENTIFIED_LATE = "calling process identified after the call was attributed"
IDENTIFIED_LATE_USER_KEPT = f"{IDENTIFIED_LATE}: the row keeps the user it was decided as"


def identified_late(notes: list[str], *, user_kept: bool) -> list[str]:
    """A row's error notes once a lookup that answered late names its process: ``NOT_IN_TIME``
    replaced by ``IDENTIFIED_LATE`` (``user_kept``, where a user limit decided the call: by
    ``IDENTIFIED_LATE_USER_KEPT``); every other note as it was."""
    late = IDENTIFIED_LATE_USER_KEPT if user_kept else IDENTIFIED_LATE
    return [late if note == NOT_IN_TIME else note for note in notes]


LOOKUP_THREADS = 4


@dataclass(frozen=True, slots=True)
class GitCheckout:
    """The git checkout a directory belongs to."""

    repo: str
    branch: str | None


@dataclass(frozen=True, slots=True)
class ClientProcess:
    """What is known about the process on the other end of a client connection."""

    pid: int | None = None
    name: str | None = None
    user: str | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # only the variables asked for
    repo: str | None = None
    git_branch: str | None = None
    problem: str | None = None  # why something could not be read


def _proc_hex_address(ip: str, port: int) -> tuple[str, str]:
    """(file, 'ADDR:PORT') as /proc/net/tcp or tcp6 prints a local address."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        words = [addr.packed[i : i + 4] for i in range(0, 16, 4)]
        hexaddr = "".join(w[::-1].hex().upper() for w in words)
        return "tcp6", f"{hexaddr}:{port:04X}"
    if isinstance(addr, ipaddress.IPv6Address):
        # IPv4-mapped (::ffff:a.b.c.d): the socket lives in tcp6.
        packed = addr.packed
        words = [packed[i : i + 4] for i in range(0, 16, 4)]
        hexaddr = "".join(w[::-1].hex().upper() for w in words)
        return "tcp6", f"{hexaddr}:{port:04X}"
    return "tcp", f"{addr.packed[::-1].hex().upper()}:{port:04X}"


def find_socket(ip: str, port: int, proc: Path = PROC) -> tuple[int, int] | None:
    """(inode, uid) of the local TCP socket bound to ``ip:port``, from /proc/net."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        ip = str(address.ipv4_mapped)  # a dual-stack listener's view of an IPv4 client
    table, local = _proc_hex_address(ip, port)
    candidates = [table] if table == "tcp6" else ["tcp", "tcp6"]
    if table == "tcp":
        # An IPv4 client on an IPv6 socket is listed in tcp6, as ::ffff:a.b.c.d.
        _, mapped = _proc_hex_address(f"::ffff:{ip}", port)
    for name in candidates:
        want = local if name == table else mapped
        try:
            with open(proc / "net" / name, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    # Inode 0: a closed connection (TIME_WAIT) that used the same local port
                    # before; the live socket is listed too.
                    if len(parts) > 9 and parts[1] == want and parts[9] != "0":
                        return int(parts[9]), int(parts[7])
        except OSError:
            continue
    return None


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): one request for one socket, by its addresses.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
# inet_diag_msg: family, state, timer, retrans (4 bytes), sockid (48), expires, rqueue, wqueue (12),
# then uid and inode.
_UID_INODE = struct.Struct("=II")
_UID_OFFSET = 4 + 48 + 12


def find_socket_netlink(
    client_ip: str, client_port: int, server_ip: str, server_port: int
) -> tuple[int, int] | None:
    """(inode, uid) of the client's end of the TCP connection client -> server, asked of the kernel.

    None when there is no such socket; raises OSError when netlink cannot be used here.
    """
    client, server = ipaddress.ip_address(client_ip), ipaddress.ip_address(server_ip)
    if client.version != server.version:
        return None
    family = socket.AF_INET6 if client.version == 6 else socket.AF_INET
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES)
    # inet_diag_sockid: ports big-endian, addresses in 16 bytes, interface, cookie (none)
    body += struct.pack(">HH", client_port, server_port)
    body += client.packed.ljust(16, b"\0") + server.packed.ljust(16, b"\0")
    body += struct.pack("=III", 0, _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE)
    request = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(request + body)
        reply = nl.recv(8192)
    if len(reply) < _NLMSG_HEADER.size:
        raise OSError("short sock_diag reply")
    _, kind, _, _, _ = _NLMSG_HEADER.unpack_from(reply)
    if kind == _NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", reply, _NLMSG_HEADER.size)
        if error == -2:  # ENOENT: no such connection
            return None
        raise OSError(-error, f"sock_diag: {os.strerror(-error)}")
    if kind != _SOCK_DIAG_BY_FAMILY or len(reply) < _NLMSG_HEADER.size + _UID_OFFSET + _UID_INODE.size:
        raise OSError(f"unexpected sock_diag reply (type {kind})")
    uid, inode = _UID_INODE.unpack_from(reply, _NLMSG_HEADER.size + _UID_OFFSET)
    return inode, uid


# The processes whose connections were found last: a client opening a new connection is most
# often one seen before (an SDK's pool, an agent), and checking its fds first skips the scan.
_RECENT_MAX = 16
_recent: OrderedDict[int, None] = OrderedDict()
_recent_lock = threading.Lock()


def _holds_socket(fd_dir: str, target: str) -> bool:
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def _remember(pid: int) -> None:
    with _recent_lock:
        _recent[pid] = None
        _recent.move_to_end(pid)
        while len(_recent) > _RECENT_MAX:
            _recent.popitem(last=False)


def find_pid_of_socket(inode: int, proc: Path = PROC) -> int | None:
    """The pid of a process holding socket ``inode``.

    Checks the processes found last first, then scans /proc/*/fd, newest pids first
    (a client that just started has one of the highest).
    """
    target = f"socket:[{inode}]"
    own = os.getpid()
    with _recent_lock:
        recent = list(reversed(_recent))
    for pid in recent:
        if _holds_socket(f"{proc}/{pid}/fd", target):
            _remember(pid)
            return pid
    try:
        pids = sorted((int(e.name) for e in os.scandir(proc) if e.name.isdigit()), reverse=True)
    except OSError:
        return None
    checked = set(recent)
    for pid in pids:
        if pid == own or pid in checked:
            continue
        if _holds_socket(f"{proc}/{pid}/fd", target):
            _remember(pid)
            return pid
    return None


def read_environ(pid: int, names: frozenset[str], proc: Path = PROC) -> dict[str, str]:
    """The variables ``names`` of process ``pid`` (raises OSError if unreadable)."""
    data = (proc / str(pid) / "environ").read_bytes()
    found: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.decode("utf-8", "replace") in names:
            found[key.decode()] = value.decode("utf-8", "replace")
    return found


def git_checkout(directory: str) -> GitCheckout | None:
    """The checkout containing ``directory``, read from files (no git process).

    The repo name is the last part of the ``origin`` remote's URL where there is
    one, else the name of the checkout's main folder (for a worktree too).
    """
    path = Path(directory)
    for candidate in (path, *path.parents):
        dotgit = candidate / ".git"
        try:
            if dotgit.is_dir():
                gitdir = dotgit
            elif dotgit.is_file():
                text = dotgit.read_text(encoding="utf-8", errors="replace").strip()
                if not text.startswith("gitdir:"):
                    return None
                gitdir = (candidate / text.removeprefix("gitdir:").strip()).resolve()
            else:
                continue
            head = (gitdir / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None
        branch = head.removeprefix("ref: refs/heads/") if head.startswith("ref: refs/heads/") else None
        return GitCheckout(repo=_repo_name(candidate, gitdir), branch=branch)
    return None


def _repo_name(worktree: Path, gitdir: Path) -> str:
    common = gitdir
    with contextlib.suppress(OSError):
        common = (gitdir / (gitdir / "commondir").read_text(encoding="utf-8").strip()).resolve()
    try:
        config = (common / "config").read_text(encoding="utf-8", errors="replace")
    except OSError:
        config = ""
    in_origin = False
    for line in config.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            in_origin = stripped.replace(" ", "") == '[remote"origin"]'
        elif in_origin and stripped.startswith("url") and "=" in stripped:
            url = stripped.split("=", 1)[1].strip().rstrip("/")
            name = url.rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
            if name:
                return name
    if common != gitdir or common.name == ".git":
        return common.parent.name if common.name == ".git" else common.name.removesuffix(".git")
    return worktree.name


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def lookup_client_process(
    peer_ip: str,
    peer_port: int,
    env_names: frozenset[str],
    proc: Path = PROC,
    server: tuple[str, int] | None = None,
) -> ClientProcess:
    """Everything about the process that owns the client end ``peer_ip:peer_port``.

    ``server``: the proxy's end of the connection (address, port), for the netlink lookup.
    Never raises: what cannot be read is left empty and ``problem`` says why.
    """
    if not (proc / "net").exists():
        return _lookup_with_psutil(peer_ip, peer_port, env_names)
    found = _socket_of(peer_ip, peer_port, server) if server is not None and proc == PROC else None
    if found is None:
        found = find_socket(peer_ip, peer_port, proc)
    if found is None:
        return ClientProcess(problem="connection not found in /proc/net (not a local client?)")
    inode, uid = found
    user = _user_name(uid)
    pid = find_pid_of_socket(inode, proc)
    if pid is None:
        return ClientProcess(user=user, problem="process not found (exited, or not visible to the proxy)")
    identity = _identity(pid, proc)
    if identity is None:  # cannot tell this program from a later one with its pid: no reuse
        return _describe(pid, user, env_names, proc)
    key = (pid, identity, user, env_names)
    now = time.monotonic()
    remembered = _described.get(key)
    if remembered is not None and now - remembered[0] < DESCRIBED_FOR:
        return remembered[1]
    process = _describe(pid, user, env_names, proc)
    if len(_described) >= _DESCRIBED_MAX:
        _described.clear()
    _described[key] = (now, process)
    return process


# (pid, its identity, user, variables asked for) -> (when described, the description); any thread.
_described: dict[
    tuple[int, tuple[int, int, bytes], str | None, frozenset[str]], tuple[float, ClientProcess]
] = {}


def _identity(pid: int, proc: Path) -> tuple[int, int, bytes] | None:
    """What tells this program from any other with the pid, from /proc/PID/stat: its start time
    (field 22: a later process with the pid starts later), the address of its environment (field
    50) and its name (field 2), both new after an ``exec``, which keeps pid and start time. None
    when unreadable."""
    try:
        with open(proc / str(pid) / "stat", "rb") as f:
            stat = f.read()
        end = stat.rindex(b")")
        fields = stat[end + 2 :].split()
        return int(fields[19]), int(fields[47]), stat[stat.index(b"(") + 1 : end]
    except (OSError, ValueError, IndexError):
        return None


_netlink_usable = True  # until the kernel (or a sandbox) says no


def _socket_of(client_ip: str, client_port: int, server: tuple[str, int]) -> tuple[int, int] | None:
    """Netlink's answer, or None to read /proc/net instead (no netlink, or not found there)."""
    global _netlink_usable
    if not _netlink_usable:
        return None
    try:
        return find_socket_netlink(client_ip, client_port, server[0], server[1])
    except TimeoutError:
        return None
    except OSError:  # refused here (a sandbox, no sock_diag): /proc/net from now on
        _netlink_usable = False
        return None
    except (ValueError, struct.error):  # an address it cannot pack (a scope id): /proc/net this once
        return None


def _describe(pid: int, user: str | None, env_names: frozenset[str], proc: Path) -> ClientProcess:
    base = proc / str(pid)
    problems: list[str] = []
    try:
        name: str | None = (base / "comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        name = None
    try:
        cwd: str | None = os.readlink(base / "cwd")
    except OSError:
        cwd = None
        problems.append("working directory unreadable")
    try:
        env = read_environ(pid, env_names, proc)
    except OSError as exc:
        env = {}
        problems.append(f"environment unreadable ({exc.strerror or type(exc).__name__})")
    checkout = git_checkout(cwd) if cwd else None
    return ClientProcess(
        pid=pid,
        name=name,
        user=user,
        cwd=cwd,
        env=env,
        repo=checkout.repo if checkout else None,
        git_branch=checkout.branch if checkout else None,
        problem="; ".join(problems) or None,
    )


def _lookup_with_psutil(peer_ip: str, peer_port: int, env_names: frozenset[str]) -> ClientProcess:
    try:
        import psutil  # type: ignore[import-not-found]
    except ImportError:
        return ClientProcess(problem="no /proc and psutil is not installed")
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == peer_port and conn.pid:
                proc = psutil.Process(conn.pid)
                with proc.oneshot():
                    try:
                        environ = proc.environ()
                        env = {k: v for k, v in environ.items() if k in env_names}
                        problem = None
                    except psutil.Error as exc:
                        env, problem = {}, f"environment unreadable ({type(exc).__name__})"
                    cwd = proc.cwd()
                    checkout = git_checkout(cwd) if cwd else None
                    return ClientProcess(
                        pid=conn.pid,
                        name=proc.name(),
                        user=proc.username(),
                        cwd=cwd,
                        env=env,
                        repo=checkout.repo if checkout else None,
                        git_branch=checkout.branch if checkout else None,
                        problem=problem,
                    )
    except Exception as exc:  # psutil raises AccessDenied and more on some systems
        return ClientProcess(problem=f"psutil lookup failed: {exc}")
    return ClientProcess(problem="connection not found by psutil")


@functools.cache
def _lookup_pool() -> ThreadPoolExecutor:
    """The lookups' own threads (made at the first lookup)."""
    return ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="tokometer-lookup")


@dataclass(slots=True)
class _Running:
    """When a lookup left the pool's queue and started running (set from its thread)."""

    started: asyncio.Future[None]  # done when it starts
    since: float | None = None  # time.monotonic() then


# Each lookup's _Running (start_lookup), by its future: the deciding wait counts its running time.
_RUNNING: weakref.WeakKeyDictionary[asyncio.Future[ClientProcess], _Running] = weakref.WeakKeyDictionary()


def start_lookup(lookup: Callable[[], ClientProcess]) -> asyncio.Future[ClientProcess]:
    """Run ``lookup`` (a ``lookup_client_process`` call) in the lookups' own thread pool."""
    loop = asyncio.get_running_loop()
    running = _Running(loop.create_future())

    def started() -> None:
        if not running.started.done():
            running.started.set_result(None)

    def run() -> ClientProcess:
        running.since = time.monotonic()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(started)
        return lookup()

    future = loop.run_in_executor(_lookup_pool(), run)
    _RUNNING[future] = running
    return future


async def wait_for_process(
    lookup: asyncio.Future[ClientProcess] | None, timeout: float, *, deciding: bool = False
) -> tuple[ClientProcess | None, str | None]:
    """The calling process a connection's ``lookup`` found, waited for ``timeout`` seconds, or,
    when its answer is ``deciding`` whether the call passes, until ``DECIDING_LOOKUP_TIMEOUT``
    after the lookup started running (time queued behind other lookups in the pool not counted;
    ``2 * DECIDING_LOOKUP_TIMEOUT`` in all at most, so hung lookups filling the pool wedge nothing).
    It runs off the event loop: waiting costs the call time, not the proxy. Else (None, why not):
    ``NOT_IN_TIME`` or the failure. Never raises (the lookup is shielded, never cancelled)."""
    if lookup is None:
        return None, None
    try:
        if lookup.done():  # the connection's lookup is over: no wait_for/shield
            return lookup.result(), None
        began = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(lookup), timeout), None
        except TimeoutError:
            if not deciding:
                raise
        in_all = began + 2 * DECIDING_LOOKUP_TIMEOUT
        running = _RUNNING.get(lookup)
        if running is not None and running.since is None:  # still queued: wait for it to start
            await asyncio.wait((running.started, lookup), timeout=max(0.0, in_all - time.monotonic()))
        since = running.since if running is not None and running.since is not None else began
        longer = min(since + DECIDING_LOOKUP_TIMEOUT, in_all) - time.monotonic()
        if longer <= 0 and not lookup.done():
            raise TimeoutError
        return await asyncio.wait_for(asyncio.shield(lookup), max(longer, 0.0)), None
    except TimeoutError:
        return None, NOT_IN_TIME
    except Exception as exc:
        return None, f"calling process lookup failed: {exc}"


def identification_problem(proc: Path = PROC) -> str | None:
    """Why this host cannot look up the process of a client connection (no /proc and no psutil:
    macOS without psutil), else None."""
    if (proc / "net").exists():
        return None
    try:
        import psutil  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return "no /proc and psutil is not installed"
    return None
