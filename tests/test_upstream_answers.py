"""What an upstream's connection does around its answer, over raw sockets: an error whose body
cannot be read, an answer sent before the request was read, a 408 on an idle pooled connection,
a status line cut short. Each was found by a probe of the transport; all traffic on loopback.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from typing import Any, Callable, Iterator, List, Tuple

import pytest

import claudeproxy
from conftest import UPSTREAM_KEY, minimal_request, request

OK = json.dumps({"id": "c1", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}]}).encode()
# What to do with each request: (connection number, request number on it, the socket, the head bytes read).
Script = Callable[[int, int, socket.socket, bytes], bool]  # False: close the connection


def answer(status: str, body: bytes = b"", *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Content-Type: application/json", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawUpstream:
    """A one-port upstream whose every exchange ``script`` writes by hand; counts what it saw."""

    def __init__(self, script: Script, read_body: bool = True) -> None:
        self.script, self.read_body = script, read_body
        self.connections = self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(10)
        with conn:
            on_it = 0
            while True:
                head = self._head(conn)
                if head is None:
                    return
                on_it += 1
                self.requests += 1
                if self.read_body:
                    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length:")), b"0"))
                    while length > 0:
                        length -= len(conn.recv(min(length, 65536)) or b"x" * length)
                if not self.script(number, on_it, conn, head):
                    return

    @staticmethod
    def _head(conn: socket.socket) -> Any:
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                piece = conn.recv(1)
            except OSError:
                return None
            if not piece:
                return None
            data += piece
        return data

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def upstreams() -> Iterator[List[RawUpstream]]:
    made: List[RawUpstream] = []
    yield made
    for upstream in made:
        upstream.close()


def proxy_for(upstream: RawUpstream, **settings: Any) -> Any:
    return claudeproxy.start(upstream=upstream.url, token=claudeproxy.static_token(UPSTREAM_KEY), port=0, **settings)


def ask(server: Any, **overrides: Any) -> Any:
    return request(f"http://127.0.0.1:{server.server.server_address[1]}", "POST", "/v1/messages",
                   minimal_request(**overrides), timeout=30)


def asked(upstreams: List[RawUpstream], script: Script, times: int = 1, **settings: Any) -> Tuple[RawUpstream, List[Any]]:
    """An upstream that ``script`` writes, a proxy in front of it asked ``times`` times, stopped after."""
    upstream = RawUpstream(script)
    upstreams.append(upstream)
    server = proxy_for(upstream, **settings)
    try:
        return upstream, [ask(server) for _ in range(times)]
    finally:
        server.shutdown(grace=0.1)


def reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST


@pytest.mark.parametrize("how", ["reset-in-chunked-body", "bad-chunk-size", "held-open-without-length"])
def test_an_error_whose_body_cannot_be_read_is_its_status_not_a_500(upstreams: List[RawUpstream], how: str) -> None:
    """The body read of an upstream error raised inside the error's own handler: a 500 "internal
    proxy error"; a body held open kept the call until its whole deadline (a probe)."""
    def script(number: int, on_it: int, conn: socket.socket, head: bytes) -> bool:
        if how == "reset-in-chunked-body":
            conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n10\r\n{\"error\": {\"mes")
            time.sleep(0.2)
            reset(conn)
        elif how == "bad-chunk-size":
            conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        else:  # no length, no chunking, and the connection stays open: the body never ends
            conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 7\r\n\r\n{")
            time.sleep(8)
        return False

    upstream = RawUpstream(script)
    upstreams.append(upstream)
    server = proxy_for(upstream)
    try:
        started = time.monotonic()
        resp = ask(server)
        took = time.monotonic() - started
    finally:
        server.shutdown(grace=0.1)
    assert resp.status == 429 and resp.json["error"]["type"] == "rate_limit_error", resp
    assert resp.headers.get("retry-after") == "7"
    assert took < 7, f"answered after {took:.1f} s"  # within ERROR_BODY_SECONDS, not the request timeout


def test_an_answer_sent_before_the_request_was_read_reaches_the_client(upstreams: List[RawUpstream]) -> None:
    """nginx answers 413 to a body over its client_max_body_size after the head alone, and closes:
    the send failed, and the client got a retryable "could not reach the upstream" (a probe)."""
    too_large = json.dumps({"error": {"message": "413 Request Entity Too Large", "type": "invalid_request_error"}})

    def script(number: int, on_it: int, conn: socket.socket, head: bytes) -> bool:
        conn.sendall(answer("413 Request Entity Too Large", too_large.encode(), "Connection: close"))
        time.sleep(0.1)
        reset(conn)  # what unread request bytes make of the close
        return False

    upstream = RawUpstream(script, read_body=False)
    upstreams.append(upstream)
    server = proxy_for(upstream, retries=2)
    big = "x" * (8 * 1024 * 1024)  # far more than the socket buffers hold: the send fails
    try:
        resp = ask(server, messages=[{"role": "user", "content": big}])
    finally:
        server.shutdown(grace=0.1)
    assert resp.status in (400, 413), resp  # the upstream's answer (a 413 reads as "prompt is too long")
    assert "could not reach" not in resp.json["error"]["message"]
    assert upstream.requests == 1  # an answer, not a failure to retry with the whole body again


def test_a_408_on_an_idle_pooled_connection_is_a_fresh_connection_not_the_answer(upstreams: List[RawUpstream]) -> None:
    """A server that times an idle connection out may write "408 Request Timeout" as it closes it;
    the next request on it was never read, and its client got the 408 (a probe)."""
    def script(number: int, on_it: int, conn: socket.socket, head: bytes) -> bool:
        if number == 1 and on_it == 2:
            conn.sendall(answer("408 Request Timeout", b"", "Connection: close"))
            return False
        conn.sendall(answer("200 OK", OK))
        return True

    upstream = RawUpstream(script)
    upstreams.append(upstream)
    server = proxy_for(upstream)
    try:
        first, second = ask(server), ask(server)
    finally:
        server.shutdown(grace=0.1)
    assert (first.status, second.status) == (200, 200), second
    assert second.json["content"] == [{"type": "text", "text": "fine"}]
    assert (upstream.connections, upstream.requests) == (2, 3)


def test_a_status_line_cut_short_is_a_cut_answer_not_one_that_is_no_http(upstreams: List[RawUpstream]) -> None:
    """"HTTP/1.1 2" and the end was "its answer is not HTTP/1.1", not worth a retry; two bytes later
    it was a cut head, retried. Both are an answer cut short (a probe)."""
    def script(number: int, on_it: int, conn: socket.socket, head: bytes) -> bool:
        if number == 1:
            conn.sendall(b"HTTP/1.1 2")
            return False
        conn.sendall(answer("200 OK", OK))
        return True

    upstream = RawUpstream(script)
    upstreams.append(upstream)
    server = proxy_for(upstream, retries=1, retry_max_wait=1)
    try:
        resp = ask(server)
    finally:
        server.shutdown(grace=0.1)
    assert resp.status == 200, resp
    assert upstream.requests == 2


@pytest.mark.parametrize("body_head, body", [
    ("Transfer-Encoding: chunked", b"-1\r\n" + OK + b"\r\n0\r\n\r\n"),  # int() reads -1: to the close
    ("Transfer-Encoding: chunked", b"+" + b"%x\r\n" % len(OK) + OK + b"\r\n0\r\n\r\n"),
    ("Transfer-Encoding: chunked", b"0x%x\r\n" % len(OK) + OK + b"\r\n0\r\n\r\n"),
    ("Transfer-Encoding: gzip, chunked", b"%x\r\n" % len(OK) + OK + b"\r\n0\r\n\r\n"),
    ("Content-Length: %d\r\nContent-Length: %d" % (len(OK), len(OK) + 5), OK),
    ("Content-Length: +%d" % len(OK), OK),
], ids=["size-minus-1", "size-plus", "size-0x", "gzip-chunked", "two-lengths", "length-plus"])
def test_an_answer_whose_framing_is_bad_is_a_502_at_once(upstreams: List[RawUpstream], body_head: str, body: bytes) -> None:
    """A chunk size of -1 kept a JSON answer until its whole deadline; ``gzip, chunked`` was read as
    no transfer coding (the raw chunks as the body); two Content-Lengths that disagree were read by
    the first. Each is a body whose end is not known: a 502 now, and the connection is not kept
    (a probe of the transport)."""
    def script(number: int, on_it: int, conn: socket.socket, head: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + body_head.encode() + b"\r\n\r\n" + body)
        time.sleep(8)  # held open: only the framing can end the body
        return False

    started = time.monotonic()
    _, [resp] = asked(upstreams, script, retries=0)
    took = time.monotonic() - started
    assert resp.status == 502 and resp.json["type"] == "error", resp
    assert took < 5, f"answered after {took:.1f} s"


@pytest.mark.parametrize("body_head", ["Transfer-Encoding: identity, chunked", "Content-Length: %d, %d" % (len(OK), len(OK)),
                                       "Content-Length: 00%d" % len(OK), "Transfer-Encoding: chunked; zeros",
                                       "Content-Length: %d\r\nContent-Length: 0%d" % (len(OK), len(OK))],
                         ids=["identity-chunked", "length-list", "length-zeros", "size-zeros", "lengths-equal"])
def test_framing_that_is_odd_but_clear_is_read(upstreams: List[RawUpstream], body_head: str) -> None:
    """What RFC 9112 lets a client read: a list of one length repeated, leading zeros (in a chunk
    size too: 1*HEXDIG, any number of them), ``identity``."""
    chunked = "chunked" in body_head
    size = (b"0" * 20 if body_head.endswith("; zeros") else b"") + b"%x" % len(OK)
    body_head = body_head.replace("; zeros", "")
    payload = (size + b"\r\n" + OK + b"\r\n0\r\n\r\n") if chunked else OK

    def script(number: int, on_it: int, conn: socket.socket, head: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + body_head.encode() + b"\r\n\r\n" + payload)
        return True

    _, [resp] = asked(upstreams, script, retries=0)
    assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "fine"}], resp


@pytest.mark.parametrize("head", ["Transfer-Encoding: chunked\r\nContent-Length: 5", "HTTP/1.0 Transfer-Encoding: chunked"],
                         ids=["chunked-and-length", "chunked-in-http-1.0"])
def test_an_answer_with_faulty_framing_is_read_and_its_connection_not_used_again(upstreams: List[RawUpstream],
                                                                                  head: str) -> None:
    """Transfer-Encoding beside a Content-Length, or in an HTTP/1.0 answer: RFC 9112 6.1 calls the
    framing faulty (a way to smuggle a second answer). It is read as chunked, and the connection
    went back to the pool (a review); it is closed now."""
    version = "HTTP/1.0" if head.startswith("HTTP/1.0") else "HTTP/1.1"
    fields = head.replace("HTTP/1.0 ", "")

    def script(number: int, on_it: int, conn: socket.socket, raw: bytes) -> bool:
        conn.sendall(f"{version} 200 OK\r\nContent-Type: application/json\r\n{fields}\r\n\r\n".encode()
                     + b"%x\r\n" % len(OK) + OK + b"\r\n0\r\n\r\n")
        return True

    upstream, (first, second) = asked(upstreams, script, times=2, retries=0)
    assert (first.status, second.status) == (200, 200), (first, second)
    assert upstream.connections == 2


def test_a_bodiless_answers_length_is_not_read(upstreams: List[RawUpstream]) -> None:
    """A 304 or 204 has no body whatever its head says: a junk Content-Length there was a 502 (a review)."""
    def script(number: int, on_it: int, conn: socket.socket, raw: bytes) -> bool:
        if on_it == 1:
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: junk\r\n\r\n")
        else:
            conn.sendall(answer("200 OK", OK))
        return True

    _, [resp] = asked(upstreams, script, retries=0)
    assert resp.status == 502 and "could not" not in resp.json["error"]["message"], resp  # a 204 is no answer
    assert "Content-Length" not in resp.json["error"]["message"], resp
