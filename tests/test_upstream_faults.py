"""Upstream faults as the client sees them (RELIABILITY.md F11-F19; PROTOCOL.md 4.2-4.3).

Before the stream began a failure is a plain HTTP error with the mapped
status and type; after it, exactly one ``event: error`` and the end, never a
``message_stop`` (cases 59-63, 68-70). Also the max_tokens retry.
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from typing import Any, Dict, List

import pytest

from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request, request
from fakes import Fault, FakeUpstream, Gate, Reply, Sleep, StreamClient, chunk, completion, json_reply, sse_reply
from sse_checks import assert_valid_event_sequence, final_message

SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)

HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}


def open_stream(proxy: Any, **overrides: Any) -> StreamClient:
    return StreamClient(proxy.url, minimal_request(stream=True, **overrides), headers=HEADERS, timeout=8)


def send(proxy: Any, stream: bool, **overrides: Any) -> Any:
    return request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream, **overrides), HEADERS, timeout=8)


def kinds(events: List[Dict[str, Any]]) -> List[str]:
    return [e["type"] for e in events]


def assert_ends_with_one_error(events: List[Dict[str, Any]], error_type: str) -> Dict[str, Any]:
    """The mid-stream rule: one error event, last, and no message_stop anywhere."""
    assert_valid_event_sequence(events)
    names = kinds(events)
    assert names[-1] == "error" and names.count("error") == 1, names
    assert "message_stop" not in names and "message_delta" not in names, names
    assert events[-1]["error"]["type"] == error_type, events[-1]
    return events[-1]


def assert_plain_error(resp: Any, status: int, error_type: str) -> Dict[str, Any]:
    assert resp.status == status, resp
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert body["error"]["message"]
    assert body["request_id"] == resp.headers["request-id"]
    return body


def three_events() -> List[Any]:
    """Role chunk plus two text chunks: message_start, a text block and two deltas reach the client."""
    return [chunk({"role": "assistant", "content": ""}), chunk({"content": "one"}), chunk({"content": " two"})]




# ---------------------------------------------------------------------------
# F13, cases 62, 68, 69: upstream error statuses, for stream and non-stream requests.

# An upstream 413 is not here: it becomes 400 "prompt is too long" (test_context_overflow.py).
STATUS_TABLE = [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (408, "timeout_error"), (409, "invalid_request_error"),
    (422, "invalid_request_error"), (429, "rate_limit_error"), (500, "api_error"),
    (502, "api_error"), (503, "overloaded_error"), (504, "timeout_error"), (529, "overloaded_error"),
    (507, "api_error"),
]

BODIES = {
    "json": (b'{"error":{"message":"the upstream says no","type":"x","code":"y"}}', "application/json",
             "the upstream says no"),
    "html": (b"<html><body><h1>Bad things</h1>" + b"x" * 3000 + b"</body></html>", "text/html", "Bad things"),
    "empty": (b"", "text/plain", ""),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("body_kind", sorted(BODIES))
@pytest.mark.parametrize("status,error_type", STATUS_TABLE, ids=[str(s) for s, _ in STATUS_TABLE])
def test_upstream_error_status_maps_to_client_status_and_type(proxy, fake_upstream, status, error_type, body_kind, stream):
    body, ctype, words = BODIES[body_kind]
    fake_upstream.push(Reply(status, (("Content-Type", ctype),), [body]))
    resp = send(proxy, stream)
    err = assert_plain_error(resp, status, error_type)  # a plain HTTP error even for a stream (case 62)
    assert str(status) in err["error"]["message"]
    assert words in err["error"]["message"]
    assert len(err["error"]["message"]) < 1200  # an HTML page is cut, not echoed whole
    assert b"event:" not in resp.body


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_copied(proxy, fake_upstream, status, stream):
    """Case 68: the SDK honours retry-after (and retry-after-ms) for its own retries."""
    fake_upstream.push(Reply(status, (("Content-Type", "application/json"), ("Retry-After", "3"), ("retry-after-ms", "2500")),
                    [b'{"error":{"message":"slow down"}}']))
    resp = send(proxy, stream)
    assert_plain_error(resp, status, "rate_limit_error" if status == 429 else "overloaded_error")
    assert resp.headers["retry-after"] == "3"
    assert resp.headers["retry-after-ms"] == "2500"


def test_upstream_error_body_never_echoes_the_upstream_key(proxy, fake_upstream):
    fake_upstream.push(json_reply({"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}"}}, status=401))
    resp = send(proxy, False)
    assert_plain_error(resp, 401, "authentication_error")
    assert UPSTREAM_KEY not in resp.body.decode("utf-8")


# ---------------------------------------------------------------------------
# F14, F15: a 200 that is not SSE; redirects.


def test_html_200_to_a_stream_request_is_502_without_message_start(proxy, fake_upstream):
    fake_upstream.push(Reply(200, (("Content-Type", "text/html"),), [b"<html>captive portal</html>"]))
    resp = send(proxy, True)
    assert_plain_error(resp, 502, "api_error")
    assert b"message_start" not in resp.body


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_web_page_for_an_answer_is_asked_for_once(make_proxy, fake_upstream, stream):
    """A base URL that names a web server, not the API (nginx's welcome page): the same on every
    try, so neither the proxy's retries nor the client (Claude Code, which always streams, retried
    the stream's 502 for minutes) ask again."""
    server = make_proxy(retries=2)
    fake_upstream.push(*[Reply(200, (("Content-Type", "text/html"),), [b"<html>Welcome to nginx!</html>"])] * 3)
    resp = send(server, stream)
    assert_plain_error(resp, 502, "api_error")
    assert resp.headers.get("x-should-retry") == "false"
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("settings", [{}, {"upstream_api": "responses", "model": "gpt-5"}, {"passthrough": True}],
                         ids=["chat", "responses", "passthrough"])
def test_a_plain_text_page_for_a_stream_is_asked_for_once_and_named(make_proxy, fake_upstream, settings):
    """text/plain passes for an event stream (servers label SSE so), but a body of lines that are
    no SSE field at all is a page or a plain error, the same on every try: named, not 'ended early',
    and not asked for again."""
    server = make_proxy(retries=2, **settings)
    page = Reply(200, (("Content-Type", "text/plain; charset=utf-8"),), [b"404 page not found\nsee the docs\n"])
    fake_upstream.push(page, page, page)
    resp = send(server, True)
    assert_plain_error(resp, 502, "api_error")
    assert resp.headers.get("x-should-retry") == "false"
    assert "'404 page not found'" in resp.json["error"]["message"]
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("body", [b"", b" \r\n\r\n"], ids=["empty", "blank-lines"])
def test_an_empty_plain_text_body_to_a_stream_is_still_retried(make_proxy, fake_upstream, body):
    """No line at all is a body cut before it began, which another try may not be."""
    server = make_proxy(retries=1)
    fake_upstream.push(Reply(200, (("Content-Type", "text/plain"),), [body]), sse_reply(*three_events()))
    with open_stream(server) as client:
        events = client.read_all(timeout=5)
    assert final_message(events)["content"] == [{"type": "text", "text": "one two"}]
    assert len(fake_upstream.requests) == 2


@pytest.mark.parametrize("before", [b"", b"retry-after: 20\n"], ids=["alone", "after-an-unknown-field"])
def test_an_error_event_the_body_ends_on_is_the_upstreams_error(proxy, fake_upstream, before):
    """Its last event, cut from the blank line that would end it, is an event all the same: an unknown
    field before it (a field SSE lets a client ignore) does not make the body a page."""
    error = b'data: {"error": {"message": "slow down", "type": "rate_limit_error", "code": 429}}'
    fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"),), [before + error]))
    resp = send(proxy, True)
    assert_plain_error(resp, 429, "rate_limit_error")
    assert "slow down" in resp.json["error"]["message"]


def test_non_json_200_to_a_plain_request_is_502(proxy, fake_upstream):
    fake_upstream.push(Reply(200, (("Content-Type", "text/html"),), [b"<html>captive portal</html>"]))
    assert_plain_error(send(proxy, False), 502, "api_error")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirect_is_refused_and_never_followed(make_proxy, fake_upstream, code, stream):
    """F15 / S7: urllib would re-send the request (and credentials) to the redirect target."""
    target = FakeUpstream()
    try:
        fake_upstream.push(Reply(code, (("Location", target.url + "/chat/completions"),), [b""]))
        resp = send(make_proxy(), stream)
        assert_plain_error(resp, 502, "api_error")
        time.sleep(0.1)
        assert target.requests == []
    finally:
        target.close()


# ---------------------------------------------------------------------------
# F16, F17, case 70: silence and refusal.


def test_silent_upstream_mid_stream_gives_timeout_error_event(make_proxy, fake_upstream):
    proxy = make_proxy(idle_timeout=0.5)
    fake_upstream.push(sse_reply(*three_events(), Fault("hang"), done=False))
    with open_stream(proxy) as client:
        begun = time.monotonic()
        events = client.read_all(timeout=5)
        took = time.monotonic() - begun
    assert_ends_with_one_error(events, "timeout_error")
    assert final_message(events)["content"] == [{"type": "text", "text": "one two"}]
    assert took < 2.5, f"idle timeout 0.5 s, stream ended after {took:.2f} s"
    assert fake_upstream.wait_closed(2) is not None


def test_silent_upstream_after_200_gets_pings_then_timeout_error_event(make_proxy, fake_upstream):
    """200 and then nothing: pings commit the stream, so the idle timeout arrives as an event."""
    proxy = make_proxy(idle_timeout=1.0, ping_interval=0.3)
    fake_upstream.push(sse_reply(Fault("hang"), done=False))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert kinds(events)[:2] == ["message_start", "ping"]
    assert_ends_with_one_error(events, "timeout_error")


def test_no_response_headers_within_idle_timeout_is_504(make_proxy, fake_upstream):
    """Case 70 / F16: nothing was sent to the client yet, so a plain 504 timeout_error."""
    proxy = make_proxy(idle_timeout=0.5)
    fake_upstream.push(Reply(delay=8))
    begun = time.monotonic()
    resp = send(proxy, True)
    took = time.monotonic() - begun
    assert_plain_error(resp, 504, "timeout_error")
    assert took < 2.5, f"answered after {took:.2f} s"
    assert fake_upstream.wait_closed(2) is not None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_connection_refused_is_502_fast(make_proxy, refused_port, stream):
    """F17, case 70."""
    proxy = make_proxy(upstream=f"http://127.0.0.1:{refused_port}/v1", connect_timeout=2)
    begun = time.monotonic()
    resp = send(proxy, stream)
    took = time.monotonic() - begun
    assert_plain_error(resp, 502, "api_error")
    # Nothing listens: the client is told not to retry (Claude Code retried for minutes, claude -p hung).
    assert resp.headers.get("x-should-retry") == "false"
    assert took < 1.0, f"answered after {took:.2f} s"


def test_non_stream_call_waits_for_its_answer_past_the_idle_timeout(make_proxy, fake_upstream):
    """A non-streaming upstream says nothing until its answer is whole: --request-timeout bounds
    the wait, not --idle-timeout (an idle timeout shorter than the answer's wait must not fail it)."""
    proxy = make_proxy(idle_timeout=0.3, request_timeout=5)
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [json.dumps(completion("late")).encode()],
                             delay=1.0))
    resp = send(proxy, False)
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "late"}]


def test_silent_non_stream_upstream_is_504_at_the_request_timeout(make_proxy, fake_upstream):
    proxy = make_proxy(idle_timeout=0.3, request_timeout=1.0)
    fake_upstream.push(Reply(delay=8))
    begun = time.monotonic()
    resp = send(proxy, False)
    took = time.monotonic() - begun
    assert_plain_error(resp, 504, "timeout_error")
    assert resp.json["error"]["message"] == "upstream did not finish in time"
    assert 0.9 < took < 2.5, f"answered after {took:.2f} s"
    assert fake_upstream.wait_closed(2) is not None


def test_non_stream_request_deadline_is_504(make_proxy, fake_upstream):
    """An upstream that trickles a body forever is cut at request_timeout."""
    proxy = make_proxy(request_timeout=0.6)
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),),
                             [b"{"] + [s for _ in range(30) for s in (Sleep(0.1), b" ")] + [b"}"]))
    begun = time.monotonic()
    resp = send(proxy, False)
    assert_plain_error(resp, 504, "timeout_error")
    assert time.monotonic() - begun < 2.5


# ---------------------------------------------------------------------------
# A gateway that compresses although the proxy asked for identity.


def _compressed(data: bytes, coding: str) -> bytes:
    return gzip.compress(data) if coding == "gzip" else zlib.compress(data)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_json_answer_is_decoded(proxy, fake_upstream, coding):
    body = _compressed(json.dumps(completion("squeezed")).encode(), coding)
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"), ("Content-Encoding", coding)), [body]))
    resp = send(proxy, False)
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "squeezed"}]


def test_a_compressed_stream_is_decoded_as_it_arrives(proxy, fake_upstream):
    words = ["w%d " % i for i in range(200)]
    sse = b"".join(b"data: " + json.dumps(chunk({"content": w})).encode() + b"\n\n" for w in words)
    sse += b"data: " + json.dumps(chunk({}, finish="stop")).encode() + b"\n\ndata: [DONE]\n\n"
    packed = gzip.compress(sse)
    pieces = [packed[i:i + 97] for i in range(0, len(packed), 97)]  # cut anywhere, even inside the gzip header
    fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")), pieces,
                             chunked=True))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events)
    assert final_message(events)["content"] == [{"type": "text", "text": "".join(words)}]


def test_a_compressed_error_body_gives_its_message(proxy, fake_upstream):
    body = gzip.compress(b'{"error":{"message":"the quota is spent","type":"x"}}')
    fake_upstream.push(Reply(500, (("Content-Type", "application/json"), ("Content-Encoding", "gzip")), [body]))
    resp = send(proxy, False)
    assert resp.status == 500 and "the quota is spent" in resp.json["error"]["message"], resp.json


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_coding_the_proxy_cannot_read_is_a_clear_502(proxy, fake_upstream, stream):
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"), ("Content-Encoding", "br")), [b"\x8b\x02\x80"]))
    resp = send(proxy, stream)
    body = assert_plain_error(resp, 502, "api_error")
    assert "Content-Encoding 'br'" in body["error"]["message"]
    assert resp.headers.get("x-should-retry") == "false"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_compressed_body_that_does_not_decode_is_a_502_not_retried(make_proxy, fake_upstream, stream):
    """The same gateway compresses the same way again, and each try is a paid generation: no retry
    by the proxy, and none by the client (it was retried three times, then ten by Claude Code: probe D)."""
    server = make_proxy(retries=2)
    for _ in range(3):
        fake_upstream.push(Reply(200, (("Content-Type", "application/json"), ("Content-Encoding", "gzip")),
                                 [b"not gzip"]))
    body = assert_plain_error(send(server, stream), 502, "api_error")
    assert "does not decode" in body["error"]["message"]
    assert len(fake_upstream.requests) == 1


def _members(sse: bytes) -> bytes:
    """One gzip member per event, as a gateway compressing each flush on its own sends them."""
    return b"".join(gzip.compress(event + b"\n\n") for event in sse.split(b"\n\n") if event)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_gzip_body_of_many_members_is_read_to_its_end(proxy, fake_upstream, stream):
    """RFC 1952 allows a series of members; the decoder stopped after the first, and the stream was
    a 200 with an empty answer (end_turn, no content: probe D)."""
    if stream:
        sse = b"".join(b"data: " + json.dumps(chunk({"content": w})).encode() + b"\n\n" for w in ("one ", "two"))
        sse += b"data: " + json.dumps(chunk({}, finish="stop")).encode() + b"\n\ndata: [DONE]\n\n"
        packed = _members(sse)
        fake_upstream.push(Reply(200, (("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")),
                                 [packed[i:i + 13] for i in range(0, len(packed), 13)], chunked=True))
        with open_stream(proxy) as client:
            events = client.read_all(timeout=5)
        assert_valid_event_sequence(events, allow_error=False)
        assert final_message(events)["content"] == [{"type": "text", "text": "one two"}]
    else:
        text = json.dumps(completion("two members")).encode()
        packed = gzip.compress(text[:10]) + gzip.compress(text[10:])
        fake_upstream.push(Reply(200, (("Content-Type", "application/json"), ("Content-Encoding", "gzip")), [packed]))
        resp = send(proxy, False)
        assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "two members"}], resp


@pytest.mark.parametrize("body, ctype, text", [
    (b"\xef\xbb\xbf" + json.dumps(completion("with a BOM")).encode(), "application/json", "with a BOM"),
    (json.dumps(completion("He@@lo")).encode().replace(b"@@", b"\xff\xfe"), "application/json", "He\ufffd\ufffdlo"),
    (json.dumps(completion("caf\u00e9"), ensure_ascii=False).encode("latin-1"), "application/json; charset=iso-8859-1",
     "caf\u00e9"),
], ids=["bom", "not-utf8", "latin-1"])
def test_a_json_answer_is_read_as_its_stream_would_be(proxy, fake_upstream, body, ctype, text):
    """A BOM, a stray byte, a declared charset: the stream of the same answer was read, the JSON
    answer was a 502 'not JSON' with no retry (probe D 3)."""
    fake_upstream.push(Reply(200, (("Content-Type", ctype),), [body]))
    resp = send(proxy, False)
    assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": text}], resp


def test_raw_deflate_is_read_as_deflate(proxy, fake_upstream):
    """Content-Encoding: deflate without the zlib wrapper (IIS, some Java gateways), as curl and
    browsers read it; it was a 502."""
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = squeeze.compress(json.dumps(completion("raw deflate")).encode()) + squeeze.flush()
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"), ("Content-Encoding", "deflate")), [raw]))
    resp = send(proxy, False)
    assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "raw deflate"}], resp


# ---------------------------------------------------------------------------
# F18, F19, case 61: the upstream breaks off after 3 events.


@pytest.mark.parametrize("fault", ["rst", "fin", "truncate"])
def test_broken_upstream_after_three_events_gives_one_error_event(proxy, fake_upstream, fault):
    fake_upstream.push(sse_reply(*three_events(), Fault(fault), done=False))
    errors_before = metrics(proxy)["errors"]
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    err = assert_ends_with_one_error(events, "api_error")
    assert kinds(events)[:4] == ["message_start", "content_block_start", "content_block_delta", "content_block_delta"]
    assert final_message(events)["content"] == [{"type": "text", "text": "one two"}]
    assert "upstream" in err["error"]["message"]
    assert proxy.server.wait_idle(2)
    assert metrics(proxy)["errors"] == errors_before + 1  # a 200 that ended in an error is counted as one


def metrics(proxy: Any) -> Dict[str, Any]:
    return request(proxy.url, "GET", "/v1/usage").json["totals"]


@pytest.mark.parametrize("fault", ["rst", "fin"])
def test_break_before_any_event_is_a_plain_502(proxy, fake_upstream, fault):
    fake_upstream.push(sse_reply(Fault(fault), done=False))
    assert_plain_error(send(proxy, True), 502, "api_error")


@pytest.mark.parametrize("steps", [[], [b": only a comment\n\n"], [b"data: <html>\n\n"] * 3, [{"choices": []}]],
                         ids=["empty", "comment", "garbage", "no-choices"])
def test_clean_end_without_any_chunk_is_a_plain_502(proxy, fake_upstream, steps):
    """A properly ended body that carried no completion at all is not an (empty) answer."""
    fake_upstream.push(sse_reply(*steps, done=False))
    assert_plain_error(send(proxy, True), 502, "api_error")


def test_break_after_finish_reason_still_completes(proxy, fake_upstream):
    """The answer was complete (finish_reason came); only usage and [DONE] are missing."""
    fake_upstream.push(sse_reply(chunk({"content": "whole"}), chunk({}, "stop"), Fault("rst"), done=False))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


# ---------------------------------------------------------------------------
# F11, F12: huge and malformed lines.


def test_eight_mib_line_gives_api_error_and_closes_the_upstream(proxy, fake_upstream):
    """F11 / S13: a line is capped at 1 MiB; the rest is never read into memory."""
    huge = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + b"x" * (8 * 1024 * 1024)
    # The fake notices a close only when a write fails or while it waits: loopback buffers can
    # swallow the whole 8 MiB, so it waits (and watches) after the line.
    fake_upstream.push(sse_reply(*three_events(), huge, Sleep(3), done=False))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=8)
    err = assert_ends_with_one_error(events, "api_error")
    assert "longer than" in err["error"]["message"]
    assert fake_upstream.wait_closed(3) is not None, "the upstream connection was left open"


def test_eight_mib_first_line_is_a_plain_502(proxy, fake_upstream):
    fake_upstream.push(sse_reply(b"data: " + b"x" * (8 * 1024 * 1024), done=False))
    assert_plain_error(send(proxy, True), 502, "api_error")


def test_an_upstream_head_has_its_own_cap_of_256_kib(proxy, fake_upstream):
    """The client's 64 KiB head cap is not the upstream's: 120 KB of response headers (tracing,
    cookies) are read; past 256 KiB the answer is a 502 naming the cap, not a head held whole."""
    answer = [json.dumps(completion()).encode()]
    big = tuple((f"X-Trace-{i}", "t" * 60000) for i in range(2))
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"), *big), answer))
    assert send(proxy, False).status == 200
    huge = tuple((f"X-Trace-{i}", "t" * 60000) for i in range(5))
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"), *huge), answer))
    body = assert_plain_error(send(proxy, False), 502, "api_error")
    assert "longer than 262144 bytes" in body["error"]["message"], body


def test_malformed_and_odd_sse_lines_are_tolerated(proxy, fake_upstream):
    """F12: bad JSON skipped; data: without a space, event: lines, comments, CRLF, blank lines, empty choices."""
    fake_upstream.push(sse_reply(
        b": keepalive\n\n", b"\n\n\n",
        b"data: {not json\n\n",
        b"event: chunk\ndata:" + json.dumps(chunk({"content": "a"})).encode() + b"\r\n\r\n",
        b"data: {\"choices\":[]}\n\n",
        b"id: 7\nretry: 100\ndata: " + json.dumps(chunk({"content": "b"})).encode() + b"\n\n",
        b"data: \xff\xfe not utf-8\n\n",
        chunk({}, "stop"), {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "ab"}]


def test_fifty_bad_lines_in_a_row_fail_the_stream(proxy, fake_upstream):
    fake_upstream.push(sse_reply(*three_events(), *([b"data: <html>\n\n"] * 50), chunk({}, "stop")))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert_ends_with_one_error(events, "api_error")


def test_forty_nine_bad_lines_are_skipped(proxy, fake_upstream):
    fake_upstream.push(sse_reply(*three_events(), *([b"data: <html>\n\n"] * 49), chunk({}, "stop")))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "one two"}]


# ---------------------------------------------------------------------------
# Error objects in the stream (cases 59, 60, 63).


@pytest.mark.parametrize("status,error_type", [(429, "rate_limit_error"), (401, "authentication_error"),
                                               (529, "overloaded_error")])
def test_error_object_as_first_event_is_an_http_error(proxy, fake_upstream, status, error_type):
    """Case 63: nothing was committed yet, so the client gets the real status (and its SDK retry policy)."""
    fake_upstream.push(sse_reply({"error": {"message": "slow down", "code": status}}, done=False))
    resp = send(proxy, True)
    body = assert_plain_error(resp, status, error_type)
    assert "slow down" in body["error"]["message"]


def test_error_object_without_a_code_as_first_event_is_502(proxy, fake_upstream):
    fake_upstream.push(sse_reply({"error": {"message": "model crashed"}}, done=False))
    body = assert_plain_error(send(proxy, True), 502, "api_error")
    assert "model crashed" in body["error"]["message"]


def test_error_object_mid_stream_is_one_error_event(proxy, fake_upstream):
    """Case 59."""
    fake_upstream.push(sse_reply(*three_events(), {"error": {"message": "boom", "code": 502}},
                                 chunk({"content": "never"}), chunk({}, "stop")))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    err = assert_ends_with_one_error(events, "api_error")
    assert "boom" in err["error"]["message"]
    assert "never" not in json.dumps(events)


def test_openrouter_finish_reason_error_mid_stream(proxy, fake_upstream):
    """Case 60: OpenRouter puts the error next to finish_reason "error"."""
    fake_upstream.push(sse_reply(*three_events(), chunk({}, "error", error={"message": "provider boom", "code": 502})))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    err = assert_ends_with_one_error(events, "api_error")
    assert "provider boom" in err["error"]["message"]


OPENROUTER_FAILED = {  # its NonStreamingChoice: a provider's failure mid-answer, in a 200
    "id": "gen-1", "object": "chat.completion", "model": "qwen/qwen3-coder",
    "choices": [{"index": 0, "finish_reason": "error", "native_finish_reason": "error",
                 "message": {"role": "assistant", "content": "Partial answ"},
                 "error": {"code": 502, "message": "Upstream error from Chutes: peer closed connection"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}


def test_a_json_answer_that_ended_in_an_error_is_an_error(make_proxy, fake_upstream):
    """Probe AL D5: OpenRouter's 200 with finish_reason "error" and the choice's error object reached
    a non-streaming client as an empty, successful end_turn; streamed, it was already an error."""
    proxy = make_proxy(retries=0)
    fake_upstream.push(json_reply(OPENROUTER_FAILED))
    body = assert_plain_error(send(proxy, False), 502, "api_error")
    assert "peer closed connection" in body["error"]["message"]
    bare = {**OPENROUTER_FAILED, "choices": [{**OPENROUTER_FAILED["choices"][0], "error": None}]}  # Mistral's: no object
    fake_upstream.push(json_reply(bare))
    body = assert_plain_error(send(proxy, False), 502, "api_error")
    assert "error during generation" in body["error"]["message"]


def test_a_stream_whose_choice_carries_the_error_ends_with_it(proxy, fake_upstream):
    """The choice's own error object (OpenRouter's NonStreamingChoice shape, streamed), with what
    came before it sent first."""
    fake_upstream.push(sse_reply(*three_events(), {**chunk({"content": " and"}, "error"), "choices": [
        {"index": 0, "delta": {"content": " and"}, "finish_reason": "error",
         "error": {"code": 502, "message": "provider boom"}}]}))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    err = assert_ends_with_one_error(events, "api_error")
    assert "provider boom" in err["error"]["message"]
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text.endswith(" and"), text  # the chunk's own content went first (review AO 8)


def test_a_choices_error_without_a_finish_reason_is_not_read_as_text(proxy, fake_upstream):
    """A chunk whose choice carries an error object and no finish_reason is no plain text chunk: the
    text fast path would have passed its content on and lost the error."""
    failed = {**chunk({"content": " and"}), "choices": [{"index": 0, "delta": {"content": " and"},
                                                         "finish_reason": None, "error": {"message": "boom", "code": 502}}]}
    fake_upstream.push(sse_reply(*three_events(), failed, chunk({}, "stop")))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert "boom" in assert_ends_with_one_error(events, "api_error")["error"]["message"]


def test_mistrals_model_length_is_max_tokens(proxy, fake_upstream):
    """Probe AL D6: Mistral's finish_reason "model_length" (the model's context ran out) read as a
    whole answer (end_turn): the client never knew it was cut."""
    fake_upstream.push(json_reply(completion("Partial answ", finish="model_length")))
    assert send(proxy, False).json["stop_reason"] == "max_tokens"
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "Partial answ"}), chunk({}, "model_length")))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert [e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta"] == ["max_tokens"]


def test_mid_stream_error_keeps_its_type(proxy, fake_upstream):
    """PROTOCOL.md 4.3: the type comes from the object's code via the 4.2 table."""
    fake_upstream.push(sse_reply(*three_events(), {"error": {"message": "busy", "code": 529}}))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    assert_ends_with_one_error(events, "overloaded_error")


@pytest.mark.parametrize("error,error_type", [
    ({"message": "Rate limit exceeded upstream", "code": 429, "type": "rate_limit_exceeded"}, "overloaded_error"),
    ({"message": "You exceeded your current quota", "code": "insufficient_quota"}, "rate_limit_error"),
])
def test_a_rate_limit_mid_stream_is_an_overload_the_client_asks_again_after(proxy, fake_upstream, error, error_type):
    """probe H: Claude Code ends the turn on a rate_limit_error event and asks again after an
    overloaded_error one (a 429 before the stream is retried); an exhausted quota, which no wait
    gets past, still stops it."""
    fake_upstream.push(sse_reply(*three_events(), {"error": error}))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    err = assert_ends_with_one_error(events, error_type)
    assert error["message"] in err["error"]["message"]


def test_sse_event_named_error_mid_stream(proxy, fake_upstream):
    fake_upstream.push(sse_reply(*three_events(), b"event: error\ndata: {\"message\":\"named boom\"}\n\n"))
    with open_stream(proxy) as client:
        events = client.read_all(timeout=5)
    err = assert_ends_with_one_error(events, "api_error")
    assert "named boom" in err["error"]["message"]


def test_error_object_in_a_200_json_body(proxy, fake_upstream):
    """Case 47: HTTP 200 with an error object -> the status its code names."""
    fake_upstream.push(json_reply({"error": {"code": 429, "message": "slow"}}))
    body = assert_plain_error(send(proxy, False), 429, "rate_limit_error")
    assert "slow" in body["error"]["message"]


# ---------------------------------------------------------------------------
# The max_tokens retry.

TOO_LARGE = ("max_tokens is too large: 128000. This model supports at most 16384 completion tokens, "
             "whereas you provided 128000.")


def _too_large() -> Reply:
    return json_reply({"error": {"message": TOO_LARGE, "type": "invalid_request_error", "param": "max_tokens",
                                 "code": "invalid_value"}}, status=400)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_max_tokens_too_large_is_retried_with_the_named_limit(proxy, fake_upstream, stream):
    ok = sse_reply(chunk({"content": "fine"}), chunk({}, "stop"), {"choices": [], "usage": {
        "prompt_tokens": 3, "completion_tokens": 1}}) if stream else json_reply(completion("fine"))
    fake_upstream.push(_too_large(), ok, ok)
    model = f"gpt-retry-{stream}"  # the learned limit is per model, and this proxy serves the whole module
    resp = send(proxy, stream, max_tokens=128000, model=model)
    assert resp.status == 200, resp
    if stream:
        assert b"event: message_stop" in resp.body and b"event: error" not in resp.body
    else:
        assert resp.json["content"] == [{"type": "text", "text": "fine"}]
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [128000, 16384]
    # Learned: the next request goes straight out with the limit.
    assert send(proxy, stream, max_tokens=128000, model=model).status == 200
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [128000, 16384, 16384]


def test_smaller_max_tokens_is_left_alone_after_learning(proxy, fake_upstream):
    fake_upstream.push(_too_large())
    assert send(proxy, False, max_tokens=128000, model="gpt-small").status == 200
    assert send(proxy, False, max_tokens=1000, model="gpt-small").status == 200
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [128000, 16384, 1000]


def test_other_400_is_not_retried(proxy, fake_upstream):
    fake_upstream.push(json_reply({"error": {"message": "messages[0].content is required"}}, status=400))
    assert_plain_error(send(proxy, False, max_tokens=128000, model="gpt-other"), 400, "invalid_request_error")
    assert len(fake_upstream.requests) == 1


def test_a_second_refusal_is_passed_on(proxy, fake_upstream):
    """An upstream that keeps refusing does not make the proxy loop."""
    for _ in range(5):
        fake_upstream.push(_too_large())
    assert_plain_error(send(proxy, False, max_tokens=128000, model="gpt-stubborn"), 400, "invalid_request_error")
    assert [r.json["max_tokens"] for r in fake_upstream.requests] == [128000, 16384]


# ---------------------------------------------------------------------------
# F10: huge tool arguments stream through, live and in linear time.


def test_four_mib_of_tool_arguments_in_1k_deltas_stream_live_in_linear_time(proxy, fake_upstream):
    """F10: about 4000 fragments. Each must cost the same: the last quarter of the arguments may not
    take much longer than the first, which it does when every fragment re-reads the whole buffer."""
    args = json.dumps({"path": "big.txt", "content": "0123456789abcdef" * (4 * 1024 * 1024 // 16)})
    fragments = [args[i:i + 1024] for i in range(0, len(args), 1024)]
    gate = Gate()
    steps: List[Any] = [chunk({"tool_calls": [{"index": 0, "id": "call_big", "type": "function",
                                               "function": {"name": "write", "arguments": fragments[0]}}]})]
    steps += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments[1:-1]]
    steps += [gate, chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragments[-1]}}]}),
              chunk({}, "tool_calls"), {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 99}}]
    fake_upstream.push(sse_reply(*steps))
    held_back = len(args) - len(fragments[-1])
    marks = {}  # fraction of the arguments received -> when
    with StreamClient(proxy.url, minimal_request(stream=True), headers=HEADERS, timeout=30) as client:
        received = len(client.read_until("content_block_delta", timeout=5)["delta"]["partial_json"])
        marks[0.0] = time.monotonic()
        # Everything but the last fragment must get through while the upstream holds that one.
        while received < held_back:
            event = client.next_event(timeout=20)
            assert event is not None and event["type"] == "content_block_delta", event
            received += len(event["delta"]["partial_json"])
            for q in (0.25, 0.75, 1.0):
                if q not in marks and received >= q * held_back:
                    marks[q] = time.monotonic()
        assert not gate.event.is_set()
        gate.release()
        events = client.read_all(timeout=20)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"][0]["input"] == json.loads(args)
    first, last = marks[0.25] - marks[0.0], marks[1.0] - marks[0.75]
    assert last < 2.5 * first + 0.1, f"first quarter {first:.2f} s, last quarter {last:.2f} s"


def test_no_handler_is_left_hanging(pool):
    """R2: after every fault above (this runs last), no request is still in flight in any proxy."""
    for server in pool.servers or [pool.get()]:
        assert server.server.wait_idle(2.0), "a handler is still busy after its fault ended"


@pytest.mark.parametrize("base, hint", [("", True), ("/v1", False)])
def test_an_upstream_404_names_the_url_that_gave_it(make_proxy: Any, fake_upstream: FakeUpstream,
                                                   base: str, hint: bool) -> None:
    # "upstream 404: Not Found" alone reads like an unknown model; a base URL without the /v1 its
    # server serves under (Ollama's) is the likelier cause: the message says where, and asks.
    origin = fake_upstream.url.rsplit("/v1", 1)[0]
    proxy = make_proxy(upstream=origin + base)
    fake_upstream.push(json_reply({"error": "404 page not found"}, status=404))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request())
    assert resp.status == 404 and resp.json["error"]["type"] == "not_found_error", resp
    message = resp.json["error"]["message"]
    assert f"POST {origin}{base}/chat/completions" in message, message
    assert ("does the upstream URL need /v1?" in message) is hint, message


def test_an_azure_deployments_404_does_not_ask_for_v1(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    # Azure's deployment URLs have no /v1: a wrong deployment name is its usual 404, and following the
    # hint (an upstream URL ending in /v1) posted to /v1/openai/deployments/..., another 404.
    origin = fake_upstream.url.rsplit("/v1", 1)[0]
    proxy = make_proxy(upstream=origin, provider="azure", model="my-gpt-4o-deployment")
    fake_upstream.push(json_reply({"error": {"code": "DeploymentNotFound", "message": "not found"}}, status=404))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request())
    assert resp.status == 404, resp
    message = resp.json["error"]["message"]
    assert "/openai/deployments/my-gpt-4o-deployment/chat/completions" in message, message
    assert "/v1?" not in message, message
