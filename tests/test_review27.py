"""Review 27: 9760bda (video readings, ``despite=`` row builder, Veo counts), 67f6df8, b9922e8,
6264123. Failing tests for the defects found, with their figures (no fixes here)."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal

import pytest
from meter_helpers import make_flow, on_kept_alive_connection, run_request
from mitmproxy.test import tflow
from test_review24_videos import BUDGET_100, DEVELOPMENT, VIDEOS, answer, job_answer, rows, vertex_veo
from test_review26_videos import FORM, create, form

import addon.meter
from addon.meter import Meter
from addon.policies import parse_policies
from addon.upstream_proxy import shown_proxy
from tests.test_unsent_calls import QA_LIMITS, qa_flow, settled


async def test_an_extension_of_two_sources_subtracts_the_source_its_answer_ran_on(meter: Meter) -> None:
    """Sources made here: video_a, 8 s of sora-2; video_b, 4 s of sora-2-pro (both 720x1280). An
    extension form names both (``video[id]`` twice) and ``seconds`` 4 and 12 (ambiguous). The answer
    says sora-2, stitched total 12 s: it extended video_a (8 s) by 4 s, $0.40. ``settled`` subtracts
    the source of the dearest reservation reading (video_b, sora-2-pro, 4 s) whatever model the
    answer names: 12 - 4 = 8 s billed, $0.80 (2x)."""
    meter._apply(parse_policies(BUDGET_100))
    await create(meter, "sora-2", "8", "720x1280", "video_a")
    await create(meter, "sora-2-pro", "4", "720x1280", "video_b")
    fields = [("prompt", "more"), ("seconds", "4"), ("seconds", "12")]
    body = form(*fields, ("video[id]", "video_a"), ("video[id]", "video_b"))
    flow = make_flow(f"{VIDEOS}/extensions", body, headers=FORM)
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("3.60")}  # control: passes
    await answer(meter, flow, 200, job_answer("sora-2", "12", "720x1280", "video_c"))
    assert rows(meter)[-1].cost_usd == Decimal("0.40")  # $0.800 now (8 s x $0.1/s)


async def test_an_accepted_video_whose_row_failed_is_still_known_to_its_remix(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_video_row_despite_failure`` bills an accepted job as asked (8 s of sora-2-pro 720x1280,
    $2.40) but, unlike ``_video_row``, never remembers its id: a remix of video_a then reserves
    the unknown-source ceiling, $0.50/s x 20 s = $10.00, not its $2.40 (and is not held to the
    allowlist as sora-2-pro)."""
    meter._apply(parse_policies(BUDGET_100))
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "8", "size": "720x1280"})
    await run_request(meter, flow)
    fill = meter._fill_record

    def filling_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug filling the row")

    monkeypatch.setattr(meter, "_fill_record", filling_fails)
    await answer(meter, flow, 200, job_answer("sora-2-pro", "8", "720x1280", "video_a"))
    monkeypatch.setattr(meter, "_fill_record", fill)
    assert rows(meter)[-1].cost_usd == Decimal("2.40")  # control: passes
    remix = make_flow(f"{VIDEOS}/video_a/remix", {"prompt": "a dog"})
    await run_request(meter, remix)
    assert meter.enforcer.budgets.reserved() == {DEVELOPMENT: Decimal("2.40")}  # $10.00 now


async def test_a_veo_job_giving_sample_count_and_number_of_videos_bills_the_wire_count(meter: Meter) -> None:
    """``sampleCount`` is the REST field; ``numberOfVideos`` is google-genai's SDK name, which the
    SDK itself sends as ``parameters.sampleCount`` (google-genai 3.6.1 models.py:2077-2081).
    ``sampleCount: 1, numberOfVideos: 4``: reserving 4 may be prudent, but the row bills 4 videos,
    8 s x $0.40 x 4 = $12.80 (answers 4), for the 1 video made, $3.20. Before 9760bda: $3.20."""
    meter._apply(parse_policies(BUDGET_100))
    url = vertex_veo("veo-3.0-generate-001")
    parameters = {"sampleCount": 1, "numberOfVideos": 4}
    flow = make_flow(url, {"instances": [{"prompt": "a cat"}], "parameters": parameters})
    await run_request(meter, flow)
    await answer(meter, flow, 200, {"name": "projects/p1/locations/us-central1/operations/op1"})
    row = rows(meter)[-1]
    assert (row.cost_usd, row.answers) == (Decimal("3.20"), None)  # ($12.800, 4) now


def test_a_socks_url_git_accepts_is_shown_with_its_scheme() -> None:
    """``socks://`` (git's http.proxy, GNOME's all_proxy) is no longer a scheme to shown_proxy: the
    message meant to say why the proxy is refused (it is SOCKS) prints ``socks:***@proxy:1080``,
    the scheme as a user and the user gone. Before 6264123: ``socks://alice:***@proxy:1080``."""
    assert shown_proxy("socks://alice:s3cret@proxy:1080") == "socks://alice:***@proxy:1080"


async def test_a_call_taken_over_by_the_new_instance_at_running_keeps_when_it_was_let_go(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """67f6df8 sets ``released_at`` on a handed-over call by finding it in ``_HANDED_OVER``. But
    mitmproxy calls the reloaded script's ``running`` at once, and ``running`` takes over every
    handed-over call (``_HANDED_OVER`` emptied) while the old hook still waits: its ``finally``
    again finds the state nowhere, ``released_at`` stays None. The connection that closed during
    the wait is read as having carried the call: its row has an estimate (8 input tokens, left to
    the writer to price: price_status None), not $0 not_billed (review 25's test passes only
    because it never calls ``running``; capturing the state when the hook starts makes this pass)."""
    meter._apply(parse_policies(QA_LIMITS))
    go_on = asyncio.Event()

    async def slow_lookup(*args: object, **kwargs: object) -> tuple[None, None]:
        await go_on.wait()
        return None, None

    monkeypatch.setattr(addon.meter, "wait_for_process", slow_lookup)
    monkeypatch.setattr(addon.meter, "freeze_startup_heap", lambda: None)
    flow = qa_flow()
    now = flow.request.timestamp_start
    flow.request.timestamp_start, flow.request.timestamp_end = now - 20.1, now - 20.0
    on_kept_alive_connection(flow)
    flow.server_conn.timestamp_end = now - 5.0  # while the hook ran, before it let the request go
    meter.requestheaders(flow)
    hook = asyncio.ensure_future(meter.request(flow))
    await asyncio.sleep(0.01)
    assert not hook.done()  # control: the hook waits
    meter.done()  # a script reload (mitmproxy not exiting): the call is handed over
    after = Meter()
    after.store = meter.store
    after._apply(meter.policies)
    umask = os.umask(0o022)
    os.umask(umask)
    after.running()  # mitmproxy's script loader runs the new instance's ``running`` at once
    try:
        assert after._calls.get(flow) is not None  # control: taken over now
        go_on.set()
        await hook
        flow.error = tflow.terr("[Errno 111] Connect call failed ('162.159.140.245', 443)")
        after.error(flow)
        [row] = await settled(after)
    finally:
        os.umask(umask)  # running() narrowed the process umask
        if after._watch_task is not None:
            after._watch_task.cancel()
    assert (row.price_status, row.cost_usd, row.input_tokens) == (
        "not_billed",
        Decimal(0),
        None,
    )  # (None, None, 8)
