"""scripts/shell-env --exec: one command run with the proxy's variables, the process replaced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from addon.shell_env import (
    BUNDLE_VARS,
    EXTRA_CA_VARS,
    NO_PROXY_VARS,
    OPT_IN_VARS,
    PROXY_VARS,
    environment_warning,
    export_lines,
    proxy_variables,
    split_command,
)

ROOT = Path(__file__).resolve().parent.parent
PRINT_VARS = (
    "import os; names = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'NO_PROXY', 'SSL_CERT_FILE', "
    "'REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'AWS_CA_BUNDLE', 'GRPC_DEFAULT_SSL_ROOTS_FILE_PATH', "
    "'CODEX_CA_CERTIFICATE', 'NODE_EXTRA_CA_CERTS', 'DENO_CERT', 'NODE_USE_ENV_PROXY', "
    "'AIOHTTP_TRUST_ENV', 'APP_ENV', 'KEEP_ME']; "
    "print('\\n'.join(f'{n}={os.environ.get(n)}' for n in names)); print(os.getpid())"
)
# Every variable shell-env sets: the outer environment's (this machine sets several) must not leak in.
SET_BY_SHELL_ENV = {*PROXY_VARS, *NO_PROXY_VARS, *BUNDLE_VARS, *EXTRA_CA_VARS, *OPT_IN_VARS, "APP_ENV"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict[str, str], int]:
    """A confdir with a dummy CA, a temp XDG_DATA_HOME, a port nobody listens on."""
    confdir = tmp_path / "mitmproxy"
    confdir.mkdir()
    (confdir / "mitmproxy-ca-cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SET_BY_SHELL_ENV and k.upper() not in SET_BY_SHELL_ENV and not k.startswith("TOKOMETER_")
    }
    env |= {"XDG_DATA_HOME": str(tmp_path / "xdg"), "KEEP_ME": "kept", "PYTHONPATH": str(ROOT)}
    return confdir, env, free_port()


def run(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_exec_runs_the_command_with_the_variables_in_place_of_itself(
    setup: tuple[Path, dict[str, str], int], tmp_path: Path
) -> None:
    confdir, env, port = setup
    args = [sys.executable, "-m", "addon.shell_env", "--confdir", str(confdir), "--port", str(port)]
    proc = run([*args, "--env", "staging", "--exec", "--", sys.executable, "-c", PRINT_VARS], env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    [bundle] = (tmp_path / "xdg" / "tokometer").glob(
        "ca-bundle-" + "[0-9a-f]" * 12 + ".pem"
    )  # named after roots and CA
    lines = out.splitlines()
    assert lines[:-1] == [
        f"HTTPS_PROXY=http://127.0.0.1:{port}",
        f"https_proxy=http://127.0.0.1:{port}",
        f"HTTP_PROXY=http://127.0.0.1:{port}",
        "NO_PROXY=localhost,127.0.0.1,::1",
        f"SSL_CERT_FILE={bundle}",
        f"REQUESTS_CA_BUNDLE={bundle}",
        f"CURL_CA_BUNDLE={bundle}",
        f"AWS_CA_BUNDLE={bundle}",
        f"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={bundle}",
        f"CODEX_CA_CERTIFICATE={confdir / 'mitmproxy-ca-cert.pem'}",
        f"NODE_EXTRA_CA_CERTS={confdir / 'mitmproxy-ca-cert.pem'}",
        f"DENO_CERT={confdir / 'mitmproxy-ca-cert.pem'}",
        "NODE_USE_ENV_PROXY=1",
        "AIOHTTP_TRUST_ENV=True",
        "APP_ENV=staging",
        "KEEP_ME=kept",
    ]
    assert int(lines[-1]) == proc.pid  # exec'd: the same process, so signals reach the command
    assert bundle.read_text().endswith("-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n")
    assert f"nothing listens on 127.0.0.1:{port}" in err  # a warning only


def test_exec_passes_the_exit_status_through(setup: tuple[Path, dict[str, str], int]) -> None:
    confdir, env, port = setup
    args = [sys.executable, "-m", "addon.shell_env", "--confdir", str(confdir), "--port", str(port), "--exec"]
    proc = run([*args, "--", sys.executable, "-c", "import sys; sys.exit(7)"], env)
    proc.communicate(timeout=30)
    assert proc.returncode == 7


def test_exec_through_the_scripts_wrapper(setup: tuple[Path, dict[str, str], int]) -> None:
    confdir, env, port = setup
    wrapper = str(ROOT / "scripts" / "shell-env")
    proc = run(
        [
            wrapper,
            "--confdir",
            str(confdir),
            "--port",
            str(port),
            "--exec",
            "--",
            "sh",
            "-c",
            'echo "$HTTPS_PROXY"',
        ],
        env,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out == f"http://127.0.0.1:{port}\n"


def test_exec_errors(setup: tuple[Path, dict[str, str], int], tmp_path: Path) -> None:
    confdir, env, port = setup
    base = [sys.executable, "-m", "addon.shell_env", "--port", str(port)]

    proc = run([*base, "--confdir", str(tmp_path / "none"), "--exec", "--", "true"], env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "mitmproxy's CA certificate does not exist yet" in err

    proc = run([*base, "--confdir", str(confdir), "--exec", "--", "no-such-command-xyz", "a"], env)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (127, "")
    assert err.endswith("shell-env: command not found: no-such-command-xyz\n")

    proc = run([*base, "--confdir", str(confdir), "--exec"], env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--exec needs a command" in err

    proc = run([*base, "--confdir", str(confdir), "--", "true"], env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "a command after -- needs --exec" in err

    proc = run([*base, "--exec", "--unset", "--", "true"], env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--exec and --unset do not go together" in err


def test_split_command_and_the_eval_lines_share_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SET_BY_SHELL_ENV:
        monkeypatch.delenv(name, raising=False)
    assert split_command(["--env", "dev", "--exec", "--", "curl", "--", "x"]) == (
        ["--env", "dev", "--exec"],
        ["curl", "--", "x"],
    )
    assert split_command(["--env", "dev"]) == (["--env", "dev"], None)
    values = proxy_variables("http://127.0.0.1:8080", tmp_path / "b.pem", tmp_path / "ca.pem", "dev")
    monkeypatch.delenv("TOKOMETER_SHELL_ENV", raising=False)
    monkeypatch.delenv("APP_ENV", raising=False)
    lines = export_lines("http://127.0.0.1:8080", tmp_path / "b.pem", tmp_path / "ca.pem", "dev")
    assert lines[:-1] == [f"export {name}={value}" for name, value in values.items()]
    assert lines[-1] == "export TOKOMETER_SHELL_ENV=" + ",".join(values)  # what --unset undoes
    assert values["APP_ENV"] == "dev"
    assert "APP_ENV" not in proxy_variables("http://h:1", tmp_path / "b.pem", tmp_path / "ca.pem", None)


def test_the_shell_keeps_its_own_settings_and_gets_them_back(
    setup: tuple[Path, dict[str, str], int], tmp_path: Path
) -> None:
    """A company's NO_PROXY hosts and CA bundle stay in force beside the proxy; --unset restores them."""
    confdir, env, port = setup
    corp_ca = tmp_path / "corp-ca.pem"
    corp_ca.write_text("-----BEGIN CERTIFICATE-----\nMIIBcorp\n-----END CERTIFICATE-----\n")
    shell_env = f"{sys.executable} -m addon.shell_env --confdir {confdir} --port {port}"
    script = (
        f"export NO_PROXY=corp.internal SSL_CERT_FILE={corp_ca}; unset CURL_CA_BUNDLE REQUESTS_CA_BUNDLE; "
        f'eval "$({shell_env})"; eval "$({shell_env})"; '  # twice: the shell's own values are kept once
        'echo "during $NO_PROXY $SSL_CERT_FILE"; grep -c MIIBcorp "$SSL_CERT_FILE"; '
        f'eval "$({shell_env} --unset)"; '
        'echo "after $NO_PROXY $SSL_CERT_FILE ${HTTPS_PROXY-unset} ${CURL_CA_BUNDLE-unset}"'
    )
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    during, count, after = out.stdout.splitlines()
    no_proxy, bundle = during.removeprefix("during ").split(" ")
    assert no_proxy == "corp.internal,localhost,127.0.0.1,::1"
    # a bundle of its own (named after its roots): a shell without the company's CA never rewrites it
    assert Path(bundle).parent == tmp_path / "xdg" / "tokometer" and Path(bundle).name.startswith(
        "ca-bundle-"
    )
    assert count == "1"  # the company's CA is in the bundle the clients now trust
    assert after == f"after corp.internal {corp_ca} unset unset", out.stderr


def test_company_certificates_in_any_trust_variable_are_kept(
    setup: tuple[Path, dict[str, str], int], tmp_path: Path
) -> None:
    """A company CA only in REQUESTS_CA_BUNDLE while SSL_CERT_FILE names another bundle, and extra
    certificates given to Node: all stay trusted beside mitmproxy's CA, and --unset restores them."""
    confdir, env, port = setup
    certs = {}
    for name in ("roots", "corp", "node"):
        certs[name] = tmp_path / f"{name}.pem"
        certs[name].write_text(f"-----BEGIN CERTIFICATE-----\nMIIB{name}\n-----END CERTIFICATE-----\n")
    shell_env = f"{sys.executable} -m addon.shell_env --confdir {confdir} --port {port}"
    script = (
        f"export SSL_CERT_FILE={certs['roots']} REQUESTS_CA_BUNDLE={certs['corp']} "
        f"NODE_EXTRA_CA_CERTS={certs['node']}; "
        f'eval "$({shell_env})"; '
        'for f in "$SSL_CERT_FILE" "$AWS_CA_BUNDLE" "$NODE_EXTRA_CA_CERTS" "$DENO_CERT"; do '
        'echo "$(grep -c MIIBroots "$f") $(grep -c MIIBcorp "$f") $(grep -c MIIBnode "$f") '
        '$(grep -c MIIBdummy "$f")"; done; '
        f'eval "$({shell_env} --unset)"; '
        'echo "$SSL_CERT_FILE $REQUESTS_CA_BUNDLE $NODE_EXTRA_CA_CERTS ${AWS_CA_BUNDLE-unset} '
        '${NODE_USE_ENV_PROXY-unset} ${DENO_CERT-unset}"'
    )
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    *counts, after = out.stdout.splitlines()
    # roots, corp, node's extras, mitmproxy's CA (the dummy) in: the bundle (twice), Node's and Deno's file
    assert counts == ["1 1 0 1", "1 1 0 1", "0 0 1 1", "0 0 1 1"]
    assert after == f"{certs['roots']} {certs['corp']} {certs['node']} unset unset unset"


def test_an_old_node_on_path_is_reported(setup: tuple[Path, dict[str, str], int], tmp_path: Path) -> None:
    """Node before 22.21 (and 23.x) ignores NODE_USE_ENV_PROXY: its fetch goes around the proxy."""
    confdir, env, port = setup
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    node = bin_dir / "node"
    warned = {}
    for version in ("v20.20.2", "v22.20.0", "v23.11.1", "v22.21.0", "v24.5.0", "v26.1.0"):
        node.write_text(f"#!/bin/sh\necho {version}\n")
        node.chmod(0o755)
        res = subprocess.run(
            [sys.executable, "-m", "addon.shell_env", "--confdir", str(confdir), "--port", str(port)],
            env=env | {"PATH": f"{bin_dir}:{env['PATH']}"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        warned[version] = f"node {version} on PATH ignores HTTPS_PROXY" in res.stderr
        assert "export NODE_USE_ENV_PROXY=1" in res.stdout.splitlines()
    assert warned == {
        "v20.20.2": True,
        "v22.20.0": True,
        "v23.11.1": True,
        "v22.21.0": False,
        "v24.5.0": False,
        "v26.1.0": False,
    }


def test_an_ipv6_host_is_bracketed_and_the_port_checked(setup: tuple[Path, dict[str, str], int]) -> None:
    confdir, env, port = setup
    base = [sys.executable, "-m", "addon.shell_env", "--confdir", str(confdir)]
    out = subprocess.run(
        [*base, "--host", "::1", "--port", str(port)], env=env, capture_output=True, text=True
    )
    assert f"export HTTPS_PROXY='http://[::1]:{port}'" in out.stdout.splitlines()
    bad = subprocess.run([*base, "--port", "99999"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--port 99999 is not a TCP port" in bad.stderr
    blocked = Path(env["XDG_DATA_HOME"]).parent / "not-a-dir"
    blocked.write_text("")
    unwritable = subprocess.run(
        [*base, "--port", str(port)],
        env=env | {"XDG_DATA_HOME": str(blocked)},
        capture_output=True,
        text=True,
    )
    assert unwritable.returncode == 1 and "shell-env: cannot write the CA bundle" in unwritable.stderr


def test_unset_undoes_only_what_shell_env_did(setup: tuple[Path, dict[str, str], int]) -> None:
    """Without an eval before, --unset touches nothing; after two evals with different options it
    still restores what the shell had before the first; APP_ENV too."""
    confdir, env, port = setup
    shell_env = f"{sys.executable} -m addon.shell_env --confdir {confdir}"
    script = (
        "export HTTPS_PROXY=http://corp:3128 APP_ENV=staging; "
        f'eval "$({shell_env} --unset)"; echo "untouched $HTTPS_PROXY $APP_ENV"; '
        f'eval "$({shell_env} --port {port})"; eval "$({shell_env} --port 1 --env dev)"; '
        'echo "during $HTTPS_PROXY $APP_ENV"; '
        f'eval "$({shell_env} --unset)"; '
        'echo "after $HTTPS_PROXY $APP_ENV ${NODE_EXTRA_CA_CERTS-unset} ${TOKOMETER_SHELL_ENV-unset}"'
    )
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == [
        "untouched http://corp:3128 staging",
        "during http://127.0.0.1:1 dev",
        "after http://corp:3128 staging unset unset",
    ], out.stderr


# -- review of the trust variables (each fails before its fix) -----------------------------------

CERT = "-----BEGIN CERTIFICATE-----\nMIIB{}\n-----END CERTIFICATE-----\n"


@pytest.fixture
def trust_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No trust variable from the outer environment; the data folder in tmp_path."""
    for name in (*SET_BY_SHELL_ENV, "TOKOMETER_SHELL_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_codex_ca_certificate_adds_to_the_roots(trust_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Codex adds CODEX_CA_CERTIFICATE to its roots, so it usually names one CA: it must not become
    the whole trust store of every other client (the public roots stay), and Codex gets it back
    beside mitmproxy's CA."""
    from addon import shell_env

    corp, ca = trust_env / "corp.pem", trust_env / "ca.pem"
    corp.write_text(CERT.format("corp"))
    ca.write_text(CERT.format("mitm"))
    monkeypatch.setenv("CODEX_CA_CERTIFICATE", str(corp))
    roots, own = shell_env.public_roots()
    assert (roots, own) == (shell_env._system_roots(), False)
    extra = shell_env.extra_ca_file(ca, trust_env / "xdg" / "tokometer")
    assert "MIIBcorp" in extra.read_text() and "MIIBmitm" in extra.read_text()


def test_proxies_with_other_cas_do_not_rewrite_each_others_bundle(trust_env: Path) -> None:
    from addon.shell_env import combined_bundle

    folder = trust_env / "xdg" / "tokometer"
    ca_a, ca_b = trust_env / "a.pem", trust_env / "b.pem"
    ca_a.write_text(CERT.format("caA"))
    ca_b.write_text(CERT.format("caB"))
    bundle_a = combined_bundle(ca_a, folder)
    bundle_b = combined_bundle(ca_b, folder)
    assert bundle_a != bundle_b
    assert "MIIBcaA" in bundle_a.read_text() and "MIIBcaB" not in bundle_a.read_text()
    assert combined_bundle(ca_a, folder) == bundle_a  # the same roots and CA: the same file


def test_two_evals_writing_the_bundle_at_once_both_succeed(
    trust_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another shell's eval writes the same bundle between this one's write and its rename."""
    from addon import shell_env

    folder = trust_env / "xdg" / "tokometer"
    ca = trust_env / "ca.pem"
    ca.write_text(CERT.format("ca"))
    real_replace = os.replace
    nested: list[int] = []

    def replace(src: str, dst: object) -> None:
        if not nested:
            nested.append(1)
            folder.joinpath("x").touch()  # the other shell's bundle must be written from scratch
            for stale in folder.glob("ca-bundle-" + "[0-9a-f]" * 12 + ".pem"):
                stale.unlink()
            shell_env.combined_bundle(ca, folder)
        real_replace(src, dst)

    monkeypatch.setattr(shell_env.os, "replace", replace)
    bundle = shell_env.combined_bundle(ca, folder)
    assert bundle.read_text().endswith(CERT.format("ca"))
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))


def test_a_hanging_node_shim_does_not_stall_the_eval(tmp_path: Path) -> None:
    """A version manager's shim that blocks (installing, prompting) is given half a second, and
    never the terminal: no warning rather than a stalled shell."""
    import time

    from addon.shell_env import node_without_proxy_support

    node = tmp_path / "node"
    node.write_text("#!/bin/sh\nread answer\nsleep 3\necho v20.0.0\n")
    node.chmod(0o755)
    start = time.monotonic()
    assert node_without_proxy_support(str(tmp_path)) is None
    assert time.monotonic() - start < 1.5


def test_an_env_no_policy_declares_is_warned_about(setup: tuple[Path, dict[str, str], int]) -> None:
    """Before, `--env qa` exported APP_ENV=qa silently although policies.yaml declares no qa: the
    proxy booked those calls under the default environment, under its rules and budget."""
    confdir, env, port = setup
    args = [sys.executable, "-m", "addon.shell_env", "--confdir", str(confdir), "--port", str(port)]
    proc = run([*args, "--env", "qa"], env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "export APP_ENV=qa" in out  # still set: a warning only
    assert (
        f"shell-env: --env qa: {ROOT / 'policies.yaml'} declares no environment qa (declared: "
        "development, production, staging; default: development), so the proxy books these calls "
        "under development." in err
    )
    for declared in ("staging", "dev", "PRODUCTION"):
        proc = run([*args, "--env", declared], env)
        _, err = proc.communicate(timeout=30)
        assert "declares no environment" not in err, declared


def test_environment_warning_reads_the_policy_file_the_proxy_would(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    assert environment_warning("qa", path) is None  # no file: nothing enforced, any name goes
    path.write_text("default_environment: development\n")
    assert environment_warning("qa", path) is None  # no environment declared: any name goes
    path.write_text("environments:\n  ci: {}\n")
    assert "declares no environment qa (declared: ci; default: development)" in (
        environment_warning("qa", path) or ""
    )
    assert environment_warning("ci", path) is None
    assert environment_warning("development", path) is None  # the default
    path.write_text("environments:\n  ci: {}\nattribution:\n  process_env:\n    environment: [DEPLOY_ENV]\n")
    assert "does not read APP_ENV (attribution.process_env.environment: DEPLOY_ENV)" in (
        environment_warning("ci", path) or ""
    )
    path.write_text("environments: [\n")  # invalid: the proxy would not start on it anyway
    assert environment_warning("qa", path) is None
