"""``scripts/shell-env``: the shell lines that point a shell at the proxy.

``eval "$(scripts/shell-env)"`` sets the proxy variables and makes the usual
clients trust mitmproxy's CA; ``--unset`` prints the reverse. Trust variables
that REPLACE a client's trust store (SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
CURL_CA_BUNDLE) get a combined bundle, the public roots plus mitmproxy's CA,
so hosts the proxy tunnels untouched still verify as before; Node's
NODE_EXTRA_CA_CERTS adds to its store, so it gets the CA alone.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from pathlib import Path

from addon.paths import data_dir

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
NO_PROXY_VARS = ("NO_PROXY", "no_proxy")
BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
NODE_VAR = "NODE_EXTRA_CA_CERTS"
ENV_VAR = "APP_ENV"
MARK_VAR = "TOKOMETER_SET_APP_ENV"
NO_PROXY_HOSTS = "localhost,127.0.0.1,::1"
# Where the usual public roots live, most specific first (Debian/Ubuntu, Fedora/RHEL, Alpine, macOS brew).
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/openssl/cert.pem",
)


def public_roots() -> bytes:
    """The machine's public root certificates (certifi's when the system has none)."""
    for candidate in SYSTEM_BUNDLES:
        path = Path(candidate)
        if path.is_file():
            return path.read_bytes()
    import certifi

    return Path(certifi.where()).read_bytes()


def combined_bundle(ca_pem: Path, target: Path) -> Path:
    """Write public roots + mitmproxy's CA to ``target`` if it is missing or stale."""
    ca = ca_pem.read_bytes()
    content = public_roots().rstrip(b"\n") + b"\n\n# mitmproxy CA (tokometer)\n" + ca
    if not target.exists() or target.read_bytes() != content:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        tmp.replace(target)
    return target


def export_lines(proxy_url: str, bundle: Path, ca: Path, env_name: str | None) -> list[str]:
    """``export`` lines for bash and zsh."""
    values: dict[str, str] = {name: proxy_url for name in PROXY_VARS}
    values.update({name: NO_PROXY_HOSTS for name in NO_PROXY_VARS})
    values.update({name: str(bundle) for name in BUNDLE_VARS})
    values[NODE_VAR] = str(ca)
    if env_name:
        values[ENV_VAR] = env_name
        values[MARK_VAR] = "1"  # so --unset knows APP_ENV was ours to remove
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


def unset_lines() -> list[str]:
    names = [*PROXY_VARS, *NO_PROXY_VARS, *BUNDLE_VARS, NODE_VAR]
    return [
        "unset " + " ".join(names),
        f'if [ -n "${{{MARK_VAR}:-}}" ]; then unset {ENV_VAR} {MARK_VAR}; fi',
    ]


def proxy_listening(host: str, port: int) -> bool:
    """True if something accepts connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/shell-env",
        description='Point this shell at the tokometer proxy: eval "$(scripts/shell-env)"',
    )
    parser.add_argument("--host", default="127.0.0.1", help="proxy host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    parser.add_argument(
        "--confdir",
        default=os.environ.get("MITMPROXY_CONFDIR", "~/.mitmproxy"),
        help="mitmproxy's confdir holding its CA (default ~/.mitmproxy)",
    )
    parser.add_argument("--env", metavar="NAME", help="also set APP_ENV=NAME for this shell's calls")
    parser.add_argument("--unset", action="store_true", help="print the lines that undo it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.unset:
        print("\n".join(unset_lines()))
        return 0
    ca = Path(args.confdir).expanduser() / "mitmproxy-ca-cert.pem"
    if not ca.is_file():
        print(
            f"shell-env: mitmproxy's CA certificate does not exist yet ({ca}).\n"
            "Start the proxy once (scripts/proxy) to create it, then run this again.",
            file=sys.stderr,
        )
        return 1
    bundle = combined_bundle(ca, data_dir() / "ca-bundle.pem")
    if not proxy_listening(args.host, args.port):
        print(
            f"shell-env: nothing listens on {args.host}:{args.port} yet: start scripts/proxy, "
            "or calls from this shell will fail to connect.",
            file=sys.stderr,
        )
    print("\n".join(export_lines(f"http://{args.host}:{args.port}", bundle, ca, args.env)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
