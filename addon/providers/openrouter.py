"""OpenRouter's model fallbacks: the ``models`` list of a request, which OpenRouter may run.

A request may name, besides (or instead of) its ``model``, a ``models`` list: when the model it
runs fails (its providers are down or rate limited, the prompt is too long for it, moderation
refuses it), OpenRouter moves on to the list's next entry; without ``model``, it starts with the
first. The legacy ``route: "fallback"`` says the same of the list. Any entry may therefore run,
so each is held to the allowlist as ``model`` is (addon.meter), on every endpoint that takes the
field (chat completions, Responses). Perplexity's Agent API (``/v1/responses``) takes the same
list, of up to five, tried in order and ahead of ``model``: read the same way. Pure functions of
the decoded JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FIELD = "models"
MAX_FALLBACK_MODELS = 64  # entries read (a longer list cannot be checked whole)
MAX_MODEL_NAME = 256  # characters of one entry (a longer one is no model id)


@dataclass(frozen=True, slots=True)
class Fallbacks:
    """The ``models`` list of a request: the names read, in order, and why it cannot be read
    whole (an entry that is not a model name, too many entries), if it cannot."""

    models: tuple[str, ...] = ()
    error: str | None = None


def fallback_models(body: dict[str, Any] | None) -> Fallbacks | None:
    """The request's ``models`` fallback list, or None when it names none (absent, null). Never
    raises."""
    if not isinstance(body, dict) or body.get(FIELD) is None:
        return None
    listed = body[FIELD]
    if not isinstance(listed, list):
        return Fallbacks(error=f"its {FIELD} fallback list is not a list")
    found: list[str] = []
    for i, entry in enumerate(listed):
        if i >= MAX_FALLBACK_MODELS:
            return Fallbacks(
                tuple(found), f"its {FIELD} fallback list has more than {MAX_FALLBACK_MODELS} entries"
            )
        if not isinstance(entry, str) or not entry.strip() or len(entry) > MAX_MODEL_NAME:
            return Fallbacks(tuple(found), f"entry {i + 1} of its {FIELD} fallback list is not a model name")
        found.append(entry)
    return Fallbacks(tuple(found))


def with_fallback_models(body: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """A new body whose ``models`` list is ``models`` (every other member kept)."""
    return {**body, FIELD: list(models)}
