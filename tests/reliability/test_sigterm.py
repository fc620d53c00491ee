"""G1: SIGTERM to a running proxy with 20 streams in flight (RELIABILITY.md F24), 10 runs (section 6).

``python -m claudeproxy --shutdown-grace 1`` in a subprocess. Ten streams end
0.4 s after their first words (inside the grace), ten never end (the upstream
hangs). On SIGTERM the proxy must stop accepting, let the ten finish with
``message_stop``, end the other ten with one ``event: error`` of type
``overloaded_error``, exit 0 within grace + 1 s, leave no upstream connection
open, and print no traceback.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from typing import Any, List

import pytest
from conftest import CLIENT_KEY, minimal_request
from fakes import FakeUpstream, Fault, Reply, Sleep, StreamClient, chunk, sse_reply
from rkit import ProxyProcess, record, wait_until
from sse_checks import assert_valid_event_sequence

pytestmark = pytest.mark.slow

RUNS = 10
STREAMS = 20
GRACE = 1.0


def reply_for(rec: Any) -> Reply:
    model = json.loads(rec.body.decode("utf-8"))["model"]
    head = [chunk({"role": "assistant", "content": ""}), chunk({"content": "first words"})]
    if model.startswith("g1-done"):
        return sse_reply(*head, Sleep(0.4), chunk({"content": " and the rest"}), chunk({}, "stop"),
                         {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}})
    return sse_reply(*head, Fault("hang"), done=False)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return True
    return False


def one_run() -> dict:
    fake = FakeUpstream(responder=reply_for)
    proxy = ProxyProcess(fake.url, "--shutdown-grace", str(GRACE), "--log-level", "info")
    clients: List[StreamClient] = []
    try:
        for i in range(STREAMS):
            model = f"g1-{'done' if i % 2 == 0 else 'hang'}-{i}"
            client = StreamClient(proxy.url, minimal_request(model=model, stream=True),
                                  headers={"x-api-key": CLIENT_KEY}, timeout=10)
            client.read_until("content_block_delta", timeout=10)
            clients.append(client)
        exited: List[float] = []

        def wait_exit() -> None:
            proxy.proc.wait(GRACE + 10)
            exited.append(time.monotonic())

        waiter = threading.Thread(target=wait_exit, daemon=True)
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        waiter.start()
        wait_until(lambda: refused(proxy.port), 3.0, step=0.05)
        stopped_accepting = time.monotonic() - signalled
        ends = []
        for i, client in enumerate(clients):
            events = client.read_all(timeout=GRACE + 5)
            assert_valid_event_sequence(events)
            last = events[-1]
            ends.append(("complete" if last["type"] == "message_stop" else last["error"]["type"], i % 2 == 0))
        waiter.join(GRACE + 10)
        code = proxy.proc.returncode
        upstream_closed = fake.wait_connections_closed(fake.connections, 2.0)
    finally:
        for client in clients:
            client.close()
        proxy.kill()
        fake.close()
    exit_after = exited[0] - signalled if exited else float("inf")
    return {"code": code, "exit_after": exit_after, "ends": ends, "stopped_accepting": stopped_accepting,
            "upstream_open": fake.connections - fake.closed_connections, "upstream_closed": upstream_closed,
            "traceback": "Traceback" in proxy.stderr, "stderr": proxy.stderr[-1500:]}


def test_sigterm_with_20_streams_in_flight() -> None:
    runs = [one_run() for _ in range(RUNS)]
    bad = []
    for n, run in enumerate(runs):
        wanted = [("complete" if done else "overloaded_error") for _, done in run["ends"]]
        got = [end for end, _ in run["ends"]]
        if run["code"] != 0 or run["exit_after"] > GRACE + 1.0:
            bad.append(f"run {n}: exit {run['code']} after {run['exit_after']:.2f} s")
        if got != wanted:
            bad.append(f"run {n}: streams ended {got}")
        if not run["upstream_closed"]:
            bad.append(f"run {n}: {run['upstream_open']} upstream connections left open")
        if run["traceback"]:
            bad.append(f"run {n}: traceback: {run['stderr']}")
    worst = max(r["exit_after"] for r in runs)
    complete = sum(1 for r in runs for end, _ in r["ends"] if end == "complete")
    errors = sum(1 for r in runs for end, _ in r["ends"] if end == "overloaded_error")
    record("G1", f"SIGTERM with {STREAMS} streams in flight, {RUNS} runs (subprocess proxy, --shutdown-grace {GRACE:g})",
           f"exit 0 in {sum(1 for r in runs if r['code'] == 0)}/{RUNS} runs, slowest {worst:.2f} s after SIGTERM "
           f"(limit {GRACE + 1:g} s); new connections refused after <= "
           f"{max(r['stopped_accepting'] for r in runs):.2f} s; streams: {complete} complete, {errors} "
           f"overloaded_error, {RUNS * STREAMS - complete - errors} other; upstream connections left open: "
           f"{sum(r['upstream_open'] for r in runs)}; tracebacks: {sum(r['traceback'] for r in runs)}",
           "exit 0 <= grace + 1 s; every stream complete or one overloaded_error; 0 upstream sockets open", not bad)
    assert not bad, bad
