"""Passthrough mode against a fake Anthropic-style upstream (PROTOCOL.md 4.4; RELIABILITY.md 5 #3).

Requests and answers go through byte for byte; hop-by-hop headers and
Accept-Encoding are stripped; the client's key is replaced by the configured
one (or forwarded when none is configured); SSE is relayed as it arrives and
read on the side for the metrics; count_tokens falls back to the local
estimate when the upstream lacks it.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

import pytest

import claudeproxy
from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request, request
from fakes import Fault, Gate, Reply, StreamClient, json_reply
from sse_checks import assert_valid_event_sequence, final_message

SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)


def anthropic_event(payload: Dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode("utf-8")


MESSAGE_START = {"type": "message_start", "message": {
    "id": "msg_01UP", "type": "message", "role": "assistant", "model": "claude-upstream", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1,
                                                          "cache_read_input_tokens": 7}}}
HEAD_EVENTS = [
    MESSAGE_START,
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
]
TAIL_EVENTS = [
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
]


def sse(*steps: Any) -> Reply:
    return Reply(200, (("Content-Type", "text/event-stream"), ("request-id", "req_upstream1")), list(steps),
                 chunked=True)




_RECORDS: List[Any] = []  # the metrics sink of the module's passthrough proxy


@pytest.fixture
def records() -> List[Any]:
    _RECORDS.clear()
    return _RECORDS


@pytest.fixture
def through(make_proxy, records):
    return make_proxy(passthrough=True, metrics_sink=_RECORDS.append)


def post(server: Any, body: Any, path: str = "/v1/messages", headers: Any = None) -> Any:
    hdrs = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    hdrs.update(headers or {})
    return request(server.url, "POST", path, body, hdrs)


# ---------------------------------------------------------------------------
# Requests.


def test_body_and_path_go_through_byte_for_byte(through, fake_upstream):
    body = b'{ "model":"claude-x",  "max_tokens":5, "messages":[{"role":"user","content":"h\\u00e9 \xc3\xa9"}],' \
           b'"unknown_field":{"kept":true} }'
    fake_upstream.push(json_reply({"type": "message", "content": []}))
    resp = post(through, body, path="/v1/messages?beta=true")
    assert resp.status == 200, resp
    sent = fake_upstream.last
    assert sent.body == body
    assert sent.path == "/v1/messages?beta=true"  # the base URL ends in /v1: not doubled


@pytest.mark.parametrize("base,expected", [
    ("", "/v1/messages?beta=true"),
    ("/v1", "/v1/messages?beta=true"),
    ("/v1/", "/v1/messages?beta=true"),
    ("/anthropic", "/anthropic/v1/messages?beta=true"),
])
def test_upstream_path_joins_the_base_once(make_proxy, fake_upstream, base, expected):
    server = make_proxy(passthrough=True, upstream=f"http://127.0.0.1:{fake_upstream.port}{base}")
    post(server, minimal_request(), path="/v1/messages?beta=true")
    assert fake_upstream.last.path == expected


def test_hop_by_hop_and_accept_encoding_are_stripped(through, fake_upstream):
    post(through, minimal_request(), headers={
        "Connection": "keep-alive, X-Hop-Private", "X-Hop-Private": "secret-hop", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic Zm9vOmJhcg==", "Accept-Encoding": "gzip, br",
        "anthropic-beta": "prompt-caching-2024-07-31", "X-Custom": "kept"})
    got = fake_upstream.last.headers
    for name in ("x-hop-private", "keep-alive", "te", "proxy-authorization"):
        assert name not in got, name
    assert got.get("accept-encoding", "identity") == "identity"  # never a compressed body we would have to relay
    assert got["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert got["anthropic-version"] == "2023-06-01"
    assert got["x-custom"] == "kept"
    assert got["host"] == f"127.0.0.1:{fake_upstream.port}"


def test_client_key_is_replaced_by_the_configured_key(through, fake_upstream):
    post(through, minimal_request(), headers={"Authorization": f"Bearer {CLIENT_KEY}", "Cookie": "s=1"})
    sent = fake_upstream.last
    assert [v for k, v in sent.raw_headers if k.lower() == "x-api-key"] == [UPSTREAM_KEY]
    assert "authorization" not in sent.headers and "cookie" not in sent.headers
    assert CLIENT_KEY not in repr(sent.raw_headers) + sent.body.decode("utf-8")


def test_client_key_is_forwarded_when_none_is_configured(make_proxy, fake_upstream):
    server = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    post(server, minimal_request())
    sent = fake_upstream.last
    assert [v for k, v in sent.raw_headers if k.lower() == "x-api-key"] == [CLIENT_KEY]


# ---------------------------------------------------------------------------
# Answers.


def test_json_answer_is_relayed_with_usage_in_metrics(through, fake_upstream, records):
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-upstream",
              "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
              "usage": {"input_tokens": 12, "output_tokens": 3}}
    raw = json.dumps(answer, indent=1).encode("utf-8")
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [raw]))
    resp = post(through, minimal_request())
    assert resp.status == 200 and resp.body == raw
    assert _wait_for(records)
    assert records[-1].input_tokens == 12 and records[-1].output_tokens == 3
    assert records[-1].stop_reason == "end_turn" and records[-1].model == "claude-upstream"


@pytest.mark.parametrize("status,ctype,body", [
    (429, "application/json", b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'),
    (529, "application/json", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'),
    (400, "application/json", b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}'),
    (500, "text/html", b"<html>upstream broke</html>"),
])
def test_upstream_error_status_and_body_are_relayed(through, fake_upstream, records, status, ctype, body):
    fake_upstream.push(Reply(status, (("Content-Type", ctype), ("retry-after", "7"), ("Keep-Alive", "timeout=5"),
                                      ("Proxy-Authenticate", "Basic"), ("x-upstream-note", "kept")), [body]))
    resp = post(through, minimal_request(stream=True))
    assert resp.status == status
    assert resp.body == body
    assert resp.headers["content-type"] == ctype
    assert resp.headers["retry-after"] == "7" and resp.headers["x-upstream-note"] == "kept"
    assert "keep-alive" not in resp.headers and "proxy-authenticate" not in resp.headers  # hop-by-hop, both ways
    assert resp.headers["content-length"] == str(len(body))
    assert _wait_for(records) and records[-1].status == status


def test_redirect_is_not_followed(through, fake_upstream):
    fake_upstream.push(Reply(302, (("Location", "http://127.0.0.1:9/steal"),), [b""]))
    resp = post(through, minimal_request())
    assert resp.status == 502 and resp.json["error"]["type"] == "api_error"
    assert len(fake_upstream.requests) == 1


def test_stream_is_relayed_as_it_arrives(through, fake_upstream, records):
    """Gate proof: the first text delta reaches the client while the upstream holds the rest."""
    gate = Gate()
    head = b"".join(anthropic_event(e) for e in HEAD_EVENTS)
    tail = b"".join(anthropic_event(e) for e in TAIL_EVENTS)
    fake_upstream.push(sse(head, gate, tail))
    before = request(through.url, "GET", "/metrics").json
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        assert client.status == 200 and client.headers["content-type"] == "text/event-stream"
        assert client.headers["transfer-encoding"] == "chunked"
        delta = client.read_until("content_block_delta", timeout=3)
        assert delta["delta"]["text"] == "Hello" and not gate.event.is_set()
        gate.release()
        events = client.read_all(timeout=5)
        assert client.body == head + tail  # byte for byte
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "Hello there"}]
    assert _wait_for(records)
    rec = records[-1]
    assert (rec.input_tokens, rec.output_tokens, rec.cache_read_input_tokens) == (25, 15, 7)
    assert rec.stop_reason == "end_turn" and rec.status == 200
    after = request(through.url, "GET", "/metrics").json
    assert after["output_tokens"] - before["output_tokens"] == 15
    assert after["input_tokens"] - before["input_tokens"] == 25


@pytest.mark.parametrize("fault", ["rst", "fin", "truncate"])
def test_broken_stream_ends_with_one_error_event(through, fake_upstream, fault):
    head = b"".join(anthropic_event(e) for e in HEAD_EVENTS)
    fake_upstream.push(sse(head, Fault(fault)))
    with StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY}) as client:
        events = client.read_all(timeout=5)
        assert client.body.startswith(head)
    assert_valid_event_sequence(events)
    assert [e["type"] for e in events].count("error") == 1 and events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error"


def test_client_disconnect_frees_the_upstream(through, fake_upstream):
    head = b"".join(anthropic_event(e) for e in HEAD_EVENTS)
    fake_upstream.push(sse(head, Fault("hang")))
    client = StreamClient(through.url, minimal_request(stream=True), headers={"x-api-key": CLIENT_KEY})
    client.read_until("content_block_delta", timeout=3)
    closed = time.monotonic()
    client.close()
    upstream_closed = fake_upstream.wait_closed(3)
    assert upstream_closed is not None and upstream_closed - closed <= 1.0


# ---------------------------------------------------------------------------
# count_tokens.


def test_count_tokens_is_forwarded_when_the_upstream_has_it(through, fake_upstream):
    fake_upstream.push(json_reply({"input_tokens": 42}))
    resp = post(through, {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]},
                path="/v1/messages/count_tokens")
    assert resp.status == 200 and resp.json == {"input_tokens": 42}
    assert fake_upstream.last.path == "/v1/messages/count_tokens"


@pytest.mark.parametrize("status", [404, 405])
def test_count_tokens_falls_back_to_the_local_estimate(through, fake_upstream, status):
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "not_found_error", "message": "no"}},
                                  status=status))
    text = "count these words please " * 40
    resp = post(through, {"model": "claude-x", "messages": [{"role": "user", "content": text}]},
                path="/v1/messages/count_tokens")
    assert resp.status == 200, resp
    assert resp.json["input_tokens"] >= len(text) // 5


def _wait_for(records: List[Any], timeout: float = 2.0) -> bool:
    """The record is written after the last byte went out; give the handler a moment."""
    end = time.monotonic() + timeout
    while not records and time.monotonic() < end:
        time.sleep(0.01)
    return bool(records)
