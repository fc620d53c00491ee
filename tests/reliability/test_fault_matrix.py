"""R2 (matrix): the upstream fault matrix F11-F21, translating (chat) and forwarding (Messages API).

Every fault runs 3 times on each API (F13: each status with a JSON, an HTML
and an empty body, for stream and JSON requests). Expected, as RELIABILITY.md
section 4 and PROTOCOL.md 4.2-4.3 say:

- F11 an 8 MiB SSE line (17 MiB forwarded): the events so far, then one ``api_error`` event; the upstream is closed.
- F12 malformed SSE (bad JSON, comments, ``event:`` lines, CRLF, blank lines): tolerated, complete.
- F13 upstream 4xx/5xx: a plain Anthropic error with the upstream's status and its type
  (``retry-after`` copied for 429/503).
- F14 a 200 ``text/html`` to a stream request: 502 ``api_error``, no ``message_start``.
- F15 a redirect: 502 ``api_error``; the redirect target gets no request.
- F16 an upstream that never answers: 504 ``timeout_error`` after the idle timeout for a stream
  request (0.5 s here), after the request timeout for a non-streaming one (1 s here: such an
  upstream says nothing until its answer is whole).
- F17 connection refused: 502 ``api_error`` within 1 s.
- F18/F19 a reset or a FIN after three events: those events, then one ``api_error``, no ``message_stop``.
- F20/F21 the client leaves mid-stream / before the first byte: the upstream is closed within 1 s.

After every row: no handler left busy; at the end, no traceback and no ERROR record.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request, request
from fakes import FakeUpstream, Fault, Reply, Sleep, StreamClient, chunk, refused_port
from rkit import check_error_body, record
from sse_checks import assert_valid_event_sequence
from test_disconnect import close, send_raw

import claudeproxy

RUNS = 3
APIS = ("chat", "messages")
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
IDLE = 0.5
REQUEST_TIMEOUT = 1.0


def sse_event(api: str, payload: Dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    return (b"event: " + payload["type"].encode() + b"\n" if api == "messages" else b"") + b"data: " + data + b"\n\n"


def head_events(api: str) -> List[bytes]:
    """Three events that reach the client as message_start, a text block start and two deltas."""
    if api == "chat":
        return [sse_event(api, c) for c in (chunk({"role": "assistant", "content": ""}), chunk({"content": "one"}),
                                             chunk({"content": " two"}))]
    return [sse_event(api, e) for e in (
        {"type": "message_start", "message": {"id": "msg_up", "type": "message", "role": "assistant",
                                              "model": "m", "content": [], "stop_reason": None,
                                              "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "one"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " two"}})]


def tail_events(api: str) -> List[bytes]:
    if api == "chat":
        return [sse_event(api, chunk({}, "stop")), b"data: [DONE]\n\n"]
    return [sse_event(api, e) for e in (
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 2}},
        {"type": "message_stop"})]


def stream_reply(steps: List[Any]) -> Reply:
    return Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True)


def open_stream(proxy: Any, timeout: float = 8) -> StreamClient:
    return StreamClient(proxy.url, minimal_request(stream=True), headers=HEADERS, timeout=timeout)


def send(proxy: Any, stream: bool) -> Any:
    return request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), HEADERS, timeout=10)


def kinds(events: List[Dict[str, Any]]) -> List[str]:
    return [e["type"] for e in events]


def ends_with_one_error(events: List[Dict[str, Any]], error_type: str) -> None:
    assert_valid_event_sequence(events)
    names = kinds(events)
    assert names[-1] == "error" and names.count("error") == 1, names
    assert "message_stop" not in names, names
    assert events[-1]["error"]["type"] == error_type, events[-1]


def plain_error(resp: Any, status: int, error_type: str) -> None:
    assert resp.status == status, resp
    assert check_error_body(status, resp.body)["error"]["type"] == error_type, resp
    assert b"message_start" not in resp.body


# ---------------------------------------------------------------------------
# The rows. Each takes (api, proxy, fake, run) and asserts.


def f11_huge_line(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
    # The fake notices a close only when a write fails or while it waits: loopback buffers can swallow
    # the whole line, so it waits (and watches) after it. Past each API's cap: 1 MiB, and 16 MiB for
    # a forwarded Anthropic stream (whose one event may hold a server tool's whole result).
    size = (17 if api == "messages" else 8) * 1024 * 1024
    fake.push(stream_reply(head_events(api) + [b"data: {\"x\": \"" + b"y" * size, Sleep(3)]))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=10)
    ends_with_one_error(events, "api_error")
    assert "longer than" in events[-1]["error"]["message"]
    assert fake.wait_closed(3) is not None, "the upstream connection was left open"


def f12_malformed(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
    odd = [b": keepalive\n\n", b"\n\n\n", b"data: {not json\n\n", b"retry: 100\nid: 7\n\n", b"data: \xff\xfe\n\n"]
    head = head_events(api)
    steps = head[:1] + odd + [e.replace(b"\n", b"\r\n") for e in head[1:]] + odd[2:3] + tail_events(api)
    fake.push(stream_reply(steps))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    texts = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(texts) == "one two", texts


F13_STATUSES = [400, 401, 403, 404, 413, 429, 500, 502, 503, 504]
F13_BODIES = [(b'{"error": {"message": "the upstream says no", "type": "x"}}', "application/json"),
              (b"<html><body><h1>Bad things</h1></body></html>", "text/html"), (b"", "text/plain")]


def f13_status(status: int, stream: bool) -> Callable[[str, Any, FakeUpstream, int], None]:
    def row(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
        body, ctype = F13_BODIES[run % 3]
        headers: Tuple[Tuple[str, str], ...] = (("Content-Type", ctype),)
        if status in (429, 503):
            headers += (("Retry-After", "3"),)
        if api == "messages" and ctype == "application/json":
            body = json.dumps({"type": "error", "error": {"type": "whatever", "message": "the upstream says no"}}).encode()
        fake.push(Reply(status, headers, [body]))
        resp = send(proxy, stream)
        # A 413 from an upstream is "the prompt is too long" (400) where the proxy can tell (test_context_overflow).
        expected = (status, 400) if status == 413 else (status,)
        assert resp.status in expected, resp
        check_error_body(resp.status, resp.body)
        assert b"event:" not in resp.body
        if status in (429, 503):
            assert resp.headers.get("retry-after") == "3", resp.headers
    return row


def f14_html_200(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
    fake.push(Reply(200, (("Content-Type", "text/html"),), [b"<html>captive portal</html>"]))
    plain_error(send(proxy, True), 502, "api_error")


def f15_redirect(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
    target = FakeUpstream()
    try:
        code = (301, 302, 307, 308)[run % 4]
        fake.push(Reply(code, (("Location", target.url + "/chat/completions"),), [b""]))
        plain_error(send(proxy, run % 2 == 0), 502, "api_error")
        time.sleep(0.05)
        assert target.request_count == 0, "the redirect was followed"
    finally:
        target.close()


def f16_silent(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
    fake.push(Reply(delay=8))
    begun = time.monotonic()
    stream = run % 2 == 0
    resp = send(proxy, stream)
    took = time.monotonic() - begun
    plain_error(resp, 504, "timeout_error")
    assert took < (IDLE if stream else REQUEST_TIMEOUT) + 1.5, f"answered after {took:.2f} s"
    assert fake.wait_closed(2) is not None


def f17_refused(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
    with refused_port() as port:
        base = f"http://127.0.0.1:{port}" + ("/v1" if api == "chat" else "")
        other = claudeproxy.start(upstream=base, upstream_api=api, token=claudeproxy.static_token(UPSTREAM_KEY),
                                  connect_timeout=2)
        try:
            begun = time.monotonic()
            resp = send(other, run % 2 == 0)
            took = time.monotonic() - begun
        finally:
            other.shutdown(grace=1.0)
    plain_error(resp, 502, "api_error")
    assert took < 1.0, f"answered after {took:.2f} s"


def broken_after_three(kind: str) -> Callable[[str, Any, FakeUpstream, int], None]:
    def row(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
        fake.push(stream_reply(head_events(api) + [Fault(kind)]))
        with open_stream(proxy) as client:
            events = client.read_all(timeout=5)
        ends_with_one_error(events, "api_error")
        assert kinds(events)[:4] == ["message_start", "content_block_start", "content_block_delta",
                                     "content_block_delta"], kinds(events)
    return row


def f20_leaves_mid_stream(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
    steps: List[Any] = head_events(api)
    for i in range(100):
        steps += [Sleep(0.05), sse_event(api, chunk({"content": f" {i}"}) if api == "chat" else {
            "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" {i}"}})]
    fake.push(stream_reply(steps))
    client = open_stream(proxy, timeout=5)
    client.read_until("content_block_delta", timeout=5)
    closed = time.monotonic()
    client.close(rst=run % 2 == 1)
    upstream = fake.wait_closed(3)
    assert upstream is not None and upstream - closed <= 1.0, f"upstream closed after {upstream and upstream - closed}"


def f21_leaves_before_first_byte(api: str, proxy: Any, fake: FakeUpstream, run: int) -> None:
    fake.push(Reply(delay=10))
    sock = send_raw(proxy, minimal_request(stream=run % 2 == 0))
    assert fake.received.wait(5)
    time.sleep(0.15)
    closed = close(sock, rst=False)
    upstream = fake.wait_closed(3)
    assert upstream is not None and upstream - closed <= 1.0, f"upstream closed after {upstream and upstream - closed}"


ROWS: List[Tuple[str, Callable[[str, Any, FakeUpstream, int], None]]] = [
    ("F11 8 MiB line", f11_huge_line), ("F12 malformed SSE", f12_malformed),
    *[(f"F13 {s} {'stream' if st else 'json'}", f13_status(s, st)) for s in F13_STATUSES for st in (True, False)],
    ("F14 200 text/html", f14_html_200), ("F15 redirect", f15_redirect), ("F16 silent upstream", f16_silent),
    ("F17 connection refused", f17_refused), ("F18 reset after 3 events", broken_after_three("rst")),
    ("F19 FIN after 3 events", broken_after_three("fin")),
    ("F19 cut inside a chunk", broken_after_three("truncate")),
    ("F20 client leaves mid-stream", f20_leaves_mid_stream),
    ("F21 client leaves before the first byte", f21_leaves_before_first_byte),
]


@pytest.fixture(scope="module")
def proxies() -> Iterator[Tuple[FakeUpstream, Dict[str, Any]]]:
    fake = FakeUpstream()
    token = claudeproxy.static_token(UPSTREAM_KEY)
    servers = {api: claudeproxy.start(upstream=fake.url if api == "chat" else fake.url.rsplit("/v1", 1)[0],
                                      upstream_api=api, token=token, idle_timeout=IDLE,
                                      request_timeout=REQUEST_TIMEOUT) for api in APIS}
    yield fake, servers
    for server in servers.values():
        server.shutdown(grace=1.0)
    fake.close()


def test_fault_matrix_chat_and_messages(proxies: Tuple[FakeUpstream, Dict[str, Any]], caplog: Any,
                                        capfd: Any) -> None:
    caplog.set_level("WARNING", logger="claudeproxy")
    fake, servers = proxies
    started = time.monotonic()
    failures: List[str] = []
    passed: Dict[str, int] = {api: 0 for api in APIS}
    hung = 0
    for api in APIS:
        for name, row in ROWS:
            for run in range(RUNS):
                fake.reset()
                try:
                    row(api, servers[api], fake, run)
                    passed[api] += 1
                except (AssertionError, OSError) as exc:
                    failures.append(f"{api} {name} run {run}: {str(exc)[:300]}")
                if not servers[api].server.wait_idle(3.0):
                    hung += 1
                    failures.append(f"{api} {name} run {run}: a handler is still busy")
    took = time.monotonic() - started
    errors = [r.getMessage()[:300] for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
    err = capfd.readouterr().err
    total = len(ROWS) * RUNS
    record("R2-matrix", "upstream fault matrix F11-F21, each fault 3 runs, chat and Messages API (passthrough)",
           f"chat {passed['chat']}/{total}, messages {passed['messages']}/{total} as documented; "
           f"{hung} hung handlers; {len(errors)} ERROR records; {took:.1f} s",
           "100 % mapped to the documented status/type; 0 message_stop after an error; 0 hung handlers",
           not failures and not errors and "Traceback" not in err, failures=failures[:20])
    assert not failures, "\n".join(failures[:20])
    assert not errors, errors[:10]
    assert "Traceback" not in err, err[-3000:]
