"""Bad input over real sockets: every failure is an Anthropic-shaped 4xx, fast, with no traceback.

RELIABILITY.md F1-F7 and F25, stdlib traps S3, S4 and S15; PROTOCOL.md 4.1 and
case 71. Raw sockets send what http.client refuses to send (bad lengths,
duplicate headers, a body that never comes).
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import claudeproxy
from conftest import CLIENT_KEY, UPSTREAM_KEY, Response, minimal_request, quota_probe, request
from fakes import FakeUpstream, completion, json_reply
from sse_checks import assert_valid_event_sequence, events_of

REQUEST_ID_RE = re.compile(r"^req_[A-Za-z0-9]{24}$")


# ---------------------------------------------------------------------------
# Raw HTTP helpers (also imported by the other server-level test modules).


class RawResponse(Response):
    """One response read off a raw socket: status, headers (lower-case names), body, timing."""

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes, elapsed: float) -> None:
        super().__init__(status, headers, body)
        self.elapsed = elapsed

    def __repr__(self) -> str:
        return f"RawResponse({self.status}, {self.body[:300]!r})"


def read_response(sock: socket.socket, timeout: float = 5.0, started: Optional[float] = None) -> RawResponse:
    """Read one Content-Length-framed response; AssertionError if it does not come in time."""
    started = time.monotonic() if started is None else started
    deadline = started + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock, deadline, buf)
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
    while len(body) < length:
        body += _recv(sock, deadline, body)
    return RawResponse(status, headers, body[:length], time.monotonic() - started)


def _recv(sock: socket.socket, deadline: float, sofar: bytes) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise AssertionError(f"no complete response in time; got {sofar[:200]!r}")
    sock.settimeout(left)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        raise AssertionError(f"no complete response in time; got {sofar[:200]!r}") from None
    if not data:
        raise AssertionError(f"connection closed before a complete response; got {sofar[:200]!r}")
    return data


def peer_closed(sock: socket.socket, timeout: float = 1.0) -> bool:
    """True if the server closes the connection within ``timeout`` (EOF or reset)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionError:
        return True


def connect(url: str, timeout: float = 5.0) -> socket.socket:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def raw_request(url: str, data: bytes, timeout: float = 5.0) -> RawResponse:
    """Send ``data`` as is on a new connection and read one response."""
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(data)
        return read_response(sock, timeout, started)


def http_bytes(method: str, path: str, headers: List[Tuple[str, str]], body: bytes = b"") -> bytes:
    """A request exactly as given: no header is added or fixed up."""
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def json_post(body: bytes, content_type: Optional[str] = "application/json", path: str = "/v1/messages") -> bytes:
    headers = [("Host", "127.0.0.1")]
    headers += [("Content-Type", content_type)] if content_type is not None else []
    headers += [("Content-Length", str(len(body)))]
    return http_bytes("POST", path, headers, body)


def assert_error(resp: Any, status: int, error_type: str, message_part: str = "") -> str:
    """The Anthropic error shape (PROTOCOL.md 4.1, case 71); returns the message."""
    assert resp.status == status, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json
    assert set(body) == {"type", "error", "request_id"}, body
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type, body
    assert REQUEST_ID_RE.match(resp.headers["request-id"]), resp.headers
    assert body["request_id"] == resp.headers["request-id"]
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message and 'File "' not in message
    assert message_part in message, message
    return str(message)


@pytest.fixture
def no_tracebacks(capfd: Any, caplog: Any) -> Iterator[None]:
    """Invariant (e) of RELIABILITY.md section 4: nothing the proxy logs carries a traceback."""
    caplog.set_level("DEBUG", logger="claudeproxy")
    yield
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    bad = [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
    assert not bad, [r.getMessage() for r in bad]


def reset_fake(fake: FakeUpstream) -> FakeUpstream:
    """A shared fake as good as new: no recorded requests, no queued replies, the default answer."""
    del fake.requests[:]
    while not fake.replies.empty():
        fake.replies.get_nowait()
    fake.received.clear()
    fake.closed_at = None
    fake.default = json_reply(completion())
    return fake


@pytest.fixture(scope="module")
def shared() -> Iterator[Tuple[Any, Any]]:
    """One fake upstream and one proxy for the whole module: these tests only send bad input."""
    fake = FakeUpstream()
    server = claudeproxy.start(upstream=fake.url, token=claudeproxy.static_token(UPSTREAM_KEY))
    yield fake, server
    server.shutdown(grace=1.0)
    fake.close()


@pytest.fixture
def fake_upstream(shared: Tuple[Any, Any]) -> Any:
    return reset_fake(shared[0])


@pytest.fixture
def url(shared: Tuple[Any, Any], fake_upstream: Any, no_tracebacks: None) -> str:
    return str(shared[1].url)


def healthy(url: str) -> bool:
    return request(url, "GET", "/health").status == 200


# ---------------------------------------------------------------------------
# F1-F3: the body is not usable JSON.


def test_malformed_json_is_400(url: str, fake_upstream: Any) -> None:
    resp = raw_request(url, json_post(b'{"model":'))
    assert_error(resp, 400, "invalid_request_error", "not valid JSON")
    assert fake_upstream.requests == []


def test_non_utf8_body_is_400(url: str) -> None:
    resp = raw_request(url, json_post(b'{"model":"\xff"}'))
    assert_error(resp, 400, "invalid_request_error", "UTF-8")


def test_hundred_thousand_open_brackets_is_400_and_the_proxy_lives(url: str) -> None:
    resp = raw_request(url, json_post(b"[" * 100000))
    assert_error(resp, 400, "invalid_request_error")
    assert healthy(url)


def _schema(depth: int) -> Dict[str, Any]:
    schema: Dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize("depth", [400, 2500])  # the JSON is 2x deeper: past 995, json.loads recurses out
def test_deep_input_schema_is_400_without_recursion_error(url: str, fake_upstream: Any, depth: int) -> None:
    body = minimal_request(tools=[{"name": "t", "input_schema": _schema(depth)}])
    # json.dumps itself would recurse too deep for the larger case: build the bytes by hand.
    data = _dumps_deep(body)
    resp = raw_request(url, json_post(data))
    message = assert_error(resp, 400, "invalid_request_error")
    assert "nest" in message, message
    assert fake_upstream.requests == []
    assert healthy(url)


def _dumps_deep(body: Dict[str, Any]) -> bytes:
    inner = body["tools"][0]["input_schema"]
    depth = 0
    while isinstance(inner, dict) and "properties" in inner:
        inner, depth = inner["properties"]["a"], depth + 1
    schema = b'{"type":"object","properties":{"a":' * depth + b'{"type":"string"}' + b"}}" * depth
    shell = dict(body, tools=[{"name": "t", "input_schema": "@@"}])
    return json.dumps(shell).encode("utf-8").replace(b'"@@"', schema)


def test_ordinary_schema_depth_is_accepted(url: str, fake_upstream: Any) -> None:
    # The nesting cap must not reject the schemas real tools use.
    resp = raw_request(url, json_post(json.dumps(minimal_request(tools=[
        {"name": "t", "input_schema": _schema(20)}])).encode("utf-8")))
    assert resp.status == 200, resp
    assert len(fake_upstream.requests) == 1


# ---------------------------------------------------------------------------
# F4: valid JSON, wrong shape. The message starts with the JSON path.

_OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, path", [
    ([], "body"),
    ({"max_tokens": 5, "messages": _OK_MESSAGES}, "model"),
    ({"model": "m", "max_tokens": 5}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": {"role": "user"}}, "messages"),
    ({"model": "m", "max_tokens": "x", "messages": _OK_MESSAGES}, "max_tokens"),
    ({"model": "m", "max_tokens": -1, "messages": _OK_MESSAGES}, "max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]},
     "messages[0].content[0].type"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "max_tokens": 5, "messages": _OK_MESSAGES, "stream": "yes"}, "stream"),
    ({"model": "m", "max_tokens": 5, "messages": _OK_MESSAGES, "tools": [{"name": "t", "input_schema": "s"}]},
     "tools[0].input_schema"),
], ids=["top-level-array", "no-model", "no-messages", "messages-object", "max_tokens-string",
        "max_tokens-negative", "unknown-block", "unknown-role", "stream-string", "schema-string"])
def test_wrong_shape_is_400_naming_the_field(url: str, fake_upstream: Any, body: Any, path: str) -> None:
    resp = raw_request(url, json_post(json.dumps(body).encode("utf-8")))
    message = assert_error(resp, 400, "invalid_request_error")
    assert message.startswith(path + ":"), message
    assert fake_upstream.requests == []


# ---------------------------------------------------------------------------
# F5: Content-Type.


@pytest.mark.parametrize("ctype", ["text/plain", "multipart/form-data; boundary=x"])
def test_non_json_content_type_is_400(url: str, ctype: str) -> None:
    resp = raw_request(url, json_post(json.dumps(minimal_request()).encode(), ctype))
    assert_error(resp, 400, "invalid_request_error", "Content-Type")


@pytest.mark.parametrize("header, value, said", [
    ("Content-Encoding", "gzip", "Content-Encoding 'gzip' is not supported: send the body uncompressed"),
    ("Content-Type", "application/json; charset=utf-16", "charset 'utf-16' is not supported: send the body as UTF-8"),
    ("Content-Type", 'application/json; charset="UTF-32LE"', "charset 'UTF-32LE' is not supported"),
], ids=["gzip", "utf-16", "utf-32"])
def test_a_compressed_or_non_utf8_body_is_told_why(url: str, fake_upstream: Any, header: str, value: str,
                                                   said: str) -> None:
    """Both read as "not valid JSON: body is not UTF-8" before, naming neither cause."""
    import gzip
    data = json.dumps(minimal_request()).encode()
    body = gzip.compress(data) if value == "gzip" else data.decode().encode("utf-16" if "16" in value else "utf-32-le")
    headers = [("Host", "127.0.0.1"), ("Content-Length", str(len(body)))]
    headers += [(header, value)] if header == "Content-Type" else [("Content-Type", "application/json"), (header, value)]
    assert_error(raw_request(url, http_bytes("POST", "/v1/messages", headers, body)), 400, "invalid_request_error", said)
    assert fake_upstream.requests == []


@pytest.mark.parametrize("ctype", ["application/json; charset=utf-8", "application/json;charset=UTF8",
                                   "application/json; charset=iso-8859-1", "application/json; charset=",
                                   "application/json; charset=utf_8", "application/json; x-charset=utf-16",
                                   "Application/JSON", None])
def test_json_content_type_variants_and_none_are_accepted(url: str, fake_upstream: Any, ctype: Optional[str]) -> None:
    resp = raw_request(url, json_post(json.dumps(minimal_request()).encode(), ctype))
    assert resp.status == 200, resp
    assert resp.json["content"][0]["text"] == "Hello!"


# ---------------------------------------------------------------------------
# F6, F7: lengths. Answered at once, never by waiting for a body.


def test_oversized_body_is_413_before_reading_it_then_closed(url: str, fake_upstream: Any) -> None:
    data = http_bytes("POST", "/v1/messages", [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                                               ("Content-Length", "40000000")])
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(data)  # and nothing after it
        resp = read_response(sock, 1.0, started)
        assert resp.elapsed < 1.0
        assert_error(resp, 413, "request_too_large")
        assert resp.headers.get("connection", "").lower() == "close"
        assert peer_closed(sock), "the connection stayed open with 40 MB announced"
    assert fake_upstream.requests == []


def test_oversized_body_with_expect_100_gets_413_not_continue(url: str) -> None:
    data = http_bytes("POST", "/v1/messages", [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                                               ("Content-Length", "40000000"), ("Expect", "100-continue")])
    resp = raw_request(url, data, timeout=1.0)
    assert_error(resp, 413, "request_too_large")


@pytest.mark.parametrize("lengths", [["-1"], ["abc"], ["5", "6"], ["+5"], ["0x10"]],
                         ids=["negative", "not-a-number", "two-values", "plus-sign", "hex"])
def test_bad_content_length_is_400_within_a_second(url: str, lengths: List[str]) -> None:
    headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json")]
    headers += [("Content-Length", v) for v in lengths]
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(http_bytes("POST", "/v1/messages", headers, b"{}"))
        resp = read_response(sock, 1.0, started)
        assert_error(resp, 400, "invalid_request_error", "Content-Length")
        assert peer_closed(sock)


def test_a_content_length_with_leading_zeros_is_its_number(url: str) -> None:
    """RFC 9110 8.6: 1*DIGIT; "0002" is 2 (it was read as 10**15 and refused as a 40-digit body)."""
    with connect(url) as sock:
        sock.sendall(json_post(b"{}").replace(b"Content-Length: 2", b"Content-Length: 0000000000000000002"))
        assert_error(read_response(sock, 2.0), 400, "invalid_request_error", "model")  # the body was read: {}


@pytest.mark.parametrize("blank", ["\xa0", "\x85", "\x1c"], ids=["nbsp", "nel", "fs"])
def test_unicode_blanks_are_not_http_blanks(url: str, fake_upstream: Any, blank: str) -> None:
    """A front-end reads "90\xa0" as no valid length and "GET\xa0/health" as one word: read
    otherwise here, the two frame and route the same bytes differently (request smuggling)."""
    body = json.dumps(quota_probe()).encode()
    sent = json_post(body).replace(f"Content-Length: {len(body)}".encode(),
                                   f"Content-Length: {len(body)}{blank}".encode("latin-1"))  # one byte
    with connect(url) as sock:
        sock.sendall(sent)
        assert_error(read_response(sock, 2.0), 400, "invalid_request_error")  # the length, or a control
    resp = raw_request(url, f"GET{blank}/health{blank}HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1"), 2.0)
    assert resp.status in (400, 404), resp  # one word, or a target that is no path of ours: never /health
    assert fake_upstream.requests == []


def test_a_header_without_a_name_is_400(url: str) -> None:
    resp = raw_request(url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n: x\r\n\r\n", 2.0)
    assert_error(resp, 400, "invalid_request_error", "no name")


def test_an_http_0_9_request_is_refused_at_once(url: str) -> None:
    """HTTP/0.9 has no head; the stdlib waited for one until its read timeout (30 s)."""
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health\r\n")
        assert_error(read_response(sock, 2.0, started), 400, "invalid_request_error", "HTTP/0.9")
        assert peer_closed(sock)


@pytest.mark.parametrize("method, path, status", [("POST", "/v1/nothing-here", 404), ("DELETE", "/v1/messages", 405),
                                                  ("POST", "/v1/messages", 411)], ids=["unknown-path", "method", "no-length"])
def test_expect_100_gets_the_refusal_not_continue(url: str, method: str, path: str, status: int) -> None:
    """The client would upload its body for nothing after a 100 Continue."""
    headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Expect", "100-continue")]
    headers += [("Content-Length", "5000")] if status != 411 else []
    resp = raw_request(url, http_bytes(method, path, headers), timeout=2.0)
    assert resp.status == status, resp  # the first answer, not 100


@pytest.mark.parametrize("extra, status, words", [
    ([("Content-Type", "text/plain")], 400, "Content-Type must be application/json"),
    ([("Content-Type", "application/json"), ("Content-Encoding", "gzip")], 400, "Content-Encoding 'gzip'"),
    ([("Content-Type", "application/json"), ("Host", "other")], 400, "exactly one Host"),
    ([("Content-Type", "application/json"), ("Content-Type", "text/plain")], 400, "Content-Type is given twice"),
], ids=["type", "encoding", "two-hosts", "two-types"])
def test_a_head_the_proxy_refuses_gets_its_refusal_before_the_body(url: str, extra: Any, status: int,
                                                                   words: str) -> None:
    """These were answered after a 100 Continue: the client uploaded up to 32 MiB for a 400 (probe N)."""
    headers = [("Host", "127.0.0.1"), *extra, ("Expect", "100-continue"), ("Content-Length", "5000")]
    resp = raw_request(url, http_bytes("POST", "/v1/messages", headers), timeout=2.0)
    assert resp.status == status and words in resp.body.decode(), resp  # the first answer, not 100


@pytest.mark.parametrize("length", [None, "0", "00"])
def test_expect_100_on_a_get_without_a_body_is_answered_without_continue(url: str, length: Optional[str]) -> None:
    headers = [("Host", "127.0.0.1"), ("Expect", "100-continue")] + ([("Content-Length", length)] if length else [])
    resp = raw_request(url, http_bytes("GET", "/health", headers), 2.0)
    assert resp.status == 200 and resp.json == {"status": "ok"}, resp


def test_chunked_request_body_is_411(url: str) -> None:
    headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(http_bytes("POST", "/v1/messages", headers, b"2\r\n{}\r\n0\r\n\r\n"))
        resp = read_response(sock, 1.0, started)
        assert_error(resp, 411, "invalid_request_error", "Content-Length")
        assert peer_closed(sock)


@pytest.mark.parametrize("coding", ["", "   ", ", ,", "identity"], ids=["empty", "blanks", "commas", "identity"])
def test_an_empty_transfer_encoding_is_411_too(url: str, fake_upstream: Any, coding: str) -> None:
    """RFC 9112 6.1: with a Transfer-Encoding, Content-Length does not frame the body; an empty one
    was ignored and the body read by its Content-Length, which a front-end may frame otherwise."""
    body = json.dumps(quota_probe()).encode()
    headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Transfer-Encoding", coding),
               ("Content-Length", str(len(body)))]
    with connect(url) as sock:
        sock.sendall(http_bytes("POST", "/v1/messages", headers, body))
        message = assert_error(read_response(sock, 1.0), 411, "invalid_request_error", "Content-Length")
        assert "chunked" not in message  # (it blamed chunked bodies for "identity" too: probe AA)
        assert peer_closed(sock)


def test_missing_content_length_on_post_is_411(url: str) -> None:
    resp = raw_request(url, http_bytes("POST", "/v1/messages", [("Host", "127.0.0.1")]), timeout=1.0)
    assert_error(resp, 411, "invalid_request_error")


def test_body_shorter_than_its_length_is_not_a_hang(url: str) -> None:
    # The client half-closes after 2 of 10 bytes: the proxy must answer, not wait for EOF forever.
    with connect(url) as sock:
        sock.sendall(json_post(b"{}")[:-2].replace(b"Content-Length: 2", b"Content-Length: 10") + b"{}")
        sock.shutdown(socket.SHUT_WR)
        resp = read_response(sock, 3.0)
        assert_error(resp, 400, "invalid_request_error", "shorter")


def test_expect_100_continue_for_a_normal_body(url: str) -> None:
    body = json.dumps(quota_probe()).encode()
    head = http_bytes("POST", "/v1/messages", [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                                               ("Content-Length", str(len(body))), ("Expect", "100-continue")])
    with connect(url) as sock:
        sock.sendall(head)
        sock.settimeout(2)
        interim = b""
        while b"\r\n\r\n" not in interim:
            piece = sock.recv(1)
            assert piece, interim
            interim += piece
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        resp = read_response(sock)
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "ok"}]


def test_http_1_0_client_gets_a_closed_delimited_stream(url: str, fake_upstream: Any) -> None:
    body = json.dumps(quota_probe(stream=True)).encode()
    data = http_bytes("POST", "/v1/messages", [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                                               ("Content-Length", str(len(body)))], body)
    with connect(url) as sock:
        sock.sendall(data.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        sock.settimeout(5)
        raw = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            raw += piece
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"transfer-encoding" not in head.lower()  # HTTP/1.0 has no chunked encoding
    events = events_of(payload)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-1]["type"] == "message_stop"

# ---------------------------------------------------------------------------
# F25: routes and methods.


@pytest.mark.parametrize("method, path", [("POST", "/v2/x"), ("GET", "/v1/nothing"), ("GET", "/index.html"),
                                          ("POST", "/v1/messages/extra"), ("DELETE", "/v1/complete")])
def test_unknown_path_is_404_not_found(url: str, method: str, path: str) -> None:
    resp = request(url, method, path, body=b"{}" if method == "POST" else None)
    assert_error(resp, 404, "not_found_error", path)


@pytest.mark.parametrize("method, path", [("POST", "/v1/v1/messages"), ("GET", "/v1/v1/models")])
def test_a_base_url_ending_in_v1_is_told_so(url: str, method: str, path: str) -> None:
    # ANTHROPIC_BASE_URL=http://127.0.0.1:8082/v1: the SDKs add /v1 again (a new user's probe).
    resp = request(url, method, path, body=b"{}" if method == "POST" else None)
    assert "should not end in /v1" in assert_error(resp, 404, "not_found_error", path)


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/v1/messages", "POST"),
    ("PUT", "/v1/messages", "POST"),
    ("PATCH", "/v1/messages", "POST"),
    ("GET", "/v1/messages/count_tokens", "POST"),
    ("POST", "/v1/models", "GET, HEAD"),
    ("DELETE", "/health", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(url: str, method: str, path: str, allow: str) -> None:
    resp = request(url, method, path, body=b"{}" if method in ("POST", "PUT") else None)
    assert_error(resp, 405, "invalid_request_error", method)
    assert resp.headers["allow"] == allow


def test_a_fault_of_the_proxys_own_is_a_500_without_a_traceback(shared: Tuple[Any, Any], capfd: Any,
                                                               caplog: Any) -> None:
    """RELIABILITY.md section 4 (e): a bug inside a route is an Anthropic-shaped 500 the SDKs retry,
    said in the log in one line (the traceback only at DEBUG), and the connection serves on."""
    server = shared[1].server
    routes = server.proxy.routes

    def broken(handler: Any, writer: Any) -> None:
        raise KeyError("a bug")

    caplog.set_level("INFO", logger="claudeproxy")
    saved, routes[("GET", "/health")] = routes[("GET", "/health")], broken
    try:
        resp = request(shared[1].url, "GET", "/health")
    finally:
        routes[("GET", "/health")] = saved
    assert_error(resp, 500, "api_error", "internal proxy error; see the proxy log")
    said = [r for r in caplog.records if r.getMessage().startswith("internal error on GET /health: KeyError")]
    assert len(said) == 1 and not said[0].exc_info, [r.getMessage() for r in caplog.records]
    assert "Traceback" not in capfd.readouterr().err
    assert request(shared[1].url, "GET", "/health").status == 200


def test_options_is_405_without_cors_headers(url: str) -> None:
    resp = request(url, "OPTIONS", "/v1/messages", headers={"Access-Control-Request-Method": "POST"})
    assert_error(resp, 405, "invalid_request_error")
    assert not [k for k in resp.headers if k.startswith("access-control-")], resp.headers


def test_cors_preflight_from_a_page_is_refused_without_cors_headers(url: str) -> None:
    resp = request(url, "OPTIONS", "/v1/messages", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key"})
    assert_error(resp, 403, "permission_error")
    assert not [k for k in resp.headers if k.startswith("access-control-")], resp.headers


def test_unread_body_of_a_refused_request_is_not_run_as_the_next_request(url: str, fake_upstream: Any) -> None:
    # A 404 for a POST leaves its body unread; on a kept-alive connection those
    # bytes must not be parsed as a second request (request smuggling).
    smuggled = http_bytes("POST", "/v1/messages", [("Host", "127.0.0.1"), ("Content-Length", "0")])
    data = http_bytes("POST", "/v2/nowhere", [("Host", "127.0.0.1"), ("Content-Length", str(len(smuggled)))],
                      smuggled)
    with connect(url) as sock:
        sock.sendall(data)
        assert_error(read_response(sock), 404, "not_found_error")
        assert peer_closed(sock, 2.0), "a second response followed: the body was run as a request"
    assert fake_upstream.requests == []


def test_keep_alive_continues_after_an_error_whose_body_was_read(url: str) -> None:
    with connect(url) as sock:
        sock.sendall(json_post(b'{"model":'))
        assert_error(read_response(sock), 400, "invalid_request_error")
        sock.sendall(http_bytes("GET", "/health", [("Host", "127.0.0.1")]))
        assert read_response(sock).status == 200


@pytest.mark.parametrize("stray", [b"\r\n", b"\n", b"\r\n\r\n\r\n"], ids=["crlf", "lf", "three"])
def test_empty_lines_before_a_request_line_are_passed_over(url: str, stray: bytes) -> None:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line. Some
    clients end a POST body with an extra CRLF; the next request on the connection went unanswered."""
    with connect(url) as sock:
        sock.sendall(json_post(json.dumps(quota_probe()).encode()) + stray)
        assert read_response(sock).status == 200
        time.sleep(0.2)  # the stray line alone in the buffer: the proxy waits at it for the request line
        sock.sendall(stray + http_bytes("GET", "/health", [("Host", "127.0.0.1")]))
        assert read_response(sock).status == 200


@pytest.mark.parametrize("lines", [["TE, close"], ["close, TE"], ["  CLOSE  "], ["keep-alive", "Close"],
                                   ["keep-alive,close"]],
                         ids=["te-close", "close-te", "case-and-blanks", "two-lines", "no-space"])
def test_connection_close_among_other_options_closes(url: str, lines: List[str]) -> None:
    """RFC 9110 7.6.1: Connection is a list of case-insensitive options on any number of lines; a
    client saying ``TE, close`` was kept open, unanswered about it, until the idle timeout."""
    headers = [("Host", "127.0.0.1")] + [("Connection", line) for line in lines]
    with connect(url) as sock:
        sock.sendall(http_bytes("GET", "/health", headers))
        resp = read_response(sock)
        assert resp.status == 200 and resp.headers.get("connection") == "close", resp.headers
        assert peer_closed(sock)


def test_an_http_1_0_keep_alive_is_announced_and_kept(url: str) -> None:
    """An HTTP/1.0 client reuses a connection only if the answer says ``Connection: keep-alive``;
    without it, one that reads to the end of the connection waited 30 s for each answer."""
    ask = b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: Keep-Alive\r\n\r\n"
    with connect(url) as sock:
        for _ in range(2):
            sock.sendall(ask)
            resp = read_response(sock)
            assert resp.status == 200 and resp.headers.get("connection") == "keep-alive", resp.headers
        sock.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")  # not asked: closed, and said
        resp = read_response(sock)
        assert resp.status == 200 and resp.headers.get("connection") == "close", resp.headers
        assert peer_closed(sock)


def test_a_request_line_of_blanks_or_endless_empty_lines_is_400(url: str) -> None:
    for data in (b"   \r\nGET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                 b"\r\n" * 9 + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
        with connect(url) as sock:
            sock.sendall(data)
            assert_error(read_response(sock), 400, "invalid_request_error", "request line")
            assert peer_closed(sock)


# ---------------------------------------------------------------------------
# S4: the stdlib's own refusals come back as Anthropic JSON too.


def test_request_line_too_long_is_414_json(url: str) -> None:
    resp = raw_request(url, http_bytes("GET", "/" + "a" * 70000, [("Host", "127.0.0.1")]))
    assert_error(resp, 414, "invalid_request_error")


def test_too_many_headers_is_431_json(url: str) -> None:
    headers = [("Host", "127.0.0.1")] + [(f"X-H{i}", "1") for i in range(150)]
    resp = raw_request(url, http_bytes("GET", "/health", headers))
    assert_error(resp, 431, "invalid_request_error")


def test_header_line_too_long_is_431_json(url: str) -> None:
    resp = raw_request(url, http_bytes("GET", "/health", [("Host", "127.0.0.1"), ("X-Long", "a" * 70000)]))
    assert_error(resp, 431, "invalid_request_error")


def test_a_head_larger_than_the_cap_is_431_json(url: str) -> None:
    """40 lines of 2 KB pass the stdlib's limits (100 lines, 64 KiB a line) and held 6 MB a
    connection before any key was checked: all header lines together are capped at 64 KiB."""
    headers = [("Host", "127.0.0.1")] + [(f"X-Pad-{i}", "a" * 2000) for i in range(40)]
    with connect(url) as sock:
        sock.sendall(http_bytes("GET", "/health", headers))
        assert_error(read_response(sock), 431, "invalid_request_error", "too large")
        assert peer_closed(sock)
    fits = [("Host", "127.0.0.1")] + [(f"X-Pad-{i}", "a" * 2000) for i in range(30)]
    assert raw_request(url, http_bytes("GET", "/health", fits)).status == 200


def test_a_head_the_client_cut_short_gets_no_answer(url: str) -> None:
    """A client that closes inside the head sent no request: it is neither parsed nor answered (the
    stdlib parsed whatever had come, and the request ran)."""
    with connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2.0)
        assert sock.recv(65536) == b""
    assert healthy(url)


def test_garbage_request_line_is_400_json(url: str) -> None:
    resp = raw_request(url, b"GARBAGE\r\n\r\n")
    assert_error(resp, 400, "invalid_request_error")


def test_unsupported_http_version_is_400_json(url: str) -> None:
    # Not the stdlib's 505: bad input is never a 5xx (RELIABILITY.md R1), which the SDKs would retry.
    resp = raw_request(url, b"GET /health HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n")
    assert_error(resp, 400, "invalid_request_error")


@pytest.mark.parametrize("method", ["FOO", "post", "TRACE", "CONNECT"])
def test_unknown_method_is_405_json(url: str, method: str) -> None:
    # Not the stdlib's 501 (a 5xx the SDKs would retry); RFC 9110 15.5.6: a 405 says what is allowed.
    resp = raw_request(url, http_bytes(method, "/v1/messages", [("Host", "127.0.0.1"), ("Content-Length", "0")]))
    assert_error(resp, 405, "invalid_request_error")
    assert resp.headers["allow"] == "POST"


def test_unknown_method_on_an_unknown_path_is_404(url: str) -> None:
    resp = raw_request(url, http_bytes("FOO", "/nowhere", [("Host", "127.0.0.1")]))
    assert_error(resp, 404, "not_found_error")


def _head_then_get(url: str, path: str) -> Tuple[bytes, Optional[RawResponse]]:
    """A HEAD and a GET pipelined on one connection: the HEAD's head, and the GET's answer after it
    (None when the HEAD's answer closed the connection, as a 405 does).

    A HEAD answer that carried a body would put those bytes before the GET's status line.
    """
    with connect(url) as sock:
        sock.sendall(http_bytes("HEAD", path, [("Host", "127.0.0.1")]) + http_bytes("GET", "/health", [("Host", "127.0.0.1")]))
        buf = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in buf:
            buf += _recv(sock, deadline, buf)
        head, _, rest = buf.partition(b"\r\n\r\n")
        if b"Connection: close" in head:
            while not peer_closed(sock):
                rest += sock.recv(65536)
            assert rest == b"", rest[:200]
            return head, None
        return head, read_response(_Prefixed(sock, rest))  # type: ignore[arg-type]


class _Prefixed:
    """A socket whose first bytes were read already (for ``read_response``)."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock, self.pending = sock, pending

    def settimeout(self, value: float) -> None:
        self.sock.settimeout(value)

    def recv(self, n: int) -> bytes:
        data, self.pending = (self.pending, b"") if self.pending else (self.sock.recv(n), b"")
        return data


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/models/claude-x", "/nowhere", "/v1/messages"])
def test_head_answers_with_the_head_alone(url: str, path: str) -> None:
    """RFC 9110 9.3.2: a HEAD answer has no content; GET routes answer HEAD like GET, with the GET's length."""
    head, after = _head_then_get(url, path)
    status = int(head.split(b" ", 2)[1])
    lines = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    if path == "/v1/messages":
        assert status == 405 and lines[b"Allow"] == b"POST" and after is None
        return
    get = request(url, "GET", path)
    assert status == get.status
    assert int(lines[b"Content-Length"]) == len(get.body) > 0
    assert after is not None and after.status == 200 and json.loads(after.body) == {"status": "ok"}


def test_header_line_without_colon_is_400(url: str) -> None:
    """The stdlib stops reading headers at such a line: the Content-Length after it would be lost and
    the body read as the next request."""
    data = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nnot a header\r\nContent-Length: 2\r\n\r\n{}"
    resp = raw_request(url, data)
    assert_error(resp, 400, "invalid_request_error")
    assert "no colon" in json.loads(resp.body)["error"]["message"]


def test_absolute_form_target_is_served_and_its_host_checked(url: str) -> None:
    """RFC 9112 3.2.2: the host comes from the target, not from Host (which the rebinding check reads)."""
    ok = raw_request(url, b"GET http://127.0.0.1/health HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert ok.status == 200 and json.loads(ok.body) == {"status": "ok"}
    refused = raw_request(url, b"GET http://evil.example/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_error(refused, 403, "permission_error")


# ---------------------------------------------------------------------------
# Case 71: request ids.


def test_each_error_has_its_own_request_id_matching_the_body(url: str) -> None:
    ids = set()
    for _ in range(3):
        resp = request(url, "POST", "/v1/messages", b"{", headers={"x-api-key": CLIENT_KEY})
        assert_error(resp, 400, "invalid_request_error")
        ids.add(resp.headers["request-id"])
    assert len(ids) == 3


def test_an_answer_that_leaves_the_body_unread_says_the_connection_closes(url: str) -> None:
    """A GET with a body is answered without reading it; the proxy then closes, and its answer
    must say so, or a client that reuses the connection fails on its next request."""
    data = http_bytes("GET", "/health", [("Host", "127.0.0.1"), ("Content-Length", "25")], b"x" * 25)
    with connect(url) as sock:
        sock.sendall(data)
        resp = read_response(sock)
        assert resp.status == 200
        assert resp.headers.get("connection", "").lower() == "close"
        assert peer_closed(sock)
