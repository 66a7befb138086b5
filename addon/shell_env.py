"""``scripts/shell-env``: the shell lines that point a shell at the proxy.

``eval "$(scripts/shell-env)"`` sets the proxy variables and makes the usual
clients trust mitmproxy's CA; ``--unset`` prints the reverse;
``--exec [--env NAME] -- CMD ARGS...`` runs one command with those variables set
instead (it replaces this process: CMD's exit status and signals are the caller's).

Trust variables that REPLACE a client's trust store (SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
CURL_CA_BUNDLE, boto3's AWS_CA_BUNDLE, gRPC's GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) get a combined
bundle, the roots the shell trusted plus mitmproxy's CA, so hosts the proxy tunnels untouched
still verify as before. Those that ADD to a store (NODE_EXTRA_CA_CERTS, Deno's DENO_CERT,
Codex's CODEX_CA_CERTIFICATE) get mitmproxy's CA plus the extra certificates the shell gave
them before. Clients that ignore the proxy variables unless told: Node's own
``fetch`` and ``https`` (NODE_USE_ENV_PROXY=1, Node 22.21+ / 24+) and aiohttp as litellm uses
it (AIOHTTP_TRUST_ENV).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from addon.paths import data_dir, resolve_policies_path

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
NO_PROXY_VARS = ("NO_PROXY", "no_proxy")
# Each replaces its client's roots: they get the combined bundle.
BUNDLE_VARS = (
    "SSL_CERT_FILE",  # OpenSSL, Python's ssl, httpx (openai, anthropic, google-genai), Go and Rust on Linux
    "REQUESTS_CA_BUNDLE",  # requests
    "CURL_CA_BUNDLE",  # curl
    "AWS_CA_BUNDLE",  # boto3 / the AWS CLI (Bedrock): they read no other variable
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",  # gRPC clients (google-generativeai's default transport)
)
NODE_VAR = "NODE_EXTRA_CA_CERTS"  # adds to Node's (and Bun's) roots
# Each adds to its runtime's roots: they get the CA, plus the extra certificates the shell gave them.
# Codex CLI adds CODEX_CA_CERTIFICATE to its roots (and reads it before SSL_CERT_FILE).
EXTRA_CA_VARS = (NODE_VAR, "DENO_CERT", "CODEX_CA_CERTIFICATE")
# Clients that ignore HTTPS_PROXY unless told: Node's built-in fetch (the OpenAI and Anthropic Node
# SDKs, the Vercel AI SDK; Node 22.21+ and 24+ read this) and https (22.21+, 24.5+), and aiohttp
# sessions that litellm opens for async calls.
OPT_IN_VARS = {"NODE_USE_ENV_PROXY": "1", "AIOHTTP_TRUST_ENV": "True"}
# Node releases that read NODE_USE_ENV_PROXY for fetch: 22.21 and later 22.x, and 24.0 on.
NODE_PROXY_SINCE_22 = 21
NODE_PROXY_MAJOR = 24
NODE_CHECK_TIMEOUT = 0.5  # seconds: a version manager's shim may block (installing, prompting)
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


SAVED_PREFIX = "TOKOMETER_SAVED_"  # the values a shell had before: --unset puts them back
OURS_VAR = "TOKOMETER_SHELL_ENV"  # the variables shell-env set in this shell, comma-separated


def _before(name: str) -> str | None:
    """What the shell had in ``name`` before shell-env first set it (now, if it never did)."""
    if name in _ours():
        return os.environ.get(SAVED_PREFIX + name)
    return os.environ.get(name)


def _ours() -> list[str]:
    return [n for n in os.environ.get(OURS_VAR, "").split(",") if n]


def _own_bundle(path: Path) -> bool:
    return path.parent == data_dir() and path.name.startswith("ca-bundle")


def public_roots() -> tuple[bytes, bool]:
    """The roots the shell trusted before: every bundle it pointed a client at (a company's CA
    in SSL_CERT_FILE, another in REQUESTS_CA_BUNDLE, say), else the machine's public roots
    (certifi's if none); and whether they are the shell's own choice."""
    system = _system_roots()
    chosen: list[bytes] = []
    for name in BUNDLE_VARS:
        value = _before(name)
        if value and Path(value).is_file() and not _own_bundle(Path(value)):
            roots = Path(value).read_bytes()
            if roots not in chosen:
                chosen.append(roots)
    if not chosen:
        return system, False
    roots = b"\n".join(r.rstrip(b"\n") + b"\n" for r in chosen)
    return roots, roots != system  # the machine's own bundle, named: not a choice


def _system_roots() -> bytes:
    for candidate in SYSTEM_BUNDLES:
        path = Path(candidate)
        if path.is_file():
            return path.read_bytes()
    import certifi

    return Path(certifi.where()).read_bytes()


def write_file(target: Path, content: bytes) -> None:
    """Write ``target`` whole unless it holds ``content`` already: a temporary file of its own, then
    a rename, so shells evaluating at once never see half a file nor each other's temporary."""
    if target.exists() and target.read_bytes() == content:
        return
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def combined_bundle(ca_pem: Path, folder: Path) -> Path:
    """Write the roots + mitmproxy's CA to a bundle in ``folder`` if it is missing or stale.

    Named after both (``ca-bundle-<hash>.pem``): shells that trust different roots, or point at
    proxies with different CAs (another ``--confdir``), never rewrite each other's bundle.
    """
    roots, _ = public_roots()
    ca = ca_pem.read_bytes()
    content = roots.rstrip(b"\n") + b"\n\n# mitmproxy CA (tokometer)\n" + ca
    target = folder / f"ca-bundle-{hashlib.sha256(roots + ca).hexdigest()[:12]}.pem"
    write_file(target, content)
    return target


def extra_ca_file(ca_pem: Path, folder: Path) -> Path:
    """What the variables that add to a store get: mitmproxy's CA alone, or, when the shell gave
    them extra certificates of its own (a company's CA), a file with those and the CA."""
    extras: list[bytes] = []
    for name in EXTRA_CA_VARS:
        value = _before(name)
        if value and Path(value).is_file() and not _own_bundle(Path(value)) and Path(value) != ca_pem:
            content = Path(value).read_bytes()
            if content not in extras:
                extras.append(content)
    if not extras:
        return ca_pem
    own = b"\n".join(e.rstrip(b"\n") + b"\n" for e in extras)
    ca = ca_pem.read_bytes()
    target = folder / f"ca-bundle-extra-{hashlib.sha256(own + ca).hexdigest()[:12]}.pem"
    write_file(target, own + b"\n# mitmproxy CA (tokometer)\n" + ca)
    return target


def node_without_proxy_support(path: str | None = None) -> str | None:
    """The version of the ``node`` on PATH when it ignores NODE_USE_ENV_PROXY (older than 22.21,
    or 23.x), else None (none on PATH, or one that reads it)."""
    node = shutil.which("node", path=path)
    if node is None:
        return None
    try:  # never the terminal: a shim must not read what the user types
        out = subprocess.run(
            [node, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NODE_CHECK_TIMEOUT,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # a shim too slow to answer: no warning
        return None
    found = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", out)
    if found is None:
        return None
    major, minor = int(found[1]), int(found[2])
    if major >= NODE_PROXY_MAJOR or (major == 22 and minor >= NODE_PROXY_SINCE_22):
        return None
    return out


def no_proxy_value() -> str:
    """The shell's own NO_PROXY and no_proxy entries (a company's hosts), loopback names added."""
    entries = [e.strip() for name in NO_PROXY_VARS for e in (_before(name) or "").split(",") if e.strip()]
    return ",".join(dict.fromkeys([*entries, *NO_PROXY_HOSTS.split(",")]))


def proxy_variables(proxy_url: str, bundle: Path, ca: Path, env_name: str | None) -> dict[str, str]:
    """The variables that point a process at the proxy (what ``export_lines`` exports).

    ``bundle``: the combined bundle (``combined_bundle``); ``ca``: what adds to a store (``extra_ca_file``).
    """
    values: dict[str, str] = {name: proxy_url for name in PROXY_VARS}
    values.update(dict.fromkeys(NO_PROXY_VARS, no_proxy_value()))
    values.update({name: str(bundle) for name in BUNDLE_VARS})
    values.update({name: str(ca) for name in EXTRA_CA_VARS})
    values.update(OPT_IN_VARS)
    if env_name:
        values[ENV_VAR] = env_name
    return values


def export_lines(proxy_url: str, bundle: Path, ca: Path, env_name: str | None) -> list[str]:
    """``export`` lines for bash and zsh. The first time shell-env sets a variable in a shell, the
    value the shell had is kept aside (``TOKOMETER_SAVED_<NAME>``, by reference: never printed) for
    ``--unset``."""
    values = proxy_variables(proxy_url, bundle, ca, env_name)
    ours = _ours()
    # Kept aside by reference ("$HTTPS_PROXY", expanded by the shell before the new value is set):
    # a company proxy's password in it is never printed.
    saved = [
        f'export {SAVED_PREFIX}{name}="${name}"'
        for name in values
        if name not in ours and os.environ.get(name) is not None
    ]
    marker = {OURS_VAR: ",".join(dict.fromkeys([*ours, *values]))}
    return [*saved, *(f"export {name}={shlex.quote(value)}" for name, value in {**values, **marker}.items())]


def unset_lines() -> list[str]:
    """Undo ``export_lines``: each variable shell-env set back to what the shell had, else unset.

    Nothing else is touched: without a shell-env before, the shell's own settings stay.
    """
    lines = [
        f'if [ -n "${{{SAVED_PREFIX}{name}+x}}" ]; then export {name}="${SAVED_PREFIX}{name}"; '
        f"unset {SAVED_PREFIX}{name}; else unset {name}; fi"
        for name in _ours()
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
    ]
    legacy = f'if [ -n "${{{MARK_VAR}:-}}" ]; then unset {ENV_VAR} {MARK_VAR}; fi'  # an older shell-env
    return [*lines, f"unset {OURS_VAR}", legacy]


def environment_warning(name: str, policies_path: Path | None = None) -> str | None:
    """Why ``APP_ENV=name`` would not put calls in that environment, or None: the policy file
    (the proxy's default: ``$TOKOMETER_POLICIES``, else the checkout's) declares environments and
    not this one (the proxy books such calls under its default environment), or the proxy does not
    read APP_ENV at all. A missing or invalid file: None (nothing to check against)."""
    from addon.policies import PolicyError, load_policies, normalize_environment

    path = policies_path or resolve_policies_path()
    try:
        policies = load_policies(path)
    except PolicyError:
        return None
    if ENV_VAR not in policies.attribution.environment_vars:
        read = ", ".join(policies.attribution.environment_vars) or "none"
        return (
            f"shell-env: --env {name}: {path} does not read {ENV_VAR} (attribution.process_env."
            f"environment: {read}), so it does not set these calls' environment."
        )
    if policies.declares(name):
        return None
    declared = ", ".join(policies.claimable() or ())
    return (
        f"shell-env: --env {name}: {path} declares no environment {normalize_environment(name)} "
        f"(declared: {declared}; default: {policies.default_environment}), so the proxy books these "
        f"calls under {policies.default_environment}. Declare it under environments: (an empty entry "
        f"will do: {normalize_environment(name)}: {{}}), or name a declared one."
    )


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
    parser.add_argument(
        "--exec",
        dest="exec_",
        action="store_true",
        help="run the command after -- with the variables set (nothing is printed): "
        "scripts/shell-env --exec [--env NAME] -- CMD ARGS...",
    )
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``(options, command)``: the arguments before the first ``--`` and those after it (None if none)."""
    if "--" not in argv:
        return argv, None
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def find_command(name: str, path: str | None) -> str | None:
    """Where ``name`` would be executed from (``path``: the PATH the command gets), else None."""
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name, path=path)


def exec_command(command: list[str], variables: dict[str, str]) -> int:
    """Replace this process with ``command`` run with ``variables`` added; returns only on failure."""
    env = {**os.environ, **variables}
    if find_command(command[0], env.get("PATH", os.defpath)) is None:
        print(f"shell-env: command not found: {command[0]}", file=sys.stderr)
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"shell-env: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 126
    return 126  # pragma: no cover (execvpe does not return)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options, command = split_command(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(options)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port (1-65535)")
    if command is not None and not args.exec_:
        parser.error("a command after -- needs --exec: scripts/shell-env --exec -- CMD ARGS...")
    if args.exec_:
        if args.unset:
            parser.error("--exec and --unset do not go together")
        if not command:
            parser.error("--exec needs a command: scripts/shell-env --exec [--env NAME] -- CMD ARGS...")
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
    try:
        bundle = combined_bundle(ca, data_dir())
        extra = extra_ca_file(ca, data_dir())
    except OSError as exc:
        print(
            f"shell-env: cannot write the CA bundle under {data_dir()}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    if not proxy_listening(args.host, args.port):
        print(
            f"shell-env: nothing listens on {args.host}:{args.port} yet: start scripts/proxy, "
            "or calls from this shell will fail to connect.",
            file=sys.stderr,
        )
    old_node = node_without_proxy_support()
    if old_node is not None:
        print(
            f"shell-env: node {old_node} on PATH ignores HTTPS_PROXY in its own fetch and https "
            "(NODE_USE_ENV_PROXY needs Node 22.21+ or 24+): Node programs using them (the OpenAI and "
            "Anthropic Node SDKs) reach providers directly, unmetered.",
            file=sys.stderr,
        )
    if args.env:
        warning = environment_warning(args.env)
        if warning is not None:
            print(warning, file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    proxy_url = f"http://{host}:{args.port}"  # an IPv6 address goes in brackets in a URL
    if args.exec_ and command:
        return exec_command(command, proxy_variables(proxy_url, bundle, extra, args.env))
    print("\n".join(export_lines(proxy_url, bundle, extra, args.env)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
