"""The sliding 60-second window: its edges, Retry-After values, all-or-nothing, bounded memory."""

from __future__ import annotations

import pytest

from addon.policies import RateLimit, parse_policies
from addon.rate_limits import (
    RateLimiter,
    limits_for,
    retry_after_seconds,
    scope_key,
)

THREE = RateLimit(requests_per_minute=3)


def test_the_window_edges() -> None:
    limiter = RateLimiter()
    assert [limiter.check_and_record("env:dev", THREE, t) for t in (0.0, 1.0, 2.0)] == [None, None, None]
    assert limiter.check_and_record("env:dev", THREE, 3.0) == pytest.approx(57.0)
    assert limiter.check_and_record("env:dev", THREE, 59.5) == pytest.approx(0.5)
    # exactly 60 s after the first request its slot is free again
    assert limiter.check_and_record("env:dev", THREE, 60.0) is None
    # the window now holds 1.0, 2.0, 60.0: the next slot frees at 61.0
    assert limiter.check_and_record("env:dev", THREE, 60.5) == pytest.approx(0.5)
    assert limiter.check_and_record("env:dev", THREE, 61.0) is None
    assert limiter.check_and_record("env:dev", THREE, 61.0) == pytest.approx(1.0)
    assert limiter.check_and_record("env:dev", THREE, 62.0) is None


def test_refused_requests_are_not_counted() -> None:
    limiter = RateLimiter()
    one = RateLimit(requests_per_minute=1)
    assert limiter.check_and_record("k", one, 100.0) is None
    for t in (110.0, 120.0, 159.9):
        assert limiter.check_and_record("k", one, t) == pytest.approx(160.0 - t)
    assert limiter.check_and_record("k", one, 160.0) is None


def test_scopes_are_independent() -> None:
    limiter = RateLimiter()
    one = RateLimit(requests_per_minute=1)
    assert limiter.check_and_record(scope_key("environment", "development"), one, 0.0) is None
    assert limiter.check_and_record(scope_key("key", "ci"), one, 0.0) is None
    assert limiter.check_and_record(scope_key("environment", "development"), one, 1.0) == pytest.approx(59.0)
    assert scope_key("key", "ci") == "key:ci"


def test_many_scopes_all_or_nothing_and_the_longest_wait() -> None:
    limiter = RateLimiter()
    env = ("environment:development", RateLimit(requests_per_minute=10))
    key = ("key:ci", RateLimit(requests_per_minute=2))
    assert limiter.check_and_record_many([env, key], 0.0) is None
    assert limiter.check_and_record_many([env, key], 5.0) is None
    # the key is full: refused, and the environment does not count it
    assert limiter.check_and_record_many([env, key], 10.0) == pytest.approx(50.0)
    for t in range(8):
        assert limiter.check_and_record("environment:development", env[1], 11.0 + t) is None
    assert limiter.check_and_record("environment:development", env[1], 20.0) == pytest.approx(40.0)
    assert limiter.check_and_record_many([], 0.0) is None


def test_many_scopes_report_the_longest_wait() -> None:
    limiter = RateLimiter()
    one, two = RateLimit(requests_per_minute=1), RateLimit(requests_per_minute=2)
    assert limiter.check_and_record("key:ci", two, 0.0) is None
    assert limiter.check_and_record("key:ci", two, 20.0) is None
    assert limiter.check_and_record("environment:staging", one, 10.0) is None
    # the key frees a slot at 60, the environment at 70: wait for both
    assert limiter.check_and_record_many(
        [("key:ci", two), ("environment:staging", one)], 30.0
    ) == pytest.approx(40.0)


def test_a_lowered_limit_waits_for_enough_slots() -> None:
    limiter = RateLimiter()
    for t in range(5):
        assert limiter.check_and_record("k", RateLimit(requests_per_minute=5), float(t)) is None
    # now only 2 per minute: 5 in the window, the count drops under 2 when the 4th (t=3) expires
    assert limiter.check_and_record("k", RateLimit(requests_per_minute=2), 10.0) == pytest.approx(53.0)


def test_retry_after_seconds() -> None:
    assert [retry_after_seconds(w) for w in (57.0, 56.2, 0.001, 0.0, 59.999, 1.0000000001)] == [
        57,
        57,
        1,
        1,
        60,
        1,
    ]


def test_memory_is_bounded() -> None:
    limiter = RateLimiter()
    limit = RateLimit(requests_per_minute=2)
    for i in range(1000):
        limiter.check_and_record(f"user:{i}", limit, float(i) / 100)  # 1000 scopes within 10 s
    assert len(limiter) == 1000
    for t in range(100):
        limiter.check_and_record("user:busy", limit, 20.0 + t / 10)
    assert len(limiter._hits["user:busy"]) == 2  # never more than the limit
    limiter.check_and_record("user:late", limit, 75.0)  # all of 0..10 s left the window
    assert len(limiter) == 2
    assert sorted(limiter._hits) == ["user:busy", "user:late"]


def test_limits_for_a_call() -> None:
    policies = parse_policies(
        """\
environments:
  development: {rate_limit: {requests_per_minute: 10}}
  production: {}
keys:
  ci: {last4: "abcd", rate_limit: {requests_per_minute: 30}}
  laptop: {last4: "wxyz"}
users:
  bob: {rate_limit: {requests_per_minute: 5}}
"""
    )
    assert limits_for(policies, "dev", "ci", "bob") == [
        ("environment:development", RateLimit(10)),
        ("key:ci", RateLimit(30)),
        ("user:bob", RateLimit(5)),
    ]
    assert limits_for(policies, "production", "laptop", "alice") == []
    assert limits_for(policies, "qa", None, None) == []
    assert limits_for(policies, None) == []
