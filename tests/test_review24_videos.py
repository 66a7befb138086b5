"""Review 24: video generation metering (Sora, Veo), failing tests for the defects found.

Each test fails on the code reviewed (e80d076) for the defect its docstring names, with its figures.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from meter_helpers import CollectingStore, make_flow, run_request
from mitmproxy import http

from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import videos

VIDEOS = "https://api.openai.com/v1/videos"
VERTEX = "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1"
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models"
DEVELOPMENT = Scope("environment", "development")
ANY_MODEL = "environments:\n  development:\n    models: {allow: ['*']}\n"
BUDGET_100 = ANY_MODEL + "    budget: {usd: 100, period: day}\n"
FIFTY_CENTS = ANY_MODEL + "    budget: {usd: 0.5, period: day}\n"


def job_answer(model: str, seconds: str, size: str, video_id: str = "video_1") -> dict[str, object]:
    """OpenAI's video job object, as ``POST /v1/videos`` (and remix, edits, extensions) answer it."""
    return {"id": video_id, "object": "video", "model": model, "seconds": seconds, "size": size,
            "status": "queued", "progress": 0, "created_at": 1}  # fmt: skip


async def answer(meter: Meter, flow: http.HTTPFlow, status: int, body: dict[str, object]) -> None:
    flow.response = http.Response.make(
        status, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    meter.responseheaders(flow)
    await meter.response(flow)


def rows(meter: Meter) -> list:
    store = meter.store
    assert isinstance(store, CollectingStore)
    return store.records


def vertex_veo(model: str) -> str:
    return f"{VERTEX}/publishers/google/models/{model}:predictLongRunning"


# --- wrong cost -----------------------------------------------------------------------------------


async def test_an_extension_is_billed_for_its_new_segment_not_the_stitched_total(meter: Meter) -> None:
    """``POST /v1/videos/extensions`` with ``seconds: "8"`` generates 8 s (openai-python 3.57:
    "Length of the newly generated extension segment"); the job it answers says ``seconds`` = "the
    stitched total duration" (openai/types/video.py), here 12 + 8 = 20. The meter bills the answer's
    seconds over the request's: 20 s x $0.10 = $2.00 for 8 s of sora-2 ($0.80), 2.5 times the
    price, and above its own $4.00 reservation's basis (8 s)."""
    meter._apply(parse_policies(BUDGET_100))
    flow = make_flow(f"{VIDEOS}/extensions", {"prompt": "more", "seconds": "8", "video": {"id": "video_a"}})
    await run_request(meter, flow)
    assert flow.response is None
    await answer(meter, flow, 200, job_answer("sora-2", "20", "720x1280", "video_b"))
    [row] = rows(meter)
    assert (row.cost_usd, row.price_status) == (Decimal("0.80"), "priced")  # $2.000 now


async def test_a_veo_sample_count_given_as_a_string_bills_that_many_videos(meter: Meter) -> None:
    """Google's JSON mapping takes an int32 as a number or a string: ``"sampleCount": "2"`` asks for 2
    videos. The meter reads only a JSON int, calls it unreadable and bills the most, 4 videos:
    8 s x $0.40 x 4 = $12.80 (answers 4) for a job of 2 videos, $6.40."""
    url = vertex_veo("veo-3.0-generate-001")
    flow = make_flow(url, {"instances": [{"prompt": "a cat"}], "parameters": {"sampleCount": "2"}})
    await run_request(meter, flow)
    await answer(meter, flow, 200, {"name": "projects/p1/locations/us-central1/operations/op1"})
    [row] = rows(meter)
    assert (row.cost_usd, row.answers) == (Decimal("6.40"), 2)  # ($12.800, 4) now


async def test_a_veo_resolution_given_as_null_is_the_default_720p(meter: Meter) -> None:
    """``"resolution": null`` is the field not set (Google's JSON mapping): a 720p video, 8 s of
    veo-3.0 at $0.40 = $3.20. The meter takes null for a resolution it cannot read: $0 reserved
    (20 such jobs pass any budget) and the row ``unknown_model``, "no price for veo-3.0-generate-001
    at None", its $3.20 in no report's cost."""
    meter._apply(parse_policies(BUDGET_100))
    url = vertex_veo("veo-3.0-generate-001")
    flow = make_flow(url, {"instances": [{"prompt": "a cat"}], "parameters": {"resolution": None}})
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved().get(DEVELOPMENT) == Decimal("3.20")  # $0 now
    await answer(meter, flow, 200, {"name": "projects/p1/locations/us-central1/operations/op1"})
    [row] = rows(meter)
    assert (row.cost_usd, row.price_status) == (Decimal("3.20"), "priced")  # (None, unknown_model)


# --- budget holes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parameters"),
    [
        (f"{GEMINI}/veo-3.1-lite-generate-preview:predictLongRunning", {}),  # a Veo the table lacks
        (vertex_veo("veo-3.1-lite-generate-preview"), {"generateAudio": False}),  # and on Vertex AI
    ],
)
async def test_twenty_unpriced_veo_videos_with_fifty_cents_left_let_through_at_most_one(
    meter: Meter, url: str, parameters: dict
) -> None:
    """A Veo job the table has no rate for reserves $0 (``videos.reservation``), so a budget with
    $0.50 left lets all 20 simultaneous 8 s videos through (and its row, unpriced, counts $0 after:
    the budget never stops them). A Sora job at a model or size the table lacks reserves the dearest
    rate ($0.50/s x its seconds); a Veo one should reserve at least its dearest ($0.60/s x 8 s)."""
    meter._apply(parse_policies(FIFTY_CENTS))
    body = {"instances": [{"prompt": "a cat"}], "parameters": parameters}
    flows = [make_flow(url, body) for _ in range(20)]
    await asyncio.gather(*(run_request(meter, flow) for flow in flows))
    sent = [flow for flow in flows if flow.response is None]
    assert len(sent) == 1  # 20 now


async def test_a_form_giving_seconds_twice_is_reserved_for_the_longer(meter: Meter) -> None:
    """A form with ``seconds`` 4 then 12: the meter notes "seconds given twice" (which one OpenAI
    reads is not known) yet reserves the first, 4 s of sora-2 = $0.40, where the job may run 12 s
    ($1.20). With $0.50 left, 2 of 20 such videos pass (reserved $0.80 against $0.50; billed up to
    $2.40); a reservation for what may run (12 s, or the longest) lets 1 pass."""
    meter._apply(parse_policies(FIFTY_CENTS))
    body = (
        b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n'
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2\r\n'
        b'--b\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n4\r\n'
        b'--b\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n12\r\n--b--\r\n'
    )
    headers = {"content-type": "multipart/form-data; boundary=b"}
    flows = [make_flow(VIDEOS, body, headers=headers) for _ in range(20)]
    await asyncio.gather(*(run_request(meter, flow) for flow in flows))
    sent = [flow for flow in flows if flow.response is None]
    assert len(sent) == 1  # 2 now, $0.40 reserved each


# --- a reservation never settled -------------------------------------------------------------------


async def test_a_failure_finishing_a_video_keeps_its_row_and_leaves_no_reservation(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_finish`` is crash-safe since 4c88f20 (``_row_despite_failure``); ``_finish_video`` is not:
    a bug raising in it (here reading the job answered) is swallowed by ``_never_raises``, the call
    has no row (0 stored) and its reservation, $2.40 (8 s of sora-2-pro), stays reserved for the
    proxy's life (no ``error`` hook follows a response)."""
    meter._apply(parse_policies(BUDGET_100))
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "8"})
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("2.40")}  # control

    def reading_fails(*args: object) -> None:
        raise RuntimeError("a bug reading the job")

    monkeypatch.setattr(videos, "read_openai_job", reading_fails)
    await answer(meter, flow, 200, job_answer("sora-2-pro", "8", "720x1280"))
    assert meter.enforcer.budgets.reserved() == {}  # {development: $2.40} for ever
    assert len(rows(meter)) == 1  # 0: the video is lost


# --- allowlist ------------------------------------------------------------------------------------


async def test_a_remix_of_a_video_seen_here_at_a_disallowed_model_is_refused(meter: Meter) -> None:
    """A remix runs on its source video's model. Where only sora-2 is allowed, a remix of a
    sora-2-pro video whose creation passed here (its model known: the remix reserves at its price,
    12 s x $0.50 = $6.00) goes through: a disallowed model runs, where a create naming it is
    refused 403. (Now: sent on, $6.00 reserved at sora-2-pro's price.)"""
    meter._apply(parse_policies(ANY_MODEL))
    created = make_flow(
        VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "12", "size": "1792x1024"}
    )
    await run_request(meter, created)
    await answer(meter, created, 200, job_answer("sora-2-pro", "12", "1792x1024", "video_abc"))
    policy = (
        "environments:\n  development:\n    models: {allow: [sora-2]}\n    budget: {usd: 100, period: day}\n"
    )
    meter._apply(parse_policies(policy))
    remix = make_flow(f"{VIDEOS}/video_abc/remix", {"prompt": "a dog"})
    await run_request(meter, remix)
    assert remix.response is not None and remix.response.status_code == 403  # sent on now
