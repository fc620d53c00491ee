"""The server's life cycle and its defences against slow or greedy clients.

RELIABILITY.md F24 (shutdown with requests in flight, in-process), S16/S17
(threads, shutdown), F8/F9 and S1/S2 (slow-loris headers and bodies under a
whole-request deadline), and the concurrency cap (529 ``overloaded_error``).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import claudeproxy
from conftest import UPSTREAM_KEY, minimal_request, quota_probe, request
from fakes import FakeUpstream, Gate, Reply, Sleep, chunk, completion, json_reply, sse_reply
from sse_checks import assert_valid_event_sequence, dechunk, events_of, final_message
from test_http_errors import assert_error, connect, json_post, peer_closed, read_response


def start(fake: FakeUpstream, **overrides: Any) -> Any:
    return claudeproxy.start(upstream=fake.url, token=claudeproxy.static_token(UPSTREAM_KEY), **overrides)


@pytest.fixture
def servers(fake_upstream: FakeUpstream) -> Iterator[Callable[..., Any]]:
    """Like conftest's make_proxy, but tests may shut a server down themselves (a second call is a no-op)."""
    made: List[Any] = []

    def make(**overrides: Any) -> Any:
        server = start(fake_upstream, **overrides)
        made.append(server)
        return server

    yield make
    for server in made:
        server.shutdown(grace=0.5)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def in_thread(fn: Callable[[], Any]) -> Dict[str, Any]:
    """Run ``fn`` in a thread; the dict gets ``result`` (or ``error``) and ``thread``."""
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # reported by the test, not lost in the thread
            box["error"] = exc

    box["thread"] = threading.Thread(target=run, daemon=True)
    box["thread"].start()
    return box


# ---------------------------------------------------------------------------
# Reading a streamed response off a raw socket.


class RawStream:
    """A streamed /v1/messages response read as it arrives."""

    def __init__(self, url: str, body: Dict[str, Any]) -> None:
        self.sock = connect(url, timeout=10)
        self.sock.sendall(json_post(json.dumps(body).encode("utf-8")))
        self.data = b""

    def read_until(self, marker: bytes, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while marker not in self.data:
            left = end - time.monotonic()
            assert left > 0, f"no {marker!r} in time; got {self.data[-300:]!r}"
            self.sock.settimeout(left)
            piece = self.sock.recv(65536)
            assert piece, f"closed before {marker!r}; got {self.data[-300:]!r}"
            self.data += piece

    def read_to_end(self, timeout: float = 5.0) -> List[Dict[str, Any]]:
        """Read to the terminating chunk (or EOF); the events of the whole body."""
        end = time.monotonic() + timeout
        while not self.data.endswith(b"\r\n0\r\n\r\n"):
            left = end - time.monotonic()
            assert left > 0, f"stream did not end in time; got {self.data[-300:]!r}"
            self.sock.settimeout(left)
            try:
                piece = self.sock.recv(65536)
            except ConnectionError:
                piece = b""
            if not piece:
                break
            self.data += piece
        head, _, body = self.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return events_of(dechunk(body))

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------
# Shutdown (F24 in-process, S17).


def test_shutdown_ends_a_stream_in_flight_with_overloaded_error(servers: Any, fake_upstream: FakeUpstream) -> None:
    gate = Gate()
    reply = sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), done=False)
    reply.body.append(gate)
    fake_upstream.push(reply)
    server = servers()
    stream = RawStream(server.url, minimal_request(stream=True))
    try:
        stream.read_until(b"Hel")
        started = time.monotonic()
        server.shutdown(grace=0.5)
        assert time.monotonic() - started < 0.5 + 1.0
        events = stream.read_to_end()
        # Checked before the gate opens: the fake notices the close while it waits at the gate.
        assert wait_for(lambda: fake_upstream.closed_at is not None, 1.0), "the upstream connection was left open"
    finally:
        stream.close()
        gate.release()
    assert_valid_event_sequence(events)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "overloaded_error", events[-1]
    assert "message_stop" not in [e["type"] for e in events]


def _a_slow_request_in_flight(servers: Any, fake_upstream: FakeUpstream) -> Tuple[Any, Dict[str, Any]]:
    """A server, and a request to it (``in_thread``'s box) whose answer the upstream gives in 0.4 s."""
    slow = json_reply(completion("finished"))
    slow.delay = 0.4
    fake_upstream.push(slow)
    server = servers()
    box = in_thread(lambda: request(server.url, "POST", "/v1/messages", minimal_request()))
    assert fake_upstream.received.wait(5)
    return server, box


def test_shutdown_lets_a_request_finish_within_the_grace(servers: Any, fake_upstream: FakeUpstream) -> None:
    server, box = _a_slow_request_in_flight(servers, fake_upstream)
    started = time.monotonic()
    server.shutdown(grace=3)
    took = time.monotonic() - started
    box["thread"].join(5)
    assert box["result"].status == 200, box
    assert box["result"].json["content"][0]["text"] == "finished"
    assert took < 1.5, f"shutdown waited {took:.1f} s although the request was done"


def test_a_second_shutdown_returns_when_the_first_is_done(servers: Any, fake_upstream: FakeUpstream) -> None:
    """Two threads of a program shutting one server down: the second returned at once while the
    first still drained a request in flight (probe R). It waits for the first one's drain now."""
    server, box = _a_slow_request_in_flight(servers, fake_upstream)
    first = in_thread(lambda: server.shutdown(grace=3))
    time.sleep(0.05)  # the first one is draining
    server.shutdown(grace=3)
    assert server.server.wait_idle(0), "the second shutdown returned before the drain ended"
    first["thread"].join(5)
    box["thread"].join(5)
    assert box["result"].status == 200


def test_shutdown_stops_accepting_at_once_and_closes_the_port(servers: Any, fake_upstream: FakeUpstream) -> None:
    gate = Gate()
    reply = sse_reply(chunk({"content": "x"}), done=False)
    reply.body.insert(0, gate)
    fake_upstream.push(reply)
    server = servers()
    port = server.address[1]
    box = in_thread(lambda: request(server.url, "POST", "/v1/messages", minimal_request(stream=True)))
    assert gate.reached.wait(5)
    stopper = in_thread(lambda: server.shutdown(grace=0.6))
    time.sleep(0.2)  # inside the grace period: the request is still in flight
    assert stopper["thread"].is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    stopper["thread"].join(3)
    gate.release()
    box["thread"].join(5)
    assert "error" not in box, box
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_shutdown_wakes_idle_keep_alive_connections(servers: Any) -> None:
    server = servers()
    with connect(server.url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock).status == 200
        started = time.monotonic()
        server.shutdown(grace=2)
        assert time.monotonic() - started < 1.0, "shutdown waited for an idle keep-alive connection"
        assert peer_closed(sock, 1.0)


def test_shutdown_answers_a_waiting_non_stream_request_with_overloaded(servers: Any,
                                                                       fake_upstream: FakeUpstream) -> None:
    # Not "could not reach the upstream": the SDKs retry a 529 elsewhere or later.
    never = json_reply(completion())
    never.delay = 8
    fake_upstream.push(never)
    server = servers()
    box = in_thread(lambda: request(server.url, "POST", "/v1/messages", minimal_request()))
    assert fake_upstream.received.wait(5)
    started = time.monotonic()
    server.shutdown(grace=0.3)
    assert time.monotonic() - started < 0.3 + 1.0
    box["thread"].join(5)
    assert_error(box["result"], 529, "overloaded_error")


# ---------------------------------------------------------------------------
# Threads come back (S16).


def _threads_settle(baseline: int, timeout: float = 2.0) -> bool:
    return wait_for(lambda: threading.active_count() <= baseline, timeout)


def test_threads_return_to_baseline_after_requests(servers: Any, fake_upstream: FakeUpstream) -> None:
    server = servers()
    request(server.url, "GET", "/health")  # let any lazily started thread exist before the baseline
    assert _threads_settle(threading.active_count())
    baseline = threading.active_count()
    fake_upstream.push(sse_reply(chunk({"content": "a"}), chunk({}, "stop")))
    for body in (minimal_request(stream=True), minimal_request(), quota_probe()):
        assert request(server.url, "POST", "/v1/messages", body).status == 200
    # A client that goes away mid-request and one that never sends anything.
    with connect(server.url) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
    idle = connect(server.url)
    idle.close()
    assert _threads_settle(baseline), [t.name for t in threading.enumerate()]


def test_shutdown_leaves_no_server_threads(fake_upstream: FakeUpstream) -> None:
    baseline = threading.active_count()
    server = start(fake_upstream)
    assert request(server.url, "POST", "/v1/messages", minimal_request()).status == 200
    server.shutdown(grace=0.5)
    assert _threads_settle(baseline), [t.name for t in threading.enumerate()]


# ---------------------------------------------------------------------------
# The concurrency cap.


def test_max_concurrency_answers_529_when_full(servers: Any, fake_upstream: FakeUpstream) -> None:
    gate = Gate()
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),),
                             [gate, json.dumps(completion("slow")).encode()]))
    server = servers(max_concurrency=1)
    slow = in_thread(lambda: request(server.url, "POST", "/v1/messages", minimal_request()))
    assert gate.reached.wait(5)
    resp = request(server.url, "POST", "/v1/messages", minimal_request())
    assert_error(resp, 529, "overloaded_error")
    gate.release()
    slow["thread"].join(5)
    assert slow["result"].status == 200 and slow["result"].json["content"][0]["text"] == "slow"
    # The slot is free again, once the slow request's handler is done (its call record is written
    # after the client has the answer: a request sent at once may still find the slot taken).
    assert server.server.wait_idle(2)
    assert request(server.url, "POST", "/v1/messages", minimal_request()).status == 200


# ---------------------------------------------------------------------------
# Slow clients (F8, F9): per-read timeout 1 s, whole request 2 s.

SLOW = {"client_timeout": 1.0, "client_request_deadline": 2.0}


def _trickle(sock: socket.socket, data: bytes, every: float, limit: float) -> Optional[float]:
    """Send one byte every ``every`` s; when the server answered or closed, or None if it never did."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > limit:
            return None
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        readable, _, _ = select.select([sock], [], [], every)
        if readable:  # an answer (408) or EOF: either way the server gave up on us
            cut = time.monotonic() - started
            assert peer_closed(sock, 1.0) or _drained(sock), "the server answered but kept the connection"
            return cut
    return None


def _drained(sock: socket.socket) -> bool:
    """Read what the server sent until EOF (True) or 1 s of silence (False)."""
    sock.settimeout(1.0)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return False
    except ConnectionError:
        pass
    return True


def _slow_client(url: str, head: bytes, trickled: bytes) -> Optional[float]:
    with connect(url) as sock:
        sock.sendall(head)
        # One byte every 0.4 s never trips the 1 s per-read timeout; only the deadline can stop it.
        return _trickle(sock, trickled, 0.4, 5.0)


def test_slow_clients_are_cut_off_at_the_request_deadline(servers: Any, fake_upstream: FakeUpstream) -> None:
    # F8 (headers) and a trickled body, several of each at once (RELIABILITY.md R5 in small).
    server = servers(**SLOW)
    body = json.dumps(minimal_request()).encode()
    clients = {f"headers-{i}": (b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40)
               for i in range(4)}
    clients.update({f"body-{i}": (json_post(body)[: -len(body)], body) for i in range(4)})
    boxes = {name: in_thread(lambda h=head, t=rest: _slow_client(server.url, h, t))
             for name, (head, rest) in clients.items()}
    time.sleep(0.5)
    started = time.monotonic()
    assert request(server.url, "GET", "/health", timeout=2).status == 200
    assert time.monotonic() - started < 1.0, "a normal request waited behind the slow clients"
    for box in boxes.values():
        box["thread"].join(6)
    cuts = {name: box.get("result", box.get("error")) for name, box in boxes.items()}
    for name, cut in cuts.items():
        assert isinstance(cut, float), f"{name} was never cut off: {cut!r}"
        assert 1.5 <= cut <= 3.0, f"{name} cut off after {cut:.1f} s; the deadline is 2 s"
    assert fake_upstream.requests == []


def test_stalled_body_is_cut_off_at_the_read_timeout(servers: Any, fake_upstream: FakeUpstream) -> None:
    server = servers(**SLOW)
    baseline = threading.active_count()
    with connect(server.url) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500000\r\n\r\n{\"m")
        resp = read_response(sock, 3.0, started)
        took = time.monotonic() - started
        assert 0.8 <= took <= 2.0, f"answered after {took:.1f} s; the read timeout is 1 s"
        assert_error(resp, 408, "timeout_error")
        assert peer_closed(sock, 1.0)
    assert fake_upstream.requests == []
    assert _threads_settle(baseline), "the handler thread was not freed"


def test_idle_connection_is_closed_after_the_read_timeout(servers: Any) -> None:
    server = servers(**SLOW)
    with connect(server.url) as sock:
        started = time.monotonic()
        assert peer_closed(sock, 3.0)
        assert time.monotonic() - started < 2.5


def test_the_deadline_does_not_cut_a_long_response(servers: Any, fake_upstream: FakeUpstream) -> None:
    # The deadline covers reading the request only: a 2.2 s answer still arrives whole.
    fake_upstream.push(sse_reply(chunk({"content": "a"}), Sleep(1.2), chunk({"content": "b"}), Sleep(1.0),
                                 chunk({}, "stop")))
    server = servers(**SLOW)
    resp = request(server.url, "POST", "/v1/messages", minimal_request(stream=True), timeout=10)
    assert resp.status == 200
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "ab"}]


def test_a_client_that_stops_reading_a_stream_is_cut_off_at_the_write_timeout(
        servers: Any, fake_upstream: FakeUpstream) -> None:
    # The reverse slow-loris: the client reads the head and then nothing, while the upstream has
    # megabytes to say. The proxy's write waits at most client_timeout (1 s), then it lets go of
    # the client and of the upstream; nothing waits on the stalled reader after that.
    text = "x" * 16384
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}),
                                 *[chunk({"content": text}) for _ in range(800)], chunk({}, "stop")))
    server = servers(**SLOW)
    baseline = threading.active_count()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the proxy's writes fill up fast
    sock.settimeout(5)
    try:
        sock.connect(server.address)
        sock.sendall(json_post(json.dumps(minimal_request(stream=True)).encode()))
        assert sock.recv(64).startswith(b"HTTP/1.1 200"), "the stream did not start"
        stalled = time.monotonic()
        closed_at = fake_upstream.wait_closed(8.0)
        assert closed_at is not None, "the proxy still waits on a client that reads nothing"
        took = closed_at - stalled
        assert took < 5.0, f"the upstream was let go {took:.1f} s after the client stopped reading"
        assert _threads_settle(baseline), "the handler thread was not freed"
    finally:
        sock.close()
    assert request(server.url, "POST", "/v1/messages", minimal_request(), timeout=5).status == 200


def test_a_connection_kept_alive_after_a_stream_is_timed_again(servers: Any, fake_upstream: FakeUpstream) -> None:
    # After a stream on a kept-alive connection the next request's reads are timed as the first's:
    # an idle client, or one that sends half a head, must not hold a thread.
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop")))
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "again"}), chunk({}, "stop")))
    server = servers(**SLOW)
    with connect(server.url) as sock:
        for text in ("hi", "again"):
            sock.sendall(json_post(json.dumps(minimal_request(stream=True)).encode()))
            answer, deadline = b"", time.monotonic() + 5
            while not answer.endswith(b"\r\n0\r\n\r\n"):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                piece = sock.recv(65536)
                assert piece and time.monotonic() < deadline, f"the stream did not end: {answer[-200:]!r}"
                answer += piece
            events = events_of(dechunk(answer.partition(b"\r\n\r\n")[2]))
            assert final_message(events)["content"] == [{"type": "text", "text": text}]
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")  # half a head, then nothing
        started = time.monotonic()
        assert peer_closed(sock, 4.0), "the connection was not closed after the stream"
        assert time.monotonic() - started < 3.0


# ---------------------------------------------------------------------------
# The library entry point.


def test_start_defaults_to_an_ephemeral_loopback_port() -> None:
    server = claudeproxy.start(token=claudeproxy.static_token("sk-test-key-0001"))  # (OpenAI needs a key)
    try:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        assert server.url == f"http://127.0.0.1:{port}"
        assert request(server.url, "GET", "/health").status == 200
    finally:
        server.shutdown(grace=0.5)
    server.shutdown(grace=0.5)  # a second call is harmless
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_listener(servers: Any, fake_upstream: FakeUpstream) -> None:
    server = servers(host="::1")
    assert server.url == f"http://[::1]:{server.address[1]}"
    with socket.create_connection(("::1", server.address[1]), timeout=5) as sock:
        body = json.dumps(minimal_request()).encode()
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: [::1]:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (server.address[1], len(body), body))
        resp = read_response(sock)
    assert resp.status == 200, resp
    assert resp.json["content"][0]["text"] == "Hello!"
