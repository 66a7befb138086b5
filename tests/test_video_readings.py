"""Video requests read two ways (a field or source id given twice, a remix naming a model): the
dearest reading reserved and held to the allowlist, the answer billing what ran."""

from __future__ import annotations

from decimal import Decimal

import pytest
from meter_helpers import make_flow, run_request
from test_review24_videos import BUDGET_100, DEVELOPMENT, VIDEOS, answer, job_answer, rows
from test_review26_videos import FORM, ONLY_SORA_2, create, form

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import videos


async def test_an_extension_naming_two_known_sources_reserves_the_dearer(meter: Meter) -> None:
    """Two different ``video[id]``: 8 s at sora-2 720x1280 ($0.10/s) or sora-2-pro 720x1280
    ($0.30/s): $2.40 reserved, not $0.80 (nor the $4.00 ceiling of a source not known)."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2", "8", "720x1280", "video_a")
    await create(meter, "sora-2-pro", "12", "720x1280", "video_b")
    body = form(("prompt", "more"), ("seconds", "8"), ("video[id]", "video_a"), ("video[id]", "video_b"))
    flow = make_flow(f"{VIDEOS}/extensions", body, headers=FORM)
    await run_request(meter, flow)
    assert flow.response is None
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("2.40")}


@pytest.mark.parametrize(("policy", "refused"), [(ONLY_SORA_2, True), (BUDGET_100, False)])
async def test_an_extension_naming_a_source_not_made_here_among_two_is_refused_where_restricted(
    meter: Meter, policy: str, refused: bool
) -> None:
    """A sora-2 source and an id never seen: its model cannot be told. Only sora-2 allowed: 403;
    any model: sent on."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2", "8", "720x1280", "video_a")
    meter._apply(parse_policies(policy))
    body = form(("prompt", "more"), ("seconds", "8"), ("video[id]", "video_a"), ("video[id]", "video_x"))
    flow = make_flow(f"{VIDEOS}/extensions", body, headers=FORM)
    await run_request(meter, flow)
    assert (flow.response is not None and flow.response.status_code == 403) is refused


async def test_a_remix_naming_another_model_where_both_are_allowed_reserves_the_dearer(meter: Meter) -> None:
    """A remix of 12 s of sora-2-pro at 720x1280 naming sora-2 ($1.20): the source's model, $3.60
    (12 s x $0.30), reserved."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2-pro", "12", "720x1280", "video_a")
    flow = make_flow(f"{VIDEOS}/video_a/remix", {"prompt": "a dog", "model": "sora-2"})
    await run_request(meter, flow)
    assert flow.response is None
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("3.60")}


@pytest.mark.parametrize(("total", "billed"), [("8", "0.80"), ("16", "1.20")])
async def test_an_extension_giving_seconds_twice_of_an_unknown_source_bills_at_most_the_total(
    meter: Meter, total: str, billed: str
) -> None:
    """``seconds`` 4 and 12, the source not seen here: the segment is at most the answer's total
    (8 s: $0.80) and at most the dearer reading (total 16 s: 12 s, $1.20)."""
    meter._apply(parse_policies(BUDGET_100))
    body = form(("prompt", "more"), ("seconds", "4"), ("seconds", "12"), ("video[id]", "video_x"))
    flow = make_flow(f"{VIDEOS}/extensions", body, headers=FORM)
    await run_request(meter, flow)
    await answer(meter, flow, 200, job_answer("sora-2", total, "720x1280", "video_y"))
    assert rows(meter)[-1].cost_usd == Decimal(billed)


async def test_an_extension_giving_the_same_seconds_twice_is_billed_as_asked(meter: Meter) -> None:
    """``seconds`` 4 twice: not ambiguous; 4 s x $0.10 whatever the total says."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2", "4", "720x1280", "video_a")
    body = form(("prompt", "more"), ("seconds", "4"), ("seconds", "4"), ("video[id]", "video_a"))
    flow = make_flow(f"{VIDEOS}/extensions", body, headers=FORM)
    await run_request(meter, flow)
    await answer(meter, flow, 200, job_answer("sora-2", "12", "720x1280", "video_b"))
    assert rows(meter)[-1].cost_usd == Decimal("0.40")


async def test_a_failure_finishing_a_refused_by_provider_video_bills_nothing(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback row bills as asked only a job that may have been accepted: a 400 is $0."""
    meter._apply(parse_policies(BUDGET_100))
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "8"})
    await run_request(meter, flow)

    def filling_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug filling the row")

    monkeypatch.setattr(meter, "_fill_record", filling_fails)
    await answer(meter, flow, 400, {"error": {"message": "bad"}})
    [row] = rows(meter)
    assert (row.cost_usd, row.price_status, row.price_model) == (Decimal(0), "not_billed", "sora-2-pro")
    assert "metering failed" in (row.error or "")
    assert meter.enforcer.budgets.reserved() == {}


@pytest.mark.parametrize(
    ("parameters", "count"),
    [
        ({"sampleCount": 2, "numberOfVideos": 3}, 3),
        ({"sample_count": 2}, 2),
        ({}, 1),
        ({"sampleCount": 0}, None),
    ],
)
def test_a_veo_count_is_the_largest_of_its_spellings(parameters: dict[str, int], count: int | None) -> None:
    job = videos.read_veo("veo-3.0-generate-001", {"parameters": parameters})
    assert (job.count, job.problem is None) == ((count or videos.MAX_VEO_VIDEOS), count is not None)


@pytest.mark.parametrize(
    ("parameters", "reserved", "billed"),
    [
        ({"sampleCount": 1, "numberOfVideos": 4}, 4, 1),  # the wire count billed, the larger reserved
        ({"sampleCount": 3, "numberOfVideos": 2}, 3, 3),
        ({"numberOfVideos": 3}, 3, 3),
        ({"sample_count": 2, "number_of_videos": 4}, 4, 2),
        ({}, 1, 1),
    ],
)
def test_a_veo_count_bills_sample_count_when_given(
    parameters: dict[str, int], reserved: int, billed: int
) -> None:
    job = videos.read_veo("veo-3.0-generate-001", {"parameters": parameters})
    assert (job.count, videos.settled(job, None).count) == (reserved, billed)


A = videos.VideoJob(videos.CREATE, model="sora-2", seconds=8.0, size="720x1280")
B = videos.VideoJob(videos.CREATE, model="sora-2-pro", seconds=4.0, size="720x1280")


@pytest.mark.parametrize(
    ("sources", "model", "seconds"),
    [
        ((A, B), "sora-2-pro", 8.0),  # ran on B (4 s): 12 - 4
        ((A, B), "sora-2-2025-12-08", 4.0),  # a dated snapshot of A's model: ran on A (8 s)
        ((A, B), "sora-3", 4.0),  # neither's model: the source reserved at (A)
        ((A, videos.VideoJob(videos.CREATE, model="sora-2", seconds=4.0)), "sora-2", 4.0),  # both: A
    ],
)
def test_an_extension_of_two_sources_is_billed_past_the_source_of_its_answers_model(
    sources: tuple[videos.VideoJob, ...], model: str, seconds: float
) -> None:
    asked = videos.VideoJob(
        videos.EXTEND, model="sora-2", seconds=12.0, size="720x1280", seconds_ambiguous=True
    )
    answered = videos.VideoJob(videos.EXTEND, model=model, seconds=12.0, size="720x1280")
    assert videos.settled(asked, answered, A, sources).seconds == seconds
