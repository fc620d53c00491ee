"""Timeouts everywhere (issue item 4).

A stream request the upstream answers with slow plain JSON is held to the
request timeout (pings used to keep it alive forever); the upstream's answers
to count_tokens and to the model list are bounded; a timeout message names the
configured seconds. Loopback only; every wait bounded.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest

import claudeproxy
from claudeproxy.config import Provider, Route, RouteTarget
from conftest import UPSTREAM_KEY, minimal_request, request
from fakes import FakeUpstream, LoopbackListener, Reply, Sleep, chunk, completion, sse_reply
from sse_checks import events_of

JSON = (("Content-Type", "application/json"),)


def _slow_json(pieces: int, every: float) -> Reply:
    """A complete JSON body sent a few bytes at a time: never silent for long, never done soon."""
    body = json.dumps(completion("late")).encode()
    step = max(1, len(body) // pieces)
    steps: list = []
    for i in range(0, len(body), step):
        steps += [body[i:i + step], Sleep(every)]
    return Reply(200, JSON, steps)


def _timed(proxy: Any, path: str = "/v1/messages", body: Any = None, method: str = "POST") -> Any:
    started = time.monotonic()
    resp = request(proxy.url, method, path, body, timeout=20)
    return resp, time.monotonic() - started


def test_slow_json_answer_to_a_stream_request_is_held_to_the_request_timeout(make_proxy: Any,
                                                                             fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(request_timeout=1.5, ping_interval=0.4, idle_timeout=5)
    fake_upstream.push(_slow_json(pieces=20, every=0.5))  # 10 s in all, a byte every 0.5 s
    resp, took = _timed(proxy, body=minimal_request(stream=True))
    assert took < 3.0, f"the stream ran {took:.1f} s; the request timeout is 1.5 s"
    assert resp.status == 200
    events = events_of(resp.body)
    assert events[-1]["type"] == "error", events[-3:]
    assert events[-1]["error"]["type"] == "timeout_error"
    assert not [e for e in events if e["type"] == "message_stop"]


def test_slow_json_answer_before_any_ping_is_a_504(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(request_timeout=1.0, ping_interval=30, idle_timeout=5)
    fake_upstream.push(_slow_json(pieces=20, every=0.5))
    resp, took = _timed(proxy, body=minimal_request(stream=True))
    assert took < 2.5, took
    assert resp.status == 504 and resp.json["error"]["type"] == "timeout_error", resp


def test_quick_json_answer_to_a_stream_request_still_streams(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(request_timeout=1.0)
    fake_upstream.push(Reply(200, JSON, [json.dumps(completion("fine")).encode()]))
    resp, _ = _timed(proxy, body=minimal_request(stream=True))
    events = events_of(resp.body)
    assert events[-1]["type"] == "message_stop"


def test_idle_timeout_message_names_the_configured_seconds(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    # A stream request answered with plain JSON reads under the idle timeout (a non-streaming
    # request waits for its whole answer until --request-timeout: test_upstream_faults.py).
    proxy = make_proxy(idle_timeout=0.5, ping_interval=30)
    body = json.dumps(completion("x")).encode()
    fake_upstream.push(Reply(200, JSON, [body[:10], Sleep(3), body[10:]]))  # stalls inside the body
    resp, took = _timed(proxy, body=minimal_request(stream=True))
    assert took < 2.5, took
    assert resp.status == 504, resp
    assert resp.json["error"]["message"] == "upstream sent nothing for 0.5 s"


def test_idle_timeout_before_the_first_byte_names_the_seconds(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(idle_timeout=0.5)
    fake_upstream.push(Reply(delay=3))
    resp, took = _timed(proxy, body=minimal_request(stream=True))
    assert took < 2.5, took
    assert resp.status == 504 and resp.json["error"]["message"] == "upstream sent nothing for 0.5 s", resp


def _keep_alives(first: bytes, every: float, seconds: float, ping: bytes = b": keep-alive\n\n") -> Reply:
    """A stream that begins with ``first`` and then sends nothing but ``ping`` every ``every`` s."""
    steps: list = [first]
    for _ in range(int(seconds / every)):
        steps += [Sleep(every), ping]
    return Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True)


ROLE_CHUNK = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'


@pytest.mark.parametrize("committed", [False, True])
def test_a_stream_of_nothing_but_keep_alives_ends_at_the_request_timeout(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                        committed: bool) -> None:
    """SSE comments keep a long think alive (the idle timeout counts silence), but not forever: a
    probe's upstream held the client, its thread and a slot with one every 50 ms."""
    proxy = make_proxy(request_timeout=1.0, idle_timeout=0.6, ping_interval=0.3 if committed else 30)
    fake_upstream.push(_keep_alives(ROLE_CHUNK, 0.1, 8))
    resp, took = _timed(proxy, body=minimal_request(stream=True))
    assert took < 3.5, took  # not the upstream's 8 s
    if committed:  # pings went out: the stream ends with its error event
        assert resp.status == 200 and events_of(resp.body)[-1]["type"] == "error", resp.body[-300:]
        assert "nothing but keep-alives" in resp.body.decode()
    else:
        assert resp.status == 504 and "nothing but keep-alives" in resp.json["error"]["message"], resp


def test_keep_alives_between_content_do_not_end_a_stream(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    proxy = make_proxy(request_timeout=1.6, idle_timeout=1.0, ping_interval=30)  # 4x the time between content
    text = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
    steps: list = [ROLE_CHUNK]
    for _ in range(6):  # 2.4 s in all, content every 0.4 s between keep-alives
        steps += [Sleep(0.2), b": keep-alive\n\n", Sleep(0.2), text]
    steps += [b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n']
    fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True))
    resp, took = _timed(proxy, body=minimal_request(stream=True))
    assert resp.status == 200 and events_of(resp.body)[-1]["type"] == "message_stop", resp.body[-300:]
    assert took > 2.0


def test_passthrough_pings_alone_end_at_the_request_timeout(fake_upstream: FakeUpstream) -> None:
    provider = Provider("native", fake_upstream.url.rsplit("/v1", 1)[0], api="messages",
                        token=claudeproxy.static_token(UPSTREAM_KEY))
    server = claudeproxy.start(providers=(provider,), routes=(Route("*", RouteTarget("native")),),
                               request_timeout=1.0, idle_timeout=0.5, ping_interval=30)
    try:
        start = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
                 b'"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
                 b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n')
        fake_upstream.push(_keep_alives(start, 0.1, 8, b'event: ping\ndata: {"type": "ping"}\n\n'))
        resp, took = _timed(server, body=minimal_request(stream=True))
    finally:
        server.shutdown(grace=1.0)
    assert took < 3.5, took
    assert "nothing but keep-alives" in resp.body.decode(), resp


@pytest.fixture
def native(fake_upstream: FakeUpstream) -> Iterator[Any]:
    """A proxy whose only provider speaks the Messages API (upstream count_tokens and model list)."""
    provider = Provider("native", fake_upstream.url.rsplit("/v1", 1)[0], api="messages",
                        token=claudeproxy.static_token(UPSTREAM_KEY))
    server = claudeproxy.start(providers=(provider,), routes=(Route("*", RouteTarget("native")),),
                               request_timeout=1.0, idle_timeout=30)
    yield server
    server.shutdown(grace=1.0)


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/messages/count_tokens", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    ("GET", "/v1/models", None),
], ids=["count_tokens", "models"])
def test_upstream_count_and_model_list_are_bounded(native: Any, fake_upstream: FakeUpstream, method: str,
                                                   path: str, body: Any) -> None:
    fake_upstream.push(Reply(delay=8))
    resp, took = _timed(native, path, body, method)
    assert took < 2.5, f"{path} waited {took:.1f} s for a silent upstream; the bound is 1 s"
    assert resp.status == 504 and resp.json["error"]["type"] == "timeout_error", resp


class _TricklingHead(LoopbackListener):
    """An upstream that sends its response head a byte at a time: never silent for an idle
    timeout, never done."""

    def handle(self, conn: Any) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Padding: " + b"x" * 400 + b"\r\n\r\n"
        with conn:
            conn.settimeout(10)
            try:
                conn.recv(65536)
                for i in range(len(head)):
                    conn.sendall(head[i:i + 1])
                    time.sleep(0.1)
            except OSError:
                pass  # the proxy let go: what the test wants


def test_a_stream_head_sent_a_byte_at_a_time_is_cut_at_the_idle_timeout() -> None:
    upstream = _TricklingHead()
    proxy = claudeproxy.start(upstream=f"http://127.0.0.1:{upstream.port}/v1", idle_timeout=1.0,
                              connect_timeout=0.5, ping_interval=30, token=claudeproxy.static_token(UPSTREAM_KEY))
    try:
        resp, took = _timed(proxy, body=minimal_request(stream=True))
        assert took < 3.5, f"the client waited {took:.1f} s for a head that never ends"
        assert resp.status == 504, resp
        assert resp.json["error"] == {"type": "timeout_error", "message": "upstream did not send its response head "
                                                                          "within --connect-timeout + --idle-timeout"}
    finally:
        proxy.shutdown(grace=1.0)
        upstream.close()


def test_a_stream_head_sent_a_byte_at_a_time_gives_way_to_the_fallback(fake_upstream: Any) -> None:
    """A silent head was retried and then fallen back from; one that came a byte at a time ended in
    a 504 after one attempt, the idle fallback never asked (probe U 3)."""
    upstream = _TricklingHead()
    providers = (Provider("slow", f"http://127.0.0.1:{upstream.port}/v1"), Provider("backup", fake_upstream.url))
    routes = (Route("*", RouteTarget("slow", "m"), fallbacks=(RouteTarget("backup", "b"),)),)
    proxy = claudeproxy.start(providers=providers, routes=routes, idle_timeout=1.0, connect_timeout=0.5,
                              ping_interval=30)
    try:
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "from backup"}), chunk({}, "stop")))
        resp, took = _timed(proxy, body=minimal_request(stream=True))
        assert resp.status == 200 and b"from backup" in resp.body, resp
        assert took < 4, took
    finally:
        proxy.shutdown(grace=1.0)
        upstream.close()


def test_by_default_a_silent_upstream_is_waited_for_as_long_as_claude_code_waits() -> None:
    """FIELD-NOTES 15: reasoning backends hold their answer's head for minutes, and Claude Code gives
    up itself after 600 s (its API timeout): the proxy must not give up first (it did at 300 s)."""
    from claudeproxy import cli

    ns = cli.build_parser().parse_args(["--upstream", "http://127.0.0.1:9/v1"])
    config = cli.config_from_args(ns, {})
    assert config.idle_timeout >= 600 and config.request_timeout >= 600


def test_the_request_timeout_bounds_a_connect_that_hangs(make_proxy: Any) -> None:
    """A listener whose backlog is full drops the connect's SYNs: the call ended at --connect-timeout
    (8 s), past a --request-timeout of 1 s (probe M). A stream is not held to the request timeout."""
    import socket

    listener = socket.socket()
    held = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # fill the backlog: later SYNs go unanswered
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            held.append(sock)
        time.sleep(0.2)
        server = make_proxy(upstream=f"http://127.0.0.1:{port}/v1", connect_timeout=8.0, request_timeout=1.0)
        began = time.monotonic()
        resp = request(server.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": "k"}, timeout=15)
        took = time.monotonic() - began
        assert resp.status == 504 and resp.json["error"]["type"] == "timeout_error", resp
        assert took < 3.0, took
    finally:
        for sock in held:
            sock.close()
        listener.close()
