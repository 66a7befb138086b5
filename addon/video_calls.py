"""Video generation calls (``addon.providers.videos``: OpenAI's Sora jobs, Google's Veo operations):
what a request asks for, read and reserved against the budgets, its model held to the allowlist; its
row, billed when the job is accepted; and the jobs accepted here, remembered by id so a remix, an
edit or an extension of one reserves at its price and is held to the allowlist as its model.

``VideoCalls`` belongs to one Meter and uses of it only what ``MeterSide`` names (read as it is used:
policies and the store change while the proxy runs); the Meter calls ``request`` and ``finish`` where
its hooks meet a video call.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from mitmproxy import http

from addon.header_fields import content_of
from addon.pricing import NOT_BILLED, PRICED, UNKNOWN_MODEL
from addon.providers import videos
from addon.usage import Metered

if TYPE_CHECKING:
    from addon.enforcement import Decision, Enforcer
    from addon.meter import CallState, FinishedRow
    from addon.request_decision import RequestDecider

log = logging.getLogger("tokometer")

MAX_REMEMBERED_VIDEOS = 10_000  # video jobs whose model, seconds and size a remix reserves at


class MeterSide(Protocol):
    """What a VideoCalls uses of the Meter that owns it, read as it is used."""

    enforcer: Enforcer
    decider: RequestDecider  # the allowlist's decisions (addon.request_decision)

    async def _attribute(self, state: CallState, *, users_checked: bool = True) -> None: ...

    @staticmethod
    async def _request_json(flow: http.HTTPFlow, state: CallState) -> dict[str, Any] | None: ...

    def _decide(
        self, state: CallState, model: str | None, estimate: Callable[[str | None], Decimal] | None = None
    ) -> Decision: ...

    def _answer_if_refused(self, flow: http.HTTPFlow, state: CallState, decision: Decision) -> bool: ...

    def _finish(
        self,
        flow: http.HTTPFlow,
        state: CallState,
        metered: Metered,
        *,
        aborted: bool,
        now: bool = False,
        fill: Callable[..., FinishedRow | None] | None = None,
        despite: Callable[[http.HTTPFlow, CallState, Metered], FinishedRow] | None = None,
    ) -> None: ...

    @staticmethod
    def _fill_record(
        flow: http.HTTPFlow, state: CallState, metered: Metered, errors: list[str], *, aborted: bool
    ) -> None: ...

    def _row_despite_failure(
        self, flow: http.HTTPFlow, state: CallState, metered: Metered
    ) -> FinishedRow: ...

    def _row_as_filled(self, state: CallState) -> FinishedRow: ...


class VideoCalls:
    """The video calls of one Meter: their requests read, reserved and decided, their rows billed,
    and the jobs accepted here remembered by id."""

    def __init__(
        self,
        meter: MeterSide,
        *,
        off_loop: Callable[..., Awaitable[Any]],
        decoded_content: Callable[[http.Request], bytes],
        never_sent: Callable[[http.HTTPFlow, CallState], bool],
    ) -> None:
        self._meter = meter
        self._off_loop = off_loop  # runs a read in a worker thread when its input is large
        self._decoded_content = decoded_content  # a request's body, its content encoding undone
        self._never_sent = never_sent  # did the call surely not reach the provider?
        # Video jobs accepted here, by id (model, seconds, size): a remix of one reserves its price.
        self._videos: dict[str, videos.VideoJob] = {}

    async def read_job(self, flow: http.HTTPFlow, state: CallState, kind: str) -> videos.VideoJob:
        """What a video request asks for: Veo's JSON body, or OpenAI's form or JSON (its small
        fields only, read off the event loop when large; its files never decoded)."""
        if kind == videos.VEO:
            body = await self._meter._request_json(flow, state)
            route = state.route or flow.request.path
            return videos.read_veo(state.provider.request_model(route, None) or "", body)
        content_type = flow.request.headers.get("content-type", "")
        try:
            content = await self._off_loop(
                self._decoded_content, flow.request, len(flow.request.raw_content or b"")
            )
        except ValueError as exc:
            return videos.VideoJob(kind, problem=f"request body: {exc}")
        read = functools.partial(videos.read_openai, kind, content_type=content_type)
        return await self._off_loop(read, content)

    async def request(self, flow: http.HTTPFlow, state: CallState, kind: str) -> None:
        """A video generation request (addon.providers.videos): what it asks for is read (a form's
        small fields only, its files never decoded), its price reserved against the budgets and its
        model held to the allowlist. A disallowed model is refused, never downgraded (a job is not
        rewritten). A request that cannot be read passes, its row saying why (unless models are
        restricted and its model is what cannot be read: refused, failing closed)."""
        meter = self._meter
        await meter._attribute(state)
        record = state.record
        provider = state.provider
        route = state.route or flow.request.path
        job = await self.read_job(flow, state, kind)
        if job.problem is not None:
            state.errors.append(f"video request: {job.problem}")
        # A remix, an edit or an extension of a video created here runs on that video's model (held
        # to the allowlist as if named, and so is a model its body names) at its size: reserved at
        # the dearest of its readings (a form naming two different source videos: either).
        ids = job.source_ids
        if kind == videos.REMIX:
            remixed = videos.remixed_id(route)
            ids = (remixed,) if remixed else ()
        sources = [self._videos.get(video_id) for video_id in ids]
        readings = videos.source_readings(job, sources)
        priced = [(videos.reservation(provider.name, one), one, source) for one, source in readings]
        reserved, job, source = max(priced, key=lambda reading: reading[0])  # ties: the first
        state.video_job, state.video_source = job, source
        state.video_sources = tuple(one for one in sources if one is not None) if None not in sources else ()
        record.model_requested = record.model_sent = job.model
        record.answers = job.count if job.count > 1 else None
        decision = meter._decide(state, job.model, lambda _model: reserved)
        what = f"{record.path[:120]} starts a video job"
        unknown_source = len(ids) > 1 and None in sources
        if decision.refusal is None and unknown_source:
            reason = f"it names several source videos, not all made here, so its model cannot be told; {what}"
            decision = meter.decider.unknown_model(record, decision, reason) or decision
        elif decision.refusal is None and job.model is None and kind in (videos.CREATE, videos.VEO):
            reason = f"its model could not be read ({job.problem}); {what}"
            decision = meter.decider.unknown_model(record, decision, reason) or decision
        elif decision.action == "downgraded" and job.model is not None:
            reason = f"{what}, which is never rewritten: refused instead of downgraded"
            decision = meter.decider.refuse_instead(decision, record, job.model, reason)
        for other in dict.fromkeys(one.model for one, _ in readings if one.model not in (None, job.model)):
            if decision.refusal is not None or other is None:
                break
            if meter.enforcer.decide_model(record.provider, record.environment, other).action != "allowed":
                reason = f"{what}, which may run on {other} (its source video's model or the one it names)"
                decision = meter.decider.refuse_instead(decision, record, other, reason)
                record.model_requested = other
        meter._answer_if_refused(flow, state, decision)

    def finish(self, flow: http.HTTPFlow, state: CallState, *, aborted: bool) -> None:
        """A video request is answered: its row, stored as ``Meter._finish`` stores a call's
        (whatever raises, the row is still stored and its reservation settled, once: a job that may
        have been accepted billed as asked)."""
        self._meter._finish(
            flow,
            state,
            Metered(),
            aborted=aborted,
            now=True,
            fill=self._row,
            despite=self._row_despite_failure,
        )

    def _billed_as_asked(self, flow: http.HTTPFlow, state: CallState) -> bool:
        """Whether a video call whose row could not be built may have started a job the provider
        bills: accepted (2xx), or sent and not answered; not refused, not on a flat-fee plan."""
        response = flow.response
        if state.video_job is None or state.refusal is not None or state.subscription:
            return False
        if response is not None:
            return 200 <= response.status_code < 300
        return not self._never_sent(flow, state)

    def _row_despite_failure(self, flow: http.HTTPFlow, state: CallState, metered: Metered) -> FinishedRow:
        """A video call's row when building it raised: as ``Meter._row_despite_failure``, and a job
        that may have been accepted billed as asked (the request's reading, as a job with no answer
        is), never the $0 of a call without tokens, and remembered by the id its answer gives as
        ``_row`` does; else not billed."""
        ready = self._meter._row_despite_failure(flow, state, metered)
        record = ready.record
        try:
            job = state.video_job
            if job is not None and self._billed_as_asked(flow, state):
                asked = videos.settled(job, None)  # the videos billed (Veo: its sampleCount)
                found = videos.price_job(record.provider, asked)
                record.cost_usd = found.cost_usd
                record.price_status = PRICED if found.cost_usd is not None else UNKNOWN_MODEL
                record.price_source = found.note
                record.answers = asked.count if asked.count > 1 else None
                # Billed as asked, but known by its id to what remixes or extends it, as any job.
                answered = self._answered(flow, job)
                self._remember(
                    answered, videos.settled(job, answered, state.video_source, state.video_sources)
                )
            else:
                record.cost_usd, record.price_status, record.price_source = Decimal(0), NOT_BILLED, None
            # The model it ran on, or was refused for: under its family, as a priced row's.
            record.price_model = videos.model_family(record.provider, record.model_requested)
        except Exception:
            log.exception("tokometer: billing video call %s as asked failed", record.id)
        return ready

    @staticmethod
    def _answered(flow: http.HTTPFlow, job: videos.VideoJob) -> videos.VideoJob | None:
        """The job an OpenAI video call's answer describes (``read_openai_job``); None without an
        answer, for Veo (an operation), or when the answer is no video job."""
        if flow.response is None or job.kind == videos.VEO:
            return None
        try:
            return videos.read_openai_job(job.kind, content_of(flow.response) or b"")
        except ValueError:
            return None

    def _remember(self, answered: videos.VideoJob | None, billed: videos.VideoJob) -> None:
        """Remember a job by the id its answer gives (``billed``: its model and size; its whole
        length, an extension's stitched total), so a remix, edit or extension of it reserves at its
        price and is held to the allowlist as its model. The oldest is forgotten past
        ``MAX_REMEMBERED_VIDEOS``."""
        if answered is None or answered.video_id is None:
            return
        if len(self._videos) >= MAX_REMEMBERED_VIDEOS:
            self._videos.pop(next(iter(self._videos)))  # the oldest
        self._videos[answered.video_id] = dataclasses.replace(
            billed, seconds=answered.seconds or billed.seconds
        )

    def _row(self, flow: http.HTTPFlow, state: CallState, metered: Metered, *, aborted: bool) -> FinishedRow:
        """A video call's row: a job accepted (2xx) is billed at once, at what the answer says of
        it (OpenAI's job: model, seconds, size; an extension's new segment) over what the request
        asked; any other answer (an error, a redirect), a refusal or a request that never went out
        is not billed (its reservation withdrawn). No answer after the request went out: billed
        as asked (the job may have been accepted)."""
        record = state.record
        errors = state.errors
        self._meter._fill_record(flow, state, Metered(), errors, aborted=aborted)
        response = flow.response
        job = state.video_job
        if (
            job is None
            or state.refusal is not None
            or record.price_status == NOT_BILLED  # never reached upstream
            or (response is not None and not 200 <= response.status_code < 300)  # no job accepted
        ):
            record.cost_usd, record.price_status, record.price_source = Decimal(0), NOT_BILLED, None
            # The model asked for (or refused): under its family, as a priced row's.
            record.price_model = videos.model_family(record.provider, record.model_requested)
        elif not state.subscription:
            answered = self._answered(flow, job)
            if response is None:
                errors.append("no answer (the job may have been accepted): billed as asked")
            elif job.kind != videos.VEO and answered is None:
                errors.append("the answer is no video job: billed as asked")
            billed = videos.settled(job, answered, state.video_source, state.video_sources)
            record.model_reported = answered.model if answered is not None else None
            self._remember(answered, billed)
            found = videos.price_job(record.provider, billed)
            record.cost_usd = found.cost_usd
            record.price_status = PRICED if found.cost_usd is not None else UNKNOWN_MODEL
            # Priced or not, under its family: a report shows one model once.
            record.price_source = found.note
            record.price_model = found.price_model or videos.model_family(record.provider, billed.model)
            record.answers = billed.count if billed.count > 1 else None
        record.error = "; ".join(errors)[:1000] if errors else None
        return self._meter._row_as_filled(state)
