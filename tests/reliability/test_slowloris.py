"""R5: 100 slow-loris clients at once, while a normal request still answers in under 1 s (F8, F9).

Half the clients trickle their headers, half their bodies, one byte every
0.4 s: never slow enough for the 1 s per-read timeout, so only the deadlines
can cut them (set short here: 2 s for the whole request, 1.5 s for a body).
One thread drives all 100 sockets with ``select``; normal requests run beside
them. Every slow client must be cut (closed, or a 408 ``timeout_error``) by
its deadline plus 1 s, every normal request must answer in under 1 s, and the
handler threads must be back to their baseline afterwards. Bounded: the attack
stops after 6 s whatever happens.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any, Dict, List

from conftest import UPSTREAM_KEY, minimal_request, request
from fakes import FakeUpstream
from rkit import check_error_body, percentile, record, settle

import claudeproxy

CLIENTS = 100
TRICKLE = 0.4
SETTINGS: Dict[str, Any] = {"client_timeout": 1.0, "client_request_deadline": 2.0, "body_timeout": 1.5}
HEADER_CUT = SETTINGS["client_request_deadline"]
BODY_CUT = SETTINGS["body_timeout"]
SLACK = 1.0
ATTACK = 6.0


class Slow:
    def __init__(self, port: int, kind: str) -> None:
        self.kind = kind
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        if kind == "headers":
            self.sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        else:
            self.sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 5000\r\n\r\n{")
        self.started = time.monotonic()
        self.cut: float = 0.0
        self.answer = b""

    def trickle(self) -> None:
        try:
            self.sock.send(b"a" if self.kind == "headers" else b" ")
        except OSError:
            pass  # the server closed: select reports it next

    def read(self) -> bool:
        """True once the server answered and closed (or reset)."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.answer += data
            return False
        self.cut = time.monotonic() - self.started
        return True


def attack(clients: List[Slow]) -> None:
    """Trickle to every client until each is cut, or ATTACK seconds."""
    end = time.monotonic() + ATTACK
    next_byte = time.monotonic() + TRICKLE
    open_ = {c.sock: c for c in clients}
    while open_ and time.monotonic() < end:
        readable, _, _ = select.select(list(open_), [], [], max(0.0, min(next_byte, end) - time.monotonic()))
        for sock in readable:
            if open_[sock].read():
                del open_[sock]
        if time.monotonic() >= next_byte:
            for client in open_.values():
                client.trickle()
            next_byte += TRICKLE


def normal_requests(url: str, out: List[float]) -> None:
    time.sleep(0.5)  # every slow client is connected and stalling
    for _ in range(4):
        started = time.monotonic()
        resp = request(url, "POST", "/v1/messages", minimal_request(), timeout=5)
        out.append(time.monotonic() - started if resp.status == 200 else float("inf"))
        time.sleep(0.3)


def test_hundred_slow_clients_are_cut_and_normal_requests_still_answer() -> None:
    fake = FakeUpstream()
    proxy = claudeproxy.start(upstream=fake.url, token=claudeproxy.static_token(UPSTREAM_KEY), **SETTINGS)
    request(proxy.url, "GET", "/health")
    baseline = threading.active_count()
    clients: List[Slow] = []
    latencies: List[float] = []
    try:
        clients = [Slow(proxy.address[1], "headers" if i % 2 == 0 else "body") for i in range(CLIENTS)]
        normal = threading.Thread(target=normal_requests, args=(proxy.url, latencies), daemon=True)
        normal.start()
        attack(clients)
        normal.join(10)
    finally:
        for client in clients:
            client.sock.close()
        threads = settle(threading.active_count, baseline, 3.0)
        proxy.shutdown(grace=1.0)
        fake.close()
    cuts: Dict[str, List[float]] = {"headers": [], "body": []}
    late = []
    for client in clients:
        limit = (HEADER_CUT if client.kind == "headers" else BODY_CUT) + SLACK
        if not client.cut or client.cut > limit:
            late.append((client.kind, round(client.cut, 2)))
        cuts[client.kind].append(client.cut)
        if client.answer:  # a body read out of time is answered 408 before the close
            head, _, body = client.answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), head
            check_error_body(408, body)
    worst = max(latencies) if latencies else float("inf")
    ok = not late and worst < 1.0 and threads <= baseline and len(latencies) == 4
    figure = (f"{CLIENTS} slow clients (50 headers, 50 bodies, 1 byte / {TRICKLE} s): headers cut at max "
              f"{max(cuts['headers']):.2f} s (deadline {HEADER_CUT:.0f} s), bodies at max {max(cuts['body']):.2f} s "
              f"(body timeout {BODY_CUT} s); {len(late)} late; normal request during the attack: max "
              f"{worst * 1000:.0f} ms over {len(latencies)}; threads back to baseline: {threads <= baseline}")
    record("R5", "slow-loris headers and bodies (F8/F9) against short deadlines", figure,
           "all cut by their deadline; a normal request answers in < 1 s", ok,
           header_cut_p50=percentile(cuts["headers"], 50), body_cut_p50=percentile(cuts["body"], 50),
           latencies_ms=[round(x * 1000) for x in latencies])
    assert not late, f"slow clients not cut in time: {late[:10]}"
    assert len(latencies) == 4 and worst < 1.0, f"normal requests took {latencies}"
    assert threads <= baseline, f"{threads} threads, baseline {baseline}"
