"""Fallback model lists a request may name, each entry a model the provider (or gateway) may run.

OpenRouter's ``models`` list first of all (the module's origin), and the others read the same way.

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
tried in order and ahead of ``model``: read the same way (``fallback_models``). A LiteLLM gateway
(a ``providers:`` host on the OpenAI API) reads its own fallback lists from the body
(``litellm_fallbacks``: names, objects whose members override the request's, router-format
mappings, nested lists). An OpenRouter ``preset`` field (a preset's settings shallow-merged under
the request's: its fallback models and tools among them) makes a list that cannot be read whole
(``with_preset``). Pure functions of the decoded JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from addon.model_rules import PRESET_MARK, preset_reason
from addon.providers import advisors

FIELD = "models"
PRESET_FIELD = "preset"  # OpenRouter's preset beside the request's model: {"model": ..., "preset": slug}
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
    # Where each of ``models`` is written, as a path of keys and indices from the body (a
    # LiteLLM gateway's lists, read by ``litellm_fallbacks``); empty: as ``in_objects`` says.
    places: tuple[tuple[str | int, ...], ...] = ()
    # The output caps, answer counts and tools each of ``models`` runs with where its fallback
    # object, or one before it in its list, sets its own (LiteLLM copies an object's members over
    # the call's, and they stay for the list's later entries), by index:
    # ((index, ((field, value), ...)), ...). A cap of None: uncapped.
    hop_caps: tuple[tuple[int, tuple[tuple[str, Any], ...]], ...] = ()
    # Where each fallback object that sets its own ``tools`` is written (a path of keys and
    # indices from the body): its image tools are held to the allowlist as the request's are.
    tool_objects: tuple[tuple[str | int, ...], ...] = ()
    # Whether ``models`` run one after another as hops of one call, each of which may bill
    # (Anthropic's server-side chain: ``anthropic_api.fallback_models``), not as a list of which
    # one model answers (OpenRouter's, LiteLLM's). Set by the reader of the list.
    chain: bool = False


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


def with_preset(found: Fallbacks | None, body: dict[str, Any] | None) -> Fallbacks | None:
    """``found`` (a request's fallback lists as read), unreadable when the request's ``preset``
    field cannot be read as the model it stands for (``model_with_preset``: a slug OpenRouter would
    merge under the request's settings, its fallback ``models`` and tools among them). A readable
    one is checked and reserved as the model ``m@preset/slug`` (or ``@preset/slug``). Never raises."""
    if isinstance(body, dict) and model_with_preset(body) is not None:
        return found
    return _unreadable(found, preset_error(body))


def model_with_preset(body: Any) -> str | None:
    """The model an OpenRouter request runs, its ``preset`` field folded in as OpenRouter documents
    it: ``{"model": m, "preset": s}`` is ``m@preset/s``, ``{"preset": s}`` (model is optional) is
    ``@preset/s``; without a preset, its ``model``. None when neither names one, or the fold cannot
    be made cleanly: the preset is no slug (not a string, or one with ``@`` or ``/``), or comes
    beside a model with ``@`` in it (naming a preset already, or reading as one no more once
    folded: ``m@x@preset/s``). Never raises."""
    if not isinstance(body, dict):
        return None
    model, preset = body.get("model"), body.get(PRESET_FIELD)
    if preset is None:
        return model if isinstance(model, str) else None
    if not isinstance(preset, str) or not preset.strip() or "@" in preset or "/" in preset:
        return None
    if len(preset) > MAX_MODEL_NAME or (model is not None and not isinstance(model, str)):
        return None
    if model is not None and "@" in model:
        return None
    return f"{model or ''}{PRESET_MARK}{preset}"


def requested_model(body: Any) -> str | None:
    """The model an OpenRouter request asks for, as recorded and reserved: ``model_with_preset``;
    where a ``preset`` field cannot be folded in cleanly, the preset as written after the model
    (``m@preset/a@preset/b``, ``m@preset/team/b``, ``m@x@preset/s``; a preset that is no text,
    blank or too long as ``m@preset/``): an id naming a preset that reads as no clean one, so it is
    matched only by a rule naming presets and reserved at the ceiling of a bare ``@preset/slug``
    (``model_rules.preset_model``); its lists are unreadable (``with_preset``). Never raises."""
    folded = model_with_preset(body)
    if folded is not None or not isinstance(body, dict) or body.get(PRESET_FIELD) is None:
        return folded
    model, preset = body.get("model"), body[PRESET_FIELD]
    written = isinstance(preset, str) and bool(preset.strip()) and len(preset) <= MAX_MODEL_NAME
    return f"{model if isinstance(model, str) else ''}{PRESET_MARK}{preset if written else ''}"


def preset_error(body: Any) -> str | None:
    """Why ``body`` (a request, or a fallback object copied over it) cannot be read whole when its
    ``preset`` field names an OpenRouter preset; None when it names none."""
    preset = body.get(PRESET_FIELD) if isinstance(body, dict) else None
    if preset is None:
        return None
    return preset_reason(str(preset), f"its {PRESET_FIELD} field", said_unchecked=False)


def _unreadable(found: Fallbacks | None, error: str | None) -> Fallbacks | None:
    """``found`` with ``error`` (why it cannot be read whole), unless it has one or ``error`` is None."""
    if error is None or (found is not None and found.error is not None):
        return found
    return Fallbacks(error=error) if found is None else replace(found, error=error)


PLUGINS_FIELD = advisors.PLUGINS_FIELD
FUSION_PLUGIN = advisors.FUSION_PLUGIN


def with_fusion_plugin(found: Fallbacks | None, body: dict[str, Any] | None) -> Fallbacks | None:
    """``found``, unreadable when the request's ``plugins`` has OpenRouter's ``fusion`` plugin: it
    adds the ``openrouter:fusion`` tool, whose panel and judge (its defaults OpenRouter's) run
    within the call; written as that tool in ``tools`` they are checked (addon.providers.advisors).
    Never raises."""
    return _unreadable(found, fusion_plugin_error(body))


def fusion_plugin_error(body: Any) -> str | None:
    """Why ``body`` (a request, or a fallback object copied over it) cannot be read whole when its
    ``plugins`` has OpenRouter's ``fusion`` plugin; None when it has not."""
    if advisors.fusion_plugin(body) is None:
        return None
    return (
        f"its {PLUGINS_FIELD} list has OpenRouter's {FUSION_PLUGIN} plugin, which runs a panel of "
        f"models and a judge within the call (write it as the openrouter:{FUSION_PLUGIN} tool in "
        "tools, naming its parameters.analysis_models and parameters.model)"
    )


def openrouter_lists(body: dict[str, Any] | None) -> Fallbacks | None:
    """OpenRouter's fallback lists (``openrouter_fallbacks``), its ``preset`` field
    (``with_preset``) and its ``fusion`` plugin (``with_fusion_plugin``)."""
    return with_fusion_plugin(with_preset(openrouter_fallbacks(body), body), body)


# LiteLLM's fallback lists in a request body (its router reads each: async_function_with_fallbacks).
LITELLM_FIELDS = (OBJECTS_FIELD, "context_window_fallbacks", "content_policy_fallbacks")
# How deep fallback objects naming more fallbacks (``{"model": ..., "fallbacks": [...]}``, run by
# LiteLLM as a new call that reads them in turn) are read: deeper, the lists cannot be read whole.
MAX_FALLBACK_NESTING = 4
# An object's own members that change what its hop costs (LiteLLM copies them over the call's,
# and they stay set for the later entries of its list): its output caps (chat's two, Responses'
# one) and its number of choices, each reserved for that hop. A cap written as null, or as
# anything but a positive whole number, leaves the hop uncapped (it replaces the request's).
CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# The answers an object's attempt asks for, read as the request's are (reservation.answers_asked:
# a count that is not a whole number reserves the most the API takes), so kept as written.
ANSWER_FIELDS = ("n", "best_of")
# An object's own tools replace the call's for its attempt: its advisor and sub-agent tools run
# within that hop (reserved on top of it, at their own caps, as the request's are), kept as written.
TOOL_FIELDS = ("tools",)
# Its own ``plugins`` likewise: OpenRouter's fusion plugin there (behind a gateway priced as it) runs
# a panel and judge within that hop, reserved on top of it (advisors.with_fusion_plugin_reserved).
PLUGIN_FIELDS = (PLUGINS_FIELD,)


def gateway_fallbacks(body: dict[str, Any] | None) -> Fallbacks | None:
    """A ``providers:`` gateway in front of OpenRouter (priced as it), which passes the body on:
    OpenRouter's ``models`` list, then LiteLLM's fallback lists (``litellm_fallbacks``: its
    ``fallbacks`` are OpenRouter's objects too, and an object's own ``models`` list is read as
    the request's is), and OpenRouter's ``preset`` field and ``fusion`` plugin (``with_preset``,
    ``with_fusion_plugin``). Never raises."""
    return with_fusion_plugin(with_preset(litellm_fallbacks(body, models_list=True), body), body)


def gateway_client_fallbacks(body: dict[str, Any] | None) -> Fallbacks | None:
    """LiteLLM's fallbacks on a ``providers:`` gateway speaking OpenAI's API (``litellm_fallbacks``).
    Never raises."""
    return litellm_fallbacks(body)


def litellm_fallbacks(body: dict[str, Any] | None, *, models_list: bool = False) -> Fallbacks | None:
    """Every model LiteLLM's fallback lists in a request name, which the gateway tries when the
    request's model fails (a rate limit, a timeout, a prompt too long for it, a content policy);
    only the one that answers bills. Its ``fallbacks``, ``context_window_fallbacks`` and
    ``content_policy_fallbacks`` each take model names (``["gpt-4o"]``), objects naming one whose
    other members override the request's for that attempt (``[{"model": "gpt-4o", "max_tokens":
    ...}]``: each object is read as a request of its own, ``_object_members``), or its router's
    mappings of a model group to the groups it falls back to (``[{"gpt-4o-mini": ["gpt-4o"]}]``:
    each listed group may run). With ``models_list``, OpenRouter's ``models`` list first (and an
    object's own). Where each name is written is kept (``Fallbacks.places``), and the output caps
    and ``n`` or ``best_of`` and ``tools`` an object sets for its attempt and the list's later
    entries (``Fallbacks.hop_caps``: LiteLLM's ``run_async_fallback`` copies each object over the
    one set of arguments it loops with), and where the objects setting ``tools`` are
    (``Fallbacks.tool_objects``). None when it names no list. Never raises."""
    if not isinstance(body, dict):
        return None
    listed = fallback_models(body) if models_list else None
    if listed is not None and listed.error is not None:
        return listed
    if all(body.get(name) is None for name in LITELLM_FIELDS):
        return listed
    return _read(body, listed, LITELLM_FIELDS, models_list, beside_chain=False)


def beside_anthropic_chain(body: dict[str, Any] | None, *, models_list: bool = False) -> Fallbacks | None:
    """On a ``providers:`` gateway speaking Anthropic's API, whose ``fallbacks`` is Anthropic's
    server-side chain (``anthropic_api.fallback_models``): the other lists the gateway's router
    reads (LiteLLM's ``context_window_fallbacks`` and ``content_policy_fallbacks``), and what each
    ``fallbacks`` object names of its own (nested lists, advisor tools, with ``models_list``
    OpenRouter's ``models``), read as ``litellm_fallbacks`` reads them; with ``models_list``,
    OpenRouter's ``models`` list first. None when it names none of them. Never raises."""
    if not isinstance(body, dict):
        return None
    listed = fallback_models(body) if models_list else None
    if listed is not None and listed.error is not None:
        return listed
    fields = LITELLM_FIELDS[1:]
    if all(body.get(name) is None for name in fields) and not isinstance(body.get(OBJECTS_FIELD), list):
        return listed
    read = _read(body, listed, fields, models_list, beside_chain=True)
    return read if read.models or read.error is not None or listed is not None else None


def _read(
    body: dict[str, Any],
    listed: Fallbacks | None,
    fields: tuple[str, ...],
    models_list: bool,
    *,
    beside_chain: bool,
) -> Fallbacks:
    found: list[str] = list(listed.models) if listed is not None else []
    places: list[tuple[str | int, ...]] = [(FIELD, i) for i in range(len(found))]
    caps: list[tuple[int, tuple[tuple[str, Any], ...]]] = []
    first = len(found)
    reader = _Reader(models_list, found, places, caps, [])
    error = reader.lists(body, (), (), 0, fields)
    if error is None and beside_chain:  # Anthropic's chain objects: their own members only
        for i, entry in enumerate(body.get(OBJECTS_FIELD) or ()):
            if isinstance(entry, dict):
                error = error or reader.members(entry, (OBJECTS_FIELD, i), _own(entry, ()), 1)
    tools_at = tuple(reader.tool_objects)
    return Fallbacks(tuple(found), error, len(found) - first, tuple(places), tuple(caps), tools_at)


def _own(entry: dict[str, Any], inherited: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """The cost-changing members a fallback object's hop runs with: its own, else inherited. A
    cap it writes (null included) is its hop's: None, uncapped, unless a positive whole number."""
    set_here: dict[str, Any] = {f: _cap(entry[f]) for f in CAP_FIELDS if f in entry}
    carried = (*ANSWER_FIELDS, *TOOL_FIELDS, *PLUGIN_FIELDS)
    set_here.update((f, entry[f]) for f in carried if entry.get(f) is not None)
    return tuple({**dict(inherited), **set_here}.items())


def _cap(value: Any) -> int | None:
    """An object's output cap as its hop runs with it: a positive whole number, else None (none)."""
    return value if type(value) is int and value > 0 else None


@dataclass(slots=True)
class _Reader:
    """Reads LiteLLM's fallback lists into ``found`` (with ``places``, ``caps`` and
    ``tool_objects``)."""

    models_list: bool
    found: list[str]
    places: list[tuple[str | int, ...]]
    caps: list[tuple[int, tuple[tuple[str, Any], ...]]]
    tool_objects: list[tuple[str | int, ...]]

    def add(self, model: Any, where: tuple[str | int, ...], own: tuple[tuple[str, Any], ...]) -> str | None:
        if len(self.found) >= MAX_FALLBACK_MODELS:
            return f"its fallback lists have more than {MAX_FALLBACK_MODELS} entries"
        if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
            return f"its {written(where)} is not a model name"
        if own:
            self.caps.append((len(self.found), own))
        self.found.append(model)
        self.places.append(where)
        return None

    def lists(
        self,
        body: dict[str, Any],
        path: tuple[str | int, ...],
        inherited: tuple[tuple[str, Any], ...],
        depth: int,
        fields: tuple[str, ...] = LITELLM_FIELDS,
    ) -> str | None:
        """Add the models of ``body``'s LiteLLM fallback lists (``body`` at ``path``); why they
        cannot all be read, if they cannot. An object's members stay set for the entries after it
        in its list (LiteLLM updates the one set of arguments it loops with), on top of
        ``inherited``."""
        for name in fields:
            listed = body.get(name)
            if listed is None:
                continue
            if not isinstance(listed, list):
                return f"its {written((*path, name))} list is not a list"
            carried = inherited  # what the objects so far in this list set, over ``inherited``
            for i, entry in enumerate(listed):
                where = (*path, name, i)
                error = None
                if isinstance(entry, dict) and isinstance(entry.get("model"), str):  # an object
                    carried = _own(entry, carried)
                    if entry.get("tools") is not None:
                        self.tool_objects.append(where)
                    error = self.add(entry["model"], (*where, "model"), carried)
                    error = error or self.members(entry, where, carried, depth + 1)
                elif isinstance(entry, dict) and entry and all(isinstance(v, list) for v in entry.values()):
                    # The router's {model group: [fallback groups]}: the group that fails is the key.
                    for group, groups in entry.items():
                        for j, model in enumerate(groups):
                            error = error or self.add(model, (*where, group, j), carried)
                else:
                    error = self.add(entry, where, carried)
                if error is not None:
                    return error
        return None

    def members(
        self,
        entry: dict[str, Any],
        where: tuple[str | int, ...],
        own: tuple[tuple[str, Any], ...],
        depth: int,
    ) -> str | None:
        """Add what a fallback object (at ``where``) names of its own, its members being copied
        over the call for its attempt, so read as a request's body is: OpenRouter's ``models``
        list (with ``models_list``), its advisor and sub-agent tools, its own fallback lists; in
        front of OpenRouter (``models_list``) its ``preset`` field and ``fusion`` plugin make the
        lists unreadable, as the request's own do (``with_preset``, ``with_fusion_plugin``)."""
        if self.models_list and (error := preset_error(entry) or fusion_plugin_error(entry)) is not None:
            return f"its {written(where)}: {error}"
        if self.models_list and entry.get(FIELD) is not None:
            listed = fallback_models(entry)
            assert listed is not None
            if listed.error is not None:
                return f"its {written(where)}: {listed.error}"
            for j, model in enumerate(listed.models):
                if (error := self.add(model, (*where, FIELD, j), own)) is not None:
                    return error
        tools = advisors.advisor_tools(entry, openrouter=True)
        if tools.error is not None:
            return f"its {written(where)}: {tools.error}"
        for tool in tools.tools:
            if (error := self.add(tool.model, (*where, *_advisor_place(tool)), own)) is not None:
                return error
        if any(entry.get(inner) is not None for inner in LITELLM_FIELDS):
            if depth >= MAX_FALLBACK_NESTING:
                return f"its fallback objects nest fallbacks more than {MAX_FALLBACK_NESTING} deep"
            return self.lists(entry, where, own, depth)
        return None


def _advisor_place(tool: advisors.AdvisorTool) -> tuple[str | int, ...]:
    """Where an advisor tool's model is written in its body (as ``advisors.with_advisor_models``)."""
    place: tuple[str | int, ...] = ("tools", tool.index)
    for i in tool.nest:
        place = (*place, "parameters", "tools", i)
    if not tool.openrouter:
        return (*place, "model")
    if tool.fusion and tool.profile is not None:  # an openrouter:fusion tool's panel model
        return (*place, "parameters", "analysis_models", tool.profile)
    if tool.profile is None:
        return (*place, "parameters", "model")
    return (*place, "parameters", "advisors", tool.profile, "model")


def with_fallback_models(
    body: dict[str, Any], models: list[str], found: Fallbacks | None = None
) -> dict[str, Any]:
    """A new body whose fallback lists name ``models`` (as read into ``found``: its last
    ``in_objects`` go to the ``fallbacks`` objects, each keeping its other members; the rest to
    the ``models`` list). Every other member kept."""
    if found is not None and found.places:
        new_body: dict[str, Any] = body
        for place, model in zip(found.places, models, strict=False):
            new_body = _with_at(new_body, place, model)
        return new_body
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


def object_at(body: Any, place: tuple[str | int, ...]) -> Any:
    """What ``body`` holds at ``place`` (keys and indices), or None where nothing is."""
    for key in place:
        if isinstance(body, list) and isinstance(key, int) and 0 <= key < len(body):
            body = body[key]
        elif isinstance(body, dict) and isinstance(key, str):
            body = body.get(key)
        else:
            return None
    return body


def with_at(body: dict[str, Any], place: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A new body with ``value`` at ``place`` (keys and indices, as ``Fallbacks.places``), the
    rest shared."""
    new_body: dict[str, Any] = _with_at(body, place, value)
    return new_body


def _with_at(value: Any, place: tuple[str | int, ...], model: Any) -> Any:
    """A copy of ``value`` with ``model`` at ``place`` (keys and indices), the rest shared."""
    if not place:
        return model
    key, rest = place[0], place[1:]
    if isinstance(value, list) and isinstance(key, int):
        if value[key] == model and not rest:
            return value
        copied = list(value)
        copied[key] = _with_at(value[key], rest, model)
        return copied
    assert isinstance(value, dict)
    return {**value, key: _with_at(value.get(key), rest, model)}


def written(place: tuple[str | int, ...]) -> str:
    """``place`` as a client would write it: ``fallbacks[0].fallbacks[1]``."""
    return "".join(
        f"[{key}]" if isinstance(key, int) else f".{key}" if i else key for i, key in enumerate(place)
    )
