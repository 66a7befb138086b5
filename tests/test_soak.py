"""Soak with faults: many concurrent LLM calls through a real mitmdump that is killed with SIGKILL.

Clients (asyncio + h11, one keep-alive connection per worker and host, CONNECT through the
proxy, TLS trusting mitmproxy's CA) make OpenAI Chat/Responses and Anthropic Messages calls,
streaming and not, against the fake provider, while ``python -m addon.spend summary --json``
queries the database in a loop and the proxy is killed with ``kill -9`` at random moments and
restarted on the same database and port. A failed attempt (connection refused or reset, an
incomplete body or stream, a non-200) is retried as a NEW attempt.

Every attempt carries a unique marker: the fake reports it as the call's input tokens (and
``X-Test-Tag: soak-MARKER``), so a row is matched to its attempt by ``input_tokens`` without
storing prompts. Checked: every attempt the client saw finish completely (200, whole body or
stream with its final event, the marker in the usage the client received) has exactly one
row; so has every stream whose events all reached the client before a kill cut the end of its
body (a client that stops at ``[DONE]`` counts it as finished); no row is duplicated
(``count(*) = count(DISTINCT id)``, each marker once); no row has a marker that was never sent;
``spend`` never fails and never reports fewer calls than before.

``scripts/soak`` runs ``main()`` (defaults: 10,000 calls, 50 concurrent, 10 kills);
``test_soak_kill9`` is the short version for the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from conftest import ROOT, ProxyProcess  # noqa: E402
from fakeprovider import FakeProvider  # noqa: E402

OPENAI_KEY = "sk-proj-soakTESTkey0000111122223333444455556666"
ANTHROPIC_KEY = "sk-ant-api03-soakTESTkey7777888899990000aaaabbbbcccc"
MARKER_BASE = 10_000_000  # input tokens of attempt n: MARKER_BASE + n
OUTPUT_TOKENS = 7
ATTEMPT_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 100  # per call; a call that never finishes is reported, not retried forever

# (name, host, path, streamed): the kinds of call, drawn in turn.
KINDS: tuple[tuple[str, str, str, bool], ...] = (
    ("chat", "api.openai.com", "/v1/chat/completions", False),
    ("chat_stream", "api.openai.com", "/v1/chat/completions", True),  # usage injected by the proxy
    ("chat_stream_usage", "api.openai.com", "/v1/chat/completions", True),  # include_usage by client
    ("responses", "api.openai.com", "/v1/responses", False),
    ("responses_stream", "api.openai.com", "/v1/responses", True),
    ("messages", "api.anthropic.com", "/v1/messages", False),
    ("messages_stream", "api.anthropic.com", "/v1/messages", True),
)
KIND_BY_NAME = {k[0]: k for k in KINDS}


# ---------------------------------------------------------------- configuration and results


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """What to run."""

    calls: int = 10_000
    concurrency: int = 50
    kills: int = 10
    seed: int | None = None
    spend_interval: float = 0.0  # pause between two spend queries
    deadline_s: float = 540.0  # the whole run (clients stop retrying after it)


@dataclass(slots=True)
class Attempt:
    """One HTTP attempt of a call."""

    marker: int
    kind: str
    call: int
    started: float
    ended: float = 0.0
    finished: bool = False  # the client saw a complete, valid answer
    events_complete: bool = False  # unfinished stream whose events were all received
    failure: str | None = None


@dataclass(slots=True)
class SoakResult:
    """Counts and the evidence behind them."""

    config: SoakConfig
    attempts: list[Attempt] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    queries_ok: int = 0
    queries_failed: list[str] = field(default_factory=list)
    query_regressions: list[str] = field(default_factory=list)  # spend reported fewer calls than before
    rows: int = 0
    distinct_ids: int = 0
    marker_counts: Counter[int] = field(default_factory=Counter)
    bad_rows: list[str] = field(default_factory=list)  # rows of finished attempts with wrong fields
    upstream_tags: set[str] = field(default_factory=set)  # markers the fake received
    calls_unfinished: int = 0
    elapsed_s: float = 0.0
    replayed_lines: int = 0  # "replaying N call(s)" summed over the proxy log (stored ones are ignored)

    @property
    def finished(self) -> list[Attempt]:
        """Attempts the client saw finish completely."""
        return [a for a in self.attempts if a.finished]

    @property
    def lost(self) -> list[Attempt]:
        """Finished attempts without a row."""
        return [a for a in self.finished if self.marker_counts[a.marker] == 0]

    @property
    def duplicated(self) -> list[int]:
        """Markers with more than one row."""
        return sorted(m for m, n in self.marker_counts.items() if n > 1)

    @property
    def phantom(self) -> list[int]:
        """Markers in the database that no attempt sent."""
        sent = {a.marker for a in self.attempts}
        return sorted(m for m in self.marker_counts if m not in sent)

    def summary(self) -> dict[str, Any]:
        """The figures, for a report."""
        failed = [a for a in self.attempts if not a.finished]
        metered_failed = sum(1 for a in failed if self.marker_counts[a.marker] > 0)
        reached = [a for a in failed if f"soak-{a.marker}" in self.upstream_tags]
        lost = self.lost
        unframed = [a for a in failed if a.events_complete]
        return {
            "calls": self.config.calls,
            "concurrency": self.config.concurrency,
            "kills": len(self.kill_times),
            "elapsed_s": round(self.elapsed_s, 1),
            "attempts": len(self.attempts),
            "finished": len(self.finished),
            "finished_streamed": sum(1 for a in self.finished if KIND_BY_NAME[a.kind][3]),
            "calls_unfinished": self.calls_unfinished,
            "rows": self.rows,
            "distinct_ids": self.distinct_ids,
            "duplicate_ids": self.rows - self.distinct_ids,
            "duplicates": sum(self.marker_counts[m] - 1 for m in self.duplicated),
            "lost": len(lost),
            "lost_streamed": sum(1 for a in lost if KIND_BY_NAME[a.kind][3]),
            "lost_detail": [self._lost_detail(a) for a in lost[:20]],
            "phantom_rows": len(self.phantom),
            "bad_rows": len(self.bad_rows),
            "failed_attempts": len(failed),
            "failed_attempts_reached_upstream": len(reached),
            "failed_attempts_metered": metered_failed,
            "streams_all_events_but_no_end": len(unframed),
            # of those, without a row (a failure: the stream is journaled at its final event)
            "streams_all_events_but_no_end_unmetered": sum(
                1 for a in unframed if not self.marker_counts[a.marker]
            ),
            "streams_all_events_but_no_end_unmetered_detail": [
                self._lost_detail(a) for a in unframed if not self.marker_counts[a.marker]
            ][:20],
            "journal_lines_replayed": self.replayed_lines,
            "restart_s_max": round(max(self.restart_s, default=0.0), 2),
            "queries_run": self.queries_ok + len(self.queries_failed),
            "queries_failed": len(self.queries_failed),
            "query_regressions": len(self.query_regressions),
            "calls_per_s": round(len(self.finished) / self.elapsed_s, 1) if self.elapsed_s else None,
        }

    def _lost_detail(self, a: Attempt) -> str:
        since = [a.ended - k for k in self.kill_times if k >= a.started - 1]
        near = min(since, key=abs, default=None)
        when = f"finished {near * 1000:+.1f} ms from a kill" if near is not None else "no kill near"
        return f"{a.kind} marker {a.marker}: {when}" + (f" ({a.failure})" if a.failure else "")


# ---------------------------------------------------------------- one call, raw HTTP/1.1


class _Conn:
    """A keep-alive HTTP/1.1 connection CONNECT-ed through the proxy, TLS on top."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.received: list[bytes] = []  # body bytes of the current response so far

    @classmethod
    async def open(cls, port: int, host: str, ctx: ssl.SSLContext) -> _Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]:
                raise ConnectionError(f"CONNECT refused: {head[:80]!r}")
            await writer.start_tls(ctx, server_hostname=host)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def request(self, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
        """Send one POST; return the status and the whole body (raises unless it ended properly)."""
        conn = self.h11
        chunks = self.received = []  # first: a send that fails must not leave the last answer here
        out = conn.send(h11.Request(method="POST", target=path, headers=headers))
        out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        self.writer.write(out)
        await self.writer.drain()
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before the end of the response")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            raise _Closing(status, b"".join(chunks))
        return status, b"".join(chunks)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Closing(Exception):
    """The response ended but the connection cannot be reused (the answer is still whole)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__("connection not reusable")
        self.status, self.body = status, body


def _usage_header(kind: str, marker: int) -> str:
    if kind.startswith("messages"):
        usage: dict[str, Any] = {
            "input_tokens": marker,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": OUTPUT_TOKENS,
        }
    elif kind.startswith("responses"):
        usage = {
            "input_tokens": marker,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": OUTPUT_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": marker + OUTPUT_TOKENS,
        }
    else:
        usage = {
            "prompt_tokens": marker,
            "completion_tokens": OUTPUT_TOKENS,
            "total_tokens": marker + OUTPUT_TOKENS,
        }
    return json.dumps(usage, separators=(",", ":"))


def build_request(kind: str, marker: int) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """``(host, path, headers, body)`` of one attempt."""
    _, host, path, streamed = KIND_BY_NAME[kind]
    prompt = "Say hello"
    body: dict[str, Any]
    if kind.startswith("messages"):
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": prompt}],
        }
        auth = [("x-api-key", ANTHROPIC_KEY), ("anthropic-version", "2023-06-01")]
    elif kind.startswith("responses"):
        body = {"model": "gpt-4o-mini", "input": prompt}
        auth = [("authorization", f"Bearer {OPENAI_KEY}")]
    else:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
        auth = [("authorization", f"Bearer {OPENAI_KEY}")]
        if kind == "chat_stream_usage":
            body["stream_options"] = {"include_usage": True}
    if streamed:
        body["stream"] = True
    payload = json.dumps(body).encode()
    headers = [
        ("host", host),
        ("content-type", "application/json"),
        ("accept-encoding", "identity"),
        ("content-length", str(len(payload))),
        *auth,
        ("x-test-tag", f"soak-{marker}"),
        ("x-fake-usage", _usage_header(kind, marker)),
        ("x-fake-chunks", "3"),
    ]
    return host, path, headers, payload


def _sse_data(body: bytes) -> list[str]:
    return [line[5:].strip() for line in body.decode().splitlines() if line.startswith("data:")]


def check_answer(kind: str, marker: int, status: int, body: bytes) -> str | None:
    """None when the client got the whole, valid answer; else what is wrong."""
    if status != 200:
        return f"status {status}"
    try:
        if not KIND_BY_NAME[kind][3]:
            usage = json.loads(body)["usage"]
            got = usage.get("prompt_tokens", usage.get("input_tokens"))
            return None if got == marker else f"usage {got} != {marker}"
        data = _sse_data(body)
        if kind.startswith("chat"):
            if not data or data[-1] != "[DONE]":
                return "stream without [DONE]"
            usages = [json.loads(d).get("usage") for d in data[:-1]]
            reported = [u["prompt_tokens"] for u in usages if u]
            if kind == "chat_stream_usage":
                return None if reported == [marker] else f"usage chunks {reported}"
            # The proxy asked for usage itself: the client must not see the extra chunk.
            return None if reported == [] else f"injected usage leaked to the client: {reported}"
        last = json.loads(data[-1]) if data else {}
        if kind.startswith("responses"):
            if last.get("type") != "response.completed":
                return "stream without response.completed"
            got = last["response"]["usage"]["input_tokens"]
            return None if got == marker else f"usage {got} != {marker}"
        if last.get("type") != "message_stop":
            return "stream without message_stop"
        got = json.loads(data[0])["message"]["usage"]["input_tokens"]
        return None if got == marker else f"usage {got} != {marker}"
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return f"unreadable answer: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- the run


class _Soak:
    def __init__(self, config: SoakConfig, proxy: ProxyProcess, fake: FakeProvider) -> None:
        self.config = config
        self.proxy = proxy
        self.fake = fake
        self.rng = random.Random(config.seed)
        self.result = SoakResult(config)
        self.next_marker = MARKER_BASE
        self.done_calls = 0
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
        self.ctx.set_alpn_protocols(["http/1.1"])

    # -- clients

    async def _worker(self, queue: asyncio.Queue[int]) -> None:
        conns: dict[str, _Conn] = {}
        try:
            while True:
                try:
                    call = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self._call(call, conns)
        finally:
            for c in conns.values():
                c.close()

    async def _call(self, call: int, conns: dict[str, _Conn]) -> None:
        kind = KINDS[call % len(KINDS)][0]
        for attempt_no in range(MAX_ATTEMPTS):
            if time.monotonic() - self.t0 > self.config.deadline_s:
                break
            marker = self.next_marker
            self.next_marker += 1
            attempt = Attempt(marker=marker, kind=kind, call=call, started=time.monotonic())
            self.result.attempts.append(attempt)
            host, path, headers, body = build_request(kind, marker)
            reuse = True
            conn: _Conn | None = None
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                    conn = conns.get(host)
                    if conn is None:
                        conn = conns[host] = await _Conn.open(self.proxy.port, host, self.ctx)
                    try:
                        status, answer = await conn.request(path, headers, body)
                    except _Closing as closing:
                        status, answer, reuse = closing.status, closing.body, False
                attempt.failure = check_answer(kind, marker, status, answer)
            except Exception as exc:  # refused, reset, TLS, timeout, truncated: all retried
                attempt.failure = f"{type(exc).__name__}: {exc}"[:200]
                reuse = False
                if conn is not None and conn.received and KIND_BY_NAME[kind][3]:
                    # Every event arrived, only the end of the chunked body did not: a client
                    # that stops reading at its final event would count this call as finished.
                    partial = b"".join(conn.received)
                    # Complete events only: an SSE event ends at its blank line (a line-based
                    # client may stop at "data: [DONE]\n" before that: not counted here).
                    complete = partial.endswith((b"\n\n", b"\r\n\r\n"))
                    attempt.events_complete = complete and check_answer(kind, marker, 200, partial) is None
            attempt.ended = time.monotonic()
            if not reuse or attempt.failure is not None:
                old = conns.pop(host, None)
                if old is not None:
                    old.close()
            if attempt.failure is None:
                attempt.finished = True
                self.done_calls += 1
                return
            await asyncio.sleep(min(0.5, 0.02 * (attempt_no + 1)) * self.rng.uniform(0.5, 1.5))
        self.result.calls_unfinished += 1

    async def _clients(self) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.config.calls):
            queue.put_nowait(i)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.config.concurrency)]
        await asyncio.gather(*workers)

    # -- faults

    def _killer(self) -> None:
        """Kill at random moments spread over the run: the k-th kill after a random share of the calls."""
        kills = self.config.kills
        for k in range(kills):
            low, high = (k + 0.2) / (kills + 0.5), (k + 0.9) / (kills + 0.5)
            threshold = int(self.config.calls * self.rng.uniform(low, high))
            while self.done_calls < threshold and not self.stop.is_set():
                time.sleep(0.005)
            if self.stop.is_set():
                return
            time.sleep(self.rng.uniform(0.0, 0.15))  # a random moment, not right at a call's end
            self.proxy.kill9()
            self.result.kill_times.append(time.monotonic())
            started = time.monotonic()
            self.proxy.start()
            self.result.restart_s.append(time.monotonic() - started)

    def _spender(self) -> None:
        """``python -m addon.spend summary --json`` in a loop while the calls run."""
        last_calls = 0
        env = {**os.environ, "HOME": str(self.proxy.home), "TOKOMETER_DB": str(self.proxy.db_path)}
        argv = [sys.executable, "-m", "addon.spend", "summary", "--json", "--since", "1d"]
        argv += ["--db", str(self.proxy.db_path)]
        while not self.stop.is_set():
            if not self.proxy.db_path.exists():
                time.sleep(0.1)
                continue
            res = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
            if res.returncode != 0:
                self.result.queries_failed.append(res.stderr.strip()[-300:] or f"exit {res.returncode}")
            else:
                try:
                    calls = int(json.loads(res.stdout)["total"]["calls"])
                except (ValueError, KeyError, TypeError) as exc:
                    self.result.queries_failed.append(f"bad JSON: {exc}: {res.stdout[:200]}")
                else:
                    self.result.queries_ok += 1
                    if calls < last_calls:
                        self.result.query_regressions.append(f"{calls} calls after {last_calls}")
                    last_calls = max(last_calls, calls)
            if self.config.spend_interval:
                self.stop.wait(self.config.spend_interval)

    def run(self) -> SoakResult:
        threads = [
            threading.Thread(target=self._killer, name="soak-killer", daemon=True),
            threading.Thread(target=self._spender, name="soak-spend", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            asyncio.run(self._clients())
        finally:
            self.stop.set()
            for t in threads:
                t.join(180)
        self.result.elapsed_s = time.monotonic() - self.t0
        if not self.proxy.alive():  # a last kill came after the last call: start once more to replay
            self.proxy.start()
        self.proxy.terminate(timeout=60)  # SIGTERM: the store flushes everything queued
        self._collect()
        return self.result

    def _collect(self) -> None:
        r = self.result
        [tot] = self.proxy.rows("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM calls", timeout=30)
        r.rows, r.distinct_ids = int(tot["n"]), int(tot["ids"])
        rows = self.proxy.rows(
            "SELECT input_tokens, output_tokens, status_code, streamed, aborted, usage_source, "
            "price_status, api_flavor, provider FROM calls",
            timeout=30,
        )
        r.marker_counts = Counter(int(row["input_tokens"] or 0) for row in rows)
        by_marker = {int(row["input_tokens"] or 0): row for row in rows}
        for a in r.finished:
            row = by_marker.get(a.marker)
            if row is None:
                continue
            want = {
                "output_tokens": OUTPUT_TOKENS,
                "status_code": 200,
                "streamed": KIND_BY_NAME[a.kind][3],
                "aborted": False,
                "usage_source": "reported",
                "price_status": "priced",
            }
            wrong = {k: row[k] for k, v in want.items() if row[k] != v}
            if wrong:
                r.bad_rows.append(f"{a.kind} marker {a.marker}: {wrong}")
        r.upstream_tags = {rec.tag for rec in self.fake.requests if rec.tag and rec.tag.startswith("soak-")}
        for line in self.proxy.log_text().splitlines():
            if "tokometer: replaying " in line:
                with contextlib.suppress(ValueError, IndexError):
                    r.replayed_lines += int(line.split("tokometer: replaying ", 1)[1].split()[0])


def run_soak(config: SoakConfig, fake: FakeProvider, workdir: Path) -> SoakResult:
    """Start a proxy in ``workdir`` and run the soak against ``fake``; the proxy is stopped after."""
    proxy = ProxyProcess(workdir, fake.port)
    try:
        proxy.start()
        return _Soak(config, proxy, fake).run()
    finally:
        proxy.cleanup()


def failures(result: SoakResult) -> list[str]:
    """Everything that breaks the promise "every call the client saw finish is stored exactly once".

    No finished call may be missing, streamed or not: mitmproxy 12 runs the ``response`` hook
    (where the journal line is written, synchronously) BEFORE it sends the end of a streamed
    body to the client (``HttpStream.send_response`` then ``flow_done``), so a client that reads
    to the end of the chunked body cannot have its call lost by a kill. Nor can a client that
    stops at the final SSE event (``[DONE]``, ``message_stop``): the stream is journaled before
    that event is passed on (``streams_all_events_but_no_end`` must all be metered).
    """
    s = result.summary()
    out: list[str] = []
    if s["finished"] != result.config.calls or s["calls_unfinished"]:
        out.append(f"{s['calls_unfinished']} call(s) never finished")
    if s["rows"] != s["distinct_ids"]:
        out.append(f"{s['rows'] - s['distinct_ids']} duplicate id(s)")
    if result.duplicated:
        out.append(f"markers stored more than once: {result.duplicated[:10]}")
    if s["lost"]:
        out.append(f"{s['lost']} finished call(s) without a row: {s['lost_detail']}")
    if s["streams_all_events_but_no_end_unmetered"]:
        detail = s["streams_all_events_but_no_end_unmetered_detail"]
        out.append(f"streams with every event at the client but no row: {detail}")
    if s["phantom_rows"]:
        out.append(f"rows with markers never sent: {result.phantom[:10]}")
    if result.bad_rows:
        out.append(f"rows with wrong fields: {result.bad_rows[:5]}")
    if result.queries_failed:
        out.append(f"spend failed {len(result.queries_failed)}x: {result.queries_failed[:2]}")
    if result.query_regressions:
        out.append(f"spend went backwards: {result.query_regressions[:3]}")
    return out


# ---------------------------------------------------------------- the short version


def test_soak_kill9(tmp_path: Path, fake_provider: FakeProvider) -> None:
    config = SoakConfig(calls=400, concurrency=20, kills=3, deadline_s=90.0)
    result = run_soak(config, fake_provider, tmp_path / "soak")
    s = result.summary()
    print(json.dumps(s, indent=1))
    assert failures(result) == [], json.dumps(s, indent=1)
    assert s["kills"] == 3
    assert s["finished"] == 400
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["duplicate_ids"] == 0
    # Rows: one per finished call, plus the attempts that were metered but cut before the client
    # had the whole answer (the provider billed them too).
    assert s["rows"] == s["distinct_ids"] == 400 + s["failed_attempts_metered"]
    # The kills hit calls in flight, and the spend loop ran throughout.
    assert s["failed_attempts"] >= 3
    assert s["queries_run"] >= 3


# ---------------------------------------------------------------- scripts/soak


def main(argv: list[str] | None = None) -> int:
    """``scripts/soak``: the full soak; prints the figures as JSON, exit 1 on any failure."""
    ap = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=10_000, help="calls that must finish (default 10000)")
    ap.add_argument("--concurrency", type=int, default=50, help="calls in flight (default 50)")
    ap.add_argument("--kills", type=int, default=10, help="kill -9 + restart during the run (default 10)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (kill moments, back-off)")
    ap.add_argument("--spend-interval", type=float, default=0.0, help="seconds between spend queries")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds before clients give up")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the proxy's files here")
    args = ap.parse_args(argv)
    config = SoakConfig(
        calls=args.calls,
        concurrency=args.concurrency,
        kills=args.kills,
        seed=args.seed,
        spend_interval=args.spend_interval,
        deadline_s=args.deadline,
    )
    tmp = Path(tempfile.mkdtemp(prefix="tokometer-soak-"))
    workdir = args.workdir or tmp / "proxy"
    fake = FakeProvider(tmp / "fake")
    try:
        result = run_soak(config, fake, workdir)
    finally:
        fake.close()
    s = result.summary()
    problems = failures(result)
    s["failures"] = problems
    print(json.dumps(s, indent=1))
    if args.workdir is None and not problems:
        shutil.rmtree(tmp, ignore_errors=True)
    elif problems:
        print(f"soak: FAILED; files kept in {workdir}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
