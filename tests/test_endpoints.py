"""The endpoints besides the translation itself, over real sockets.

PROTOCOL.md 4.4, 4.5 and cases 5, 6, 71, 72, 73; RELIABILITY.md F26;
CLAUDE-CODE.md (``/v1/messages?beta=true``). Connection behaviour: keep-alive,
TCP_NODELAY on accepted sockets, a listen backlog of at least 64.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
import time
from typing import Any, Dict, List

import prom
import pytest
from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request, quota_probe, request
from fakes import completion, json_reply
from sse_checks import assert_valid_event_sequence, events_of, final_message
from test_http_errors import REQUEST_ID_RE, assert_error
from test_server import wait_for

from claudeproxy.config import Provider, Route, RouteTarget
from claudeproxy.model_facts import builtin_facts

SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

UPSTREAM_MODELS = {
    "object": "list",
    "data": [
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
        {"id": "o3", "object": "model", "owned_by": "system"},  # no "created"
    ],
}


# One fake and one proxy serve the whole module (starting and stopping a server
# per test costs more than the tests); each test gets the fake reset.




def get(proxy: Any, path: str, **headers: str) -> Any:
    return request(proxy.url, "GET", path, headers=headers or None)


# ---------------------------------------------------------------------------
# /v1/messages with Claude Code's query string.


def test_query_string_is_ignored_for_routing(post: Any, fake_upstream: Any) -> None:
    resp = post(minimal_request(), path="/v1/messages?beta=true")
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "Hello!"}]
    assert fake_upstream.last.path == "/v1/chat/completions"  # the client's query is not forwarded


def test_success_carries_a_request_id(post: Any) -> None:
    resp = post(minimal_request())
    assert REQUEST_ID_RE.match(resp.headers["request-id"]), resp.headers


# ---------------------------------------------------------------------------
# count_tokens (case 72).


def test_count_tokens_is_local_and_positive(post: Any, fake_upstream: Any) -> None:
    resp = post({"model": "claude-test", "messages": [{"role": "user", "content": "Hello"}]},
                path="/v1/messages/count_tokens?beta=true")
    assert resp.status == 200, resp
    assert set(resp.json) == {"input_tokens"}
    assert isinstance(resp.json["input_tokens"], int) and resp.json["input_tokens"] > 0
    assert fake_upstream.requests == []


def test_count_tokens_grows_with_the_input(post: Any) -> None:
    def count(**extra: Any) -> int:
        body = {"model": "claude-test", "messages": [{"role": "user", "content": "Hello"}], **extra}
        resp = post(body, path="/v1/messages/count_tokens")
        assert resp.status == 200, resp
        return int(resp.json["input_tokens"])

    base = count()
    long_text = count(messages=[{"role": "user", "content": "word " * 2000}])
    with_system = count(system="You are a careful assistant. " * 50)
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(30)}}
    with_tools = count(tools=[{"name": "lookup", "description": "find things", "input_schema": schema}])
    # 10000 characters are at least 2500 tokens at 4 characters a token (PROTOCOL.md 4.5).
    assert long_text >= 2500
    assert with_system > base and with_tools > base


@pytest.mark.parametrize("body, path", [
    ({"model": "claude-test"}, "messages"),
    ({"model": "claude-test", "messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ([1, 2], "body"),
])
def test_count_tokens_bad_body_is_400_naming_the_field(post: Any, fake_upstream: Any, body: Any, path: str) -> None:
    resp = post(body, path="/v1/messages/count_tokens")
    message = assert_error(resp, 400, "invalid_request_error")
    assert message.startswith(path + ":"), message
    assert fake_upstream.requests == []


def test_count_tokens_for_a_model_no_route_serves_is_404(make_proxy: Any, fake_upstream: Any) -> None:
    """As /v1/messages answers it: a count for a model the proxy cannot serve would mislead."""
    provider = Provider("openai", fake_upstream.url)
    proxy = make_proxy(upstream=None, providers=(provider,), routes=(Route("haiku", RouteTarget("openai", "small")),))
    body = {"model": "claude-opus-4-1", "messages": [{"role": "user", "content": "x"}]}
    counted = request(proxy.url, "POST", "/v1/messages/count_tokens", body)
    assert assert_error(counted, 404, "not_found_error") == assert_error(
        request(proxy.url, "POST", "/v1/messages", {**body, "max_tokens": 10}), 404, "not_found_error")
    assert request(proxy.url, "POST", "/v1/messages/count_tokens", {**body, "model": "claude-haiku-4-5"}).status == 200


def test_count_tokens_does_not_need_max_tokens(post: Any) -> None:
    resp = post({"model": "claude-test", "messages": [{"role": "user", "content": "x"}]},
                path="/v1/messages/count_tokens")
    assert resp.status == 200, resp


# ---------------------------------------------------------------------------
# Models (case 73, PROTOCOL.md 4.5).


def with_facts(info: Dict[str, Any]) -> Dict[str, Any]:
    """A ModelInfo plus the context window and output cap the built-in model table knows."""
    facts = builtin_facts(info["id"])
    extra = {"max_input_tokens": facts.context_window, "max_tokens": facts.max_output}
    return {**info, **{k: v for k, v in extra.items() if v}}


def test_models_list_in_anthropic_shape(proxy: Any, fake_upstream: Any) -> None:
    """Without --model the client's names go upstream: the list is the upstream's, with model facts."""
    fake_upstream.push(json_reply(UPSTREAM_MODELS))
    resp = get(proxy, "/v1/models")
    assert resp.status == 200, resp
    body = resp.json
    assert body["data"] == [
        with_facts({"type": "model", "id": "gpt-4o", "display_name": "gpt-4o", "created_at": "2024-05-10T18:50:49Z"}),
        with_facts({"type": "model", "id": "gpt-4o-mini", "display_name": "gpt-4o-mini",
                    "created_at": "2024-07-16T23:32:21Z"}),
        with_facts({"type": "model", "id": "o3", "display_name": "o3", "created_at": "1970-01-01T00:00:00Z"}),
    ]
    assert body["data"][0]["max_input_tokens"] > 0 and body["data"][2]["max_tokens"] > 0
    assert body["has_more"] is False
    assert body["first_id"] == "gpt-4o" and body["last_id"] == "o3"
    upstream = fake_upstream.last
    assert (upstream.method, upstream.path) == ("GET", "/v1/models")
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in repr(upstream.raw_headers)


@pytest.mark.parametrize("query, ids, has_more", [
    ("limit=2", ["gpt-4o", "gpt-4o-mini"], True),
    ("limit=2&after_id=gpt-4o-mini", ["o3"], False),
    ("after_id=gpt-4o", ["gpt-4o-mini", "o3"], False),
    ("limit=1&before_id=o3", ["gpt-4o-mini"], True),
    ("limit=5&before_id=gpt-4o-mini", ["gpt-4o"], False),
    ("after_id=no-such-model", [], False),
])
def test_models_pagination(proxy: Any, fake_upstream: Any, query: str, ids: List[str], has_more: bool) -> None:
    fake_upstream.push(json_reply(UPSTREAM_MODELS))
    body = get(proxy, "/v1/models?" + query).json
    assert [m["id"] for m in body["data"]] == ids
    assert body["has_more"] is has_more
    assert body["first_id"] == (ids[0] if ids else None)
    assert body["last_id"] == (ids[-1] if ids else None)


def test_models_default_page_is_twenty_and_paging_reaches_every_model(proxy: Any, fake_upstream: Any) -> None:
    many = {"data": [{"id": f"m{i:02d}", "created": 1700000000 + i} for i in range(25)]}
    fake_upstream.push(json_reply(many), json_reply(many))
    first = get(proxy, "/v1/models").json
    assert len(first["data"]) == 20 and first["has_more"] is True
    second = get(proxy, "/v1/models?after_id=" + first["last_id"]).json
    assert [m["id"] for m in first["data"] + second["data"]] == [f"m{i:02d}" for i in range(25)]
    assert second["has_more"] is False
    assert all(RFC3339_Z.match(m["created_at"]) for m in first["data"])


def test_an_upstream_model_list_is_taken_to_its_first_five_thousand(proxy: Any, fake_upstream: Any) -> None:
    """Each model listed is routed and described: a list of two million took 39 s and 950 MB (probe AA F-3)."""
    many = {"data": [{"id": f"m{i:05d}"} for i in range(6000)]}
    fake_upstream.push(json_reply(many))
    body = get(proxy, "/v1/models?limit=1000&after_id=m03999").json
    assert [m["id"] for m in body["data"]] == [f"m{i:05d}" for i in range(4000, 5000)]
    assert body["has_more"] is False


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1001"])
def test_models_bad_limit_is_400(proxy: Any, fake_upstream: Any, limit: str) -> None:
    message = assert_error(get(proxy, "/v1/models?limit=" + limit), 400, "invalid_request_error")
    assert message.startswith("limit:"), message
    assert fake_upstream.requests == []


def test_models_upstream_error_is_mapped(proxy: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply({"error": {"message": "bad key"}}, status=401))
    assert_error(get(proxy, "/v1/models"), 401, "authentication_error")


@pytest.mark.parametrize("status", [404, 405, 501])
def test_an_upstream_without_a_model_list_gives_an_empty_one(proxy: Any, fake_upstream: Any, status: int) -> None:
    """llama.cpp and some gateways have no /models: Anthropic's list never 404s, and a 404 on it reads
    as a wrong base URL, while /v1/messages works. A refused key or a failing server still says so."""
    fake_upstream.push(json_reply({"error": {"message": "Not Found"}}, status=status))
    resp = get(proxy, "/v1/models")
    assert resp.status == 200, resp
    assert resp.json["data"] == [] and resp.json["has_more"] is False
    fake_upstream.push(json_reply({"error": {"message": "down"}}, status=500))
    assert get(proxy, "/v1/models").status == 500


def test_models_routed_models_come_first_and_survive_an_upstream_failure(make_proxy: Any,
                                                                          fake_upstream: Any) -> None:
    """A mapped model is listed; the upstream's own list is added because unmatched names pass through.
    Fable and Mythos, which nothing routes, take the one Claude family routed (routing.LATER_FAMILIES)."""
    proxy = make_proxy(model_map=(("claude-haiku*", "served-model"),))
    fake_upstream.push(json_reply(UPSTREAM_MODELS), json_reply({"error": {"message": "down"}}, status=500))
    ids = [m["id"] for m in get(proxy, "/v1/models").json["data"]]
    assert ids == ["served-model", "fable", "mythos", "gpt-4o", "gpt-4o-mini", "o3"]
    resp = get(proxy, "/v1/models")
    assert resp.status == 200, resp
    assert [m["id"] for m in resp.json["data"]] == ["served-model", "fable", "mythos"]


def test_models_with_one_model_for_everything_lists_only_it(make_proxy: Any, fake_upstream: Any) -> None:
    """With --model every name goes to one model: listing the upstream's others would be a lie."""
    proxy = make_proxy(model="served-model")
    resp = get(proxy, "/v1/models")
    assert resp.status == 200, resp
    assert [m["id"] for m in resp.json["data"]] == ["served-model"]
    assert fake_upstream.requests == []


def test_model_by_id_found_and_missing(proxy: Any, fake_upstream: Any) -> None:
    fake_upstream.push(json_reply(UPSTREAM_MODELS), json_reply(UPSTREAM_MODELS))
    resp = get(proxy, "/v1/models/gpt-4o-mini")
    assert resp.status == 200, resp
    assert resp.json == with_facts({"type": "model", "id": "gpt-4o-mini", "display_name": "gpt-4o-mini",
                                    "created_at": "2024-07-16T23:32:21Z"})
    assert_error(get(proxy, "/v1/models/claude-nope"), 404, "not_found_error", "claude-nope")


def test_model_by_id_with_a_fixed_model_accepts_any_name(make_proxy: Any, fake_upstream: Any) -> None:
    # With --model every client model name is served, so every name exists.
    proxy = make_proxy(model="served-model")
    resp = get(proxy, "/v1/models/claude-sonnet-4-5")
    assert resp.status == 200, resp
    assert resp.json["id"] == "claude-sonnet-4-5" and resp.json["type"] == "model"
    assert fake_upstream.requests == []


# ---------------------------------------------------------------------------
# /health and /metrics.


def test_health(proxy: Any, fake_upstream: Any) -> None:
    resp = get(proxy, "/health")
    assert resp.status == 200 and resp.json == {"status": "ok"}
    assert REQUEST_ID_RE.match(resp.headers["request-id"])
    assert fake_upstream.requests == []


def test_metrics_totals_and_sink(make_proxy: Any, fake_upstream: Any) -> None:
    records: List[Any] = []
    proxy = make_proxy(metrics_sink=records.append)
    send = lambda body: request(proxy.url, "POST", "/v1/messages", body)  # noqa: E731
    ok = send(minimal_request())
    assert ok.status == 200, ok
    probe = send(quota_probe())
    assert probe.status == 200  # the quota probe: local
    fake_upstream.push(json_reply({"error": {"message": "boom"}}, status=500))
    failed = send(minimal_request())
    assert failed.status == 500
    # A call is recorded just after its answer is written: the client may be quicker.
    assert wait_for(lambda: len(records) == 3, 5), records
    text = get(proxy, "/metrics")
    assert text.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = prom.parse(text.body.decode("utf-8"))
    assert prom.total(samples, "claudeproxy_requests_total") == 3
    assert prom.total(samples, "claudeproxy_requests_total", status="500") == 1
    assert prom.total(samples, "claudeproxy_requests_total", provider="(local)") == 1
    assert prom.total(samples, "claudeproxy_errors_total") == 1
    assert prom.total(samples, "claudeproxy_tokens_total", kind="input") == 10  # from the fake's usage
    assert prom.total(samples, "claudeproxy_tokens_total", kind="output") == 5
    totals = get(proxy, "/metrics?format=json").json  # the JSON summary /metrics served before
    assert totals["requests"] == 3 and totals["errors"] == 1 and totals["local"] == 1
    assert totals["input_tokens"] == 10 and totals["output_tokens"] == 5
    assert totals["by_status"] == {"200": 2, "500": 1}
    # By id: each record is written after its answer, so a loaded machine may write the next
    # call's first (CI on 3.12 did).
    by_id = {r.request_id: r for r in records}
    first, local, last = (by_id[r.headers["request-id"]] for r in (ok, probe, failed))
    assert (first.status, local.status, last.status) == (200, 200, 500)
    assert local.local and not first.local
    assert last.error_type == "api_error"


# ---------------------------------------------------------------------------
# Quota probe (case 6, F26) and max_tokens 0 (case 5): no upstream call.


def test_quota_probe_is_answered_locally(post: Any, fake_upstream: Any) -> None:
    resp = post(quota_probe())
    assert resp.status == 200, resp
    body = resp.json
    assert body["type"] == "message" and body["role"] == "assistant" and body["model"] == "claude-test"
    assert body["content"] == [{"type": "text", "text": "ok"}]
    assert body["stop_reason"] == "end_turn"
    assert body["id"].startswith("msg_")
    assert fake_upstream.requests == []


@pytest.mark.parametrize("content", ["Is 7 even? Answer Y or N.", [{"type": "text", "text": "quota"}, {"type": "text", "text": "?"}]])
def test_other_one_token_requests_go_upstream(post: Any, fake_upstream: Any, content: Any) -> None:
    """A one-token question (a classifier) gets the model's answer, not an invented "ok"."""
    fake_upstream.push(json_reply(completion("N")))
    resp = post(minimal_request(max_tokens=1, messages=[{"role": "user", "content": content}]))
    assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "N"}]
    assert len(fake_upstream.requests) == 1 and fake_upstream.last.json["max_tokens"] == 1


def test_quota_probe_streamed(post: Any, fake_upstream: Any) -> None:
    resp = post(quota_probe(stream=True))
    assert resp.status == 200, resp
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "ok"}]
    assert fake_upstream.requests == []


def test_quota_probe_still_needs_the_client_key(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy(auth_key=CLIENT_KEY)
    body = quota_probe()
    assert_error(request(proxy.url, "POST", "/v1/messages", body), 401, "authentication_error")
    assert request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY}).status == 200
    assert fake_upstream.requests == []


def test_max_tokens_zero_makes_no_upstream_call(post: Any, fake_upstream: Any) -> None:
    resp = post(minimal_request(max_tokens=0))
    assert resp.status == 200, resp
    assert resp.json["content"] == [] and resp.json["stop_reason"] == "max_tokens"
    streamed = post(minimal_request(max_tokens=0, stream=True))
    events = events_of(streamed.body)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["stop_reason"] == "max_tokens"
    assert fake_upstream.requests == []


def test_quota_probe_with_an_invalid_body_is_still_400(post: Any, fake_upstream: Any) -> None:
    assert_error(post({"model": "m", "max_tokens": 1}), 400, "invalid_request_error", "messages")


# ---------------------------------------------------------------------------
# Connections: keep-alive, TCP_NODELAY, backlog.


def test_keep_alive_serves_several_requests_on_one_connection(proxy: Any, fake_upstream: Any) -> None:
    conn = http.client.HTTPConnection(proxy.url.split("//")[1], timeout=10)
    try:
        conn.request("POST", "/v1/messages", json.dumps(minimal_request()), {"Content-Type": "application/json"})
        first = conn.getresponse()
        assert first.status == 200 and json.loads(first.read())["content"][0]["text"] == "Hello!"
        sock = conn.sock
        assert sock is not None and not first.will_close
        conn.request("POST", "/v1/messages?beta=true", json.dumps(quota_probe(stream=True)),
                     {"Content-Type": "application/json"})
        second = conn.getresponse()
        assert second.status == 200
        assert_valid_event_sequence(events_of(second.read()), allow_error=False)
        conn.request("GET", "/health")
        third = conn.getresponse()
        assert third.status == 200 and third.read() == b'{"status": "ok"}'
        assert conn.sock is sock, "the proxy closed a keep-alive connection"
    finally:
        conn.close()
    assert len(fake_upstream.requests) == 1


def test_accepted_sockets_have_nodelay_and_requests_are_not_delayed(proxy: Any) -> None:
    conn = http.client.HTTPConnection(proxy.url.split("//")[1], timeout=10)
    try:
        started = time.monotonic()
        for _ in range(10):
            conn.request("POST", "/v1/messages", json.dumps(quota_probe()),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        # Nagle + delayed ACK costs ~40 ms a round trip; 10 requests stay far below 10 x 40 ms.
        assert time.monotonic() - started < 0.3
        checked = 0
        for sock in proxy.server.open_connections():
            try:
                nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:  # one that closed since it was listed (CI on 3.13 once: EBADF), not ours
                continue
            assert nodelay != 0
            checked += 1
        assert checked, "the kept-alive connection is not tracked"
    finally:
        conn.close()


def test_listen_backlog_holds_a_burst_of_64(proxy: Any) -> None:
    # Hold the accept loop, then open 70 connections at once: with the stdlib
    # backlog of 5, all but ~6 would wait for SYN retries (1 s and more).
    release = threading.Event()
    original = proxy.server.verify_request

    def held(request: Any, address: Any) -> bool:
        release.wait(5)
        return bool(original(request, address))

    proxy.server.verify_request = held
    socks: List[socket.socket] = []
    try:
        for _ in range(70):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", proxy.address[1]))
            socks.append(sock)
        connected = _count_connected(socks, 0.5)
        assert connected >= 65, f"only {connected} of 70 connections completed while accept was held"
    finally:
        release.set()
        for sock in socks:
            sock.close()
        proxy.server.verify_request = original


def _count_connected(socks: List[socket.socket], within: float) -> int:
    pending = list(socks)
    done = 0
    deadline = time.monotonic() + within
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 0.05)
        for sock in writable:
            pending.remove(sock)
            done += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return done


def test_two_requests_in_parallel_on_two_connections(proxy: Any, fake_upstream: Any) -> None:
    results: Dict[int, int] = {}

    def one(i: int) -> None:
        results[i] = request(proxy.url, "POST", "/v1/messages", minimal_request()).status

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {0: 200, 1: 200}


def test_refusals_at_the_door_are_calls_too(make_proxy: Any, fake_upstream: Any) -> None:
    """A wrong client key, an unknown path under /v1: recorded with their status and type (issue 8),
    by the endpoint asked for, never by the path, which anyone chooses before any key check: 64 KB
    of it filled the usage log and took /metrics' endpoint rows from real calls (probe AI 2). A
    refused access is counted, not written to the usage log (anyone's flood pushed the day out of
    its read-back: review AJ R5)."""
    records: List[Any] = []
    server = make_proxy(auth_key="right-key-000000", metrics_sink=records.append)
    assert request(server.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": "wrong"}).status == 401
    assert request(server.url, "GET", "/v1/nothing-here", headers={"x-api-key": "right-key-000000"}).status == 404
    assert request(server.url, "GET", "/v1/" + "junk" * 8000).status == 401
    assert request(server.url, "GET", "/v1/models/some-model-" + "x" * 5000).status == 401
    key = {"x-api-key": "right-key-000000"}
    deadline = time.monotonic() + 5  # the record is written just after the answer went out
    while time.monotonic() < deadline:
        counted = json.loads(request(server.url, "GET", "/metrics?format=json", headers=key).body)
        if sum(counted["by_status"].values()) >= 4:
            break
        time.sleep(0.01)
    assert counted["by_status"] == {"401": 3, "404": 1}, counted["by_status"]
    assert [(r.endpoint, r.status, r.error_type) for r in records] == [("(unknown path)", 404, "not_found_error")]
    assert fake_upstream.requests == []
