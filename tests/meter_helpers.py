"""What the Meter unit tests share: a store that collects records, a request flow, running a request.

Imported as a top-level module (conftest puts tests/ on ``sys.path``); ``tests/test_meter.py``
re-exports these names for the tests that import them from there.
"""

from __future__ import annotations

import json

from mitmproxy import http
from mitmproxy.test import tflow

from addon.budgets import Event
from addon.meter import Meter
from addon.record import CallRecord

OPENAI_KEY = "sk-test-abcdefghijklmnopqrstuvwxyz0123"


class CollectingStore:
    """Stands in for addon.store.Store: keeps submitted records (and the ids journaled ahead)."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []
        self.journaled: list[str] = []
        self.events: list[Event] = []

    def journal(self, record: CallRecord) -> None:
        self.journaled.append(record.id)

    def submit(self, record: CallRecord) -> None:
        self.records.append(record)

    def submit_event(self, event: Event) -> None:
        self.events.append(event)

    def request_refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_flow(
    url: str, body: bytes | dict, *, method: str = "POST", headers: dict | None = None
) -> http.HTTPFlow:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", "authorization": f"Bearer {OPENAI_KEY}", **(headers or {})}
    flow = tflow.tflow(req=http.Request.make(method, url, content, hdrs))
    flow.request.timestamp_start = 1_764_321_600.0
    return flow


def on_kept_alive_connection(flow: http.HTTPFlow) -> http.HTTPFlow:
    """``flow`` on a kept-alive upstream connection, still open: set up a minute before its request
    started, for an earlier one (tflow's server connection was closed in the year 2000, before any
    request here: it carried none of them)."""
    start = flow.request.timestamp_start
    server = flow.server_conn
    server.timestamp_start, server.timestamp_tcp_setup = start - 60.2, start - 60.1
    server.timestamp_tls_setup, server.timestamp_end = start - 60.0, None
    return flow


async def run_request(meter: Meter, flow: http.HTTPFlow) -> None:
    meter.requestheaders(flow)
    await meter.request(flow)
