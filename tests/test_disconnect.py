"""A client that goes away frees the upstream within 1 s (RELIABILITY.md F20, F21, S10, S11).

Each scenario runs several times and the slowest run must pass: the time is
measured from the client's close to the moment the fake upstream sees the
proxy close its connection. The proxy's threads must be back to their
baseline within 2 s (no handler left blocked on a dead upstream).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from typing import Any, Callable, List

import pytest

from conftest import CLIENT_KEY, minimal_request
from fakes import Fault, FakeUpstream, Reply, Sleep, StreamClient, chunk, sse_reply

RUNS = 5
LIMIT = 1.0  # seconds from the client's close to the upstream's close


def send_raw(proxy: Any, body: Any) -> socket.socket:
    """Send a request and read nothing: the proxy cannot have answered yet when we close."""
    data = json.dumps(body).encode("utf-8")
    host = proxy.url.split("//", 1)[1]
    sock = socket.create_connection(tuple(proxy.address), timeout=5)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nx-api-key: %s\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (host.encode(), CLIENT_KEY.encode(), len(data), data))
    return sock


def close(sock: socket.socket, rst: bool) -> float:
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    closed = time.monotonic()
    sock.close()
    return closed


def slow_stream() -> Reply:
    """Two events at once, then one event every 50 ms for about 10 s."""
    steps: List[Any] = [chunk({"role": "assistant", "content": ""}), chunk({"content": "first"})]
    for i in range(200):
        steps += [Sleep(0.05), chunk({"content": f" {i}"})]
    return sse_reply(*steps)


def wait_threads(baseline: int, timeout: float = 2.0) -> int:
    end = time.monotonic() + timeout
    while threading.active_count() > baseline and time.monotonic() < end:
        time.sleep(0.02)
    return threading.active_count()


def measure(fake: FakeUpstream, scenario: Callable[[], float]) -> float:
    """Run one scenario (it returns the moment the client closed); the upstream's delay to close."""
    fake.closed_at = None
    fake.received.clear()
    client_closed = scenario()
    upstream_closed = fake.wait_closed(LIMIT + 2)
    assert upstream_closed is not None, "the upstream connection stayed open"
    return upstream_closed - client_closed


def run_scenario(proxy: Any, fake: FakeUpstream, scenario: Callable[[], float]) -> None:
    baseline = threading.active_count()
    delays = []
    for _ in range(RUNS):
        delays.append(measure(fake, scenario))
        assert wait_threads(baseline) <= baseline, f"{threading.active_count()} threads, baseline {baseline}"
    assert max(delays) <= LIMIT, f"upstream closed after {[round(d, 3) for d in delays]} s"


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_client_leaves_mid_stream(proxy, fake_upstream, rst):
    """F20: the client reads two events, then closes (or resets)."""

    def scenario() -> float:
        fake_upstream.push(slow_stream())
        client = StreamClient(proxy.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}, timeout=5)
        assert client.next_event()["type"] == "message_start"
        assert client.next_event()["type"] == "content_block_start"
        closed = time.monotonic()
        client.close(rst=rst)
        return closed

    run_scenario(proxy, fake_upstream, scenario)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_client_leaves_before_the_first_upstream_byte(proxy, fake_upstream, stream):
    """F21 (the LiteLLM #31499 case): the upstream is still thinking, nothing was written to anyone."""

    def scenario() -> float:
        fake_upstream.push(Reply(delay=10))
        sock = send_raw(proxy, minimal_request(stream=stream))
        assert fake_upstream.received.wait(5)
        time.sleep(0.15)  # the proxy is now blocked waiting for the upstream's headers
        return close(sock, rst=False)

    run_scenario(proxy, fake_upstream, scenario)


def test_client_leaves_while_upstream_is_silent_after_200(proxy, fake_upstream):
    """Headers came, no event yet: the proxy has written nothing, so only the watchdog can notice."""

    def scenario() -> float:
        fake_upstream.push(sse_reply(Fault("hang"), done=False))
        sock = send_raw(proxy, minimal_request(stream=True))
        assert fake_upstream.received.wait(5)
        time.sleep(0.15)
        return close(sock, rst=True)

    run_scenario(proxy, fake_upstream, scenario)


def test_client_leaves_during_a_slow_json_body(proxy, fake_upstream):
    """A non-streaming request: the upstream sends its body slowly; the client gives up."""

    def scenario() -> float:
        body = [b"{"] + [s for _ in range(100) for s in (Sleep(0.05), b" ")] + [b"}"]
        fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), body))
        sock = send_raw(proxy, minimal_request())
        assert fake_upstream.received.wait(5)
        time.sleep(0.15)
        return close(sock, rst=False)

    run_scenario(proxy, fake_upstream, scenario)


def test_proxy_keeps_serving_after_disconnects(proxy, fake_upstream, post):
    for _ in range(3):
        fake_upstream.push(Reply(delay=10))
        sock = send_raw(proxy, minimal_request(stream=True))
        assert fake_upstream.received.wait(5)
        fake_upstream.received.clear()
        close(sock, rst=True)
    resp = post(minimal_request())
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "Hello!"}]


def test_shutdown_ends_streams_in_flight_with_overloaded_error(make_proxy, fake_upstream):
    """F24: after the grace, a stream still running ends with one event: error, the upstream is freed."""
    proxy = make_proxy()
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "partial"}),
                                 Fault("hang"), done=False))
    with StreamClient(proxy.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        client.read_until("content_block_delta", timeout=3)
        stopper = threading.Thread(target=proxy.shutdown, kwargs={"grace": 0.3})
        begun = time.monotonic()
        stopper.start()
        events = client.read_all(timeout=5)
        stopper.join(timeout=5)
        assert not stopper.is_alive() and time.monotonic() - begun < 2.5
    names = [e["type"] for e in events]
    assert names[-1] == "error" and names.count("error") == 1 and "message_stop" not in names
    assert events[-1]["error"]["type"] == "overloaded_error"
    assert fake_upstream.wait_closed(2) is not None


def test_shutdown_before_the_upstream_answered_is_529(make_proxy, fake_upstream):
    proxy = make_proxy()
    fake_upstream.push(Reply(delay=10))
    sock = send_raw(proxy, minimal_request(stream=True))
    try:
        assert fake_upstream.received.wait(5)
        proxy.shutdown(grace=0.3)
        sock.settimeout(5)
        answer = b""
        while b"overloaded_error" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 529 "), answer[:100]
    assert b'"type": "overloaded_error"' in answer or b'"type":"overloaded_error"' in answer, answer
    assert fake_upstream.wait_closed(2) is not None
