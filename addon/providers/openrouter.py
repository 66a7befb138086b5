"""OpenRouter's model fallbacks: the ``models`` list of a request, which OpenRouter may run.

A request may name, besides (or instead of) its ``model``, a ``models`` list: when the model it
runs fails (its providers are down or rate limited, the prompt is too long for it, moderation
refuses it), OpenRouter moves on to the list's next entry; without ``model``, it starts with the
first. The legacy ``route: "fallback"`` says the same of the list. Any entry may therefore run,
so each is held to the allowlist as ``model`` is (addon.meter), on every endpoint that takes the
field (chat completions, Responses, the Anthropic-compatible ``/api/v1/messages``). That last one
also takes ``fallbacks``, the shape Anthropic's SDKs send: a list of ``{"model": ...}`` objects (at
most 3, only ``model`` in each), mapped to the same routing; it is read after ``models``
(``openrouter_fallbacks``) on every OpenRouter path, so that no list OpenRouter may run from goes
unchecked. Perplexity's Agent API (``/v1/responses``) takes the ``models`` list, of up to five,
tried in order and ahead of ``model``: read the same way (``fallback_models``). Pure functions of
the decoded JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FIELD = "models"
OBJECTS_FIELD = "fallbacks"  # OpenRouter's Messages endpoint: [{"model": ...}, ...]
MAX_FALLBACK_MODELS = 64  # entries read (a longer list cannot be checked whole)
MAX_MODEL_NAME = 256  # characters of one entry (a longer one is no model id)


@dataclass(frozen=True, slots=True)
class Fallbacks:
    """The ``models`` list of a request: the names read, in order, and why it cannot be read
    whole (an entry that is not a model name, too many entries), if it cannot."""

    models: tuple[str, ...] = ()
    error: str | None = None
    # How many of ``models`` (the last ones) come from the ``fallbacks`` objects, not ``models``.
    in_objects: int = 0


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


def openrouter_fallbacks(
    body: dict[str, Any] | None, *, names: bool = False, models_list: bool = True
) -> Fallbacks | None:
    """Every model a request's fallback lists name, in order: the ``models`` list's, then the
    ``fallbacks`` objects' (``{"model": ...}``; with ``names``, a plain model name too, as
    LiteLLM's client-side fallbacks take them), or None when it names neither. Without
    ``models_list`` the ``models`` list is not read. Never raises."""
    listed = fallback_models(body) if models_list else None
    objects = body.get(OBJECTS_FIELD) if isinstance(body, dict) else None
    if objects is None or (listed is not None and listed.error is not None):
        return listed
    found = list(listed.models) if listed is not None else []
    room = MAX_FALLBACK_MODELS - len(found)
    if not isinstance(objects, list):
        return Fallbacks(tuple(found), f"its {OBJECTS_FIELD} list is not a list")
    for i, entry in enumerate(objects):
        if i >= room:
            return Fallbacks(
                tuple(found),
                f"its {FIELD} and {OBJECTS_FIELD} lists have more than {MAX_FALLBACK_MODELS} entries",
                i,
            )
        model = entry.get("model") if isinstance(entry, dict) else entry if names else None
        if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
            return Fallbacks(tuple(found), f"entry {i + 1} of its {OBJECTS_FIELD} list names no model", i)
        found.append(model)
    return Fallbacks(tuple(found), None, len(objects))


def gateway_fallbacks(body: dict[str, Any] | None) -> Fallbacks | None:
    """A ``providers:`` gateway in front of OpenRouter (priced as it), which passes the body on:
    OpenRouter's ``models`` list and ``fallbacks`` objects, and the ``fallbacks`` model names a
    LiteLLM proxy takes (``gateway_client_fallbacks``). Never raises."""
    return openrouter_fallbacks(body, names=True)


def gateway_client_fallbacks(body: dict[str, Any] | None) -> Fallbacks | None:
    """LiteLLM's client-side fallbacks on a ``providers:`` gateway speaking OpenAI's API: the
    body's ``fallbacks``, a list of model names (``["gpt-4o"]``) or of objects naming one
    (``[{"model": "gpt-4o", "messages": [...]}]``), which the gateway tries in order when the
    request's model fails (a rate limit, a timeout); only the one that answers bills. Never
    raises."""
    return openrouter_fallbacks(body, names=True, models_list=False)


def with_fallback_models(
    body: dict[str, Any], models: list[str], found: Fallbacks | None = None
) -> dict[str, Any]:
    """A new body whose fallback lists name ``models`` (as read into ``found``: its last
    ``in_objects`` go to the ``fallbacks`` objects, each keeping its other members; the rest to
    the ``models`` list). Every other member kept."""
    objects = found.in_objects if found is not None else 0
    head, tail = models[: len(models) - objects], models[len(models) - objects :]
    new = dict(body)
    if body.get(FIELD) is not None or not objects:
        new[FIELD] = list(head)
    if objects:
        new[OBJECTS_FIELD] = [
            model if isinstance(entry, str) else {**entry, "model": model}
            for entry, model in zip(body[OBJECTS_FIELD], tail, strict=False)
        ] + list(body[OBJECTS_FIELD][objects:])
    return new
