"""Which local process opened a client connection, and what its environment says.

On Linux the connection's source address is looked up in /proc/net/tcp(6) to
find the socket's inode and owner, then /proc/*/fd is scanned for the process
holding that socket. That costs milliseconds: callers run it once per client
connection, in a worker thread (see ``addon.attribution``). Where /proc is
missing (macOS), psutil is used if it is installed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")


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
    table, local = _proc_hex_address(ip, port)
    candidates = [table] if table == "tcp6" else ["tcp", "tcp6"]
    if table == "tcp":
        # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d in tcp6.
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
    peer_ip: str, peer_port: int, env_names: frozenset[str], proc: Path = PROC
) -> ClientProcess:
    """Everything about the process that owns the client end ``peer_ip:peer_port``.

    Never raises: what cannot be read is left empty and ``problem`` says why.
    """
    if not (proc / "net").exists():
        return _lookup_with_psutil(peer_ip, peer_port, env_names)
    found = find_socket(peer_ip, peer_port, proc)
    if found is None:
        return ClientProcess(problem="connection not found in /proc/net (not a local client?)")
    inode, uid = found
    user = _user_name(uid)
    pid = find_pid_of_socket(inode, proc)
    if pid is None:
        return ClientProcess(user=user, problem="process not found (exited, or not visible to the proxy)")
    return _describe(pid, user, env_names, proc)


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
