"""R3/R4: a client that leaves frees the upstream within 1 s, over many runs (RELIABILITY.md F20, F21).

The delay is the fake upstream's ``closed_at`` (it polls its socket every
10 ms) minus the moment the client closed. R3: 50 runs mid-stream, half with
a FIN and half with a reset. R4: 20 runs before the upstream's first byte,
half stream and half JSON requests (only the watchdog can notice then). Runs go
in 5 lanes at once, each its own fake upstream and proxy, so the watchdog is
measured while other streams run. p50, p99 and the maximum are recorded; the
maximum must be at most 1 s; handler threads are back to baseline within 2 s.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Tuple

from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request
from fakes import FakeUpstream, Reply, StreamClient
from rkit import percentile, record, settle
from test_disconnect import close, send_raw, slow_stream

import claudeproxy

LANES = 5
MID_STREAM_RUNS = 50
FIRST_BYTE_RUNS = 20
LIMIT = 1.0


def mid_stream(proxy: Any, fake: FakeUpstream, i: int) -> float:
    """F20: read two events, then close (even runs) or reset (odd runs); returns the close time."""
    fake.push(slow_stream())
    client = StreamClient(proxy.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}, timeout=5)
    assert client.next_event()["type"] == "message_start"
    assert client.next_event()["type"] == "content_block_start"
    closed = time.monotonic()
    client.close(rst=i % 2 == 1)
    return closed


def before_first_byte(proxy: Any, fake: FakeUpstream, i: int) -> float:
    """F21: the upstream holds its answer for 10 s; the client closes after 0.15 s."""
    fake.push(Reply(delay=10))
    sock = send_raw(proxy, minimal_request(stream=i % 2 == 0))
    assert fake.received.wait(5)
    time.sleep(0.15)  # the proxy is blocked waiting for the upstream's headers
    return close(sock, rst=False)


def lane(scenario: Callable[[Any, FakeUpstream, int], float], runs: List[int], out: List[Any]) -> None:
    fake = FakeUpstream()
    proxy = claudeproxy.start(upstream=fake.url, token=claudeproxy.static_token(UPSTREAM_KEY))
    try:
        for i in runs:
            fake.closed_at = None
            fake.received.clear()
            client_closed = scenario(proxy, fake, i)
            upstream_closed = fake.wait_closed(LIMIT + 2)
            out.append((i, None if upstream_closed is None else upstream_closed - client_closed))
    except BaseException as exc:  # reported by the test
        out.append(("error", repr(exc)))
    finally:
        proxy.shutdown(grace=1.0)
        fake.close()


def run(scenario: Callable[[Any, FakeUpstream, int], float], count: int) -> List[Tuple[Any, Any]]:
    results: List[Any] = []
    threads = [threading.Thread(target=lane, args=(scenario, list(range(k, count, LANES)), results), daemon=True)
               for k in range(LANES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def summary(delays: List[float]) -> str:
    return (f"p50 {percentile(delays, 50) * 1000:.0f} ms, p99 {percentile(delays, 99) * 1000:.0f} ms, "
            f"max {max(delays) * 1000:.0f} ms")


def check(fid: str, title: str, results: List[Tuple[Any, Any]], count: int, baseline: int) -> None:
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors
    open_left = [i for i, d in results if d is None]
    delays = [d for _, d in results if d is not None]
    threads = settle(threading.active_count, baseline, 2.0)
    ok = not open_left and len(delays) == count and max(delays) <= LIMIT and threads <= baseline
    record(fid, title, f"{count} runs: upstream closed {summary(delays)} after the client; "
           f"{len(open_left)} left open; threads back to baseline: {threads <= baseline}",
           "p100 <= 1 s; threads back to baseline <= 2 s", ok, delays_ms=[round(d * 1000) for d in delays])
    assert not open_left, f"runs {open_left}: the upstream connection stayed open"
    assert len(delays) == count
    assert max(delays) <= LIMIT, f"slowest {max(delays):.3f} s: {summary(delays)}"
    assert threads <= baseline, f"{threads} threads, baseline {baseline}: {[t.name for t in threading.enumerate()]}"


def test_client_leaves_mid_stream_50_runs() -> None:
    baseline = threading.active_count()
    results = run(mid_stream, MID_STREAM_RUNS)
    check("R3", "client disconnect mid-stream (F20), FIN and RST, 5 streams at a time", results,
          MID_STREAM_RUNS, baseline)


def test_client_leaves_before_the_first_byte_20_runs() -> None:
    baseline = threading.active_count()
    results = run(before_first_byte, FIRST_BYTE_RUNS)
    check("R4", "client disconnect before the upstream's first byte (F21), stream and JSON requests", results,
          FIRST_BYTE_RUNS, baseline)
