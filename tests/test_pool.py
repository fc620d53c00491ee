"""Keep-alive connections to the upstream (issue item 1).

The fake upstreams count the TCP connections they accept (with TLS, one
handshake each): N sequential requests must use one connection, plain, over
TLS, through an HTTP proxy (absolute-form) and through a CONNECT tunnel. A
pooled connection the upstream closed meanwhile is replaced invisibly, but
never once a byte of the answer came; an aborted or partly read connection is
never reused; shutdown closes the idle ones. Loopback only.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from typing import Any, Iterator, List, Tuple

import pytest

import claudeproxy
from conftest import UPSTREAM_KEY, minimal_request, request
from fakes import ConnectProxy, FakeUpstream, Gate, Raw, Reply, Sleep, StreamClient, chunk, completion, json_reply, sse_reply

N = 20


def _messages(proxy: Any, **overrides: Any) -> Any:
    return request(proxy.url, "POST", "/v1/messages", minimal_request(**overrides), timeout=10)


@pytest.fixture
def keep_alive() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(keep_alive=True)
    yield fake
    fake.close()


@pytest.fixture
def start() -> Iterator[Any]:
    started: List[Any] = []

    def make(upstream: str, **settings: Any) -> Any:
        server = claudeproxy.start(upstream=upstream, token=claudeproxy.static_token(UPSTREAM_KEY), **settings)
        started.append(server)
        return server

    yield make
    for server in started:
        server.shutdown(grace=1.0)


# ---------------------------------------------------------------------------
# Counting connections.


def test_sequential_requests_share_one_connection(start: Any, keep_alive: FakeUpstream) -> None:
    proxy = start(keep_alive.url)
    for i in range(N):
        if i % 2:
            keep_alive.push(sse_reply(chunk({"content": "hi"}), chunk({}, "stop")))
        resp = _messages(proxy, stream=bool(i % 2))
        assert resp.status == 200, resp
    assert len(keep_alive.requests) == N
    assert keep_alive.connections == 1


def test_error_answers_keep_the_connection(start: Any, keep_alive: FakeUpstream) -> None:
    proxy = start(keep_alive.url)
    keep_alive.push(json_reply({"error": {"message": "bad thing"}}, status=400))
    assert _messages(proxy).status == 400
    assert _messages(proxy).status == 200
    assert keep_alive.connections == 1


def test_max_idle_per_host_zero_opens_a_connection_per_request(start: Any, keep_alive: FakeUpstream) -> None:
    proxy = start(keep_alive.url, max_idle_per_host=0)
    for _ in range(3):
        assert _messages(proxy).status == 200
    assert keep_alive.connections == 3


def test_idle_connections_are_bounded_per_host(start: Any, keep_alive: FakeUpstream) -> None:
    """5 requests at once need 5 connections; afterwards only 2 stay open."""
    proxy = start(keep_alive.url, max_idle_per_host=2)
    gates = [Gate() for _ in range(5)]
    for gate in gates:
        keep_alive.push(Reply(200, (("Content-Type", "application/json"),),
                              [gate, json.dumps(completion("slow")).encode()]))
    results: List[Any] = []
    threads = [threading.Thread(target=lambda: results.append(_messages(proxy))) for _ in gates]
    for thread in threads:
        thread.start()
    for gate in gates:
        assert gate.reached.wait(5)
    for gate in gates:
        gate.release()
    for thread in threads:
        thread.join(10)
    assert [r.status for r in results] == [200] * 5
    assert keep_alive.connections == 5
    assert keep_alive.wait_connections_closed(3, 5), keep_alive.closed_connections
    assert proxy.server.proxy.upstream.pool.idle_count() == 2


def test_shutdown_closes_idle_connections(start: Any, keep_alive: FakeUpstream) -> None:
    proxy = start(keep_alive.url)
    assert _messages(proxy).status == 200
    assert keep_alive.closed_connections == 0
    proxy.shutdown(grace=1.0)
    assert keep_alive.wait_connections_closed(1, 5)


def test_idle_connections_are_closed_without_a_next_call(start: Any, keep_alive: FakeUpstream,
                                                        monkeypatch: Any) -> None:
    """Idle past the pool's limit, a connection is closed by the watchdog's chore even when no call
    comes to take one (it stayed open for as long as the proxy ran idle)."""
    from claudeproxy import pipeline, upstream

    monkeypatch.setattr(upstream, "POOL_IDLE_SECONDS", 0.6)
    monkeypatch.setattr(pipeline, "POOL_IDLE_SECONDS", 0.6)
    proxy = start(keep_alive.url)
    assert _messages(proxy).status == 200
    assert keep_alive.closed_connections == 0
    assert keep_alive.wait_connections_closed(1, 5)  # no second request: the chore did it
    assert proxy.server.proxy.upstream.pool.idle_count() == 0


def test_connection_close_answers_are_not_pooled(start: Any, keep_alive: FakeUpstream) -> None:
    """A ``Connection: close`` answer is never pooled: the next request opens a new connection."""
    plain = FakeUpstream()  # answers with Connection: close
    try:
        proxy = start(plain.url)
        assert _messages(proxy).status == 200
        assert _messages(proxy).status == 200
        assert plain.connections == 2
        assert proxy.server.proxy.upstream.pool.idle_count() == 0
    finally:
        plain.close()


# ---------------------------------------------------------------------------
# Stale connections and aborts.


def test_stale_pooled_connection_is_retried_invisibly(start: Any, keep_alive: FakeUpstream) -> None:
    records: List[Any] = []
    proxy = start(keep_alive.url, metrics_sink=records.append)
    assert _messages(proxy).status == 200
    keep_alive.push(Reply(drop="close"))  # takes the request on the pooled connection, closes without a byte
    resp = _messages(proxy)
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "Hello!"}]
    assert len(keep_alive.requests) == 3  # the first, the dropped one, its retry
    assert keep_alive.connections == 2
    # Invisible to the client, not to the record: the upstream had the request twice (probe I).
    deadline = time.monotonic() + 5
    while len(records) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # a call is recorded just after its answer's last write
    assert [r.attempts for r in records] == [1, 2]


@pytest.mark.parametrize("drop, delay", [("close", 1.5), ("interim", 0.0)], ids=["after-seconds-of-work", "after-a-1xx"])
def test_a_request_the_upstream_had_is_not_sent_again(start: Any, keep_alive: FakeUpstream, drop: str,
                                                      delay: float) -> None:
    """A reused connection that drops seconds after the request went out (a worker that crashed, a
    balancer's cut), or after a 1xx, dropped a request the upstream had: sent again, a call that
    costs tokens was paid twice, with --retries 0 (a probe). Only a drop within STALE_WINDOW of
    the send, before any answer, is an idle connection the upstream had closed."""
    proxy = start(keep_alive.url)
    assert _messages(proxy).status == 200
    keep_alive.push(Reply(drop=drop, delay=delay))
    resp = _messages(proxy)
    assert resp.status == 502, resp
    # A connection that carried an answer over http: no TLS server refusing plain HTTP (probe U 7).
    assert "https://" not in resp.json["error"]["message"], resp.json
    assert len(keep_alive.requests) == 2  # the first, and the dropped one: not again


def test_no_retry_once_a_response_byte_came(start: Any, keep_alive: FakeUpstream) -> None:
    proxy = start(keep_alive.url)
    assert _messages(proxy).status == 200
    keep_alive.push(Reply(drop="partial"))  # half a status line, then close
    resp = _messages(proxy)
    assert resp.status == 502, resp
    assert len(keep_alive.requests) == 2


def test_junk_on_a_reused_connection_is_a_broken_keep_alive_not_an_upstream_that_is_no_http(
        start: Any, keep_alive: FakeUpstream) -> None:
    """A line that is no HTTP where a reused connection's answer should begin: a 502 worth another
    try (it was 'not HTTP/1.1' with x-should-retry: false, even with --retries 3: probe D), never
    sent again by the pool itself (the upstream had it: review G). On a fresh connection the same
    line still says the upstream is no HTTP server."""
    proxy = start(keep_alive.url)
    assert _messages(proxy).status == 200
    keep_alive.push(Reply(drop="junk"))
    resp = _messages(proxy)
    assert resp.status == 502 and resp.headers.get("x-should-retry") == "true", resp
    # The upstream was reached (it had the request): not "could not reach the upstream".
    message = resp.json["error"]["message"]
    assert message.startswith("the connection to the upstream at 127.0.0.1:") and "SSH-2.0" in message, message
    assert len(keep_alive.requests) == 2  # the first, and the one answered with junk: not again
    assert _messages(proxy).status == 200  # the client's retry, on a fresh connection
    retrying = start(keep_alive.url, retries=1)
    assert _messages(retrying).status == 200
    keep_alive.push(Reply(drop="junk"))
    assert _messages(retrying).status == 200  # --retries: the proxy's next attempt gets past it
    fresh = start(keep_alive.url, max_idle_per_host=0)
    keep_alive.push(Reply(drop="junk"))
    refused = _messages(fresh)
    assert refused.status == 502 and "not HTTP/1.1" in refused.json["error"]["message"], refused
    assert refused.headers.get("x-should-retry") == "false"


def test_interim_answers_are_skipped_and_never_taken_for_the_next_requests(start: Any,
                                                                           keep_alive: FakeUpstream) -> None:
    # A 103 Early Hints taken for the final answer would leave this answer on the pooled
    # connection, to be read as the next request's (RFC 9110 15.2: a client skips every 1xx).
    proxy = start(keep_alive.url)
    assert _messages(proxy).status == 200
    keep_alive.push(Reply(interim=(103, 102), body=[json.dumps(completion("answer one")).encode()]))
    first, second = _messages(proxy), _messages(proxy)
    assert first.status == 200, first
    assert first.json["content"] == [{"type": "text", "text": "answer one"}]
    assert second.status == 200, second
    assert second.json["content"] == [{"type": "text", "text": "Hello!"}]
    assert keep_alive.connections == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_head_cut_by_the_connection_end_is_a_502_worth_retrying(start: Any, keep_alive: FakeUpstream,
                                                                  stream: bool) -> None:
    # http.client takes the end of the connection for the end of the head: the answer would pass
    # for an empty one ("not JSON", "ended early"), not for a broken connection.
    proxy = start(keep_alive.url, retries=0)
    keep_alive.push(Reply(drop="head"))
    resp = _messages(proxy, stream=stream)
    assert resp.status == 502, resp
    assert "inside the response head" in resp.json["error"]["message"], resp.json
    assert resp.headers.get("x-should-retry") == "true"
    assert _messages(proxy).status == 200  # and the next request is served on a fresh connection


def test_no_retry_on_a_fresh_connection(start: Any, keep_alive: FakeUpstream) -> None:
    proxy = start(keep_alive.url)
    keep_alive.push(Reply(drop="close"))
    resp = _messages(proxy)
    assert resp.status == 502, resp
    assert len(keep_alive.requests) == 1


def test_client_gone_mid_stream_closes_the_connection_and_it_is_not_reused(start: Any,
                                                                          keep_alive: FakeUpstream) -> None:
    proxy = start(keep_alive.url)
    gate = Gate()
    keep_alive.push(sse_reply(chunk({"content": "a"}), gate, chunk({}, "stop")))
    with StreamClient(proxy.url, minimal_request(stream=True)) as client:
        client.read_until("content_block_delta", timeout=5)
        assert gate.reached.wait(5)
    assert keep_alive.wait_closed(2) is not None, "the upstream connection stayed open"
    gate.release()
    assert _messages(proxy).status == 200
    assert keep_alive.connections == 2


def test_partly_read_answer_is_not_reused(start: Any, keep_alive: FakeUpstream) -> None:
    """An upstream that keeps talking after its stream is done: the connection is closed, not pooled."""
    proxy = start(keep_alive.url, finish_grace=0.3)
    tail = [b"data: " + json.dumps(chunk({})).encode() + b"\n\n"] * 10
    reply = sse_reply(chunk({"content": "a"}), chunk({}, "stop"), done=False)
    reply.body += [b"data: [DONE]\n\n"] + [b": keep talking\n\n"] * 50000 + tail
    keep_alive.push(reply)
    resp = _messages(proxy, stream=True)
    assert resp.status == 200
    assert _messages(proxy).status == 200
    assert keep_alive.connections == 2


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("size_line", [b"zz\r\n", b"1" * 17 + b"\r\n"])
def test_an_answer_with_a_bad_chunk_size_line_never_answers_the_next_request(start: Any, keep_alive: FakeUpstream,
                                                                             stream: bool, size_line: bytes) -> None:
    """A bad first size line closed the reader, which read as a body past its terminating chunk: the
    connection went back to the pool, and what the upstream sent after it was the next request's
    answer, and so on, each client getting the answer of the one before (probe AA, F-1)."""
    proxy = start(keep_alive.url, retries=0)
    leftover = json.dumps(completion("LEFTOVER of the first answer")).encode()
    late = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(leftover), leftover)
    keep_alive.push(Reply(200, (("Content-Type", "text/event-stream" if stream else "application/json"),),
                          [Raw(size_line), Sleep(0.6), Raw(late)], chunked=True),
                    json_reply(completion("the second answer")))
    first = _messages(proxy, stream=stream)
    assert first.status in (200, 502), first  # a stream's head went out: it ends in an error event
    second = _messages(proxy)
    assert second.status == 200, second
    assert json.loads(second.body)["content"][0]["text"] == "the second answer"
    assert keep_alive.connections == 2


# ---------------------------------------------------------------------------
# TLS and proxies.


@pytest.fixture
def tls_upstream(certificate: Tuple[str, str]) -> Iterator[FakeUpstream]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    fake = FakeUpstream(keep_alive=True, tls=context)
    yield fake
    fake.close()


def test_tls_upstream_is_handshaked_once(start: Any, tls_upstream: FakeUpstream, certificate: Tuple[str, str]) -> None:
    proxy = start(tls_upstream.url, ca_bundle=certificate[0])
    for i in range(N):
        if i % 2:
            tls_upstream.push(sse_reply(chunk({"content": "hi"}), chunk({}, "stop")))
        assert _messages(proxy, stream=bool(i % 2)).status == 200
    assert tls_upstream.connections == 1
    assert tls_upstream.tls.session_stats()["accept_good"] == 1  # handshakes completed


def test_a_refused_certificate_is_said_and_not_retried(start: Any, tls_upstream: FakeUpstream) -> None:
    """A self-signed certificate without --ca-bundle fails the same way every time: the client
    hears why and that a retry cannot help (Claude Code would retry a "could not reach" for minutes)."""
    proxy = start(tls_upstream.url, retries=2)
    resp = _messages(proxy)
    assert resp.status == 502, resp
    assert resp.headers.get("x-should-retry") == "false"
    assert "its TLS certificate was refused" in resp.json["error"]["message"]
    assert "--ca-bundle" in resp.json["error"]["message"]


def test_a_certificate_for_another_name_says_so_not_ca_bundle(start: Any, tls_upstream: FakeUpstream,
                                                                 certificate: Tuple[str, str]) -> None:
    """The certificate is for 127.0.0.1, the URL says localhost: a CA bundle cannot fix that (probe M)."""
    proxy = start(tls_upstream.url.replace("127.0.0.1", "localhost"), ca_bundle=certificate[0], retries=2)
    resp = _messages(proxy)
    assert resp.status == 502 and resp.headers.get("x-should-retry") == "false", resp
    message = resp.json["error"]["message"]
    assert "its TLS certificate is for another host name" in message and "--ca-bundle" not in message, message
    assert tls_upstream.connections == 1


def test_http_to_a_tls_server_asks_whether_the_url_should_be_https(start: Any, tls_upstream: FakeUpstream) -> None:
    """A TLS server closes a plain request without a word: "broke before its answer" alone did
    not point at the URL's scheme (probe M)."""
    proxy = start(tls_upstream.url.replace("https://", "http://"))
    resp = _messages(proxy)
    assert resp.status == 502, resp
    assert resp.json["error"]["message"].endswith("; an http:// URL for an https:// server?"), resp.json


def test_https_to_a_plain_http_server_is_said_and_not_retried(start: Any, keep_alive: FakeUpstream) -> None:
    proxy = start(keep_alive.url.replace("http://", "https://"), retries=2)
    resp = _messages(proxy)
    assert resp.status == 502, resp
    assert resp.headers.get("x-should-retry") == "false"
    assert "does not speak TLS on this port" in resp.json["error"]["message"]
    assert keep_alive.connections == 1


def test_http_proxy_connection_is_reused(start: Any, keep_alive: FakeUpstream) -> None:
    """Plain HTTP through --proxy: absolute-form requests on one connection to the proxy."""
    outbound = FakeUpstream(keep_alive=True)
    try:
        proxy = start(keep_alive.url, proxy=f"http://127.0.0.1:{outbound.port}")
        for _ in range(N):
            assert _messages(proxy).status == 200
        assert keep_alive.requests == []
        assert len(outbound.requests) == N and outbound.requests[0].path.startswith("http://127.0.0.1:")
        assert outbound.connections == 1
    finally:
        outbound.close()


def test_connect_tunnel_is_reused(start: Any, tls_upstream: FakeUpstream, certificate: Tuple[str, str]) -> None:
    """HTTPS through --proxy: one CONNECT tunnel, one TLS handshake, for all N requests."""
    tunnel = ConnectProxy()
    try:
        proxy = start(tls_upstream.url, ca_bundle=certificate[0], proxy=f"http://127.0.0.1:{tunnel.port}")
        for _ in range(N):
            assert _messages(proxy).status == 200
        assert len(tls_upstream.requests) == N
        assert tunnel.tunnels == 1 and tunnel.targets == [f"127.0.0.1:{tls_upstream.port}"]
        assert tls_upstream.connections == 1
        assert tls_upstream.tls.session_stats()["accept_good"] == 1
    finally:
        proxy.shutdown(grace=1.0)
        tunnel.close()


# ---------------------------------------------------------------------------
# The transport on its own.


def test_upstream_close_ends_pooled_connections(keep_alive: FakeUpstream) -> None:
    from claudeproxy.config import Config
    from claudeproxy.upstream import Upstream, UpstreamCall, read_json_body

    upstream = Upstream(Config())
    try:
        for _ in range(3):
            call = UpstreamCall()
            with upstream.open(keep_alive.url + "/chat/completions", call=call, body=b"{}") as resp:
                assert read_json_body(resp, call, 1 << 20)["object"] == "chat.completion"
        assert keep_alive.connections == 1 and upstream.pool.idle_count() == 1
        assert upstream.pool.opened == 1
    finally:
        upstream.close()
    assert keep_alive.wait_connections_closed(1, 5)


def test_aborted_call_never_goes_back_to_the_pool(keep_alive: FakeUpstream) -> None:
    from claudeproxy.config import Config
    from claudeproxy.upstream import Upstream, UpstreamCall

    upstream = Upstream(Config())
    try:
        call = UpstreamCall()
        resp = upstream.open(keep_alive.url + "/chat/completions", call=call, body=b"{}")
        call.abort("client")
        with resp:
            try:
                resp.read()
            except (OSError, http.client.HTTPException):
                pass  # the abort may cut the body short: either way the connection is done for
        assert upstream.pool.idle_count() == 0
    finally:
        upstream.close()


class _Sends:
    """A connected socket's stand-in that keeps each send."""

    def __init__(self) -> None:
        self.sent: List[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("secure", [False, True])
def test_a_request_goes_to_the_upstream_in_one_send(secure: bool) -> None:
    """Head and body together: http.client's two sends cost a segment and a wake-up of the upstream each."""
    from claudeproxy.upstream import _TrackedHTTP, _TrackedHTTPS

    conn = (_TrackedHTTPS if secure else _TrackedHTTP)("127.0.0.1", 9, call=None, read_timeout=5)
    conn.sock = _Sends()
    body = json.dumps(minimal_request()).encode()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    [sent] = conn.sock.sent
    head, _, rest = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and rest == body
    assert f"Content-Length: {len(body)}".encode() in head


def test_a_slow_end_of_body_does_not_hold_the_streams_end(keep_alive: FakeUpstream, start: Any,
                                                           monkeypatch: Any) -> None:
    """The stream is over ([DONE]) but the upstream's terminating chunk is late (a gateway that
    flushes it later): the client has its message_stop at once, and the connection still goes back
    to the pool once the terminator comes."""
    from claudeproxy import upstream as upstream_module

    monkeypatch.setattr(upstream_module, "DRAIN_SECONDS", 8.0)  # a drain before the client's end would show
    gate = Gate()
    keep_alive.push(sse_reply(chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop"),
                              {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
                              "data: [DONE]\n\n", gate, done=False))
    keep_alive.push(json_reply(completion("again")))
    server = start(keep_alive.url)
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": "x"}, timeout=8) as client:
        client.read_until("message_stop", timeout=4)  # under the 8 s drain: it did not wait for the terminator
        assert gate.reached.wait(5) and not gate.event.is_set()
    gate.release()
    deadline = time.monotonic() + 5
    while server.server.proxy.upstream.pool.idle_count() == 0 and time.monotonic() < deadline:  # the drain ends
        time.sleep(0.01)
    assert _messages(server).status == 200
    assert keep_alive.connections == 1  # the late terminator was still read: the connection was reused


def test_a_client_that_closes_right_after_the_stream_leaves_the_connection_reusable(keep_alive: FakeUpstream,
                                                                                   start: Any,
                                                                                   monkeypatch: Any) -> None:
    """A one-shot client closes as soon as it has message_stop, while the upstream's terminating
    chunk is still on its way: the watchdog saw the client gone and aborted the call, cutting the
    drain, and every stream cost a new connection (through a proxy, a CONNECT and a TLS handshake)."""
    from claudeproxy import upstream as upstream_module

    monkeypatch.setattr(upstream_module, "DRAIN_SECONDS", 3.0)  # room for several watchdog ticks
    gate = Gate()
    keep_alive.push(sse_reply(chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop"),
                              {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
                              "data: [DONE]\n\n", gate, done=False))
    keep_alive.push(json_reply(completion("again")))
    server = start(keep_alive.url)
    with StreamClient(server.url, minimal_request(stream=True), headers={"x-api-key": "x"}, timeout=8) as client:
        client.read_until("message_stop", timeout=4)
        assert gate.reached.wait(5)
    time.sleep(0.5)  # the client is gone, and the watchdog (every 0.1 s) has seen it
    gate.release()
    deadline = time.monotonic() + 5
    while server.server.proxy.upstream.pool.idle_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _messages(server).status == 200
    assert keep_alive.connections == 1  # the terminator was read after the client left: reused


def test_a_response_whose_read_timed_out_is_read_no_more_and_not_pooled() -> None:
    """After an idle timeout the buffered reader has lost what it had taken of a line: the pool's
    drain read on out of step, took ``0`` of the next chunk's size ``100`` for the last chunk and
    gave the connection back as complete (review of the direct socket reads). Now the response
    reads nothing more after a timeout, as the stdlib's socket reader does, and is not pooled."""
    import socket

    from claudeproxy.upstream import _Response

    ours, theirs = socket.socketpair()
    try:
        event = b"data: x\n\n"
        theirs.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
                       + b"%x\r\n%s\r\n" % (len(event), event))
        resp = _Response(ours, method="POST")
        resp.begin()
        ours.settimeout(0.3)
        assert resp.read_available(65536) == event
        with pytest.raises(socket.timeout):
            resp.read_available(65536)  # the upstream is silent past the idle timeout
        padded = b'data: {"pad": "' + b"y" * 237 + b'"}\n\n'
        assert len(padded) == 0x100
        later = threading.Timer(0.05, theirs.sendall, [b"100\r\n" + padded + b"\r\n0\r\n\r\n"])
        later.start()  # then it goes on, within the drain's wait
        released: List[bool] = []
        resp.cp_sock = ours  # type: ignore[attr-defined]
        resp.cp_release = released.append
        resp.close()
        later.join(5)
        assert released == [False]
    finally:
        ours.close()
        theirs.close()


def test_a_pooled_connection_the_upstream_closed_while_idle_is_not_used(start: Any) -> None:
    """Seen closed when taken from the pool (readable: its EOF), it is dropped before anything is
    sent: the next request goes on a new connection, once, with no failed attempt (probe AM 3.1)."""
    from test_upstream_answers import RawUpstream

    body = json.dumps(completion()).encode()

    def answer_then_close_while_idle(number: int, on_it: int, conn: Any, head: bytes) -> bool:
        # A server whose keep-alive timeout is shorter than the proxy's pool's.
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        time.sleep(0.1)
        return False

    upstream = RawUpstream(answer_then_close_while_idle)
    records: List[Any] = []
    try:
        proxy = start(upstream.url, metrics_sink=records.append)
        assert _messages(proxy).status == 200
        time.sleep(0.5)  # the upstream has closed the pooled connection by now
        assert _messages(proxy).status == 200
        assert (upstream.requests, upstream.connections) == (2, 2)  # no request was sent on the closed one
        deadline = time.monotonic() + 5
        while len(records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [r.attempts for r in records] == [1, 1]
    finally:
        upstream.close()
