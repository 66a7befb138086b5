"""Video generation (OpenAI's Sora, Google's Veo) is metered: priced from what the request asks
for (seconds x rate x videos), reserved against budgets when it arrives, billed when the job is
accepted. Before, it was only held to the allowlist: $0 in every report, no budget ever reached."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from meter_helpers import CollectingStore, make_flow, run_request
from mitmproxy import http

from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import videos
from addon.providers.videos import VideoJob, price_job, read_openai, read_veo, reservation
from addon.spend import main
from addon.store import Store

VIDEOS = "https://api.openai.com/v1/videos"
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models"
VERTEX = "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1"
GEMINI_KEY = {"x-goog-api-key": "AIza-test-0123456789"}
DEVELOPMENT = Scope("environment", "development")
ANY_MODEL = "environments:\n  development:\n    models: {allow: ['*']}\n"


def form(fields: dict[str, str], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    """A multipart form as openai-python sends it, with a reference image file part."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    image = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="input_reference"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b'\x89PNG{"model": "sora-2", "seconds": "12"}\xff\xfe'
        + b"\r\n"
    )
    body = b"".join(parts) + image + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def job_answer(model: str, seconds: str, size: str) -> dict[str, object]:
    return {"id": "video_1", "object": "video", "model": model, "seconds": seconds, "size": size,
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


# --- prices of each shape ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "cost"),
    [
        ({"prompt": "a cat"}, Decimal("0.40")),  # defaults: sora-2, 4 s, 720x1280 at $0.10/s
        ({"prompt": "a cat", "model": "sora-2", "seconds": "12", "size": "1280x720"}, Decimal("1.20")),
        ({"prompt": "a cat", "model": "sora-2-pro", "seconds": "8"}, Decimal("2.40")),  # 720x1280 $0.30
        ({"prompt": "a cat", "model": "sora-2-pro", "seconds": "12", "size": "1792x1024"}, Decimal("6.00")),
        ({"prompt": "a cat", "model": "sora-2-2025-12-08", "seconds": 8}, Decimal("0.80")),  # a snapshot
    ],
)
def test_a_sora_request_is_priced_from_its_seconds_size_and_model(body: dict, cost: Decimal) -> None:
    job = read_openai(videos.CREATE, json.dumps(body).encode(), "application/json")
    assert job.problem is None
    assert price_job("openai", job).cost_usd == cost
    assert reservation("openai", job) == cost


def test_a_forms_small_fields_are_read_and_its_file_never() -> None:
    """The reference image's bytes hold a JSON "model" and "seconds": never read."""
    body, headers = form({"prompt": "a cat", "model": "sora-2-pro", "seconds": "4", "size": "1024x1792"})
    job = read_openai(videos.CREATE, body, headers["content-type"])
    assert (job.model, job.seconds, job.size, job.problem) == ("sora-2-pro", 4.0, "1024x1792", None)
    assert price_job("openai", job).cost_usd == Decimal("2.00")


@pytest.mark.parametrize(
    ("place", "model", "parameters", "cost"),
    [
        # Gemini API: default 8 s, 720p, audio, one video
        ("google", "veo-3.0-generate-001", None, Decimal("3.20")),
        ("google", "veo-3.1-fast-generate-preview", {"durationSeconds": 8, "resolution": "1080p",
                                                     "sampleCount": 2}, Decimal("2.40")),
        ("google", "veo-3.1-generate-preview", {"durationSeconds": 4, "resolution": "4k"}, Decimal("2.40")),
        # the Gemini API always generates audio on Veo 3: generateAudio false changes nothing
        ("google", "veo-3.0-fast-generate-001", {"durationSeconds": 6, "generateAudio": False},
         Decimal("0.90")),
        ("google", "veo-2.0-generate-001", {"durationSeconds": 5, "numberOfVideos": 2}, Decimal("3.50")),
        # Vertex AI: video without audio at half the rate
        ("vertex", "veo-3.0-generate-001", {"durationSeconds": 6, "generateAudio": False}, Decimal("1.20")),
        ("vertex", "veo-3.1-generate-001", {"durationSeconds": "8", "resolution": "4k"}, Decimal("4.80")),
        ("vertex", "veo-3.1-fast-generate-001", {"durationSeconds": 8, "resolution": "4k",
                                                 "generateAudio": False, "sampleCount": 4}, Decimal("9.60")),
        ("vertex", "veo-2.0-generate-001", {"durationSeconds": 8}, Decimal("4.00")),
    ],
)  # fmt: skip
def test_a_veo_request_is_priced_from_its_parameters(
    place: str, model: str, parameters: dict | None, cost: Decimal
) -> None:
    body = {"instances": [{"prompt": "a cat"}], **({"parameters": parameters} if parameters else {})}
    job = read_veo(model, body)
    assert job.problem is None
    assert price_job(place, job).cost_usd == cost


@pytest.mark.parametrize(
    ("place", "job"),
    [
        ("openai", VideoJob(videos.CREATE, model="sora-2", seconds=4, size="1920x1080")),
        ("openai", VideoJob(videos.CREATE, model="sora-3", seconds=4, size="720x1280")),
        ("google", VideoJob(videos.VEO, model="veo-4.0-generate-preview", seconds=8, resolution="720p")),
        ("vertex", VideoJob(videos.VEO, model="veo-3.0-generate-001", seconds=8, resolution="8k")),
    ],
)
def test_an_unknown_video_model_or_size_has_no_price_never_zero(place: str, job: VideoJob) -> None:
    found = price_job(place, job)
    assert found.cost_usd is None and "no price for" in found.note


def test_a_remix_reserves_the_dearest_longest_video_it_may_be() -> None:
    """Its source video's model, size and seconds are not in the request: $0.50/s x 20 s."""
    job = read_openai(videos.REMIX, json.dumps({"prompt": "more cats"}).encode(), "application/json")
    assert (job.model, job.seconds, job.size) == (None, None, None)
    assert reservation("openai", job) == Decimal("10.00")
    extend, headers = form({"prompt": "more", "seconds": "8"})
    assert reservation("openai", read_openai(videos.EXTEND, extend, headers["content-type"])) == Decimal(
        "4.00"
    )


# --- the meter: reserved, billed, withdrawn -----------------------------------------------------


async def test_an_accepted_sora_job_is_billed_at_what_the_answer_says(meter: Meter) -> None:
    body, headers = form({"prompt": "a cat", "model": "sora-2"})
    flow = make_flow(VIDEOS, body, headers=headers)
    await run_request(meter, flow)
    assert flow.response is None  # sent on, untouched
    await answer(meter, flow, 200, job_answer("sora-2-pro", "8", "1280x720"))
    [row] = rows(meter)
    assert (row.api_flavor, row.model_requested, row.model_reported, row.status_code) == (
        "video", "sora-2", "sora-2-pro", 200
    )  # fmt: skip
    # the answer's 8 s of sora-2-pro at 1280x720 ($0.30/s), not the request's 4 s of sora-2
    assert (row.cost_usd, row.price_status) == (Decimal("2.40"), "priced")
    assert row.price_source is not None and "8 s x $0.3/s" in row.price_source
    assert row.error is None


async def test_a_veo_job_on_the_gemini_api_is_billed_as_asked(meter: Meter) -> None:
    url = f"{GEMINI}/veo-3.1-fast-generate-preview:predictLongRunning"
    sent = {"instances": [{"prompt": "a cat"}], "parameters": {"durationSeconds": 6, "sampleCount": 2}}
    flow = make_flow(url, sent, headers=GEMINI_KEY)
    await run_request(meter, flow)
    assert flow.response is None
    await answer(meter, flow, 200, {"name": "models/veo-3.1-fast-generate-preview/operations/op1"})
    [row] = rows(meter)
    assert (row.api_flavor, row.provider, row.model_sent, row.answers) == (
        "video", "google", "veo-3.1-fast-generate-preview", 2
    )  # fmt: skip
    assert (row.cost_usd, row.price_status) == (Decimal("1.80"), "priced")  # 6 s x $0.15 x 2


async def test_a_veo_job_on_vertex_without_audio_is_billed_at_its_rate(meter: Meter) -> None:
    url = f"{VERTEX}/publishers/google/models/veo-3.0-generate-001:predictLongRunning"
    sent = {"instances": [{"prompt": "a cat"}], "parameters": {"durationSeconds": 8, "generateAudio": False}}
    flow = make_flow(url, sent)
    await run_request(meter, flow)
    await answer(meter, flow, 200, {"name": "projects/p1/locations/us-central1/operations/op1"})
    [row] = rows(meter)
    assert (row.provider, row.cost_usd, row.price_status) == ("vertex", Decimal("1.60"), "priced")


async def test_twenty_simultaneous_videos_with_fifty_cents_left_let_through_at_most_one(
    meter: Meter,
) -> None:
    """Each 8 s sora-2 video costs $0.80. Before, all 20 went through ($16 against $0.50). (A budget
    admits a call while its spend and reservations are under the cap: the first one's $0.80 fills it.)"""
    meter._apply(parse_policies(ANY_MODEL + "    budget: {usd: 0.5, period: day}\n"))
    flows = [make_flow(VIDEOS, {"prompt": f"cat {i}", "seconds": "8"}) for i in range(20)]
    await asyncio.gather(*(run_request(meter, flow) for flow in flows))
    sent = [flow for flow in flows if flow.response is None]
    assert len(sent) == 1
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == Decimal("0.80")
    refused = [flow for flow in flows if flow.response is not None]
    assert {flow.response.status_code for flow in refused} == {429}  # type: ignore[union-attr]


async def test_an_error_answer_is_not_billed_and_its_reservation_is_withdrawn(meter: Meter) -> None:
    meter._apply(parse_policies(ANY_MODEL + "    budget: {usd: 100, period: day}\n"))
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "12"})
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == Decimal("3.60")
    await answer(meter, flow, 400, {"error": {"message": "moderation_blocked"}})
    [row] = rows(meter)
    assert (row.status_code, row.cost_usd, row.price_status) == (400, Decimal(0), "not_billed")
    assert meter.enforcer.budgets.reserved() == {}


async def test_an_accepted_job_holds_its_cost_in_place_of_its_reservation(meter: Meter) -> None:
    meter._apply(parse_policies(ANY_MODEL + "    budget: {usd: 100, period: day}\n"))
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2", "seconds": "12"})
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == Decimal("1.20")
    await answer(meter, flow, 200, job_answer("sora-2", "12", "720x1280"))
    assert meter.enforcer.budgets.reserved() == {}
    assert meter.enforcer.budgets.holding(rows(meter)[0].id)[1] == Decimal("1.20")  # type: ignore[index]


async def test_an_unknown_size_is_recorded_unpriced_saying_why(meter: Meter) -> None:
    flow = make_flow(VIDEOS, {"prompt": "a cat", "size": "1920x1080"})
    await run_request(meter, flow)
    await answer(meter, flow, 200, job_answer("sora-2", "4", "1920x1080"))
    [row] = rows(meter)
    assert (row.cost_usd, row.price_status) == (None, "unknown_model")
    assert row.price_source is not None and "no price for sora-2 at 1920x1080" in row.price_source


async def test_an_unreadable_request_passes_with_a_row_saying_why(meter: Meter) -> None:
    flow = make_flow(VIDEOS, {"prompt": "a cat", "seconds": "a while"})
    await run_request(meter, flow)
    assert flow.response is None
    await answer(meter, flow, 200, job_answer("sora-2", "4", "720x1280"))
    [row] = rows(meter)
    assert row.error is not None and "seconds could not be read" in row.error and "a while" not in row.error
    assert (row.cost_usd, row.price_status) == (Decimal("0.40"), "priced")  # the answer's 4 s


async def test_a_disallowed_video_model_is_refused_never_downgraded(meter: Meter) -> None:
    policy = (
        "environments:\n  development:\n    models:\n      allow: [sora-2]\n"
        "      on_disallowed: downgrade\n      downgrade: {sora-2-pro: sora-2}\n"
    )
    meter._apply(parse_policies(policy))
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro"})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert json.loads(flow.request.content or b"")["model"] == "sora-2-pro"  # never rewritten
    await meter.response(flow)
    [row] = rows(meter)
    assert (row.action, row.api_flavor, row.cost_usd, row.price_status) == (
        "blocked", "video", Decimal(0), "not_billed"
    )  # fmt: skip


# --- the reports ---------------------------------------------------------------------------------


def summary(stored: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """``scripts/spend summary`` (JSON) of a database holding ``stored``: its totals."""
    db = tmp_path / "report.duckdb"
    writer = Store(db, "s1", flush_interval=3600, version="0.1.0")
    writer.start()
    for row in stored:
        writer.submit(row)
    writer.close()
    day = stored[0].ts.strftime("%Y-%m-%d")
    assert main(["--db", str(db), "summary", "--from", day, "--to", day, "--format", "json"]) in (0, None)
    return json.loads(capsys.readouterr().out)["total"]


async def test_scripts_spend_counts_a_video_in_the_cost_not_as_a_call_without_usage(
    meter: Meter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A video row has a cost and no tokens: the summary's cost holds it, and it is no call "without
    usage (aborted or unreadable), not in the cost"."""
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "8"})
    flow.request.timestamp_start = (datetime.now(UTC) - timedelta(minutes=5)).timestamp()
    await run_request(meter, flow)
    await answer(meter, flow, 200, job_answer("sora-2-pro", "8", "720x1280"))
    total = summary(rows(meter), tmp_path, capsys)
    assert (total["calls"], Decimal(total["cost_usd"]), total["no_usage_calls"]) == (1, Decimal("2.40"), 0)


async def test_scripts_spend_counts_a_video_without_a_price_as_unpriced(
    meter: Meter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = make_flow(VIDEOS, {"prompt": "a cat", "size": "1920x1080"})
    flow.request.timestamp_start = (datetime.now(UTC) - timedelta(minutes=5)).timestamp()
    await run_request(meter, flow)
    await answer(meter, flow, 200, job_answer("sora-2", "4", "1920x1080"))
    total = summary(rows(meter), tmp_path, capsys)
    counts = (total["calls"], total["unpriced_calls"], total["no_usage_calls"])
    assert (counts, total["cost_usd"]) == ((1, 1, 0), None)
    # and `scripts/spend unpriced`, which the summary points to, lists it
    day = rows(meter)[0].ts.strftime("%Y-%m-%d")
    db = str(tmp_path / "report.duckdb")
    assert main(["--db", db, "unpriced", "--from", day, "--to", day, "--format", "json"]) in (0, None)
    [listed] = json.loads(capsys.readouterr().out)["rows"]
    assert (listed["provider"], listed["model"], listed["price_status"], listed["calls"]) == (
        "openai", "sora-2", "unknown_model", 1
    )  # fmt: skip


def test_a_veo_request_whose_duration_cannot_be_read_reserves_the_longest_video() -> None:
    """Before, its reservation was $0 (no seconds, no price)."""
    job = read_veo("veo-3.0-generate-001", {"instances": [], "parameters": {"durationSeconds": "long"}})
    assert job.problem is not None and job.seconds is None
    assert reservation("google", job) == Decimal("3.20")  # 8 s (Veo's longest) x $0.40


async def test_a_remix_of_a_video_seen_here_reserves_at_its_sources_price(meter: Meter) -> None:
    """A remix's model, size and seconds are its source's: known once its creation passed here
    ($1.20 for 12 s of sora-2), else the dearest, longest video ($10)."""
    meter._apply(parse_policies(ANY_MODEL + "    budget: {usd: 100, period: day}\n"))
    created = make_flow(VIDEOS, {"prompt": "a cat", "seconds": "12"})
    await run_request(meter, created)
    await answer(meter, created, 200, {**job_answer("sora-2", "12", "720x1280"), "id": "video_abc"})
    remix = make_flow(f"{VIDEOS}/video_abc/remix", {"prompt": "a dog"})
    await run_request(meter, remix)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == Decimal("1.20")
    await answer(meter, remix, 200, {**job_answer("sora-2", "12", "720x1280"), "id": "video_def"})
    unknown = make_flow(f"{VIDEOS}/video_zzz/remix", {"prompt": "a dog"})
    await run_request(meter, unknown)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == Decimal("10.00")
    assert [row.cost_usd for row in rows(meter)] == [Decimal("1.20"), Decimal("1.20")]


@pytest.mark.parametrize(
    "body",
    [
        # two model fields: which one OpenAI runs is not known
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2\r\n'
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n--b--\r\n',
        # cut short after an allowed model: a server reading on may find another
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2\r\n'
        b'--b\r\nContent-Disposition: form-data; name="input_reference"; filename="a.png"\r\n\r\n\x89PNG',
    ],
)
async def test_a_form_whose_model_cannot_be_told_is_refused_where_models_are_restricted(
    meter: Meter, body: bytes
) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: [sora-2]}\n"))
    flow = make_flow(VIDEOS, body, headers={"content-type": "multipart/form-data; boundary=b"})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "could not be read" in json.loads(flow.response.content or b"")["error"]["message"]


# --- review 24, found without tests ------------------------------------------------------------------


def stored_db(stored: list, tmp_path: Path) -> tuple[str, str]:
    """A database holding ``stored``; its path and the day of its rows."""
    db = tmp_path / "report.duckdb"
    writer = Store(db, "s1", flush_interval=3600, version="0.1.0")
    writer.start()
    for row in stored:
        writer.submit(row)
    writer.close()
    return str(db), stored[0].ts.strftime("%Y-%m-%d")


async def test_a_video_rows_price_model_names_the_model_and_its_price_source_the_size(
    meter: Meter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two sora-2-pro jobs at two sizes ($2.40 + $4.00) are one model in ``spend by model``. Before,
    price_model was the rate's label ("sora-2-pro 720x1280", "sora-2-pro 1792x1024"): two rows."""
    for size, cost in (("720x1280", "2.40"), ("1792x1024", "4.00")):
        flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "8", "size": size})
        flow.request.timestamp_start = (datetime.now(UTC) - timedelta(minutes=5)).timestamp()
        await run_request(meter, flow)
        await answer(meter, flow, 200, job_answer("sora-2-pro", "8", size))
        row = rows(meter)[-1]
        assert (row.price_model, row.cost_usd) == ("sora-2-pro", Decimal(cost))
        assert row.price_source is not None and f"(sora-2-pro {size}: 8 s x $0." in row.price_source
    db, day = stored_db(rows(meter), tmp_path)
    assert main(["--db", db, "by", "model", "--from", day, "--to", day, "--format", "json"]) in (0, None)
    by_model = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["key"], r["calls"], Decimal(r["cost_usd"])) for r in by_model] == [
        ("sora-2-pro", 2, Decimal("6.40"))
    ]


async def test_scripts_spend_savings_says_its_totals_leave_out_video_jobs(
    meter: Meter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spend savings`` sums token-priced calls only: a $2.40 video job is in no total. Before, its
    output said nothing of it (a total cost of $0, "No calls with usage"); now it says so, counts it
    apart (1 job, $2.40) and proposes no downgrade for it."""
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2-pro", "seconds": "8"})
    flow.request.timestamp_start = (datetime.now(UTC) - timedelta(minutes=5)).timestamp()
    await run_request(meter, flow)
    await answer(meter, flow, 200, job_answer("sora-2-pro", "8", "720x1280"))
    db, day = stored_db(rows(meter), tmp_path)
    policies = tmp_path / "policies.yaml"
    policies.write_text(ANY_MODEL)
    common = ["--db", db, "savings", "--policies", str(policies), "--from", day, "--to", day]
    assert main([*common, "--format", "json"]) in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert (data["total"]["calls"], data["total"]["cost_usd"]) == (0, "0")
    assert data["left_out"] == {"video_jobs": 1, "video_cost_usd": "2.4"}
    assert main(common) in (0, None)
    text = capsys.readouterr().out
    assert "token-priced calls only: 1 video job(s) ($2.4000) are not in these totals" in text


async def test_a_seconds_field_too_long_to_read_reserves_the_longest_video_unquoted(meter: Meter) -> None:
    """A ``seconds`` form field of 300 bytes cannot be read: reserved as the longest video, 20 s x
    $0.10 = $2.00 (before: the default 4 s, $0.40), its row's error saying so without its value."""
    meter._apply(parse_policies(ANY_MODEL + "    budget: {usd: 100, period: day}\n"))
    body, headers = form({"prompt": "a cat", "model": "sora-2", "seconds": "8" * 300})
    flow = make_flow(VIDEOS, body, headers=headers)
    await run_request(meter, flow)
    assert flow.response is None
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == Decimal("2.00")
    await answer(meter, flow, 200, job_answer("sora-2", "8", "720x1280"))
    [row] = rows(meter)
    assert row.error is not None and "seconds" in row.error and "888" not in row.error
    assert (row.cost_usd, row.price_status) == (Decimal("0.80"), "priced")  # the answer's 8 s


def test_a_form_giving_size_twice_is_read_at_the_dearest_size() -> None:
    """sora-2-pro at 720x1280 ($0.30/s) then 1792x1024 ($0.50/s): which one OpenAI reads is not
    known, so 4 s reserve $2.00 (before: the first, $1.20)."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n'
        b'--b\r\nContent-Disposition: form-data; name="size"\r\n\r\n720x1280\r\n'
        b'--b\r\nContent-Disposition: form-data; name="size"\r\n\r\n1792x1024\r\n--b--\r\n'
    )
    job = read_openai("create", body, "multipart/form-data; boundary=b")
    assert (job.size, job.seconds, job.problem) == ("1792x1024", 4, "size given twice in the form")
    assert reservation("openai", job) == Decimal("2.00")


def test_veo_whole_numbers_given_as_strings_are_read() -> None:
    """``"numberOfVideos": "3"``, ``"durationSeconds": "6"`` (int32 as strings, as Google's JSON
    mapping allows): 6 s x $0.40 x 3 = $7.20 (before: 4 videos, unreadable, $9.60)."""
    parameters = {"numberOfVideos": "3", "durationSeconds": "6"}
    job = read_veo("veo-3.0-generate-001", {"instances": [], "parameters": parameters})
    assert (job.count, job.seconds, job.problem) == (3, 6.0, None)
    assert price_job("google", job).cost_usd == Decimal("7.20")


async def test_an_extension_of_a_video_seen_here_runs_on_its_model_and_bills_its_segment(
    meter: Meter,
) -> None:
    """An extension (a form naming its source as ``video[id]``, as openai-python sends it) of a
    12 s sora-2 video created here reserves at sora-2's rate ($0.80 for 8 s, not $0.50/s: $4.00);
    one whose seconds cannot be read is billed at the answer's stitched total (20 s) less its
    source's 12 s: $0.80, not $2.00. Where only sora-2 is allowed, extending a sora-2-pro video is
    refused 403."""
    meter._apply(parse_policies(ANY_MODEL + "    budget: {usd: 100, period: day}\n"))
    for model, video_id in (("sora-2", "video_a"), ("sora-2-pro", "video_p")):
        created = make_flow(VIDEOS, {"prompt": "a cat", "model": model, "seconds": "12"})
        await run_request(meter, created)
        await answer(meter, created, 200, {**job_answer(model, "12", "720x1280"), "id": video_id})
    body, headers = form({"prompt": "more", "seconds": "8", "video[id]": "video_a"})
    extension = make_flow(f"{VIDEOS}/extensions", body, headers=headers)
    await run_request(meter, extension)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == Decimal("0.80")
    await answer(meter, extension, 200, {**job_answer("sora-2", "20", "720x1280"), "id": "video_b"})
    unreadable = make_flow(
        f"{VIDEOS}/extensions", {"prompt": "more", "seconds": "long", "video": {"id": "video_a"}}
    )
    await run_request(meter, unreadable)
    await answer(meter, unreadable, 200, {**job_answer("sora-2", "20", "720x1280"), "id": "video_c"})
    assert [row.cost_usd for row in rows(meter)[2:]] == [Decimal("0.80"), Decimal("0.80")]
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: [sora-2]}\n"))
    body, headers = form({"prompt": "more", "seconds": "4", "video[id]": "video_p"})
    refused = make_flow(f"{VIDEOS}/extensions", body, headers=headers)
    await run_request(meter, refused)
    assert refused.response is not None and refused.response.status_code == 403
