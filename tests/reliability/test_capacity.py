"""M1, C1, C2: held streams, a burst of connections, and a long keep-alive connection.

The proxy runs as ``python -m claudeproxy`` in a subprocess, so its RSS,
threads and file descriptors (``/proc/<pid>``) are its own; the fake upstream
and the clients live in the test process.

- M1: 200 streams held open at once: the proxy's thread count is baseline + 200,
  its RSS growth per stream is recorded; after they end, threads and fds are
  back to baseline.
- C1: 1,000 connections opened at once, each sending a stream request (the
  upstream sends its headers, then holds every answer 1 s): each is answered 200 with a valid stream or
  529 ``overloaded_error`` within 10 s; connect p99 and RSS growth recorded;
  threads and fds back to baseline.
- C2: 2,000 requests in a row on one keep-alive connection, every third a
  stream: all answered on that one connection, thread count flat, RSS drift
  from request 200 to 2,000 under 5 MB.

The soft fd limit is raised in-process for the test (the child inherits it)
and restored after. Linux only (``/proc``).
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest
from conftest import CLIENT_KEY, minimal_request
from fakes import FakeUpstream, Gate, Hold, Reply, StreamClient, chunk, sse_reply
from rkit import (
    HAVE_PROC,
    FdLimit,
    PeakSampler,
    ProxyProcess,
    check_answer,
    check_error_body,
    fd_count,
    normal_responder,
    percentile,
    record,
    rss_kb,
    settle,
    thread_count,
)
from sse_checks import assert_valid_event_sequence, dechunk, events_of

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_PROC, reason="needs /proc (Linux)")]

HELD = 200
BURST = 1000
HOLD = 1.0
KEEP_ALIVE = 2000


@pytest.fixture
def fd_room() -> Iterator[int]:
    limit = FdLimit(8192)
    yield limit.limit
    limit.restore()


def stream_events(gate: Gate) -> Reply:
    return sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "held"}), gate,
                     chunk({"content": " and done"}), chunk({}, "stop"),
                     {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})


def baseline(proc: ProxyProcess) -> Dict[str, int]:
    """The proxy's threads and fds once two readings 0.2 s apart agree (at most 2 s)."""
    now = {"threads": thread_count(proc.pid), "fds": fd_count(proc.pid)}
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        time.sleep(0.2)
        again = {"threads": thread_count(proc.pid), "fds": fd_count(proc.pid)}
        if again == now:
            break
        now = again
    return now


def quiet(proc: ProxyProcess, threads: int, fds: int, timeout: float = 3.0) -> Dict[str, int]:
    """Wait for the proxy's threads and fds to come back to ``threads``/``fds``; what they are."""
    t = settle(lambda: thread_count(proc.pid), threads, timeout)
    f = settle(lambda: fd_count(proc.pid), fds, timeout)
    return {"threads": t, "fds": f}


# ---------------------------------------------------------------------------
# M1


def test_200_held_streams(fd_room: int) -> None:
    assert fd_room >= 4 * HELD + 256, f"fd limit {fd_room} too low"
    gate = Gate()
    fake = FakeUpstream()
    fake.server.socket.listen(1024)  # the fake's own backlog (5 by default) must not be the bottleneck
    proxy = ProxyProcess(fake.url, "--log-level", "warning", "--max-idle-per-host", "0")
    clients: List[StreamClient] = []
    try:
        warm = Gate()
        warm.release()
        fake.push(stream_events(warm))  # warm-up: one whole stream before the baseline
        with StreamClient(proxy.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
            assert_valid_event_sequence(client.read_all(timeout=10), allow_error=False)
        fake.default = stream_events(gate)
        base = baseline(proxy)
        rss0 = rss_kb(proxy.pid)
        for _ in range(HELD):
            client = StreamClient(proxy.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY},
                                  timeout=10)
            clients.append(client)
            client.read_until("content_block_delta", timeout=10)
        held_threads, held_fds, rss1 = thread_count(proxy.pid), fd_count(proxy.pid), rss_kb(proxy.pid)
        gate.release()
        for client in clients:
            assert_valid_event_sequence(client.read_all(timeout=10), allow_error=False)
    finally:
        gate.release()
        for client in clients:
            client.close()
    after = quiet(proxy, base["threads"], base["fds"])
    code, _ = proxy.stop()
    err = proxy.stderr
    proxy.kill()
    fake.close()
    per_stream = (rss1 - rss0) / HELD
    ok = (held_threads - base["threads"] == HELD and after["threads"] <= base["threads"]
          and after["fds"] <= base["fds"] and (rss1 - rss0) < 30 * 1024 and code == 0 and "Traceback" not in err)
    record("M1", "200 concurrent held streams (subprocess proxy)",
           f"RSS +{(rss1 - rss0) / 1024:.1f} MB ({per_stream:.0f} KB per stream); threads {base['threads']} -> "
           f"{held_threads} held -> {after['threads']} after; fds {base['fds']} -> {held_fds} -> {after['fds']}",
           "RSS growth < 30 MB; threads = 200 + baseline; back to baseline after", ok,
           rss_kb_before=rss0, rss_kb_held=rss1)
    assert held_threads - base["threads"] == HELD, f"{held_threads} threads with {HELD} streams, base {base}"
    assert after["threads"] <= base["threads"] and after["fds"] <= base["fds"], (base, after)
    assert rss1 - rss0 < 30 * 1024, f"RSS grew {(rss1 - rss0) / 1024:.1f} MB"
    assert code == 0 and "Traceback" not in err, err[-2000:]


# ---------------------------------------------------------------------------
# C1


class Conn:
    def __init__(self, index: int, port: int, request: bytes) -> None:
        self.index = index
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.begun = time.monotonic()
        self.connected: Optional[float] = None
        self.done: Optional[float] = None
        self.request = request
        self.data = b""
        self.error = ""
        self.sock.connect_ex(("127.0.0.1", port))


def burst(port: int, count: int, deadline: float) -> List[Conn]:
    """Open ``count`` connections at once, send a stream request on each, read each to EOF."""
    body = json.dumps(minimal_request(stream=True)).encode()
    request = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(count):
        conn = Conn(i, port, request)
        conns.append(conn)
        sel.register(conn.sock, selectors.EVENT_WRITE, conn)
    end = time.monotonic() + deadline
    pending = count
    while pending and time.monotonic() < end:
        for key, events in sel.select(timeout=max(0.0, end - time.monotonic())):
            conn = key.data
            if conn.connected is None:
                conn.connected = time.monotonic()
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                try:
                    if err:
                        raise OSError(err, "connect failed")
                    conn.sock.sendall(conn.request)  # small: fits the socket buffer
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                except OSError as exc:
                    conn.error, conn.done = f"connect/send: {exc}", time.monotonic()
                    sel.unregister(conn.sock)
                    pending -= 1
                continue
            try:
                piece = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                piece, conn.error = b"", f"recv: {exc}"
            if piece:
                conn.data += piece
                continue
            conn.done = time.monotonic()
            sel.unregister(conn.sock)
            pending -= 1
    sel.close()
    for conn in conns:
        conn.sock.close()
    return conns


def verdict(conn: Conn) -> str:
    """'200' or '529' for a valid answer; else what was wrong."""
    if conn.error and not conn.data:
        return conn.error
    if conn.done is None:
        return "no answer within the deadline"
    head, _, body = conn.data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
        if status == 200:
            events = events_of(dechunk(body))
            assert_valid_event_sequence(events, allow_error=False)
        elif status == 529:
            check_error_body(529, body)
        else:
            return f"status {status}: {body[:200]!r}"
    except (AssertionError, ValueError, IndexError, KeyError) as exc:
        return f"invalid answer: {exc}: {conn.data[:200]!r}"
    return str(status)


def test_1000_concurrent_connections(fd_room: int) -> None:
    assert fd_room >= 3 * BURST + 512, f"fd limit {fd_room} too low"
    fake = FakeUpstream()
    fake.server.socket.listen(1024)
    proxy = ProxyProcess(fake.url, "--log-level", "warning", "--max-idle-per-host", "0")
    try:
        fake.push(sse_reply(chunk({"content": "warm"}), chunk({}, "stop")))
        assert check_answer(*_post(proxy.port, minimal_request(stream=True))) == "stream"
        base = baseline(proxy)
        rss0 = rss_kb(proxy.pid)
        # The headers at once, then 1 s of silence (Hold: 256 waiting fake threads must not poll,
        # or the test process, not the proxy, becomes the bottleneck), then the answer.
        held = Reply(200, (("Content-Type", "text/event-stream"),),
                     [Hold(HOLD), b"data: " + json.dumps(chunk({"content": "served"})).encode() + b"\n\n",
                      b"data: " + json.dumps(chunk({}, "stop")).encode() + b"\n\n", b"data: [DONE]\n\n"],
                     chunked=True)
        fake.default = held
        with PeakSampler(proxy.pid, 0.05, {"rss": rss_kb, "threads": thread_count},
                         {"rss": rss0, "threads": 0}) as sampler:
            started = time.monotonic()
            conns = burst(proxy.port, BURST, deadline=10.0)
            took = time.monotonic() - started
        peak = sampler.peak
        after = quiet(proxy, base["threads"], base["fds"])
        rss1 = rss_kb(proxy.pid)
    finally:
        code, _ = proxy.stop()
        err = proxy.stderr
        proxy.kill()
        fake.close()
    verdicts: Dict[str, int] = {}
    for conn in conns:
        v = verdict(conn)
        verdicts[v] = verdicts.get(v, 0) + 1
    bad = {k: v for k, v in verdicts.items() if k not in ("200", "529")}
    connects = [c.connected - c.begun for c in conns if c.connected is not None]
    answered = [c.done - c.begun for c in conns if c.done is not None]
    ok = (not bad and after["threads"] <= base["threads"] and after["fds"] <= base["fds"] and code == 0
          and "Traceback" not in err and max(answered) <= 10.0)
    record("C1", "1000 concurrent connections, upstream holds each answer 1 s (subprocess proxy, default caps)",
           f"{verdicts.get('200', 0)} served 200, {verdicts.get('529', 0)} refused 529, {sum(bad.values())} other; "
           f"connect p50 {percentile(connects, 50) * 1000:.0f} ms, p99 {percentile(connects, 99) * 1000:.0f} ms; "
           f"slowest answer {max(answered):.2f} s; peak threads {peak['threads']}, peak RSS "
           f"+{(peak['rss'] - rss0) / 1024:.1f} MB; after: threads {base['threads']}->{after['threads']}, "
           f"fds {base['fds']}->{after['fds']}, RSS +{(rss1 - rss0) / 1024:.1f} MB",
           "each answered 200 or 529 within 10 s; threads and fds back to baseline", ok,
           verdicts=verdicts, burst_seconds=round(took, 2))
    assert not bad, bad
    assert max(answered) <= 10.0
    assert after["threads"] <= base["threads"] and after["fds"] <= base["fds"], (base, after)
    assert code == 0 and "Traceback" not in err, err[-2000:]


def _post(port: int, body: Any) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/messages", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# C2


def test_2000_keep_alive_requests_on_one_connection() -> None:
    fake = FakeUpstream(keep_alive=True, responder=normal_responder(), keep_requests=False)
    proxy = ProxyProcess(fake.url, "--log-level", "warning")
    samples: Dict[int, Dict[str, int]] = {}
    failures: List[str] = []
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        started = time.monotonic()
        sock = None
        for i in range(1, KEEP_ALIVE + 1):
            body = json.dumps(minimal_request(stream=i % 3 == 0)).encode()
            conn.request("POST", "/v1/messages", body, {"Content-Type": "application/json", "x-api-key": CLIENT_KEY})
            resp = conn.getresponse()
            data = resp.read()
            if sock is None:
                sock = conn.sock
            try:
                kind = check_answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
                assert kind == ("stream" if i % 3 == 0 else "message"), kind
                assert not resp.will_close and conn.sock is sock, "the connection was not kept alive"
            except (AssertionError, ValueError) as exc:
                failures.append(f"request {i}: {exc}")
                if len(failures) > 5:
                    break
            if i % 200 == 0:
                samples[i] = {"threads": thread_count(proxy.pid), "rss": rss_kb(proxy.pid)}
        took = time.monotonic() - started
    finally:
        conn.close()
        code, _ = proxy.stop()
        err = proxy.stderr
        proxy.kill()
        fake.close()
    threads = sorted({s["threads"] for s in samples.values()})
    drift = (samples[KEEP_ALIVE]["rss"] - samples[200]["rss"]) / 1024 if KEEP_ALIVE in samples else float("nan")
    ok = not failures and len(threads) == 1 and drift < 5 and code == 0 and "Traceback" not in err
    record("C2", "2000 sequential requests on one keep-alive connection, every third a stream (subprocess proxy)",
           f"{KEEP_ALIVE - len(failures)}/{KEEP_ALIVE} OK on one connection in {took:.1f} s "
           f"({took / KEEP_ALIVE * 1000:.1f} ms each); threads {threads}; RSS drift request 200 -> 2000: "
           f"{drift:+.2f} MB", "100 % OK; thread count flat; RSS drift < 5 MB", ok,
           samples=samples)
    assert not failures, failures
    assert len(threads) == 1, f"thread count moved: {samples}"
    assert drift < 5, f"RSS drifted {drift:.2f} MB"
    assert code == 0 and "Traceback" not in err, err[-2000:]
