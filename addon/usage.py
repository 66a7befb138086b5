"""Normalised token usage: the one shape every provider parser returns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, normalised across providers.

    ``input_tokens`` is ALL input: uncached, cache reads and cache writes.
    ``output_tokens`` is all billed output, reasoning included.
    Each bucket is priced exactly once: cached tokens are a subset of input,
    reasoning tokens a subset of output. ``cache_write_1h_tokens`` are the cache
    writes kept for an hour (Anthropic, Bedrock), a subset of ``cache_write_tokens`` priced
    higher; ``web_searches`` counts server-side web searches, priced per search;
    ``file_searches`` the hosted file (vector store) searches, priced per call.
    The audio and image counts are subsets too (of input, output, cache reads),
    priced at their own rates where a model has them (speech, image generation).
    ``audio_seconds`` is audio billed by its duration, not in tokens (whisper-1's
    transcriptions), priced per hour of audio.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    web_searches: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    cache_audio_read_tokens: int = 0
    file_searches: int = 0
    audio_seconds: float = 0

    @property
    def has_modalities(self) -> bool:
        """Audio or image tokens are among the counts (priced apart from text)."""
        return bool(
            self.input_audio_tokens
            or self.output_audio_tokens
            or self.input_image_tokens
            or self.output_image_tokens
            or self.cache_audio_read_tokens
        )


# The names of every count, in Usage's field order: a row's usage columns bear the same names.
USAGE_COUNTS: tuple[str, ...] = tuple(f.name for f in fields(Usage))


def add_usages(first: Usage, second: Usage) -> Usage:
    """The counts of ``first`` and ``second`` summed, bucket by bucket."""
    return Usage(**{f.name: getattr(first, f.name) + getattr(second, f.name) for f in fields(Usage)})


def subtract_usage(whole: Usage, part: Usage) -> Usage:
    """The counts of ``whole`` less those of ``part`` (a part of it), never under zero."""
    return Usage(**{f.name: max(getattr(whole, f.name) - getattr(part, f.name), 0) for f in fields(Usage)})


def consistent(usage: Usage) -> Usage:
    """``usage`` with every subset held within its total (cache reads and writes within input,
    hour-long writes within writes, reasoning and output audio or image tokens within output,
    input audio or image tokens within input, cached audio within cache reads): counts split from
    another call's (``subtract_usage``) may come apart, and a price list refuses such a usage."""
    inp, out = usage.input_tokens, usage.output_tokens
    read = min(usage.cache_read_tokens, inp)
    write = min(usage.cache_write_tokens, inp - read)
    return Usage(
        input_tokens=inp,
        cache_read_tokens=read,
        cache_write_tokens=write,
        output_tokens=out,
        reasoning_tokens=min(usage.reasoning_tokens, out),
        cache_write_1h_tokens=min(usage.cache_write_1h_tokens, write),
        web_searches=usage.web_searches,
        input_audio_tokens=min(usage.input_audio_tokens, inp),
        output_audio_tokens=min(usage.output_audio_tokens, out),
        input_image_tokens=min(usage.input_image_tokens, inp),
        output_image_tokens=min(usage.output_image_tokens, out),
        cache_audio_read_tokens=min(usage.cache_audio_read_tokens, read),
        file_searches=usage.file_searches,
        audio_seconds=usage.audio_seconds,
    )


@dataclass(frozen=True, slots=True)
class Iterations:
    """What an Anthropic answer's ``usage.iterations`` say beyond its top-level usage.

    ``served_by``: the model of its ``fallback_message`` entry, the fallback model that served the
    answer (server-side fallback), whose rates price the call. ``advisors``: the tokens of its
    ``advisor_message`` entries, summed per advisor model (None: an entry naming none), which the
    top-level usage leaves out and Anthropic bills at that model's rates: a row of their own each.
    ``declined``: the tokens of the hops that declined before the serving one (``message`` entries
    naming another model), summed per model, when the top-level usage is the sum of every hop's
    (then split off it, each priced at its own model's rates). ``compaction``: the tokens of its
    ``compaction`` entries, which the top-level usage leaves out too (already added to the call's).
    """

    served_by: str | None = None
    advisors: tuple[tuple[str | None, Usage], ...] = ()
    declined: tuple[tuple[str, Usage], ...] = ()
    compaction: Usage | None = None


@dataclass(frozen=True, slots=True)
class ToolImages:
    """What a Responses answer says of the images its ``image_generation`` tool wrote: billed by
    OpenAI apart from the text model's ``usage``, at the image model's rates (never the images).

    ``usage`` is the answer's ``tool_usage.image_gen`` (newer API versions report it; its cache
    reads, ``cached_tokens``, are a part of its input); without it the images are counted from
    ``images``, the quality and size each image call says it used, and ``partial_images``, the
    partial images a stream sent. ``model`` is the tool's model as the answer echoes its
    ``tools``. ``from_events``: read from a stream's image events, its final event never seen.
    """

    images: tuple[tuple[str | None, str | None], ...] = ()
    failed: int = 0  # image calls that ended without an image
    partial_images: int = 0
    usage: Usage | None = None
    cached_tokens: int = 0
    model: str | None = None
    from_events: bool = False
    # The SVG author model's tokens (each image call's ``svg_usage``), summed per model: billed at
    # that (text) model's rates, on a row of their own.
    svg: tuple[tuple[str, Usage], ...] = ()

    @property
    def images_billed(self) -> bool:
        """Images that OpenAI bills: an image, a partial image, or image tokens reported."""
        reported = self.usage is not None and bool(self.usage.input_tokens or self.usage.output_tokens)
        return bool(self.images or self.partial_images or reported)

    @property
    def billed(self) -> bool:
        """Anything here that OpenAI bills: images (``images_billed``) or SVG author tokens."""
        return self.images_billed or bool(self.svg)


@dataclass(slots=True)
class Metered:
    """What a parser learned from a response: usage, the reported model, problems."""

    usage: Usage | None = None
    model: str | None = None
    error: str | None = None
    # A cost the provider itself reported for the call (OpenRouter's usage.cost, xAI's ticks), in USD.
    provider_cost: Decimal | None = None
    # The service tier the provider says served the call (OpenAI's "flex", "priority"...): its price.
    service_tier: str | None = field(default=None, compare=False)
    # Where inference ran, when the provider says (Anthropic's usage.inference_geo: "us", "global").
    inference_geo: str | None = field(default=None, compare=False)
    # An OpenAI Responses object's id and status, when the body is one (background mode: the
    # POST answers "queued", the usage comes with a later GET of that id).
    response_id: str | None = field(default=None, compare=False)
    response_status: str | None = field(default=None, compare=False)
    # The id of a stored answer a later request may continue (an OpenAI Responses object's, a
    # Gemini interaction's), in any mode: its history is billed again as that request's input.
    context_id: str | None = field(default=None, compare=False)
    # The completion text seen, kept in memory only (never stored), for an offline token
    # estimate when the provider reports no usage (an aborted stream, say). None if not collected.
    output_text: str | None = field(default=None, compare=False)
    # ``usage`` was reported before the end of a stream that never sent its final count (Anthropic's
    # message_start, whose output_tokens is a placeholder; a running count): its input and cache
    # counts stand, its output is a floor. ``output_text`` then holds the text seen, for an
    # offline count of the output (the row is marked estimated).
    output_partial: bool = field(default=False, compare=False)
    # A Responses answer's image_generation tool calls (their images are billed apart), if any.
    tool_images: ToolImages | None = field(default=None, compare=False)
    # An Anthropic answer's usage.iterations: the models besides the call's that it ran (an
    # advisor, a fallback), if any entry says more than the top-level usage.
    iterations: Iterations | None = field(default=None, compare=False)
