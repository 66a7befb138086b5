"""Review 28: 267d9e9 (an extension's source by its answer's model, Veo's billed count) and
41afc00 (``request`` holds the call's state, ``socks://``). Failing tests for the defects found,
with their figures (no fixes here)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from meter_helpers import make_flow, run_request
from test_review24_videos import BUDGET_100, DEVELOPMENT, VIDEOS, answer, job_answer, rows, vertex_veo
from test_review26_videos import FORM, create, form

from addon.meter import Meter
from addon.policies import parse_policies


@pytest.mark.parametrize("number_of_videos", [8, 0])
async def test_a_veo_job_giving_sample_count_1_and_an_invalid_number_of_videos_bills_one_video(
    meter: Meter, number_of_videos: int
) -> None:
    """267d9e9 bills ``sampleCount`` (the REST field) when it is given. But ``sampleCount: 1`` with
    a ``numberOfVideos`` no server takes (8: past Veo's 4; 0) makes ``_count`` return None, read as
    4 videos billed: 8 s x $0.40 x 4 = $12.80, answers 4. A 2xx answer means the server did not
    read that numberOfVideos as its count (it would have refused it): it made sampleCount's 1
    video, $3.20 (4x)."""
    meter._apply(parse_policies(BUDGET_100))
    parameters = {"sampleCount": 1, "numberOfVideos": number_of_videos}
    flow = make_flow(
        vertex_veo("veo-3.0-generate-001"), {"instances": [{"prompt": "a cat"}], "parameters": parameters}
    )
    await run_request(meter, flow)
    await answer(meter, flow, 200, {"name": "projects/p1/locations/us-central1/operations/op1"})
    row = rows(meter)[-1]
    assert (row.cost_usd, row.answers) == (Decimal("3.20"), None)  # ($12.800, 4) now


async def test_an_extension_of_two_sources_of_one_model_is_billed_past_the_source_of_its_answers_size(
    meter: Meter,
) -> None:
    """Sources made here, both sora-2-pro: video_a 8 s at 720x1280, video_b 4 s at 1792x1024. An
    extension form names both and no ``seconds``; the answer says sora-2-pro, 720x1280, stitched
    total 12 s. An extension keeps its source's size, so it ran on video_a: 12 - 8 = 4 s x $0.30 =
    $1.20. ``_ran_on`` tells the sources apart by model family only (both match: None), so
    ``settled`` falls back to the dearest reservation reading's source (video_b, 1792x1024 at
    $0.50/s): 12 - 4 = 8 s x $0.30 = $2.40 (2x): 267d9e9's fix, half done."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2-pro", "8", "720x1280", "video_a")
    await create(meter, "sora-2-pro", "4", "1792x1024", "video_b")
    body = form(("prompt", "more"), ("video[id]", "video_a"), ("video[id]", "video_b"))
    flow = make_flow(f"{VIDEOS}/extensions", body, headers=FORM)
    await run_request(meter, flow)
    # control (passes): 20 s x $0.50 at video_b's size
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("10.00")}
    await answer(meter, flow, 200, job_answer("sora-2-pro", "12", "720x1280", "video_c"))
    assert rows(meter)[-1].cost_usd == Decimal("1.20")  # $2.400 now (8 s x $0.3/s)
