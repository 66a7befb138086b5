"""The context a stateful call carries from earlier ones, for its budget reservation.

An OpenAI Responses request naming ``previous_response_id`` (or a ``conversation``), or a Gemini
Interactions request naming ``previous_interaction_id``, is billed for the whole history the
provider keeps for it, as input, though its own body holds only the new turn. Reserved at the
body's size alone, such a call reserved a few tokens of a bill of thousands, so many of them in
flight together overshot a budget by far more than one call's cost.

Each such answer metered here is remembered (in memory, the most recent ``MAX_CONTEXTS``) by its
id with the tokens a continuation of it carries: its input (cached tokens included) and its
output, its reasoning included: OpenAI passes a response's reasoning items on to a request
continuing it with a tool's output (an agent's loop, where these chains are common), and drops
them only after a new user message, so counting them errs on the side of the cap.
A request continuing a remembered answer reserves that many input tokens more. An answer not seen
here (another proxy's, one before a restart) adds nothing: the reservation is then the body's.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from addon.usage import Usage

MAX_CONTEXTS = 10_000  # remembered ids; the oldest is forgotten first (~2 MB at most)
MAX_ID_LENGTH = 128  # longer "ids" are no provider's (theirs are ~50 characters): never kept

# The request fields naming the stored history a call continues, per API.
_CONTINUES = ("previous_response_id", "previous_interaction_id")


def conversation_of(body: dict[str, Any] | None) -> str | None:
    """The Conversations API id a Responses request adds to: a string, or ``{"id": ...}``."""
    conversation = body.get("conversation") if body else None
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    return conversation if isinstance(conversation, str) and conversation else None


def carried_tokens(usage: Usage) -> int:
    """What a continuation of an answer with ``usage`` carries as input: all of its input and the
    output the model wrote, reasoning included (kept between a tool call and its output)."""
    return max(0, usage.input_tokens) + max(0, usage.output_tokens)


class CarriedContexts:
    """Tokens of history per stored answer (and conversation) id, most recent ``MAX_CONTEXTS``."""

    def __init__(self, limit: int = MAX_CONTEXTS) -> None:
        self.limit = limit
        self._tokens: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def remember(self, answer_id: str | None, conversation: str | None, usage: Usage | None) -> None:
        """An answer metered with ``usage``: a call continuing it (its id, or the conversation its
        request added to, ``conversation_of`` a Responses request) carries that history."""
        if usage is None:
            return
        tokens = carried_tokens(usage)
        for key in (answer_id, conversation):
            if key and len(key) <= MAX_ID_LENGTH:
                self._put(key, tokens)

    def carried(self, body: dict[str, Any] | None) -> int:
        """Input tokens a request carries from history remembered here (0 when none is known)."""
        if not body:
            return 0
        found = 0
        for name in _CONTINUES:
            if isinstance(answer_id := body.get(name), str) and answer_id in self._tokens:
                found = max(found, self._tokens[answer_id])
        if (conversation := conversation_of(body)) is not None and conversation in self._tokens:
            found = max(found, self._tokens[conversation])
        return found

    def _put(self, key: str, tokens: int) -> None:
        self._tokens[key] = tokens
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.limit:
            self._tokens.popitem(last=False)
