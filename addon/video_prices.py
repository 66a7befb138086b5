"""Prices per second of generated video (OpenAI's Sora, Google's Veo): genai-prices 0.2.3 has none.

A typed table, each rate with its source and the date it was read. A rate applies to a model's
base name (a dated snapshot, ``sora-2-2025-12-08``, ``veo-3.1-generate-001``, folds into its
family) at a resolution class and, for Veo on Vertex AI, with or without generated audio. A model,
size or resolution the table does not list has no price (never $0): the caller records it unknown.

Sources (read 2026-11-29; the providers' own pages are not in this machine's search corpus, so the
rates were taken from several third-party copies of them that agree, and from openai-python 3.57's
and google-genai's parameter docs for the allowed values):
- OpenAI, openai.com/api/pricing "Video": sora-2 $0.10/s (720x1280, 1280x720); sora-2-pro $0.30/s
  (720x1280, 1280x720), $0.50/s (1024x1792, 1792x1024).
- Gemini API, ai.google.dev/gemini-api/docs/pricing: Veo 3.1 and Veo 3 $0.40/s, their Fast
  variants $0.15/s (720p, 1080p; audio always generated: the Gemini API takes no generateAudio);
  Veo 3.1 at 4k $0.60/s, Veo 3.1 Fast at 4k $0.35/s; Veo 2 $0.35/s (no audio, 720p).
- Vertex AI, cloud.google.com/vertex-ai/generative-ai/pricing: Veo 3.1 and Veo 3 $0.40/s with
  audio, $0.20/s without; Fast $0.15/s with, $0.10/s without; 4k (3.1): $0.60 / $0.40, Fast $0.35 /
  $0.30; Veo 2 $0.50/s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

SOURCE = "tokometer video prices 2026-11-29"
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # sora-2-2025-12-08
_VEO_VERSION = re.compile(r"-(?:generate|preview|\d{3})(?:-.*)?$")  # veo-3.1-fast-generate-001

# OpenAI: (model, size) -> USD per second
_SORA: dict[tuple[str, str], Decimal] = {
    ("sora-2", "720x1280"): Decimal("0.10"),
    ("sora-2", "1280x720"): Decimal("0.10"),
    ("sora-2-pro", "720x1280"): Decimal("0.30"),
    ("sora-2-pro", "1280x720"): Decimal("0.30"),
    ("sora-2-pro", "1024x1792"): Decimal("0.50"),
    ("sora-2-pro", "1792x1024"): Decimal("0.50"),
}
# The dearest second OpenAI sells: what a request that names no model or size (a remix, an edit,
# an extension: its source video's) reserves per second.
SORA_CEILING = max(_SORA.values())

# Veo: (price place, family, resolution class, audio) -> USD per second. Resolution classes:
# "hd" (720p, 1080p: one rate) and "4k". Veo 2 has no audio and no resolution parameter.
_HD, _4K = "hd", "4k"
_VEO: dict[tuple[str, str, str, bool], Decimal] = {
    ("google", "veo-3.1", _HD, True): Decimal("0.40"),
    ("google", "veo-3.1", _4K, True): Decimal("0.60"),
    ("google", "veo-3.1-fast", _HD, True): Decimal("0.15"),
    ("google", "veo-3.1-fast", _4K, True): Decimal("0.35"),
    ("google", "veo-3.0", _HD, True): Decimal("0.40"),
    ("google", "veo-3.0-fast", _HD, True): Decimal("0.15"),
    ("google", "veo-2.0", _HD, False): Decimal("0.35"),
    ("vertex", "veo-3.1", _HD, True): Decimal("0.40"),
    ("vertex", "veo-3.1", _HD, False): Decimal("0.20"),
    ("vertex", "veo-3.1", _4K, True): Decimal("0.60"),
    ("vertex", "veo-3.1", _4K, False): Decimal("0.40"),
    ("vertex", "veo-3.1-fast", _HD, True): Decimal("0.15"),
    ("vertex", "veo-3.1-fast", _HD, False): Decimal("0.10"),
    ("vertex", "veo-3.1-fast", _4K, True): Decimal("0.35"),
    ("vertex", "veo-3.1-fast", _4K, False): Decimal("0.30"),
    ("vertex", "veo-3.0", _HD, True): Decimal("0.40"),
    ("vertex", "veo-3.0", _HD, False): Decimal("0.20"),
    ("vertex", "veo-3.0-fast", _HD, True): Decimal("0.15"),
    ("vertex", "veo-3.0-fast", _HD, False): Decimal("0.10"),
    ("vertex", "veo-2.0", _HD, False): Decimal("0.50"),
}
_RESOLUTIONS = {"720p": _HD, "1080p": _HD, "4k": _4K}


def veo_ceiling(place: str) -> Decimal:
    """The dearest second of Veo sold where it runs (``google``, ``vertex``): what a Veo job at a
    model, resolution or audio the table lacks reserves per second (as ``SORA_CEILING``)."""
    return max(rate for (where, *_), rate in _VEO.items() if where == place)


@dataclass(frozen=True, slots=True)
class VideoRate:
    """A price per second of video, and the family and class it is listed under."""

    usd_per_second: Decimal
    priced_as: str  # e.g. "sora-2-pro 1792x1024", "veo-3.1-fast 1080p with audio"
    family: str  # the model it is listed under: "sora-2-pro", "veo-3.1-fast"


def sora_family(model: str) -> str:
    """``sora-2-2025-12-08`` -> ``sora-2`` (a dated snapshot at its family's price)."""
    return _DATED.sub("", model.strip().lower())


def veo_family(model: str) -> str:
    """``veo-3.1-fast-generate-preview`` -> ``veo-3.1-fast``; ``veo-3.0-generate-001`` -> ``veo-3.0``."""
    name = model.strip().lower().removeprefix("models/")
    return _VEO_VERSION.sub("", name)


def sora_rate(model: str, size: str) -> VideoRate | None:
    """OpenAI's price per second of ``model`` at ``size`` (``1280x720``), or None if unlisted."""
    family = sora_family(model)
    rate = _SORA.get((family, size.strip().lower()))
    return VideoRate(rate, f"{family} {size.strip().lower()}", family) if rate is not None else None


def veo_rate(place: str, model: str, resolution: str, audio: bool) -> VideoRate | None:
    """Google's price per second of ``model`` where it runs (``google``: the Gemini API, where audio
    is always generated; ``vertex``), at ``resolution`` (``720p``, ``1080p``, ``4k``), with or
    without audio; None if unlisted."""
    family = veo_family(model)
    grade = _RESOLUTIONS.get(resolution.strip().lower())
    if grade is None:
        return None
    if family.startswith("veo-2"):
        audio = False  # Veo 2 generates none (and the Gemini API bills none)
    elif place == "google":
        audio = True
    rate = _VEO.get((place, family, grade, audio))
    if rate is None:
        return None
    sound = "with audio" if audio else "without audio"
    return VideoRate(rate, f"{family} {resolution.strip().lower()} {sound}", family)
