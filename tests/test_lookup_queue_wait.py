"""The deciding wait counts a lookup's running time, not its time queued in the pool (review round 15,
finding 3), and stays bounded when hung lookups fill the pool."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from addon import client_process
from addon.client_process import NOT_IN_TIME, ClientProcess, start_lookup, wait_for_process


@pytest.fixture(autouse=True)
def own_pool() -> Iterator[None]:
    client_process._lookup_pool.cache_clear()  # no other test's lookup queued in it
    yield
    client_process._lookup_pool.cache_clear()


def taking(seconds: float, release: threading.Event | None = None) -> ClientProcess:
    if release is not None:
        release.wait(5)
    else:
        time.sleep(seconds)
    return ClientProcess(pid=1, user="alice")


async def test_a_lookup_queued_behind_others_is_waited_for_from_when_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """12 lookups of 0.1 s in 4 threads: the last 4 start at 0.2 s and answer at 0.3 s. With a
    deciding wait of 0.25 s counted from the queue (before), they were not identified in time."""
    monkeypatch.setattr(client_process, "DECIDING_LOOKUP_TIMEOUT", 0.25)
    lookups = [start_lookup(lambda: taking(0.1)) for _ in range(12)]
    found = await asyncio.gather(*(wait_for_process(lookup, 0.05, deciding=True) for lookup in lookups))
    assert [why for _, why in found] == [None] * 12
    assert all(process is not None and process.user == "alice" for process, _ in found)


async def test_hung_lookups_filling_the_pool_wedge_a_queued_one_for_twice_the_wait_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_process, "DECIDING_LOOKUP_TIMEOUT", 0.2)
    release = threading.Event()
    try:
        hung = [start_lookup(lambda: taking(0, release)) for _ in range(client_process.LOOKUP_THREADS)]
        queued = start_lookup(lambda: taking(0))
        started = time.monotonic()
        assert await wait_for_process(queued, 0.05, deciding=True) == (None, NOT_IN_TIME)
        waited = time.monotonic() - started
        assert 0.35 <= waited < 0.6, waited  # 2 x 0.2 s
        assert not any(lookup.done() for lookup in hung)
    finally:
        release.set()


async def test_a_hung_running_lookup_is_waited_for_the_deciding_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_process, "DECIDING_LOOKUP_TIMEOUT", 0.2)
    release = threading.Event()
    try:
        lookup = start_lookup(lambda: taking(0, release))
        started = time.monotonic()
        assert await wait_for_process(lookup, 0.05, deciding=True) == (None, NOT_IN_TIME)
        assert 0.15 <= time.monotonic() - started < 0.35
    finally:
        release.set()
