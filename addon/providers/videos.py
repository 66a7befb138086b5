"""Video generation jobs (OpenAI's Sora, Google's Veo): what a job asks for and what it costs.

Pure functions over paths and bytes; no mitmproxy. A video's price is known from its request
(seconds x the rate of its model, size or resolution, and audio x the videos asked for), so the
meter reserves it when the request arrives and bills it when the provider accepts the job.

- OpenAI: ``POST /v1/videos`` (openai-python sends a multipart form, JSON works too): ``model``
  (default ``sora-2``), ``seconds`` (``"4"``, ``"8"``, ``"12"``; default 4), ``size`` (default
  ``720x1280``). ``POST /v1/videos/{id}/remix``, ``/v1/videos/edits`` and ``/v1/videos/extensions``
  make a new video billed as one, whose model and size are its source's (known when its creation
  passed through this proxy, ``addon.video_calls``; else reserved at the dearest rate); an
  extension says its ``seconds``. The answer is the job (``model``,
  ``seconds``, ``size``, ``status``), which bills it when it says them.
- Google: ``models/{veo-model}:predictLongRunning`` on the Gemini API and Vertex AI, JSON:
  ``parameters.durationSeconds`` (default 8), ``generateAudio`` (Vertex AI; the Gemini API always
  generates audio on Veo 3), ``resolution`` (default ``720p``), ``sampleCount`` (the REST field,
  which google-genai sends its ``numberOfVideos`` as; default 1). The answer is an operation: the
  request's values bill it.

A form's files (a reference image, a source video) are never decoded: only its small fields.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from addon.providers.openai_media import form_parts, is_form
from addon.providers.values import bare_path, loads
from addon.unmetered_models import form_model
from addon.video_prices import SORA_CEILING, SOURCE, sora_family, sora_rate, veo_ceiling, veo_family, veo_rate

FLAVOR = "video"
VEO_PROVIDERS = frozenset({"google", "vertex"})  # the Gemini API, Vertex AI
PROVIDERS = VEO_PROVIDERS | {"openai"}
CREATE, REMIX, EDIT, EXTEND, VEO = "create", "remix", "edit", "extend", "veo"
DEFAULT_SORA_MODEL = "sora-2"
DEFAULT_SORA_SECONDS = 4
DEFAULT_SORA_SIZE = "720x1280"
DEFAULT_VEO_SECONDS = 8  # also the longest Veo video: what an unreadable duration reserves
DEFAULT_VEO_RESOLUTION = "720p"
# A remix or edit runs on its source video, whose length is not in the request: reserved as the
# longest OpenAI makes (an extension's allowed seconds go up to 20).
MAX_SORA_SECONDS = 20
MAX_VEO_VIDEOS = 4
MAX_SECONDS = 600  # a larger duration is no value these APIs take: unreadable
_REMIX = re.compile(r"/v1/videos/[^/]+/remix")
_PREDICT = re.compile(r"(?::|%3[aA])predictLongRunning$")
_FIELDS = (b"seconds", b"size", b"video[id]")  # a form's model is read as the allowlist reads it
_MAX_FIELD = 256
_WHOLE = re.compile(r"\s*\+?\d{1,9}\s*")  # an int32 as Google's JSON mapping also writes it: "2"


@dataclass(frozen=True, slots=True)
class VideoJob:
    """What a video request (or the job answering it) says: model, seconds, size (OpenAI) or
    resolution (Veo), audio, how many videos; ``problem`` when something could not be read."""

    kind: str
    model: str | None = None
    seconds: float | None = None
    size: str | None = None
    resolution: str | None = None
    audio: bool = True
    count: int = 1  # the videos reserved for (the largest of the count's spellings)
    # The videos billed when they differ (Veo: ``sampleCount``, the field the server reads, where
    # ``numberOfVideos`` asks more); None: ``count``.
    billed_count: int | None = None
    problem: str | None = None
    video_id: str | None = None  # an answer's: the job's id
    # A remix's, edit's or extension's source videos named by id: one, or several different ids
    # (a form giving ``video[id]`` twice: which one the provider reads is not known).
    source_ids: tuple[str, ...] = ()
    seconds_ambiguous: bool = False  # given twice, different: ``seconds`` is the dearest reading


@dataclass(frozen=True, slots=True)
class VideoCost:
    """A video job's price: ``cost_usd`` None when unknown (``note`` says why)."""

    cost_usd: Decimal | None
    note: str  # the rate's size or resolution and the arithmetic (the row's price_source)
    price_model: str | None = None  # the model the rate is listed under (the row's price_model)


def video_kind(provider: str, path: str, model: str | None) -> str | None:
    """Is ``path`` (query allowed) a video generation request? Its kind, else None. ``model`` is
    the one the path names (Gemini, Vertex AI)."""
    bare = bare_path(path)
    if provider == "openai":
        if bare == "/v1/videos":
            return CREATE
        if bare == "/v1/videos/edits":
            return EDIT
        if bare == "/v1/videos/extensions":
            return EXTEND
        return REMIX if _REMIX.fullmatch(bare) else None
    if provider in VEO_PROVIDERS and _PREDICT.search(bare) and model:
        return VEO if model.strip().lower().removeprefix("models/").startswith("veo-") else None
    return None


def _seconds(value: Any) -> float | None:
    """A duration: a positive number or numeric string (``"8"``, ``"8s"``), else None."""
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("s").strip()
        try:
            value = float(text) if text else None
        except ValueError:
            return None
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return float(value) if 0 < value <= MAX_SECONDS else None
    return None


def _form_fields(content: bytes, content_type: str) -> tuple[dict[str, list[str | None]], str | None]:
    """The readings of the ``seconds``, ``size`` and ``video[id]`` fields of a multipart form (its
    files never decoded; a field too long to read: None), and why the form could not be read whole."""
    walk = form_parts(content, content_type)
    found: dict[str, list[str | None]] = {}
    problem: str | None = None
    for part in walk.parts:
        if part.is_file or part.name not in _FIELDS:
            continue
        name = part.name.decode("latin-1")
        readings = found.setdefault(name, [])
        if len(readings) == 1:
            problem = problem or f"{name} given twice in the form"
        if part.end - part.start > _MAX_FIELD:
            problem = problem or f"the form's {name} field is too long"
            readings.append(None)
        else:
            readings.append(content[part.start : part.end].decode("utf-8", "replace").strip())
    error = walk.error or (None if walk.complete else "multipart body cut short or malformed")
    return found, problem or error


def _longest(readings: list[Any]) -> float | None:
    """The longest of a field's readings (given twice, either may be read), None if any cannot
    be read (then reserved as the longest video)."""
    durations = [_seconds(value) for value in readings]
    return None if not durations or None in durations else max(d for d in durations if d is not None)


def _dearest_size(model: str | None, sizes: list[Any]) -> str | None:
    """The size of ``sizes`` with the dearest rate for ``model`` (given twice, either may be read);
    None when one cannot be read or has no listed rate (then reserved at the dearest)."""
    if any(not isinstance(size, str) for size in sizes):
        return None
    if len(set(sizes)) == 1:
        return sizes[0]
    rated = [(rate.usd_per_second, size) for size in sizes if model and (rate := sora_rate(model, size))]
    return max(rated)[1] if len(rated) == len(sizes) else None


def _source_id(value: Any) -> str | None:
    """A source video's id (``{"id": ...}`` in JSON, the form's ``video[id]``), else None."""
    if isinstance(value, dict):
        value = value.get("id")
    return value.strip() if isinstance(value, str) and 0 < len(value.strip()) <= _MAX_FIELD else None


def read_openai(kind: str, content: bytes, content_type: str) -> VideoJob:
    """What an OpenAI video request asks for (``kind`` from ``video_kind``). Never raises; a field
    it cannot read leaves a ``problem`` (its value then reserved at the dearest)."""
    problem: str | None = None
    fields: dict[str, list[Any]]
    if is_form(content_type):
        readings, problem = _form_fields(content, content_type)
        fields = {name: values for name, values in readings.items() if name != "video[id]"}
        if readings.get("video[id]"):
            fields["video"] = readings["video[id]"]
        # As the allowlist reads it: several model fields, or a form cut short after one, name no
        # model that can be told (refused where models are restricted); none at all, the default.
        named = form_model(content, content_type)
        if named.problem is not None:
            return VideoJob(kind, problem=named.problem)
        if named.model is not None:
            fields["model"] = [named.model]
    elif content.strip():
        obj = loads(content)
        if not isinstance(obj, dict):
            return VideoJob(kind, problem="request body is neither a form nor a JSON object")
        keys = ("model", "seconds", "size", "video")
        fields = {k: [obj.get(k)] for k in keys if obj.get(k) is not None}
    else:
        fields = {}
    model = fields.get("model", [None])[0]
    if model is not None and not (isinstance(model, str) and 0 < len(model.strip()) <= _MAX_FIELD):
        model, problem = None, "its model is not a model's name"
    model = model.strip() if isinstance(model, str) else None
    seconds = None
    ambiguous = False
    if "seconds" in fields:
        seconds = _longest(fields["seconds"])
        ambiguous = len({_seconds(value) for value in fields["seconds"]}) > 1
        if seconds is None:
            problem = problem or "its seconds could not be read as a duration"
    size = None
    if "size" in fields:
        size = _dearest_size(model or (DEFAULT_SORA_MODEL if kind == CREATE else None), fields["size"])
        if size is None and any(not isinstance(value, str) for value in fields["size"]):
            problem = problem or "its size could not be read"
    if kind == CREATE:
        model = model or (None if problem else DEFAULT_SORA_MODEL)
        seconds = seconds or (None if "seconds" in fields else DEFAULT_SORA_SECONDS)
        size = size or (None if "size" in fields else DEFAULT_SORA_SIZE)
    sources: tuple[str, ...] = ()
    if kind in (EDIT, EXTEND) and "video" in fields:
        ids = [_source_id(value) for value in fields["video"]]
        if None in ids:  # one reading cannot be told: the source is not known
            problem = problem or "its source video's id could not be read"
        else:
            sources = tuple(dict.fromkeys(i for i in ids if i is not None))  # the same id twice: once
    return VideoJob(
        kind,
        model=model,
        seconds=seconds,
        size=size,
        problem=problem,
        source_ids=sources,
        seconds_ambiguous=ambiguous,
    )


def read_openai_job(kind: str, body: bytes) -> VideoJob | None:
    """The job an OpenAI video answer describes (``model``, ``seconds``, ``size``), or None when
    the answer is no such object."""
    obj = loads(body)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), str):
        return None
    size = obj.get("size") if isinstance(obj.get("size"), str) else None
    video_id = obj.get("id") if isinstance(obj.get("id"), str) and 0 < len(obj["id"]) <= _MAX_FIELD else None
    return VideoJob(
        kind, model=obj["model"], seconds=_seconds(obj.get("seconds")), size=size, video_id=video_id
    )


def _whole(value: Any) -> int | None:
    """A whole number as Google's JSON mapping writes an int32: a number (``2``, ``2.0``) or a
    string of digits (``"2"``); else None."""
    if isinstance(value, str) and _WHOLE.fullmatch(value):
        return int(value)
    if type(value) is float and value.is_integer():
        return int(value)
    return value if type(value) is int else None


_WIRE_COUNTS = ("sampleCount", "sample_count")  # the REST field (google-genai sends numberOfVideos as it)
_SDK_COUNTS = ("numberOfVideos", "number_of_videos")  # google-genai's name, not the REST field's


def _count(parameters: dict[str, Any]) -> tuple[int, int, bool]:
    """How many videos: (reserved, billed, whether a spelling could not be read). Reserved: the
    largest of the count's spellings given (a server might read either), ``MAX_VEO_VIDEOS`` when
    one cannot be read; billed: ``sampleCount``, the REST field, when it is given and readable
    (a server that took the job read it), else as reserved. 1 when none is given."""
    counts: dict[str, int] = {}
    unreadable = False
    for key in _WIRE_COUNTS + _SDK_COUNTS:
        value = parameters.get(key)
        if value is None:
            continue
        count = _whole(value)
        if count is None or not 1 <= count <= MAX_VEO_VIDEOS:
            unreadable = True
            continue
        counts[key] = count
    reserved = MAX_VEO_VIDEOS if unreadable else max(counts.values(), default=1)
    wire = [counts[key] for key in _WIRE_COUNTS if key in counts]
    return reserved, max(wire) if wire else reserved, unreadable


def read_veo(model: str, body: dict[str, Any] | None) -> VideoJob:
    """What a Veo ``:predictLongRunning`` request asks for (its JSON body). Never raises."""
    if body is None:
        return VideoJob(VEO, model=model, problem="request body is not a JSON object")
    parameters = body.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        return VideoJob(VEO, model=model, problem="its parameters are not an object")
    problem = None
    raw = parameters.get("durationSeconds", parameters.get("duration_seconds"))
    seconds = float(DEFAULT_VEO_SECONDS) if raw is None else _seconds(raw)
    if seconds is None:
        problem = "its durationSeconds could not be read as a duration"
    resolution = parameters.get("resolution")
    if resolution is None:  # not set (Google's JSON mapping: null is the field's default)
        resolution = DEFAULT_VEO_RESOLUTION
    if not isinstance(resolution, str):
        resolution, problem = None, problem or "its resolution is not a string"
    audio = parameters.get("generateAudio", parameters.get("generate_audio", True))
    count, billed, unreadable = _count(parameters)
    if unreadable:
        problem = problem or f"a video count (sampleCount, numberOfVideos) is not 1 to {MAX_VEO_VIDEOS}"
    return VideoJob(
        VEO,
        model=model,
        seconds=seconds,
        resolution=resolution,
        audio=audio is not False,
        count=count,
        billed_count=billed if billed != count else None,
        problem=problem,
    )


def _money(value: Decimal) -> str:
    return f"${value.normalize():f}"


def _length(seconds: float) -> str:
    return f"{seconds:g} s"


def price_job(place: str, job: VideoJob) -> VideoCost:
    """A job's price at ``place`` (the provider: ``openai``, ``google``, ``vertex``): seconds x rate
    x videos. Unknown (``cost_usd`` None) when its model, size or resolution has no listed rate or
    its seconds are unknown."""
    if job.model is None or job.seconds is None:
        return VideoCost(None, f"{SOURCE}: the video's model or seconds are not known")
    if place == "openai":
        rate = sora_rate(job.model, job.size or "")
        what = f"{job.model} at {job.size}"
    else:
        rate = veo_rate(place, job.model, job.resolution or "", job.audio)
        what = f"{job.model} at {job.resolution}"
    if rate is None:
        return VideoCost(None, f"{SOURCE}: no price for {what}")
    seconds = Decimal(str(job.seconds))
    cost = seconds * rate.usd_per_second * job.count
    times = f" x {job.count} videos" if job.count > 1 else ""
    note = f"{SOURCE} ({rate.priced_as}: {_length(job.seconds)} x {_money(rate.usd_per_second)}/s{times})"
    return VideoCost(cost, note, price_model=rate.family)


def reservation(place: str, job: VideoJob) -> Decimal:
    """What a job may cost, for its budget reservation: its price where known; what neither the
    request nor a remembered source video says (``with_source``: a remix's or edit's source, an
    extension's model; a field it could not read) at the dearest OpenAI rate and longest video;
    a Veo model, resolution or audio the table lacks at the dearest Veo rate where it runs (the
    row then says unknown: never $0)."""
    if place == "openai":
        priced = price_job(place, job).cost_usd
        if priced is not None:
            return priced
        known = sora_rate(job.model, job.size) if job.model and job.size else None
        rate = known.usd_per_second if known is not None else SORA_CEILING
        return rate * Decimal(str(job.seconds or MAX_SORA_SECONDS)) * job.count
    if job.seconds is None:
        job = replace(job, seconds=float(DEFAULT_VEO_SECONDS))
    priced = price_job(place, job).cost_usd
    if priced is not None:
        return priced
    return veo_ceiling(place) * Decimal(str(job.seconds)) * job.count


def remixed_id(path: str) -> str | None:
    """The id of the video ``POST /v1/videos/{id}/remix`` remixes, else None."""
    bare = bare_path(path)
    return bare.split("/")[3] if _REMIX.fullmatch(bare) else None


def with_source(job: VideoJob, source: VideoJob) -> VideoJob:
    """A remix's, edit's or extension's job at its source video's model (it runs on it, whatever
    model the request names) and size (what the request does not say) and, but for an extension
    (whose seconds are its new segment's), its seconds: for its reservation and allowlist check;
    the answer's job still bills it."""
    return replace(
        job,
        model=source.model or job.model,
        seconds=job.seconds or (None if job.kind == EXTEND else source.seconds),
        size=job.size or source.size,
    )


def source_readings(job: VideoJob, sources: list[VideoJob | None]) -> list[tuple[VideoJob, VideoJob | None]]:
    """The jobs a remix, edit or extension may be, each with its source (None: not seen here): at
    each source's model and, when the request names another model, at that one too (which one the
    provider holds it to is not said: each is held to the allowlist, the dearest reserved). No
    source: the job as asked."""
    found: list[tuple[VideoJob, VideoJob | None]] = []
    for source in sources or [None]:
        if source is None:
            found.append((job, None))
            continue
        found.append((with_source(job, source), source))
        if job.model is not None and source.model is not None and job.model != source.model:
            found.append((replace(with_source(job, source), model=job.model), source))
    return found


def model_family(place: str, model: str | None) -> str | None:
    """The name a video model's rates are listed under (``veo-3.0-generate-001`` -> ``veo-3.0``):
    its rows' ``price_model``, priced or not, so a report shows one model once."""
    if model is None:
        return None
    return sora_family(model) if place == "openai" else veo_family(model)


def _ran_on(sources: tuple[VideoJob, ...], answered: VideoJob) -> VideoJob | None:
    """Of an extension's known sources, the one the answer ran on: of its model (an extension's
    is its source's) and, where several are, of its size (an extension keeps its source's), when
    exactly one is; else None."""
    if answered.model is None:
        return None
    family = sora_family(answered.model)
    ran_on = [one for one in sources if one.model is not None and sora_family(one.model) == family]
    if len(ran_on) > 1 and answered.size is not None:
        ran_on = [one for one in ran_on if one.size == answered.size]
    return ran_on[0] if len(ran_on) == 1 else None


def settled(
    asked: VideoJob,
    answered: VideoJob | None,
    source: VideoJob | None = None,
    sources: tuple[VideoJob, ...] = (),
) -> VideoJob:
    """The job as billed: what the answer says of it (model, seconds, size) over the request's,
    for the videos billed (Veo: ``sampleCount`` when given, see ``_count``).
    An extension's answer says the stitched total (openai-python 3.57, ``Video.seconds``: "For
    extensions, this is the stitched total duration"): it is billed for its new segment, the
    request's ``seconds`` when it said one; when it did not, or gave two (the reservation took the
    dearer), what the answer shows ran: the total less its source video's when that is known (of
    ``sources``, all an extension named and all seen here, the one of the answer's model (and size)
    when only one is; else ``source``, its reservation's), else the request's reading or the total, the
    smaller."""
    if asked.billed_count is not None:
        asked = replace(asked, count=asked.billed_count, billed_count=None)
    if answered is None:
        return asked
    seconds = answered.seconds or asked.seconds
    if asked.kind == EXTEND:
        source = _ran_on(sources, answered) or source
        before = source.seconds if source is not None else None
        segment = (
            answered.seconds - before if answered.seconds and before and answered.seconds > before else None
        )
        if asked.seconds is not None and not asked.seconds_ambiguous:
            seconds = asked.seconds
        elif segment is not None:
            seconds = segment
        else:
            told = [s for s in (asked.seconds, answered.seconds) if s is not None]
            seconds = min(told) if told else None
    return VideoJob(
        asked.kind,
        model=answered.model or asked.model,
        seconds=seconds,
        size=answered.size or asked.size,
        resolution=asked.resolution,
        audio=asked.audio,
        count=asked.count,
    )
