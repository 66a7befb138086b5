"""Review 26: video generation metering after 64515e1, failing tests for the defects found.

Each test fails on 64515e1 for the defect its docstring names, with its figures (no fixes here).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from meter_helpers import make_flow, run_request
from test_review24_videos import (
    BUDGET_100,
    DEVELOPMENT,
    GEMINI,
    VIDEOS,
    answer,
    job_answer,
    rows,
    vertex_veo,
)
from test_videos import stored_db

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import videos
from addon.spend import main

ONLY_SORA_2 = (
    "environments:\n  development:\n    models: {allow: [sora-2]}\n    budget: {usd: 100, period: day}\n"
)
FORM = {"content-type": "multipart/form-data; boundary=b"}


def form(*fields: tuple[str, str]) -> bytes:
    """A multipart form of small fields (a name may come twice), boundary ``b``."""
    head = '--b\r\nContent-Disposition: form-data; name="{}"\r\n\r\n{}\r\n'
    parts = [head.format(name, value) for name, value in fields]
    return ("".join(parts) + "--b--\r\n").encode()


async def create(meter: Meter, model: str, seconds: str, size: str, video_id: str) -> None:
    """A Sora job created through the proxy (its model, seconds and size remembered)."""
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": model, "seconds": seconds, "size": size})
    await run_request(meter, flow)
    await answer(meter, flow, 200, job_answer(model, seconds, size, video_id))


# --- wrong cost -----------------------------------------------------------------------------------


async def test_an_extension_giving_seconds_twice_is_billed_for_the_segment_its_answer_shows(
    meter: Meter,
) -> None:
    """An extension form gives ``seconds`` 4 and 12 (the reservation rightly takes the longer, 12 s,
    $1.20). Its source, 8 s of sora-2 created here, is known; the answer says the stitched total is
    12 s: the new segment ran 12 - 8 = 4 s, $0.40. ``settled`` prefers the request's seconds (the
    reservation's dearest reading, not what ran) over the answer: billed 12 s x $0.10 = $1.20, 3x."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2", "8", "720x1280", "video_a")
    body = form(("prompt", "more"), ("seconds", "4"), ("seconds", "12"), ("video[id]", "video_a"))
    flow = make_flow(f"{VIDEOS}/extensions", body, headers=FORM)
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("1.20")}  # control: passes
    await answer(meter, flow, 200, job_answer("sora-2", "12", "720x1280", "video_b"))
    extension = rows(meter)[-1]
    assert extension.cost_usd == Decimal("0.40")  # $1.200 now (12 s x $0.1/s)


async def test_a_failure_finishing_an_accepted_video_still_bills_it_as_asked(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64515e1 routes ``_finish_video`` through ``_finish``: a bug raising while the row is built now
    keeps the row, but ``_row_despite_failure`` knows only token usage: the accepted (200) job of
    8 s of sora-2-pro, reserved $2.40, is stored with cost None, ``price_status = no_usage`` (the
    pricer's word for a call without tokens). Its $2.40 reservation gives way to $0, and reports count
    it in no cost and no ``unpriced_calls`` (a video is unpriced only as ``unknown_model``). No answer
    at all is billed as asked; a failure reading one should be too: $2.40, priced."""
    meter._apply(parse_policies(BUDGET_100))
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "8"})
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("2.40")}  # control

    def reading_fails(*args: object) -> None:
        raise RuntimeError("a bug reading the job")

    monkeypatch.setattr(videos, "read_openai_job", reading_fails)
    await answer(meter, flow, 200, job_answer("sora-2-pro", "8", "720x1280"))
    [row] = rows(meter)
    assert (row.cost_usd, row.price_status) == (Decimal("2.40"), "priced")  # (None, 'no_usage') now


async def test_a_veo_request_giving_sample_count_and_number_of_videos_reserves_the_larger(
    meter: Meter,
) -> None:
    """``parameters`` with ``sampleCount: 1`` and ``numberOfVideos: 4`` (two spellings of one count:
    which one the model server reads is not known): ``_count`` takes the first key it finds,
    sampleCount, and reserves 1 video, 8 s x $0.40 = $3.20, where the job may make 4, $12.80. The
    commit's rule for a field given twice (its dearest reading) does not reach it."""
    meter._apply(parse_policies(BUDGET_100))
    body = {"instances": [{"prompt": "a cat"}], "parameters": {"sampleCount": 1, "numberOfVideos": 4}}
    flow = make_flow(vertex_veo("veo-3.0-generate-001"), body)
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("12.80")}  # $3.20 now


# --- allowlist ------------------------------------------------------------------------------------


async def test_an_extension_naming_its_source_twice_in_the_form_is_held_to_its_sources_model(
    meter: Meter,
) -> None:
    """A sora-2-pro video created here (12 s, 1792x1024); then only sora-2 is allowed. An extension
    naming it by ``video[id]`` once is refused 403 (64515e1); the same form giving ``video[id]`` twice,
    both ``video_abc``, drops the id (``read_openai`` keeps ``video[id]`` only when given once): the
    source is unknown, the model None, and the extension runs on sora-2-pro, passed with $4.00
    reserved (8 s x the $0.50 ceiling)."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2-pro", "12", "1792x1024", "video_abc")
    meter._apply(parse_policies(ONLY_SORA_2))
    body = form(("prompt", "more"), ("seconds", "8"), ("video[id]", "video_abc"), ("video[id]", "video_abc"))
    flow = make_flow(f"{VIDEOS}/extensions", body, headers=FORM)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403  # sent on now


async def test_a_remix_naming_an_allowed_model_is_still_held_to_its_sources_model(meter: Meter) -> None:
    """A remix runs on its source's model (64515e1: "the source's model is now the job's model for
    the allowlist check"). ``with_source`` keeps the request's own ``model`` over the source's: a remix
    of a sora-2-pro video created here, its body adding ``"model": "sora-2"``, is checked as sora-2
    and passes where only sora-2 is allowed ($6.00 reserved), while the job runs on sora-2-pro."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2-pro", "12", "1792x1024", "video_abc")
    meter._apply(parse_policies(ONLY_SORA_2))
    flow = make_flow(f"{VIDEOS}/video_abc/remix", {"prompt": "a dog", "model": "sora-2"})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403  # sent on now


# --- reports --------------------------------------------------------------------------------------


async def test_spend_by_model_shows_one_veo_model_once(
    meter: Meter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """64515e1 makes price_model "the model the rate is listed under ... one row per model in
    reports". For Veo that is the family, ``veo-3.0``, a name no request used; a row of the same
    model without a rate (an error answer, not billed; a resolution the table lacks, unknown_model)
    has no price_model and is reported under ``veo-3.0-generate-001``. Three jobs of
    veo-3.0-generate-001 on the Gemini API (one billed $3.20, one answered 400, one at 4k) are two
    models in ``spend by model``: veo-3.0 (1 call, $3.20) and veo-3.0-generate-001 (2 calls, $0)."""
    url = f"{GEMINI}/veo-3.0-generate-001:predictLongRunning"
    for status, parameters in ((200, {}), (400, {}), (200, {"resolution": "4k"})):
        flow = make_flow(url, {"instances": [{"prompt": "a cat"}], "parameters": parameters})
        flow.request.timestamp_start = (datetime.now(UTC) - timedelta(minutes=5)).timestamp()
        await run_request(meter, flow)
        body = {"name": "operations/op1"} if status == 200 else {"error": {"code": 400}}
        await answer(meter, flow, status, body)
    db, day = stored_db(rows(meter), tmp_path)
    assert main(["--db", db, "by", "model", "--from", day, "--to", day, "--format", "json"]) in (0, None)
    by_model = json.loads(capsys.readouterr().out)["rows"]
    assert len(by_model) == 1  # 2 now: veo-3.0 (1 call, $3.20), veo-3.0-generate-001 (2 calls, $0)
    assert (by_model[0]["calls"], Decimal(by_model[0]["cost_usd"])) == (3, Decimal("3.20"))
