"""Review round 6 (b61910c provider ids, d2f594a webhook credentials, 575b03f, 5e1f991): each test
fails on the commit it names and says what a user sees go wrong."""

from __future__ import annotations

from pathlib import Path

from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_meter import make_flow, run_request, sent_body

SHIPPED = Path(__file__).parents[1] / "policies.yaml"
OPENROUTER = "https://openrouter.ai/api/v1/chat/completions"
GROQ = "https://api.groq.com/openai/v1/chat/completions"


def _chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def test_openrouter_claude_4_ids_without_a_minor_version_downgrade_to_an_id_openrouter_knows(
    meter: Meter,
) -> None:
    """b61910c. With the shipped policies.yaml in development, through OpenRouter,
    `anthropic/claude-sonnet-4` and `anthropic/claude-opus-4` (OpenRouter's own ids for Claude
    Sonnet 4 and Opus 4: no minor version, so no dot) match `claude-sonnet-*` / `claude-opus-*`
    and are downgraded to `claude-haiku-4-5` -- but `in_form_of` keeps Anthropic's dashes whenever
    the requested anthropic/ id has no dotted version, so the proxy sends
    `anthropic/claude-haiku-4-5`, which OpenRouter rejects with 400 "anthropic/claude-haiku-4-5 is
    not a valid model ID" (its id is anthropic/claude-haiku-4.5). The user sees a notice saying
    "downgraded" and then an upstream error on every Sonnet 4 / Opus 4 call."""
    meter._apply(parse_policies(SHIPPED.read_text()))
    for asked in ("anthropic/claude-sonnet-4", "anthropic/claude-opus-4"):
        flow = make_flow(OPENROUTER, _chat(asked))
        await run_request(meter, flow)
        assert flow.response is None, flow.response and flow.response.get_text()
        assert sent_body(flow)["model"] == "anthropic/claude-haiku-4.5", (
            f"{asked} was sent upstream as {sent_body(flow)['model']}, an id OpenRouter does not know"
        )


GROQ_POLICY = """
default_environment: development
environments:
  development:
    models:
      allow: [llama-3.1-8b-instant]
      downgrade:
        "*": llama-3.1-8b-instant
"""


async def test_groq_prefixed_ids_still_downgrade_to_groqs_plain_target(meter: Meter) -> None:
    """b61910c. Groq names some models with a vendor prefix (`openai/gpt-oss-120b`,
    `meta-llama/llama-4-scout-17b-16e-instruct`) and others without (`llama-3.1-8b-instant`). With
    `downgrade: {"*": llama-3.1-8b-instant}`, both were rewritten to `llama-3.1-8b-instant` before
    b61910c and ran. Now the plain target is forced into the requested id's form:
    `openai/gpt-oss-120b` is refused 403 (the target's vendor is "not knowable"), and
    `meta-llama/llama-4-scout-...` is sent as `meta-llama/llama-3.1-8b-instant`, a model Groq does
    not have (404 model_not_found). There is no way to write the target so it is sent plain: a
    target with a prefix is sent as written, one without gets the requested prefix."""
    meter._apply(parse_policies(GROQ_POLICY))
    for asked in ("openai/gpt-oss-120b", "meta-llama/llama-4-scout-17b-16e-instruct"):
        flow = make_flow(GROQ, _chat(asked))
        await run_request(meter, flow)
        assert flow.response is None, f"{asked}: {flow.response and flow.response.get_text()}"
        assert sent_body(flow)["model"] == "llama-3.1-8b-instant", (
            f"{asked} was sent upstream as {sent_body(flow)['model']}"
        )


PERPLEXITY = "https://api.perplexity.ai/v1/responses"
HAIKU_ONLY = """
default_environment: development
environments:
  development:
    models:
      allow: [claude-haiku-*]
      downgrade:
        "*": claude-haiku-4-5
"""


async def test_a_downgrade_on_perplexitys_agent_api_writes_perplexitys_id_of_the_target(meter: Meter) -> None:
    """b61910c. Perplexity's Agent API (/v1/responses) names third-party models vendor/name with
    Anthropic's own dashes (`anthropic/claude-haiku-4-5`, `anthropic/claude-sonnet-4-6`: its
    /v1/models list). `in_form_of` writes a cross-vendor plain target in OpenRouter's spelling
    whatever the host: `openai/gpt-5.1` with `"*": claude-haiku-4-5` is sent as
    `anthropic/claude-haiku-4.5`, an id Perplexity does not serve, so the "downgraded" call fails
    upstream instead of running Haiku."""
    meter._apply(parse_policies(HAIKU_ONLY))
    flow = make_flow(PERPLEXITY, {"model": "openai/gpt-5.1", "input": "hi"})
    await run_request(meter, flow)
    assert flow.response is None, flow.response and flow.response.get_text()
    assert sent_body(flow)["model"] == "anthropic/claude-haiku-4-5", (
        f"sent upstream as {sent_body(flow)['model']}"
    )


def _advisor_held(meter: Meter, flow, advisor_of) -> bool:  # type: ignore[no-untyped-def]
    """The call was refused, or the advisor it went upstream with is allowed in development."""
    if flow.response is not None:
        return flow.response.status_code == 403
    rules = meter.policies.environment("development").models
    return rules.is_allowed(advisor_of(sent_body(flow)))


async def test_openrouters_advisor_server_tool_is_held_to_the_allowlist(meter: Meter) -> None:
    """OpenRouter's `openrouter:advisor` server tool (Chat Completions, Responses) runs any
    OpenRouter model it names (`parameters.model`) within the call, billed at that model's rates
    (OpenRouter's own example: `openai/gpt-4o-mini` advised by `anthropic/claude-fable-5`, $10/M
    input). With the shipped policies.yaml in development (`*-mini`, `claude-haiku-*`...), that
    request goes upstream untouched: the allowlist reads `model` only (Anthropic's advisor tool is
    read on api.anthropic.com alone), so Fable/Opus run in an environment that allows neither."""
    meter._apply(parse_policies(SHIPPED.read_text()))
    body = {
        **_chat("openai/gpt-4o-mini"),
        "tools": [{"type": "openrouter:advisor", "parameters": {"model": "anthropic/claude-fable-5"}}],
    }
    flow = make_flow(OPENROUTER, body)
    await run_request(meter, flow)
    assert _advisor_held(meter, flow, lambda b: b["tools"][0]["parameters"]["model"]), (
        "anthropic/claude-fable-5 went upstream as the advisor of an allowed gpt-4o-mini call"
    )


async def test_openrouters_messages_endpoint_holds_the_advisor_tool_too(meter: Meter) -> None:
    """OpenRouter's Anthropic-compatible /api/v1/messages takes Anthropic's advisor tool shape
    (`{"type": "advisor_20260301", "name": "advisor", "model": ...}`) and runs the model it names.
    Since b61910c, `anthropic/claude-haiku-4.5` passes the shipped development allowlist through
    OpenRouter (it was refused before), and its advisor tool naming `anthropic/claude-opus-4.1`
    is not read there (only on api.anthropic.com): Opus runs as the advisor of an allowed Haiku
    call, as 4002a9a stopped on Anthropic's own host."""
    meter._apply(parse_policies(SHIPPED.read_text()))
    body = {
        "model": "anthropic/claude-haiku-4.5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "anthropic/claude-opus-4.1"}],
    }
    flow = make_flow("https://openrouter.ai/api/v1/messages", body)
    await run_request(meter, flow)
    assert _advisor_held(meter, flow, lambda b: b["tools"][0]["model"]), (
        "anthropic/claude-opus-4.1 went upstream as the advisor of an allowed Haiku call"
    )


async def test_an_escaped_backslash_before_an_azure_deployment_does_not_hide_it(meter: Meter) -> None:
    """5e1f991 reads an Azure path with an escaped separator decoded first, and counts `%5C` (a
    backslash) among them (`_ESCAPED_SEPARATOR`), but the decoded path keeps the backslash, which
    no route reads as a separator: `/openai/v1/deployments%5Cteam-big/chat/completions` with a body
    naming team-small is still read as a v1 body-model call of team-small and goes upstream
    untouched in a `*-mini` environment, where a server that reads a backslash as a slash (as IIS
    does) runs team-big (gpt-4o) -- the round-5 `%2F` case spelled with the third separator the
    fix names. It should be read as naming team-big: downgraded or refused."""
    from tests.test_azure_v1_deployment_paths import AZURE_KEY, AZURE_POLICIES, RESOURCE

    meter._apply(parse_policies(AZURE_POLICIES))
    body = {"model": "team-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    path = "/openai/v1/deployments%5Cteam-big/chat/completions?api-version=preview"
    flow = make_flow(RESOURCE + path, body, headers=AZURE_KEY)
    await run_request(meter, flow)
    if flow.response is None:
        assert "team-big" not in flow.request.path, flow.request.path
