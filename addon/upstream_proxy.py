"""The proxy a developer's traffic had to go through before tokometer (a company's), for ``scripts/proxy``.

A shell behind a company proxy has ``HTTPS_PROXY=http://proxy.corp:3128``; ``shell-env`` points it at
tokometer instead (keeping the old value aside), and mitmproxy, in its default mode, connects to
providers directly, which such a network refuses. ``scripts/proxy`` asks this module for the
``mitmdump`` arguments that chain tokometer to that proxy (``--mode upstream:URL``; credentials
in the URL go to mitmproxy's ``upstream_auth`` through ``$TOKOMETER_UPSTREAM_AUTH``, never the
command line): the shell's own value when it was started from a shell pointed at tokometer
already, else the one in its environment; never tokometer itself.

``python -m addon.upstream_proxy [MITMDUMP ARGS...]`` prints the arguments, one per line, then
``TOKOMETER_UPSTREAM_AUTH=user:password`` when there are credentials (nothing when there is no such
proxy, or the arguments choose a ``--mode`` already), and says on stderr what it chose.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from addon.shell_env import OURS_VAR, SAVED_PREFIX

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
    """The address ``mitmdump`` will listen on with ``args`` after scripts/proxy's own (the last wins)."""
    host, port = DEFAULT_LISTEN
    for i, arg in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else None
        if arg.startswith("--listen-host="):
            host = arg.split("=", 1)[1]
        elif arg.startswith("--listen-port="):
            port = int(arg.split("=", 1)[1])
        elif arg == "--listen-host" and value is not None:
            host = value
        elif arg == "--listen-port" and value is not None and value.isdigit():
            port = int(value)
    return host, port


def _chooses_mode(args: Sequence[str]) -> bool:
    return any(a in ("--mode", "-m") or a.startswith(("--mode=", "-m")) for a in args)


def _is_local(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain", ""):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


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
        parts = urlsplit(value if "://" in value else f"http://{value}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            print(f"tokometer: {source}={value} is not an HTTP proxy mitmproxy can chain to", file=sys.stderr)
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if port == listen_port and (_is_local(parts.hostname) or parts.hostname == listen_host):
            continue  # this proxy itself
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        auth = None
        if parts.username:
            auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        return Upstream(mode=f"upstream:{parts.scheme}://{host}:{port}", auth=auth, source=source)
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    upstream = upstream_from_env(os.environ if environ is None else environ, args)
    if upstream is not None:
        shown = upstream.mode.removeprefix("upstream:")
        print(f"tokometer: calls go on through the proxy {shown} (from {upstream.source})", file=sys.stderr)
        print("\n".join(upstream.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
