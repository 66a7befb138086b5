"""The provider registry: which hosts are LLM APIs, and which parser reads each.

Each provider family is a pure module (request/response bytes in, normalised
usage out); this registry only ties hosts and paths to them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from addon.providers import anthropic_api, openai_api
from addon.sse import SSEEvent
from addon.usage import Metered


class StreamParser(Protocol):
    """Incremental reader of one provider's Server-Sent Events."""

    def feed(self, event: SSEEvent) -> None: ...

    def result(self) -> Metered: ...


@dataclass(frozen=True, slots=True)
class Provider:
    """One LLM API family on a set of hosts."""

    name: str  # also the genai-prices provider id
    hosts: tuple[str, ...]
    flavor_for_path: Callable[[str], str | None]
    parse_response: Callable[[str, bytes], Metered]
    stream_parser: Callable[[str], StreamParser]
    # Request headers that carry the API key, in order of preference.
    key_headers: tuple[str, ...] = ("authorization",)
    # Flavors whose streams report usage only when asked (OpenAI chat's stream_options).
    usage_opt_in_flavors: frozenset[str] = frozenset()
    is_usage_only_chunk: Callable[[SSEEvent], bool] | None = None


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        name="openai",
        hosts=("api.openai.com",),
        flavor_for_path=openai_api.flavor_for_path,
        parse_response=openai_api.parse_response,
        stream_parser=openai_api.StreamParser,
        key_headers=("authorization",),
        usage_opt_in_flavors=frozenset({"chat"}),
        is_usage_only_chunk=openai_api.is_usage_only_chunk,
    ),
    Provider(
        name="anthropic",
        hosts=("api.anthropic.com",),
        flavor_for_path=anthropic_api.flavor_for_path,
        parse_response=anthropic_api.parse_response,
        stream_parser=anthropic_api.StreamParser,
        key_headers=("x-api-key", "authorization"),
    ),
)

_BY_HOST: dict[str, Provider] = {host: p for p in PROVIDERS for host in p.hosts}


def provider_for_host(host: str) -> Provider | None:
    """The provider serving ``host`` (case-insensitive, no port), if any."""
    return _BY_HOST.get(host.lower().rstrip("."))


def allow_host_patterns(port: int = 443) -> list[str]:
    """Anchored ``allow_hosts`` regexes for every provider host on ``port``."""
    return [f"^{re.escape(host)}:{port}$" for p in PROVIDERS for host in p.hosts]
