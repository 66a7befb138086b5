"""Review round 20 (85cffc3 blank model before @preset/, 5b4b53b every cap spelling, b32daeb the
preset API passes unmetered, 8dcd9e1 refusal codes): failing tests for the defects found."""

from __future__ import annotations

from typing import Any

import pytest

from addon.meter import Meter
from addon.model_rules import preset_model
from addon.policies import parse_policies
from addon.reservation import max_output_tokens
from tests.test_meter import make_flow, run_request
from tests.test_review_round18 import ONE_DOLLAR, OPENROUTER_CHAT, _let_through

BEDROCK_INVOKE = "https://bedrock-runtime.us-east-1.amazonaws.com/model/{model}/invoke"
ONLY_MINI = "environments:\n  development:\n    models: {allow: [gpt-4o-mini]}\n"


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        # Amazon Nova, InvokeModel's native body (Bedrock user guide, "Request schema")
        ({"messages": [], "inferenceConfig": {"max_new_tokens": 10000}}, 10000),
        # Meta Llama on Bedrock, InvokeModel (Bedrock inference parameters, Meta Llama)
        ({"prompt": "hi", "max_gen_len": 2048}, 2048),
        # Amazon Titan Text, InvokeModel (Bedrock inference parameters, Titan Text)
        ({"inputText": "hi", "textGenerationConfig": {"maxTokenCount": 3072}}, 3072),
    ],
    ids=["nova-max_new_tokens", "llama-max_gen_len", "titan-maxTokenCount"],
)
def test_bedrock_invoke_model_native_caps_are_read(body: dict[str, Any], cap: int) -> None:
    """5b4b53b reads "every cap spelling", but not the native InvokeModel caps of three Bedrock
    model families whose usage bedrock_api.native_usage meters (Nova, Llama, Titan): each such
    call is reserved at the model's p90 here (never under 1,000 output tokens), not at its cap.
    Expected the cap (10000, 2048, 3072); actual None."""
    assert max_output_tokens(body) == cap


async def test_a_nova_invoke_model_call_is_reserved_at_its_max_new_tokens(meter: Meter) -> None:
    """$0.05 left of a $1 day budget; 20 concurrent Bedrock InvokeModel calls of
    amazon.nova-pro-v1:0 with inferenceConfig.max_new_tokens 10000 ($3.20/M output: up to $0.032
    each). The same body spelled as Converse's inferenceConfig.maxTokens 10000: 2 of 20 let through.
    Nova's own spelling is not read, so each is reserved at 1,000 output tokens ($0.0032): 16 of 20
    let through, up to $0.51 against $0.05 left. Expected at most 2 of 20; actual 16 of 20."""
    meter._apply(parse_policies(ONE_DOLLAR))
    body = {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "inferenceConfig": {"max_new_tokens": 10000},
    }
    allowed = await _let_through(meter, BEDROCK_INVOKE.format(model="amazon.nova-pro-v1:0"), body)
    assert allowed <= 2, f"{allowed} of 20 let through with $0.05 left (maxTokens 10000: 2 of 20)"


async def test_a_backslash_path_under_presets_is_not_exempt_from_the_allowlist(meter: Meter) -> None:
    """An environment allowing only gpt-4o-mini. POST https://openrouter.ai/api/v1/presets/x/..\\..\\
    chat/completions naming openai/gpt-4o: before b32daeb it was read by its suffix (/completions) as
    a call and refused (403). Now anything whose path starts with /api/v1/presets/ is exempt from metering
    and from the unmetered-model hold, so it is let through unchecked, with no row and no
    reservation. The path is sent upstream as is (normal_path does not touch a backslash), and a
    WHATWG URL parser, which JavaScript servers use, reads it as /api/v1/chat/completions (node:
    new URL(path, "https://openrouter.ai").pathname), a real gpt-4o completion. The preset API is
    only /api/v1/presets/{slug}/chat/completions, /responses, /messages (a URL-safe slug).
    Expected 403; actual let through (no response, not followed)."""
    meter._apply(parse_policies(ONLY_MINI))
    body = {"model": "openai/gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow("https://openrouter.ai/api/v1/presets/x/..\\..\\chat/completions", body)
    await run_request(meter, flow)
    assert flow.request.path == "/api/v1/presets/x/..\\..\\chat/completions"  # sent as is
    assert flow.response is not None and flow.response.status_code == 403


@pytest.mark.parametrize(
    "body",
    [{"model": "\ufeff@preset/x"}, {"model": "\ufeff", "preset": "x"}],
    ids=["bom-before-preset", "bom-model-with-preset-field"],
)
async def test_a_byte_order_mark_before_a_preset_is_the_bare_preset(
    meter: Meter, body: dict[str, Any]
) -> None:
    """85cffc3 reads a model part that is blank after Python's str.strip() as no model (the bare
    preset, reserved at the dearest OpenRouter model). U+FEFF is blank to JavaScript's
    String.prototype.trim() (ECMAScript WhiteSpace includes ZWNBSP) but not to Python's strip(), so
    "\\ufeff@preset/x" reads as m@preset/x with m = "\\ufeff", no price list has it, and each call
    reserves $0. $0.05 left of $1; 20 concurrent calls, max_tokens 4000: a bare @preset/x or
    " @preset/x" lets 1 of 20 through. Expected at most 1 of 20; actual 20 of 20. (U+200B is not
    trimmed by either, so it stays a model OpenRouter does not know.)"""
    assert preset_model("\ufeff@preset/x") == ""
    meter._apply(parse_policies(ONE_DOLLAR))
    request = {**body, "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}
    allowed = await _let_through(meter, OPENROUTER_CHAT, request)
    assert allowed <= 1, f"{allowed} of 20 let through with $0.05 left (bare @preset/x: 1 of 20)"
