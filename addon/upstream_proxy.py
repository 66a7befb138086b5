"""The proxy a developer's traffic had to go through before tokometer (a company's), for ``scripts/proxy``.

A shell behind a company proxy has ``HTTPS_PROXY=http://proxy.corp:3128``; ``shell-env`` points it at
tokometer instead (keeping the old value aside), and mitmproxy, in its default mode, connects to
providers directly, which such a network refuses. ``scripts/proxy`` asks this module for the
``mitmdump`` arguments that chain tokometer to that proxy (``--mode upstream:URL``; credentials
in the URL go to mitmproxy's ``upstream_auth`` through ``$TOKOMETER_UPSTREAM_AUTH``, never the
command line): the shell's own value when it was started from a shell pointed at tokometer
already, else the one in its environment; never tokometer itself.

mitmproxy verifies providers against certifi's roots. A shell that trusts roots of its own (a company
CA that inspects TLS, in SSL_CERT_FILE or another bundle variable, kept aside by shell-env in a
shell pointed at tokometer) gets them passed on too (``ssl_verify_upstream_trusted_ca``, a copy in
the data folder), chained or not: what its clients verified before, the proxy verifies now.

``python -m addon.upstream_proxy [MITMDUMP ARGS...]`` prints the arguments, one per line, then
``TOKOMETER_UPSTREAM_AUTH=user:password`` when there are credentials (nothing when there is no such
proxy and no roots of the shell's own, or the arguments choose them already), and says on stderr
what it chose (a proxy URL it names, its password as ``***``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from addon.paths import data_dir
from addon.shell_env import OURS_VAR, SAVED_PREFIX, public_roots, write_file

PROXY_NAMES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
# Credentials of the company proxy, for mitmproxy's upstream_auth (Interception reads it): passed in
# the environment, not on the command line, where every local user could read them.
UPSTREAM_AUTH_VAR = "TOKOMETER_UPSTREAM_AUTH"
DEFAULT_LISTEN = ("127.0.0.1", 8080)


@dataclass(frozen=True)
class Upstream:
    """A proxy to chain to: mitmproxy's mode spec, its credentials, and where it was found."""

    mode: str  # e.g. upstream:http://proxy.corp:3128
    auth: str | None  # user:password, for mitmproxy's upstream_auth
    source: str  # the variable it came from

    def lines(self) -> list[str]:
        """What ``main`` prints: mitmdump's arguments, then the credentials' variable if any."""
        return ["--mode", self.mode, *([f"{UPSTREAM_AUTH_VAR}={self.auth}"] if self.auth else [])]


def _listen_address(args: Sequence[str]) -> tuple[str, int]:
    """The address ``mitmdump`` will listen on with ``args`` after scripts/proxy's own (the last
    wins), in every spelling it takes: ``--listen-port N``, ``--listen-port=N``, ``-p N``, ``-pN``,
    ``--set listen_port=N`` (the same for the host). A value that is not a port is left to mitmdump."""
    host, port = DEFAULT_LISTEN
    for i, arg in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else ""
        name, given = None, None
        if arg in ("--listen-host", "--listen-port", "-p"):
            name, given = arg, value
        elif arg.startswith(("--listen-host=", "--listen-port=")):
            name, given = arg.split("=", 1)
        elif arg.startswith("-p") and not arg.startswith("--"):
            name, given = "-p", arg[2:]
        elif arg == "--set" and value.startswith(("listen_host=", "listen_port=")):
            option, given = value.split("=", 1)
            name = "--" + option.replace("_", "-")
        if name == "--listen-host":
            host = given or ""
        elif name in ("--listen-port", "-p") and given and given.isdigit():
            port = int(given)
    return host, port


def _chooses_mode(args: Sequence[str]) -> bool:
    return any(a in ("--mode", "-m") or a.startswith(("--mode=", "-m")) for a in args)


def _is_loopback_or_any(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain", ""):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _this_machine(host: str) -> bool:
    """Whether ``host`` names this machine (its name, or an address of its own)."""
    if _is_loopback_or_any(host) or host.lower() in (socket.gethostname().lower(), socket.getfqdn().lower()):
        return True
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return host.strip("[]") in own


def _is_itself(proxy_host: str, proxy_port: int, listen_host: str, listen_port: int) -> bool:
    """Whether a proxy at ``proxy_host:proxy_port`` is this proxy, listening on ``listen_host``."""
    if proxy_port != listen_port:
        return False
    if _is_loopback_or_any(proxy_host) and (_is_loopback_or_any(listen_host) or listen_host == proxy_host):
        return True
    if listen_host in ("", "0.0.0.0", "::", "[::]"):  # every interface: any name of this machine
        return _this_machine(proxy_host)
    return proxy_host.strip("[]") == listen_host.strip("[]")


# The schemes a proxy URL starts with (anything else before "://" is part of a userinfo).
_SCHEME = re.compile(r"(?:https?|socks(?:4a?|5h?)?)://", re.IGNORECASE)  # socks://: git's, GNOME's


def shown_proxy(value: str) -> str:
    """``value`` (a proxy URL as given, valid or not) fit to print: its userinfo's password, if it
    has one, is ``***`` (``socks5h://alice:***@proxy:1080``). Read without a URL parser, which
    rejects some values: the userinfo is everything before the last ``@`` (a password may hold an
    unescaped ``@``, ``/``, ``#`` or ``://``) but a proxy scheme (http, https, socks, socks5...) that starts
    the value; the user, before its first ``:``, is kept (``alice:s3cr://et@proxy`` and
    ``alice://s3cret@proxy`` have no scheme: ``alice:***@proxy``). A userinfo with no ``:`` may be
    a token used as the user: ``***``."""
    if "@" not in value:
        return value
    head, host = value.rsplit("@", 1)
    scheme = _SCHEME.match(head)
    userinfo = head[scheme.end() :] if scheme is not None else head
    if ":" not in userinfo:
        return f"{scheme.group() if scheme is not None else ''}***@{host}" if userinfo else value
    return f"{scheme.group() if scheme is not None else ''}{userinfo.split(':', 1)[0]}:***@{host}"


def upstream_from_env(environ: Mapping[str, str], args: Sequence[str] = ()) -> Upstream | None:
    """The proxy to chain to, or None: no proxy set, one we cannot chain to (SOCKS), or ourselves."""
    if _chooses_mode(args):
        return None
    ours = {n for n in environ.get(OURS_VAR, "").split(",") if n}
    listen_host, listen_port = _listen_address(args)
    for name in PROXY_NAMES:
        # In a shell shell-env has pointed at tokometer, the shell's own value was kept aside.
        source = SAVED_PREFIX + name if name in ours else name
        value = environ.get(source, "").strip()
        if not value:
            continue
        try:
            parts = urlsplit(value if "://" in value else f"http://{value}")
        except ValueError:  # "Invalid IPv6 URL": an unclosed "["
            print(f"tokometer: {source}={shown_proxy(value)} is not a URL", file=sys.stderr)
            continue
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = shown_proxy(value)
            print(f"tokometer: {source}={shown} is not an HTTP proxy mitmproxy can chain to", file=sys.stderr)
            continue
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port that is not one
            print(f"tokometer: {source}={shown_proxy(value)} has no valid port", file=sys.stderr)
            continue
        if _is_itself(parts.hostname, port, listen_host, listen_port):
            continue  # this proxy itself
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        auth = None
        if parts.username:
            auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        return Upstream(mode=f"upstream:{parts.scheme}://{host}:{port}", auth=auth, source=source)
    return None


def trusted_roots(args: Sequence[str], folder: Path) -> Path | None:
    """A copy of the roots the shell trusts, when they are its own choice (not the machine's public
    roots) and the arguments do not choose mitmproxy's upstream roots already; else None."""
    if any("ssl_verify_upstream_trusted" in arg for arg in args):
        return None
    roots, own = public_roots()
    if not own:
        return None
    target = folder / f"upstream-roots-{hashlib.sha256(roots).hexdigest()[:12]}.pem"
    write_file(target, roots)
    return target


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    upstream = upstream_from_env(os.environ if environ is None else environ, args)
    lines: list[str] = []
    if upstream is not None:
        shown = upstream.mode.removeprefix("upstream:")
        print(f"tokometer: calls go on through the proxy {shown} (from {upstream.source})", file=sys.stderr)
        lines += upstream.lines()
    try:
        roots = trusted_roots(args, data_dir())
    except OSError as exc:
        print(f"tokometer: cannot copy this shell's roots for the proxy: {exc}", file=sys.stderr)
        roots = None
    if roots is not None:
        print(
            f"tokometer: providers are verified against the roots this shell trusts ({roots})",
            file=sys.stderr,
        )
        lines[:0] = ["--set", f"ssl_verify_upstream_trusted_ca={roots}"]
    if lines:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
