"""Clients cannot lock each other out (issue item 5, RELIABILITY.md R5).

Hundreds of connections that send their headers and one byte of a body, then
stall, used to hold every concurrency slot until the request deadline, so every
other client got 529. Now a request takes a slot only once its body is in, and
the connections reading a body are capped: past ``max_body_readers`` a newcomer
ends the longest-waiting reader (408). Loopback only; every wait is bounded.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from typing import Any, Iterator, List

import pytest

from conftest import ROOT, minimal_request, request
from fakes import FakeUpstream

STALLED = 300
HEAD = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n{")


@pytest.fixture(autouse=True)
def enough_fds() -> Iterator[None]:
    """Room for 300 client sockets and the proxy's 300 server sockets in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * STALLED + 512
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the fd limit ({hard}) is too low for {STALLED} connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _stall(url: str, count: int) -> List[socket.socket]:
    port = int(url.rsplit(":", 1)[1])
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(HEAD)
        socks.append(sock)
    return socks


def _wait_readers(server: Any, at_least: int, timeout: float = 10.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(server.server.body_readers) >= at_least:
            break
        time.sleep(0.02)
    return len(server.server.body_readers)


def _timed_request(url: str) -> Any:
    started = time.monotonic()
    resp = request(url, "POST", "/v1/messages", minimal_request(), timeout=5)
    return resp, time.monotonic() - started


def _close(socks: List[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_stalled_bodies_hold_no_slot(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """300 stalled bodies against 4 slots: a normal request still answers at once."""
    proxy = make_proxy(max_concurrency=4, max_body_readers=1000)
    socks = _stall(proxy.url, STALLED)
    try:
        assert _wait_readers(proxy, STALLED) == STALLED
        resp, took = _timed_request(proxy.url)
        assert resp.status == 200, resp
        assert took < 1.0, f"a normal request took {took:.2f} s behind {STALLED} stalled bodies"
        assert fake_upstream.requests and len(fake_upstream.requests) == 1
    finally:
        _close(socks)


def test_past_the_cap_the_longest_waiting_body_gives_way(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Defaults (256 body readers): 300 stalled bodies, and a normal request answers within 1 s."""
    proxy = make_proxy()
    cap = proxy.server.config.max_body_readers
    socks = _stall(proxy.url, STALLED)
    try:
        assert _wait_readers(proxy, cap) == cap
        resp, took = _timed_request(proxy.url)
        assert resp.status == 200, resp
        assert took < 1.0, f"a normal request took {took:.2f} s behind {STALLED} stalled bodies"
        # The first stalled connection was pushed out with a 408, not left hanging.
        socks[0].settimeout(5)
        answer = socks[0].recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert b"timeout_error" in answer
    finally:
        _close(socks)


def test_stalled_body_is_cut_at_the_body_timeout(make_proxy: Any) -> None:
    proxy = make_proxy(body_timeout=0.5, client_timeout=5)
    socks = _stall(proxy.url, 1)
    try:
        started = time.monotonic()
        socks[0].settimeout(5)
        answer = socks[0].recv(65536)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert 0.3 <= took < 2.0, took
    finally:
        _close(socks)


def test_body_readers_evict_the_longest_waiting() -> None:
    from claudeproxy.server import BodyReaders

    pairs = [socket.socketpair() for _ in range(3)]
    try:
        readers = BodyReaders(2)
        first, second = readers.enter(pairs[0][0]), readers.enter(pairs[1][0])
        readers.leave(second)
        third = readers.enter(pairs[2][0])
        assert not first.evicted and len(readers) == 2
        fourth = readers.enter(pairs[1][1])
        assert first.evicted and not third.evicted and not fourth.evicted
        pairs[0][0].settimeout(1)
        assert pairs[0][0].recv(1) == b""  # its blocked read returns at once
        assert len(readers) == 2
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def _wait_open(server: Any, count: int, timeout: float = 10.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(server.server.open_connections()) < count:
        time.sleep(0.02)
    return len(server.server.open_connections())


def test_past_the_connection_cap_the_longest_waiting_head_gives_way(make_proxy: Any,
                                                                    fake_upstream: FakeUpstream) -> None:
    """Probe AI 5: connections sending their head a byte at a time each held a thread, with nothing
    bounding them before any key was checked. Over --max-connections, the one that has waited
    longest for a head is closed, and a normal request still answers."""
    proxy = make_proxy(max_connections=8)
    port = int(proxy.url.rsplit(":", 1)[1])
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/mess")  # a head begun, never finished
        assert _wait_open(proxy, 8) == 8
        resp, took = _timed_request(proxy.url)
        assert resp.status == 200 and took < 1.0, (resp, took)
        socks[0].settimeout(5)
        assert socks[0].recv(65536) == b""  # the longest-waiting closed, unanswered
        assert len(proxy.server.open_connections()) <= 8
    finally:
        _close(socks)


def test_a_connection_over_the_cap_gets_529_where_every_one_has_a_request_in_flight(
        make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """No connection waits for a head to give way: the newcomer gets a 529 the SDKs retry, and is
    closed, without a thread of its own."""
    from fakes import Reply

    proxy = make_proxy(max_connections=2)
    fake_upstream.push(*[Reply(body=[b'{"id":"x"}'], delay=2.0) for _ in range(2)])  # answers held 2 s
    busy = [threading.Thread(target=request, args=(proxy.url, "POST", "/v1/messages", minimal_request()),
                             kwargs={"timeout": 10}, daemon=True) for _ in range(2)]
    for thread in busy:
        thread.start()
    end = time.monotonic() + 5
    while len(fake_upstream.requests) < 2 and time.monotonic() < end:
        time.sleep(0.02)
    assert len(fake_upstream.requests) == 2  # both in flight
    started = time.monotonic()
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), timeout=5)
    assert time.monotonic() - started < 1.0
    assert resp.status == 529 and resp.json["error"]["type"] == "overloaded_error", resp
    assert resp.headers["retry-after"] == "1" and "connections open" in resp.json["error"]["message"]
    for thread in busy:
        thread.join(10)


def test_a_connection_ended_for_a_newcomer_as_its_head_came_is_not_served(make_proxy: Any) -> None:
    """Review AO 5: chosen while its head was arriving, it was served all the same, the upstream
    asked (and billed) for an answer nobody could read."""
    srv = make_proxy(max_connections=1).server
    waiting, waiting_peer = socket.socketpair()
    newcomer, newcomer_peer = socket.socketpair()
    try:
        assert srv._admit(waiting)  # noqa: SLF001
        srv.awaiting_head(waiting, False)
        assert srv._admit(newcomer)  # noqa: SLF001  # full: the one waiting for a head gives way
        waiting_peer.settimeout(2)
        assert waiting_peer.recv(1) == b""  # ended
        assert srv.head_arrived(waiting) is False and srv.head_arrived(newcomer) is True
    finally:
        for sock in (waiting, newcomer):
            srv._forget(sock)  # noqa: SLF001
        for sock in (waiting, waiting_peer, newcomer, newcomer_peer):
            sock.close()


def test_a_refused_connection_is_closed_soon_without_another_coming(make_proxy: Any,
                                                                    fake_upstream: FakeUpstream) -> None:
    """Review AO 6: a refused connection stayed open until the next connection came."""
    from fakes import Reply

    proxy = make_proxy(max_connections=1)
    fake_upstream.push(Reply(body=[b'{"id":"x"}'], delay=1.0))
    busy = threading.Thread(target=request, args=(proxy.url, "POST", "/v1/messages", minimal_request()),
                            kwargs={"timeout": 10}, daemon=True)
    busy.start()
    end = time.monotonic() + 5
    while not fake_upstream.requests and time.monotonic() < end:
        time.sleep(0.02)
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), timeout=5).status == 529
    end = time.monotonic() + 5
    while proxy.server._refused and time.monotonic() < end:  # noqa: SLF001
        time.sleep(0.05)
    assert not proxy.server._refused  # noqa: SLF001  # closed within its linger, with no newcomer
    busy.join(10)


@pytest.mark.parametrize("limit, cap, lowered", [
    (None, 1024, False),  # no limit (Windows, unlimited): as asked
    (65536, 1024, False),
    (1024, 512, True),  # a shell's usual limit: 1,024 - 256 calls in flight - 256 (a quarter) for the rest
    (2048, 1024, False),  # 2,048 - 256 - 512 leaves 1,280
    (256, 128, True),  # macOS's usual limit: a quarter each for calls and the rest (review AQ 2)
    (40, 20, True),
    (8, 16, True),  # never under 16
])
def test_the_connection_cap_stays_within_the_open_file_limit(limit: Any, cap: int, lowered: bool) -> None:
    """Review AO 14: at the shell's usual limit of 1,024 open files, accept failed long before
    --max-connections' 1,024, so the cap never ended a stalled head and a slow client locked everyone out."""
    from claudeproxy.open_files import connection_cap

    assert connection_cap(1024, 256, limit) == (cap, lowered)


def test_a_lowered_connection_cap_is_said_at_start(make_proxy: Any, monkeypatch: Any) -> None:
    from claudeproxy import cli, server

    monkeypatch.setattr(server, "open_files_limit", lambda: 1024)
    proxy = make_proxy()
    assert proxy.server.max_connections == 512
    assert cli.lowered_connection_cap(proxy.server) == [
        "--max-connections 1024 is more than the open-file limit leaves (ulimit -n 1024): at most 512 client "
        "connections are held at once; raise the limit (ulimit -n) for more"]


def test_the_proxys_own_process_raises_its_open_file_limit() -> None:
    """A process that is the proxy's own (python -m claudeproxy, run) raises the soft limit towards
    the hard one, so that the cap need not be lowered."""
    import subprocess
    import sys

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    code = "from claudeproxy.open_files import more_open_files; print(more_open_files())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 256


def test_on_macos_the_soft_limit_is_raised_as_far_as_it_goes(monkeypatch: Any) -> None:
    """macOS: soft 256, hard unlimited, and setrlimit refuses a soft limit over OPEN_MAX (10240):
    the first ask (65536) was refused and swallowed, and the cap fell to 16 (review AQ 2)."""
    import sys
    import types as pytypes

    from claudeproxy.open_files import more_open_files

    asked: List[Any] = []

    def setrlimit(kind: int, limits: Any) -> None:
        asked.append(limits[0])
        if limits[0] > 10240:
            raise ValueError("current limit exceeds maximum limit")

    fake = pytypes.SimpleNamespace(RLIMIT_NOFILE=7, RLIM_INFINITY=-1, getrlimit=lambda kind: (256, -1),
                                   setrlimit=setrlimit)
    monkeypatch.setitem(sys.modules, "resource", fake)
    assert more_open_files() == 10240 and asked == [65536, 10240]
