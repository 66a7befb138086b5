"""Attribution that a client cannot bend, and live reloads of policies.yaml that leave nothing stale.

Found by an independent review; each test fails on the code before its fix.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

import addon.meter as meter_module
from addon.attribution import attribute
from addon.budgets import BudgetTracker, Scope
from addon.client_process import ClientProcess
from addon.interception import Interception
from addon.live_state import LiveState
from addon.meter import Meter
from addon.policies import PolicyFile, parse_policies
from tests.test_meter import CHAT_URL, OPENAI_KEY

DEV_BLOCK = """
environments:
  development:
    models: {allow: ["*-mini"], on_disallowed: block}
  production:
    allow_header_claims: false
"""


async def run(meter: Meter, flow: http.HTTPFlow) -> None:
    meter.requestheaders(flow)
    await meter.request(flow)


def chat(headers: http.Headers | dict[str, str] | None = None, model: str = "gpt-4o-mini") -> http.HTTPFlow:
    body = json.dumps({"model": model, "messages": []}).encode()
    if headers is None:
        headers = {"content-type": "application/json", "authorization": f"Bearer {OPENAI_KEY}"}
    return tflow.tflow(req=http.Request.make("POST", CHAT_URL, body, headers))


@pytest.mark.parametrize(
    ("claimed", "expected", "ignored"),
    [
        ("anything", "development", True),  # declared nowhere: no rules to leave development's for
        ("ｐｒｏｄｕｃｔｉｏｎ", "development", True),  # noqa: RUF001 - a full-width look-alike of a closed one
        ("PRODUCTION", "development", True),
        ("Development", "development", False),
        ("dev", "development", False),  # an alias of a declared one
    ],
)
def test_a_header_claims_only_environments_policies_yaml_declares(
    claimed: str, expected: str, ignored: bool
) -> None:
    decided = attribute(policies=parse_policies(DEV_BLOCK), header=json.dumps({"env": claimed}))
    assert decided.environment == expected
    assert bool(decided.problems) is ignored


def test_any_claim_goes_when_no_environment_is_declared() -> None:
    decided = attribute(policies=parse_policies("default_environment: development\n"), header='{"env": "qa"}')
    assert (decided.environment, decided.environment_source, decided.problems) == ("qa", "header", [])


async def test_several_api_keys_in_one_request_are_attributed_by_the_mapped_one(meter: Meter) -> None:
    """Two Authorization headers reached the key lookup joined ("k1, Bearer k2"): the mapped key
    went unrecognised, and the header's environment won."""
    meter._apply(parse_policies(DEV_BLOCK + 'keys: {laptop: {last4: "0123", environment: development}}\n'))
    flow = chat(
        http.Headers(
            [
                (b"content-type", b"application/json"),
                (b"authorization", b"Bearer sk-x-9999"),
                (b"authorization", f"Bearer {OPENAI_KEY}".encode()),
                (b"x-metering-tags", b'{"env":"production"}'),
            ]
        )
    )
    await run(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert (state.record.environment, state.record.key_name) == ("development", "laptop")
    assert "2 different API keys in one request" in state.errors[0]


async def test_process_variables_renamed_in_policies_reach_open_connections(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = {"APP_ENV": "development", "DEPLOY_ENV": "production"}

    def lookup(ip: str, port: int, names: frozenset[str], server: object = None) -> ClientProcess:
        return ClientProcess(pid=1, env={n: v for n, v in variables.items() if n in names})

    monkeypatch.setattr(meter_module, "lookup_client_process", lookup)
    meter._apply(parse_policies("environments: {development: {}, production: {}}"))
    first = chat()
    await run(meter, first)
    assert meter.call_state(first).record.environment == "development"  # type: ignore[union-attr]
    meter._apply(
        parse_policies(
            "environments: {development: {}, production: {}}\n"
            "attribution: {process_env: {environment: [DEPLOY_ENV]}}\n"
        )
    )
    second = chat()
    second.client_conn = first.client_conn  # the same keep-alive connection
    await run(meter, second)
    record = meter.call_state(second).record  # type: ignore[union-attr]
    assert (record.environment, record.environment_source) == ("production", "process")


def test_a_raised_cap_fires_its_alerts_again() -> None:
    now = datetime(2026, 11, 10, tzinfo=UTC)
    budget = "environments: {{development: {{budget: {{usd: {}, period: month, alert_at: [0.8]}}}}}}"
    tracker = BudgetTracker(parse_policies(budget.format(10)))
    dev = (Scope("environment", "development"),)
    assert [a.fraction for a in tracker.record(dev, Decimal(10), now)] == [0.8, 1.0]
    assert tracker.record(dev, Decimal(1), now) == []  # fired once per cap and period
    tracker.set_policies(parse_policies(budget.format(100)))
    assert [a.fraction for a in tracker.record(dev, Decimal(74), now)] == [0.8]  # $85 of $100


async def test_the_live_file_shows_reloaded_budgets_at_once(meter: Meter, tmp_path: Path) -> None:
    live = LiveState(tmp_path / "spend.duckdb.live.json", meter.session_id)
    meter.live = live
    meter._apply(parse_policies("environments: {development: {budget: {usd: 100, period: month}}}"))
    meter._apply(parse_policies("environments: {development: {budget: {usd: 5, period: day}}}"))
    [budget] = live.snapshot()["budgets"]
    assert (budget["cap_usd"], budget["period"]) == ("5", "day")


@pytest.mark.parametrize("moment", ["", "environments:\n  development:\n"])
def test_a_policies_file_caught_in_the_middle_of_a_save_is_not_applied(tmp_path: Path, moment: str) -> None:
    """An editor that truncates and then writes: empty, or cut off yet valid YAML, for a moment."""
    path = tmp_path / "policies.yaml"
    path.write_text(DEV_BLOCK)
    policy_file = PolicyFile(path)
    assert "development" in policy_file.load().environments

    class SavedDuringTheCheck(PolicyFile):
        def _settled(self, data: bytes) -> bool:
            path.write_text(DEV_BLOCK.replace("*-mini", "gpt-4o-mini"))  # the save completes
            return super()._settled(data)

    policy_file.__class__ = SavedDuringTheCheck
    path.write_text(moment)
    assert policy_file.check() == (None, None)  # not applied; the next check reads the saved file
    policy_file.__class__ = PolicyFile
    new, problem = policy_file.check()
    assert problem is None and new is not None
    assert new.environment("development").models.allow == ("gpt-4o-mini",)


def test_an_emptied_policies_file_applies_at_the_second_check(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(DEV_BLOCK)
    policy_file = PolicyFile(path)
    policy_file.load()
    path.write_text("")
    assert policy_file.check() == (None, None)
    new, problem = policy_file.check()
    assert problem is None and new is not None and dict(new.environments) == {}


async def test_a_provider_removed_from_policies_is_no_longer_intercepted() -> None:
    meter = Meter()
    interception = Interception(lambda: meter.registry.allow_host_patterns())
    meter.on_providers_changed = interception.refresh
    with taddons.context(Proxyserver(), NextLayer(), interception, meter) as tctx:
        tctx.configure(interception, allow_hosts=[r"^mine\.example:443$"])  # the user's own
        meter._apply(
            parse_policies('providers: {gw: {url: "https://llm.internal.example:8443", api: openai}}')
        )
        assert r"^llm\.internal\.example:8443$" in tctx.options.allow_hosts
        meter._apply(parse_policies("providers: {}"))
        assert not [p for p in tctx.options.allow_hosts if "internal" in p]
        assert r"^mine\.example:443$" in tctx.options.allow_hosts
        assert r"^api\.openai\.com:443$" in tctx.options.allow_hosts


async def test_a_key_forged_to_match_a_last4_entry_does_not_beat_a_fingerprinted_one(meter: Meter) -> None:
    """The whole key (its fingerprint) is a secret; four characters are not."""
    from addon.api_keys import key_fingerprint

    meter._apply(
        parse_policies(
            "environments:\n  development: {}\n"
            "  production:\n    models: {allow: [gpt-4o-mini], on_disallowed: block}\n"
            f"keys:\n  prod: {{fingerprint: '{key_fingerprint(OPENAI_KEY)}', environment: production}}\n"
            "  laptop: {last4: '0000', environment: development}\n"
        )
    )
    flow = chat(
        http.Headers(
            [
                (b"content-type", b"application/json"),
                (b"authorization", b"Bearer decoy-0000"),
                (b"authorization", f"Bearer {OPENAI_KEY}".encode()),
            ]
        ),
        model="gpt-4o",
    )
    await run(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403  # production's allowlist
    assert meter.call_state(flow).record.key_name == "prod"  # type: ignore[union-attr]


async def test_a_request_with_many_keys_is_looked_up_for_a_few(meter: Meter) -> None:
    """Every key was fingerprinted and matched: 100,000 of them stalled the event loop ~0.3 s."""
    google = meter.registry.by_name("google")
    assert google is not None
    query = "alt=sse&" + "&".join(f"key=AIza{i:030d}" for i in range(100_000))
    headers = http.Headers([(b"x-goog-api-key", b"AIzaREAL0000000000000000000000000000")])
    picked = meter._api_key(google, headers, query)
    assert picked.key == "AIzaREAL0000000000000000000000000000"
    assert picked.problem == "100001 different API keys in one request (the first 8 looked at)"
    assert (len(picked.others), picked.unweighed) == (7, True)
    assert google.keys_in_query("key=A%2Bb&keys=no&x=1&key=c") == ["A+b", "c"]


async def test_app_env_of_an_undeclared_environment_does_not_escape_the_allowlist(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpt-4o, blocked in development, was let through when the client ran with APP_ENV=sandbox."""

    def lookup(ip: str, port: int, names: frozenset[str], server: object = None) -> ClientProcess:
        return ClientProcess(pid=1, env={"APP_ENV": "sandbox"})

    monkeypatch.setattr(meter_module, "lookup_client_process", lookup)
    meter._apply(parse_policies(DEV_BLOCK))
    flow = chat(model="gpt-4o")
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run(meter, flow)
    state = meter.call_state(flow)
    assert state is not None and flow.response is not None and flow.response.status_code == 403
    assert (state.record.environment, state.record.environment_source) == ("development", "default")
    assert any("APP_ENV='sandbox' of the calling process ignored" in e for e in state.errors), state.errors


# -- several different API keys: a last4 match (four characters, no secret) decides nothing alone --

TWO_ENVS = """
default_environment: development
environments:
  development:
    models: {allow: ["*-mini", "gemini-*-flash*"], on_disallowed: block}
  staging: {}
  production:
    allow_header_claims: false
"""
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models"


def _refused(flow: http.HTTPFlow) -> bool:
    return flow.response is not None and flow.response.status_code == 403


@pytest.mark.parametrize("order", ["real first", "forged first"])
async def test_a_forged_second_key_cannot_pull_a_call_into_a_last4_mapped_environment(
    meter: Meter, order: str
) -> None:
    """The client's own key is unmapped; it adds a second ?key= ending in the last four characters
    of an entry bound to production. Whichever of the two the provider reads (the client can put
    its real key there), the forged one used to decide: production. The keys disagree, so neither
    binds the call, and where policies are enforced it is refused."""
    meter._apply(parse_policies(TWO_ENVS + 'keys:\n  prod-batch: {last4: "WXYZ", environment: production}\n'))
    real, forged = "AIzaREALKEY00000000000000000000000001", "AIzaNOTAKEY000000000000000000000WXYZ"
    keys = [real, forged] if order == "real first" else [forged, real]
    url = f"{GEMINI}/gemini-2.5-flash:generateContent?key={keys[0]}&key={keys[1]}"
    flow = tflow.tflow(
        req=http.Request.make("POST", url, b'{"contents": []}', {"content-type": "application/json"})
    )
    await run(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    record = state.record
    assert (record.environment, record.environment_source, record.key_name) == (
        "development",
        "default",
        None,
    )
    assert any("bound to different environments" in e for e in state.errors), state.errors
    assert _refused(flow) and record.action == "blocked"
    assert b"one API key" in (flow.response.content or b"")  # type: ignore[union-attr]


async def test_more_keys_than_are_weighed_bind_a_call_to_none_of_them(meter: Meter) -> None:
    """Eight forged keys all agree on production; the real one, unmapped, comes after the eight
    the proxy looks at."""
    meter._apply(parse_policies(TWO_ENVS + 'keys:\n  prod-batch: {last4: "WXYZ", environment: production}\n'))
    forged = [f"AIzaNOTAKEY{i:021d}WXYZ" for i in range(8)]
    query = "&".join(
        f"key={k}" for k in ["AIzaREALKEY00000000000000000000000001", *forged]
    )  # read last first
    url = f"{GEMINI}/gemini-2.5-flash:generateContent?{query}"
    flow = tflow.tflow(
        req=http.Request.make("POST", url, b'{"contents": []}', {"content-type": "application/json"})
    )
    await run(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert (state.record.environment, state.record.key_name) == ("development", None)
    assert _refused(flow), state.errors


@pytest.mark.parametrize("forged_first", [True, False])
async def test_a_last4_bound_key_cannot_leave_its_environment_with_a_forged_second_key(
    meter: Meter, forged_first: bool
) -> None:
    """The promise of meter._api_key: "whichever the provider reads, the call cannot leave the
    environment its key is bound to". Both keys match a last4 entry: the first read used to win,
    so a forged production key put first moved the laptop's call to production."""
    meter._apply(
        parse_policies(
            TWO_ENVS
            + "keys:\n"
            + '  laptop: {last4: "0123", environment: development}\n'  # OPENAI_KEY ends in 0123
            + '  prod-batch: {last4: "WXYZ", environment: production}\n'
        )
    )
    pair = [(b"authorization", b"Bearer sk-forged-WXYZ"), (b"authorization", f"Bearer {OPENAI_KEY}".encode())]
    flow = chat(
        http.Headers([(b"content-type", b"application/json"), *(pair if forged_first else pair[::-1])])
    )
    await run(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert (state.record.environment, state.record.key_name) == ("development", "laptop")
    assert _refused(flow), state.record.action  # production or development: the proxy cannot tell


async def test_a_last4_bound_key_cannot_fall_out_of_its_environment_with_an_unmapped_second_key(
    meter: Meter,
) -> None:
    """A key bound by last4 to staging, plus any other key: were the other one read as unmapped,
    the call would land in development (the default) and its header claim would count."""
    meter._apply(parse_policies(TWO_ENVS + 'keys:\n  ci: {last4: "0123", environment: staging}\n'))
    flow = chat(
        http.Headers(
            [
                (b"content-type", b"application/json"),
                (b"authorization", b"Bearer sk-any-other-key-9999"),
                (b"authorization", f"Bearer {OPENAI_KEY}".encode()),
                (b"x-metering-tags", b'{"env":"staging"}'),
            ]
        )
    )
    await run(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert (state.record.environment, state.record.environment_source) == ("development", "default")
    assert _refused(flow)
    assert any("X-Metering-Tags env 'staging' ignored" in e for e in state.errors), state.errors


@pytest.mark.parametrize("forged_first", [True, False])
async def test_a_fingerprinted_key_beside_a_forged_last4_key_keeps_its_environment(
    meter: Meter, forged_first: bool
) -> None:
    """The whole key is a secret the caller holds: a forged last4 key beside it changes nothing,
    in either order, and the call is not refused."""
    from addon.api_keys import key_fingerprint

    meter._apply(
        parse_policies(
            TWO_ENVS
            + f"keys:\n  laptop: {{fingerprint: '{key_fingerprint(OPENAI_KEY)}', environment: development}}\n"
            + '  prod-batch: {last4: "WXYZ", environment: production}\n'
        )
    )
    pair = [(b"authorization", b"Bearer sk-forged-WXYZ"), (b"authorization", f"Bearer {OPENAI_KEY}".encode())]
    flow = chat(
        http.Headers([(b"content-type", b"application/json"), *(pair if forged_first else pair[::-1])])
    )
    await run(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert (state.record.environment, state.record.key_name, flow.response) == ("development", "laptop", None)


async def test_a_key_repeated_as_is_is_one_key(meter: Meter) -> None:
    meter._apply(parse_policies(TWO_ENVS + 'keys:\n  ci: {last4: "0123", environment: staging}\n'))
    auth = (b"authorization", f"Bearer {OPENAI_KEY}".encode())
    flow = chat(http.Headers([(b"content-type", b"application/json"), auth, auth]))
    await run(meter, flow)
    state = meter.call_state(flow)
    assert state is not None
    assert (state.record.environment, state.record.key_name, flow.response, state.errors) == (
        "staging",
        "ci",
        None,
        [],
    )


def test_keys_that_disagree_bind_a_call_to_none_of_them() -> None:
    """attribute() alone: the candidates' environments are weighed, never their order."""
    policies = parse_policies(
        TWO_ENVS
        + 'keys:\n  ci: {last4: "0123", environment: staging}\n'
        + '  prod-batch: {last4: "WXYZ", environment: production}\n'
    )
    for api_key, others in (("sk-a-0123", ("sk-b-WXYZ",)), ("sk-b-WXYZ", ("sk-a-0123",))):
        decided = attribute(
            policies=policies, api_key=api_key, other_keys=others, header='{"env": "staging"}'
        )
        assert (decided.environment, decided.environment_source, decided.key_name) == (
            "development",
            "default",
            None,
        )
        assert decided.key_conflict is not None
    # agreeing with where the call lands anyway, a weak match may name the key
    decided = attribute(
        policies=policies,
        api_key="sk-a-0123",
        other_keys=("sk-c-9999",),
        process=ClientProcess(pid=1, env={"APP_ENV": "staging"}),
    )
    assert (decided.environment, decided.key_name, decided.key_conflict) == ("staging", "ci", None)
