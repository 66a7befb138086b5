"""Request-rate limits: an exact sliding window of 60 seconds per scope.

A request at time ``t`` counts against the requests in ``(t - 60, t]``: a request
made exactly 60 s ago no longer counts. Only allowed requests are counted.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from collections.abc import Sequence

from addon.policies import Policies, RateLimit, normalize_environment

WINDOW_S = 60.0
SWEEP_EVERY_S = 60.0  # how often idle scopes are forgotten


def scope_key(kind: str, name: str) -> str:
    """The limiter key of a scope, e.g. ``environment:development`` or ``key:ci-openai``."""
    return f"{kind}:{name}"


def limits_for(
    policies: Policies, environment: str | None, key_name: str | None = None, user_name: str | None = None
) -> list[tuple[str, RateLimit]]:
    """The ``(scope key, limit)`` pairs that apply to one call: its environment, key and user."""
    found: list[tuple[str, RateLimit]] = []
    if environment:
        env = policies.environment(environment)
        if env.rate_limit is not None:
            found.append((scope_key("environment", normalize_environment(environment)), env.rate_limit))
    if key_name:
        key = policies.key_named(key_name)
        if key is not None and key.rate_limit is not None:
            found.append((scope_key("key", key_name), key.rate_limit))
    if user_name:
        user = policies.users.get(user_name)
        if user is not None and user.rate_limit is not None:
            found.append((scope_key("user", user_name), user.rate_limit))
    return found


def retry_after_seconds(wait: float) -> int:
    """A wait in seconds as a Retry-After value: rounded up, at least 1."""
    return max(1, math.ceil(wait - 1e-9))


class RateLimiter:
    """Sliding-window request counters per scope key. Thread-safe; memory stays bounded.

    Each scope holds at most its limit of timestamps; scopes idle for a whole window
    are forgotten.
    """

    def __init__(self, window: float = WINDOW_S) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep: float | None = None

    def __len__(self) -> int:
        """How many scopes are tracked now."""
        return len(self._hits)

    def _wait(self, hits: deque[float], limit: int, now: float) -> float | None:
        """Seconds until one more request fits under ``limit``, or None if it fits now (lock held)."""
        horizon = now - self.window
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) < limit:
            return None
        # The count drops under the limit when the (len - limit + 1)-th oldest expires.
        return hits[len(hits) - limit] + self.window - now

    def check_and_record(self, scope_key: str, limit: RateLimit, now: float) -> float | None:
        """None: allowed and counted; else the seconds until a slot frees (nothing counted)."""
        return self.check_and_record_many([(scope_key, limit)], now)

    def refusing(self, limits: Sequence[tuple[str, RateLimit]], now: float) -> tuple[str, RateLimit] | None:
        """The scope that refuses a call now (the one with the longest wait), without counting it."""
        with self._lock:
            worst: tuple[float, tuple[str, RateLimit]] | None = None
            for key, limit in limits:
                hits = self._hits.get(key)
                wait = None if hits is None else self._wait(hits, limit.requests_per_minute, now)
                if wait is not None and (worst is None or wait > worst[0]):
                    worst = (wait, (key, limit))
            return None if worst is None else worst[1]

    def check_and_record_many(self, limits: Sequence[tuple[str, RateLimit]], now: float) -> float | None:
        """All-or-nothing over several scopes: counted in all of them only if each allows it.

        Returns None when allowed, else the longest wait among the scopes that refuse.
        """
        if not limits:
            return None
        with self._lock:
            self._sweep(now)
            longest: float | None = None
            for key, limit in limits:
                hits = self._hits.get(key)
                if hits is None:
                    continue
                wait = self._wait(hits, limit.requests_per_minute, now)
                if wait is not None and (longest is None or wait > longest):
                    longest = wait
            if longest is not None:
                return longest
            for key, _ in limits:
                self._hits.setdefault(key, deque()).append(now)
            return None

    def forget(self, keys: Sequence[str], when: float) -> None:
        """Take back one request counted at ``when`` in each of ``keys`` (it was refused after all)."""
        with self._lock:
            for key in keys:
                hits = self._hits.get(key)
                if hits is not None:
                    with contextlib.suppress(ValueError):  # gone already: out of the window
                        hits.remove(when)

    def _sweep(self, now: float) -> None:
        """Forget scopes whose newest request left the window (at most once per SWEEP_EVERY_S)."""
        if self._next_sweep is not None and now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        horizon = now - self.window
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= horizon]:
            del self._hits[key]
