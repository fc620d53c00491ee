"""Retries, fallbacks and keys that rotate (issue 7, items 2 and 3).

Retries and fallbacks happen only before the first byte reached the client;
Retry-After (seconds, milliseconds or an HTTP date) is honoured up to a cap;
a route's fallbacks are tried in order, each with its own model; the client
hears nothing unless all fail, then it gets the last error. A key command runs
once and is cached, runs again after a 401 (the request retried once) and
after its TTL; a failing command is a 502 naming its exit status. Several keys
are used in turn, and one answered 401 or 429 rests while the next serves.
"""

from __future__ import annotations

import email.utils
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator, List, Tuple

import prom
import pytest
from conftest import CLIENT_KEY, UPSTREAM_KEY, load_json, minimal_request, record_for, request
from fakes import (
    FakeUpstream,
    Fault,
    LoopbackListener,
    Reply,
    Sleep,
    StreamClient,
    chunk,
    completion,
    json_reply,
    sse_reply,
)
from sse_checks import assert_valid_event_sequence, final_message

import claudeproxy
from claudeproxy.config import Provider, Route, RouteTarget
from claudeproxy.credentials import KeyRing, refused
from claudeproxy.errors import retry_after

HEADERS = {"x-api-key": CLIENT_KEY}
BUSY = {"error": {"message": "overloaded, try later", "type": "server_error"}}


def ask(server: Any, **body: Any) -> Any:
    return request(server.url, "POST", "/v1/messages", minimal_request(**body), HEADERS)


def sent_keys(fake: FakeUpstream) -> List[str]:
    return [r.headers.get("authorization", "").replace("Bearer ", "") for r in fake.requests]


# ---------------------------------------------------------------------------
# Retry-After, pure.


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert retry_after((("retry-after", "3"),), now) == 3.0
    assert retry_after((("retry-after", "1.5"),), now) == 1.5
    assert retry_after((("retry-after-ms", "250"), ("retry-after", "9")), now) == 0.25  # ms is the finer one
    assert retry_after((("Retry-After", date),), now) == pytest.approx(7, abs=1)
    assert retry_after((("retry-after", email.utils.formatdate(now - 60, usegmt=True)),), now) == 0.0
    assert retry_after((("retry-after", "soon"),), now) is None
    # A garbled retry-after-ms does not hide a good Retry-After.
    assert retry_after((("retry-after-ms", "soon"), ("retry-after", "1")), now) == 1.0
    assert retry_after((("retry-after-ms", ""), ("Retry-After", date)), now) == pytest.approx(7, abs=1)
    assert retry_after((), now) is None


# ---------------------------------------------------------------------------
# Retries of one target.


def test_retries_get_past_transient_failures(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    records: List[Any] = []
    server = make_proxy(retries=2, metrics_sink=records.append)
    fake_upstream.push(json_reply(BUSY, status=503), json_reply(BUSY, status=502), json_reply(completion("third")))
    resp = ask(server)
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "third"}]
    assert len(fake_upstream.requests) == 3
    rec = record_for(records, resp.headers["request-id"])
    assert rec.attempts == 3 and rec.status == 200


def test_shutting_down_ends_a_retry_wait_with_the_upstreams_answer(make_proxy: Any,
                                                                    fake_upstream: FakeUpstream) -> None:
    """probe I: a request waiting to try again after a 503 held the client through the whole grace
    (5 s), made 2 more attempts after SIGTERM, and then got 529 "the proxy is shutting down"
    instead of the upstream's own answer."""
    import threading

    server = make_proxy(retries=2)
    busy = json_reply(BUSY, status=503)
    busy.headers = tuple(busy.headers) + (("Retry-After", "3"),)
    fake_upstream.push(busy, *[json_reply(completion("never"))] * 2)
    got: List[Any] = []
    client = threading.Thread(target=lambda: got.append(ask(server)), daemon=True)
    client.start()
    deadline = time.monotonic() + 5
    while not fake_upstream.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the 503 read, the 3-second wait begun
    started = time.monotonic()
    server.shutdown(grace=5.0)
    client.join(5)
    assert got and time.monotonic() - started < 2.0, time.monotonic() - started
    assert got[0].status == 503 and got[0].json["error"]["type"] == "overloaded_error", got[0]
    assert len(fake_upstream.requests) == 1  # no retry began after the shutdown


def test_retries_stop_after_n(make_proxy: Any, fake_upstream: FakeUpstream, caplog: Any) -> None:
    server = make_proxy(retries=2)
    fake_upstream.push(*[json_reply(BUSY, status=503)] * 4)
    with caplog.at_level("WARNING", logger="claudeproxy"):
        resp = ask(server)
    assert resp.status == 503 and resp.json["error"]["type"] == "overloaded_error"
    assert len(fake_upstream.requests) == 3
    # The log says what happens next: no "next target" when there is none.
    said = [r.getMessage().rsplit("; ", 1)[-1] for r in caplog.records if "answered 503" in r.getMessage()]
    assert [s.split(" in ")[0] for s in said] == ["retrying", "retrying", "no target left"]
    assert all(s.endswith(" s") for s in said[:2]), said  # and how long it waits


QUOTA = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                   "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}


# Moonshot's (forum.moonshot.ai/t/244) and Zhipu's (docs.bigmodel.cn/cn/api/api-code: balance, limit).
QUOTAS = {
    "openai": QUOTA,
    "moonshot": {"error": {"message": "You exceeded your current quota, please check your plan and billing details",
                           "type": "exceeded_current_quota_error"}},
    "zhipu-balance": {"error": {"code": "1113", "message": "Insufficient balance or no resource package. Please recharge."}},
    "zhipu-limit": {"error": {"code": 1310, "message": "Weekly/Monthly Limit Exhausted. Your limit will reset at "
                                                       "2026-12-10 08:00:00"}},
}


@pytest.mark.parametrize("quota", sorted(QUOTAS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_spent_quota_is_not_retried_by_anyone(make_proxy: Any, fake_upstream: FakeUpstream, stream: bool,
                                                quota: str) -> None:
    """A 429 for a spent quota (OpenAI's insufficient_quota, Moonshot's and Zhipu's own): no wait
    gets past it, so neither the proxy nor the client (x-should-retry: false, which the SDKs and
    Claude Code obey) tries again."""
    server = make_proxy(retries=2)
    fake_upstream.push(json_reply(QUOTAS[quota], status=429))
    resp = ask(server, stream=stream)
    assert resp.status == 429 and resp.json["error"]["type"] == "rate_limit_error"
    assert resp.headers.get("x-should-retry") == "false"
    assert len(fake_upstream.requests) == 1
    # A plain rate limit stays worth a retry.
    fake_upstream.push(json_reply(BUSY, status=429, headers=(("Retry-After", "0"),)), json_reply(completion()))
    assert ask(server).status == 200


@pytest.mark.parametrize("code", [["insufficient_quota"], {"a": 1}, 5, None])
def test_an_error_code_of_any_json_type_is_no_crash(make_proxy: Any, fake_upstream: FakeUpstream, code: Any) -> None:
    """Found by the upstream fuzzer: a list as the code made the quota check raise (a 500)."""
    server = make_proxy()
    fake_upstream.push(json_reply({"error": {"message": "no", "type": code, "code": code}}, status=429))
    resp = ask(server)
    assert resp.status == 429 and resp.headers.get("x-should-retry") is None


def test_no_retries_by_default(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    server = make_proxy()
    fake_upstream.push(json_reply(BUSY, status=503), json_reply(completion()))
    assert ask(server).status == 503
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_not_retried(make_proxy: Any, fake_upstream: FakeUpstream, status: int) -> None:
    server = make_proxy(retries=3)
    fake_upstream.push(json_reply({"error": {"message": "no"}}, status=status), json_reply(completion()))
    assert ask(server).status != 200
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_proxy_key_tells_the_client_not_to_retry_and_whose_key_it_was(
        make_proxy: Any, fake_upstream: FakeUpstream, status: int, caplog: Any) -> None:
    """Claude Code retries a plain 401 ten times over minutes, then asks for /login: the key that
    is wrong is the one the proxy sends, and no retry will fix it."""
    server = make_proxy(retries=3)
    refusal = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    fake_upstream.push(json_reply(refusal, status=status), json_reply(refusal, status=status))
    with caplog.at_level("WARNING", logger="claudeproxy"):
        first, second = ask(server), ask(server)
    for resp in (first, second):
        assert resp.status == status and resp.headers.get("x-should-retry") == "false"
        assert "the key claudeproxy sends" in resp.json["error"]["message"]
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "refused the key" in r.getMessage()]
    assert len(warned) == 1  # said once, not per request
    assert len(fake_upstream.requests) == 2


def test_a_403_about_the_model_is_not_said_to_be_the_keys(make_proxy: Any, fake_upstream: FakeUpstream,
                                                          caplog: Any) -> None:
    """probe H F5: OpenAI's 403 for a model the project may not use read "Failed to authenticate ...
    (the key claudeproxy sends ...)", and the log said to check the key, which was fine."""
    server = make_proxy(retries=3)
    refusal = {"error": {"message": "Project `proj_abc` does not have access to model `gpt-4.1`",
                         "type": "invalid_request_error", "code": "model_not_found"}}
    fake_upstream.push(json_reply(refusal, status=403))
    with caplog.at_level("WARNING", logger="claudeproxy"):
        resp = ask(server)
    assert resp.status == 403 and resp.headers.get("x-should-retry") == "false", resp
    assert "does not have access to model" in resp.json["error"]["message"]
    assert "the key claudeproxy sends" not in resp.json["error"]["message"]
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("does not let the key claudeproxy sends use" in m for m in said), said
    assert not any("refused the key" in m for m in said), said


@pytest.mark.parametrize("message, about_the_model", [
    ("Project `proj_abc` does not have access to model `gpt-4.1`", True),
    ("You are not allowed to use this model", True),
    ("Invalid API key for model access", False),  # the key's, though it says "model"
    ("Your key is not valid", False),
])
def test_which_403s_are_the_models(message: str, about_the_model: bool) -> None:
    from claudeproxy.pipeline import _NAMES_A_MODEL

    assert bool(_NAMES_A_MODEL.search(message)) is about_the_model


def test_a_refused_forwarded_client_key_is_the_clients_own(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """Without a key of its own the proxy forwards the client's: then the 401 is the client's to fix."""
    server = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    fake_upstream.push(json_reply({"type": "error", "error": {"type": "authentication_error",
                                                              "message": "invalid x-api-key"}}, status=401))
    resp = ask(server)
    assert resp.status == 401 and resp.headers.get("x-should-retry") == "false"
    assert "claudeproxy sends" not in resp.json["error"]["message"]


def test_retry_after_is_honoured(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    server = make_proxy(retries=1)
    fake_upstream.push(json_reply(BUSY, status=429, headers=(("Retry-After", "1"),)), json_reply(completion()))
    started = time.monotonic()
    assert ask(server).status == 200
    assert time.monotonic() - started >= 0.95
    fake_upstream.push(json_reply(BUSY, status=429, headers=(("retry-after-ms", "300"),)), json_reply(completion()))
    started = time.monotonic()
    assert ask(server).status == 200
    assert 0.28 <= time.monotonic() - started < 0.95


def test_an_openai_429_without_retry_after_is_waited_out_as_its_message_says(make_proxy: Any,
                                                                              fake_upstream: FakeUpstream) -> None:
    """OpenAI's 429 names its wait in x-ratelimit-reset-* and "try again in 2.5s", not Retry-After:
    the proxy's retry waits that long, and a client told of the 429 gets it as Retry-After."""
    limited = {"error": {"message": "Rate limit reached for gpt-4o on tokens per min. Please try again in 700ms.",
                         "type": "tokens", "code": "rate_limit_exceeded"}}
    server = make_proxy(retries=1)
    fake_upstream.push(json_reply(limited, status=429), json_reply(completion()))
    started = time.monotonic()
    assert ask(server).status == 200
    assert time.monotonic() - started >= 0.68  # the backoff of a first retry is 0.25-0.5 s
    told = make_proxy(retries=0)
    fake_upstream.push(json_reply(limited, status=429, headers=(("x-ratelimit-remaining-tokens", "0"),
                                                                 ("x-ratelimit-reset-tokens", "1m30s"))))
    resp = ask(told)
    assert resp.status == 429 and resp.json["error"]["type"] == "rate_limit_error"
    # The spent limit's reset comes first; more than a minute is said as no retry, the wait still told.
    assert (resp.headers["retry-after"], resp.headers["retry-after-ms"]) == ("90", "90000")
    assert resp.headers["x-should-retry"] == "false"


def test_a_retry_after_beyond_the_cap_is_not_waited_for(make_proxy: Any, fake_upstream: FakeUpstream,
                                                        caplog: Any) -> None:
    server = make_proxy(retries=3, retry_max_wait=1.0)
    fake_upstream.push(json_reply(BUSY, status=429, headers=(("Retry-After", "30"),)), json_reply(completion()))
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="claudeproxy"):
        resp = ask(server)
    assert resp.status == 429 and resp.headers["retry-after"] == "30"  # the client decides what to do
    assert "x-should-retry" not in resp.headers  # a wait the SDKs may well sit out
    assert time.monotonic() - started < 0.9 and len(fake_upstream.requests) == 1
    # The log says so, rather than "retrying".
    said = [r.getMessage() for r in caplog.records if "answered 429" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("asks for a 30 s rest (more than --retry-max-wait); no target left")


@pytest.mark.parametrize("retry_after", ["3600", "61", "retry-after-ms:120000", "date:7200"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_wait_of_more_than_a_minute_is_said_as_no_retry(make_proxy: Any, fake_upstream: FakeUpstream,
                                                          retry_after: str, stream: bool) -> None:
    """A daily quota's "try again in 59m59s": the Python SDK 2.x sleeps whatever Retry-After says,
    the call hanging for an hour. The client hears at once (x-should-retry: false), the header
    still saying when; the proxy does not retry either."""
    server = make_proxy(retries=2)
    if retry_after.startswith("date:"):
        header = ("Retry-After", email.utils.formatdate(time.time() + int(retry_after[5:]), usegmt=True))
    elif retry_after.startswith("retry-after-ms:"):
        header = ("retry-after-ms", retry_after.split(":")[1])
    else:
        header = ("Retry-After", retry_after)
    fake_upstream.push(json_reply(BUSY, status=429, headers=(header,)), json_reply(completion()))
    resp = ask(server, stream=stream)
    assert resp.status == 429 and resp.headers.get("x-should-retry") == "false"
    assert resp.headers[header[0].lower()] == header[1]
    assert len(fake_upstream.requests) == 1


def test_a_wait_of_a_minute_stays_a_wait(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    server = make_proxy(retries=0)
    fake_upstream.push(json_reply(BUSY, status=429, headers=(("Retry-After", "60"),)))
    resp = ask(server)
    assert resp.status == 429 and resp.headers["retry-after"] == "60" and "x-should-retry" not in resp.headers


def test_backoff_without_retry_after_is_jittered_and_short(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    server = make_proxy(retries=1)
    fake_upstream.push(json_reply(BUSY, status=500), json_reply(completion()))
    started = time.monotonic()
    assert ask(server).status == 200
    assert 0.2 <= time.monotonic() - started < 1.5  # the first backoff is 0.5 s, jittered into [0.25, 0.5]


@pytest.mark.parametrize("stream", [False, True])
def test_connect_failures_are_retried_by_the_proxy_and_not_by_the_client(make_proxy: Any, refused_port: int,
                                                                         stream: bool) -> None:
    # A refused connection: the proxy's own --retries run (a restarting server may be back), then the
    # client is told not to retry. With "true", Claude Code retried for minutes and claude -p hung.
    records: List[Any] = []
    server = make_proxy(upstream=f"http://127.0.0.1:{refused_port}/v1", retries=1, connect_timeout=0.5,
                        metrics_sink=records.append)
    started = time.monotonic()
    resp = ask(server, stream=stream)
    assert resp.status == 502 and resp.headers.get("x-should-retry") == "false"
    assert time.monotonic() - started >= 0.2  # it did wait before the second try
    assert record_for(records, resp.headers["request-id"]).attempts == 2
    message = resp.json["error"]["message"]
    assert message.startswith(f"could not reach the upstream at 127.0.0.1:{refused_port} (ConnectionRefusedError")
    assert message.endswith(f"nothing accepts connections for http://127.0.0.1:{refused_port}/v1/chat/completions "
                            "(is the server running?)"), message


def test_an_upstream_that_is_down_gives_way_to_the_fallback_at_once(refused_port: int,
                                                                    second_fake: FakeUpstream) -> None:
    providers = (Provider("primary", f"http://127.0.0.1:{refused_port}/v1"), Provider("backup", second_fake.url))
    routes = (Route("*", RouteTarget("primary", "model-a"), fallbacks=(RouteTarget("backup", "model-b"),)),)
    server = claudeproxy.start(providers=providers, routes=routes, retries=0)
    try:
        second_fake.push(json_reply(completion("from backup")))
        resp = ask(server)
        assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "from backup"}]
    finally:
        server.shutdown(grace=1.0)


@pytest.mark.parametrize("reason, unreachable", [
    (ConnectionRefusedError(111, "Connection refused"), True),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), True),
    # A retry may get past these: the client keeps its own retries.
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), False),
    (ConnectionResetError(104, "Connection reset by peer"), False),
    (socket.timeout("timed out"), False),
    (OSError(101, "Network is unreachable"), False),
])
def test_only_a_connection_nothing_took_is_not_retried_by_the_client(reason: BaseException, unreachable: bool) -> None:
    from claudeproxy.errors import UpstreamUnreachable, says_no_retry
    from claudeproxy.upstream import UpstreamCall, _transport_error

    req = urllib.request.Request("http://llm.example.invalid:8000/v1/chat/completions?key=sk-secret-in-url-0000")
    exc = _transport_error(urllib.error.URLError(reason), UpstreamCall(), req, ("sk-secret-in-url-0000",), [])
    assert isinstance(exc, UpstreamUnreachable) is unreachable, exc
    assert dict(exc.headers)["x-should-retry"] == ("false" if unreachable else "true")  # type: ignore[attr-defined]
    assert not says_no_retry(exc)  # type: ignore[arg-type]  # the proxy's own retries still run
    assert "sk-secret-in-url" not in str(exc)
    if isinstance(reason, socket.gaierror) and unreachable:
        assert "the host name of http://llm.example.invalid:8000/v1/chat/completions" in str(exc), exc


def test_no_retry_once_the_stream_began(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    server = make_proxy(retries=3)
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "half"}), Fault("rst"), done=False))
    with StreamClient(server.url, minimal_request(stream=True), headers=HEADERS) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events)
    assert events[-1]["type"] == "error"
    assert len(fake_upstream.requests) == 1


def test_a_stream_that_fails_before_its_first_byte_is_retried(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    server = make_proxy(retries=1)
    fake_upstream.push(
        sse_reply({"error": {"message": "upstream busy", "code": 503}}, done=False),  # an error as the first event
        sse_reply(chunk({"role": "assistant", "content": "ok"}), chunk({}, "stop")),
    )
    with StreamClient(server.url, minimal_request(stream=True), headers=HEADERS) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert final_message(events)["content"] == [{"type": "text", "text": "ok"}]
    assert len(fake_upstream.requests) == 2


def test_an_error_after_a_role_only_first_chunk_is_still_retried(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    # OpenAI and most servers open a stream with {"role": "assistant", "content": ""}: it carries
    # nothing, so nothing has gone to the client when an error follows it.
    server = make_proxy(retries=1)
    fake_upstream.push(
        sse_reply(chunk({"role": "assistant", "content": ""}), {"error": {"message": "busy", "code": 503}}, done=False),
        sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "ok"}), chunk({}, "stop")),
    )
    with StreamClient(server.url, minimal_request(stream=True), headers=HEADERS) as client:
        events = client.read_all(timeout=5)
    assert_valid_event_sequence(events, allow_error=False)
    assert [e["type"] for e in events].count("message_start") == 1
    assert final_message(events)["content"] == [{"type": "text", "text": "ok"}]
    assert len(fake_upstream.requests) == 2


def test_an_error_after_a_role_only_first_chunk_is_a_plain_http_error(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    server = make_proxy()
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}),
                                 {"error": {"message": "The server is overloaded", "code": 503}}, done=False))
    with StreamClient(server.url, minimal_request(stream=True), headers=HEADERS) as client:
        # What the same error as the first event gives (PROTOCOL.md 4.3): a status the SDKs retry.
        assert client.status == 503 and client.json["type"] == "error"
        assert "The server is overloaded" in client.json["error"]["message"]


def test_a_failed_attempts_ping_does_not_begin_the_stream_during_the_backoff(fake_upstream: FakeUpstream) -> None:
    # The first attempt fails 0.85 s after its role-only chunk; the backoff crosses the 1 s ping.
    # Its tick, left in place, began the client's stream with its own message_start (a review).
    server = claudeproxy.start(upstream=fake_upstream.url, token=claudeproxy.static_token(UPSTREAM_KEY), retries=1,
                               ping_interval=1.0)
    try:
        role = chunk({"role": "assistant", "content": ""})
        fake_upstream.push(sse_reply(role, Sleep(0.85), {"error": {"message": "busy", "code": 503}}, done=False),
                           sse_reply(role, chunk({"content": "ok"}), chunk({}, "stop")))
        with StreamClient(server.url, minimal_request(stream=True), headers=HEADERS) as client:
            events = client.read_all(timeout=10)
        assert_valid_event_sequence(events, allow_error=False)
        assert [e["type"] for e in events].count("message_start") == 1
        assert final_message(events)["content"] == [{"type": "text", "text": "ok"}]
    finally:
        server.shutdown(grace=1.0)


def test_client_leaving_during_the_backoff_ends_it(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    import json
    import socket

    server = make_proxy(retries=2)
    fake_upstream.push(json_reply(BUSY, status=503, headers=(("Retry-After", "3"),)))
    body = json.dumps(minimal_request(stream=True)).encode()
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert fake_upstream.received.wait(3)
        time.sleep(0.3)  # the proxy now waits out the Retry-After
    time.sleep(3.5)
    assert len(fake_upstream.requests) == 1  # the retry never happened
    assert request(server.url, "GET", "/health").status == 200


# ---------------------------------------------------------------------------
# Fallbacks.


@pytest.fixture
def second_fake() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


def chain(first: FakeUpstream, second: FakeUpstream, **settings: Any) -> Any:
    providers = (Provider("primary", first.url, token=claudeproxy.static_token("sk-primary-000000000")),
                 Provider("backup", second.url, token=claudeproxy.static_token("sk-backup-0000000000")))
    routes = (Route("*", RouteTarget("primary", "model-a"), fallbacks=(RouteTarget("backup", "model-b"),)),)
    return claudeproxy.start(providers=providers, routes=routes, **settings)


def test_no_fallback_goes_upstream_for_a_client_that_left(fake_upstream: FakeUpstream,
                                                          second_fake: FakeUpstream) -> None:
    # The watchdog looks at clients once a tick (0.1 s): one that left during the failed attempt,
    # less than a tick before it failed, got the fallback (and more attempts) sent for nobody.
    import json

    server = chain(fake_upstream, second_fake)
    try:
        server.server.watchdog._tick_seconds = 30  # its next look is far off: only the attempt loop's own can see it
        time.sleep(0.25)
        reply = json_reply(BUSY, status=503)
        reply.delay = 0.6  # the refusal comes after the client has left
        fake_upstream.push(reply)
        body = json.dumps(minimal_request()).encode()
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert fake_upstream.received.wait(3)
        time.sleep(1.2)
        assert len(fake_upstream.requests) == 1 and second_fake.requests == []
    finally:
        server.shutdown(grace=1.0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_fallback_answers_when_the_first_provider_fails(fake_upstream: FakeUpstream, second_fake: FakeUpstream,
                                                          stream: bool) -> None:
    records: List[Any] = []
    server = chain(fake_upstream, second_fake, metrics_sink=records.append)
    try:
        fake_upstream.push(json_reply(BUSY, status=503))
        if stream:
            second_fake.push(sse_reply(chunk({"role": "assistant", "content": "from backup"}), chunk({}, "stop")))
            with StreamClient(server.url, minimal_request(stream=True), headers=HEADERS) as client:
                events = client.read_all(timeout=5)
                record_for(records, client.headers["request-id"])
            assert_valid_event_sequence(events, allow_error=False)
            assert final_message(events)["content"] == [{"type": "text", "text": "from backup"}]
        else:
            second_fake.push(json_reply(completion("from backup")))
            resp = ask(server)
            assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "from backup"}]
            assert resp.json["model"] == "claude-test"
            record_for(records, resp.headers["request-id"])
        assert fake_upstream.last.json["model"] == "model-a" and second_fake.last.json["model"] == "model-b"
        assert sent_keys(second_fake) == ["sk-backup-0000000000"]
        rec = records[-1]
        assert (rec.provider, rec.upstream_model, rec.attempts, rec.status) == ("backup", "model-b", 2, 200)
        # The primary's failure shows in /metrics, which counts the call under the fallback (probe U 8).
        scraped = prom.parse(request(server.url, "GET", "/metrics").body.decode("utf-8"))
        assert prom.value(scraped, "claudeproxy_upstream_failed_attempts_total", provider="primary", model="model-a",
                          status="503") == 1
    finally:
        server.shutdown(grace=1.0)


def test_a_stream_that_fails_after_it_began_counts_as_a_failed_attempt(fake_upstream: FakeUpstream,
                                                                       second_fake: FakeUpstream) -> None:
    """A provider whose streams broke mid-way looked healthy in /metrics: requests_total files the
    call as a 200 (its head went out) and errors_total has no provider (a verification)."""
    server = chain(fake_upstream, second_fake)
    try:
        fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": "half"}), Fault("rst"), done=False))
        with StreamClient(server.url, minimal_request(stream=True), headers=HEADERS) as client:
            events = client.read_all(timeout=5)
        assert events[-1]["type"] == "error" and second_fake.requests == []
        server.server.wait_idle(5)
        scraped = prom.parse(request(server.url, "GET", "/metrics").body.decode("utf-8"))
        assert prom.value(scraped, "claudeproxy_upstream_failed_attempts_total", provider="primary",
                          model="model-a", status="502") == 1
    finally:
        server.shutdown(grace=1.0)


@pytest.mark.parametrize("then", ["error", "silence"])
def test_a_stream_failing_after_its_role_only_chunk_goes_to_the_fallback(fake_upstream: FakeUpstream,
                                                                        second_fake: FakeUpstream, then: str) -> None:
    server = chain(fake_upstream, second_fake, idle_timeout=0.5)
    try:
        role = chunk({"role": "assistant", "content": ""})
        failure = {"error": {"message": "The server is overloaded", "code": 503}} if then == "error" else Fault("hang")
        fake_upstream.push(sse_reply(role, failure, done=False))
        second_fake.push(sse_reply(role, chunk({"content": "from backup"}), chunk({}, "stop")))
        with StreamClient(server.url, minimal_request(stream=True), headers=HEADERS) as client:
            events = client.read_all(timeout=5)
        assert_valid_event_sequence(events, allow_error=False)
        assert final_message(events)["content"] == [{"type": "text", "text": "from backup"}]
        assert len(second_fake.requests) == 1
    finally:
        server.shutdown(grace=1.0)


def test_a_spent_quota_goes_to_the_fallback_at_once(fake_upstream: FakeUpstream, second_fake: FakeUpstream) -> None:
    server = chain(fake_upstream, second_fake, retries=2)
    try:
        fake_upstream.push(json_reply(QUOTA, status=429))
        second_fake.push(json_reply(completion("from backup")))
        resp = ask(server)
        assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "from backup"}]
        assert len(fake_upstream.requests) == 1  # the primary once: no retry can get past a spent quota
    finally:
        server.shutdown(grace=1.0)


@pytest.mark.parametrize("status", [401, 402, 403])
def test_a_refused_key_or_account_goes_to_the_fallback_at_once(fake_upstream: FakeUpstream, second_fake: FakeUpstream,
                                                               status: int) -> None:
    """The key belongs to the provider, not the route: one provider's revoked key, spent credit or
    refused permission stopped every turn though the fallback could answer (probe D)."""
    server = chain(fake_upstream, second_fake, retries=2)
    try:
        fake_upstream.push(json_reply({"error": {"message": "no", "code": "invalid_api_key"}}, status=status))
        second_fake.push(json_reply(completion("from backup")))
        resp = ask(server)
        assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "from backup"}]
        assert len(fake_upstream.requests) == 1  # the same key is refused again: no retry of the primary
        fake_upstream.push(json_reply({"error": {"message": "no"}}, status=status))
        second_fake.push(json_reply({"error": {"message": "no"}}, status=status))
        both = ask(server)  # refused everywhere: the client hears the last refusal
        assert both.status == status and len(second_fake.requests) == 2
    finally:
        server.shutdown(grace=1.0)


@pytest.mark.parametrize("fallback_says, fallback_status", [
    ((json_reply({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}, status=401)), 401),
    ((json_reply({"error": {"message": "The model `model-b` does not exist"}}, status=404)), 404),
    ((json_reply({"error": {"message": "bad request"}}, status=400)), 400),
])
def test_a_fallback_failing_on_its_own_account_leaves_the_client_the_earlier_rate_limit(
        fake_upstream: FakeUpstream, second_fake: FakeUpstream, fallback_says: Any, fallback_status: int) -> None:
    """The primary asked for a pause (429, Retry-After) and the fallback failed for a reason of its
    own: the client got the fallback's 401 (to Claude Code: its login has gone) or 404, neither tried
    again, where the primary's 429 with its Retry-After is what a client can wait out (probe U 1)."""
    records: List[Any] = []
    server = chain(fake_upstream, second_fake, retries=0, metrics_sink=records.append)
    try:
        fake_upstream.push(json_reply({"error": {"message": "Rate limit reached", "type": "requests"}}, status=429,
                                      headers=(("Retry-After", "7"),)))
        second_fake.push(fallback_says)
        resp = ask(server)
        assert resp.status == 429 and resp.json["error"]["type"] == "rate_limit_error", resp.json
        assert resp.headers.get("retry-after") == "7" and resp.headers.get("x-should-retry") != "false"
        assert len(second_fake.requests) == 1  # the fallback was asked
        rec = record_for(records, resp.headers["request-id"])  # recorded as told, under the primary
        assert (rec.status, rec.provider, rec.upstream_model) == (429, "primary", "model-a")
        # The fallback's own 429 or 5xx is a pause too: the last error stands.
        fake_upstream.push(json_reply(BUSY, status=529))
        second_fake.push(json_reply(BUSY, status=503))
        assert ask(server).status == 503
    finally:
        server.shutdown(grace=1.0)


def test_a_retry_pause_the_deadline_would_cut_gives_the_client_the_upstreams_answer(fake_upstream: FakeUpstream) -> None:
    """--request-timeout 2 and a 429 asking for 5 s: the proxy paused, the deadline ended the pause,
    and the client got a 504 "did not finish in time" for an upstream that had answered (probe U 2)."""
    server = claudeproxy.start(upstream=fake_upstream.url, token=claudeproxy.static_token("sk-x-000000000000"),
                               retries=2, request_timeout=2)
    try:
        fake_upstream.push(json_reply({"error": {"message": "Rate limit reached"}}, status=429,
                                      headers=(("Retry-After", "5"),)))
        started = time.monotonic()
        resp = ask(server)
        assert resp.status == 429 and resp.headers.get("retry-after") == "5", resp.json
        assert time.monotonic() - started < 1.5 and len(fake_upstream.requests) == 1
    finally:
        server.shutdown(grace=1.0)


def test_a_fallbacks_prompt_too_long_is_not_hidden_by_an_earlier_rate_limit(fake_upstream: FakeUpstream,
                                                                           second_fake: FakeUpstream) -> None:
    """A fallback with a smaller window: its "prompt is too long" is what makes Claude Code compact,
    after which the fallback may answer; an earlier 429 in its place would leave the client retrying
    a prompt that fits nowhere but the busy primary (review X)."""
    server = chain(fake_upstream, second_fake, retries=0)
    try:
        fake_upstream.push(json_reply({"error": {"message": "Rate limit reached"}}, status=429))
        second_fake.push(json_reply({"error": {"message": "This model's maximum context length is 8192 tokens. However, "
                                               "your messages resulted in 9000 tokens.",
                                    "code": "context_length_exceeded"}}, status=400))
        resp = ask(server)
        assert resp.status == 400 and resp.json["error"]["message"].startswith("prompt is too long"), resp.json
    finally:
        server.shutdown(grace=1.0)


def test_an_unreachable_fallback_leaves_the_client_the_earlier_overload(refused_port: int,
                                                                       fake_upstream: FakeUpstream) -> None:
    providers = (Provider("primary", fake_upstream.url), Provider("backup", f"http://127.0.0.1:{refused_port}/v1"))
    routes = (Route("*", RouteTarget("primary", "model-a"), fallbacks=(RouteTarget("backup", "model-b"),)),)
    server = claudeproxy.start(providers=providers, routes=routes, retries=0)
    try:
        fake_upstream.push(json_reply(BUSY, status=529))
        resp = ask(server)
        assert resp.status == 529 and resp.json["error"]["type"] == "overloaded_error", resp.json
        assert resp.headers.get("x-should-retry") != "false"  # the 502 "nothing listens" said false
    finally:
        server.shutdown(grace=1.0)


@pytest.mark.parametrize("status", [401, 402, 403])
def test_a_refused_forwarded_client_key_does_not_go_to_the_fallback(fake_upstream: FakeUpstream,
                                                                    second_fake: FakeUpstream, status: int) -> None:
    """With no key of its own the provider gets the client's (Claude Code's login): its refusal is
    the client's to fix, and Claude Code renews a login on a 401. A fallback would hide it and bill
    another provider for every turn (review G)."""
    providers = (Provider("anthropic", fake_upstream.url, api="messages"),  # no key: the client's goes
                 Provider("backup", second_fake.url, token=claudeproxy.static_token("sk-backup-0000000000")))
    routes = (Route("*", RouteTarget("anthropic", "claude-x"), fallbacks=(RouteTarget("backup", "model-b"),)),)
    server = claudeproxy.start(providers=providers, routes=routes, retries=2)
    try:
        fake_upstream.push(json_reply({"type": "error", "error": {"type": "authentication_error",
                                                                  "message": "invalid x-api-key"}}, status=status))
        resp = ask(server)
        assert resp.status == status and second_fake.requests == [], resp
        assert len(fake_upstream.requests) == 1
    finally:
        server.shutdown(grace=1.0)


def test_a_fallback_that_forwards_gets_the_whole_body_the_client_sent(fake_upstream: FakeUpstream,
                                                                     second_fake: FakeUpstream) -> None:
    # The first target translates, so the request is parsed; the backup speaks /v1/messages and
    # forwards the client's JSON. Parsing must not have emptied or changed it, the second time
    # (the tool set seen before, shared) no more than the first.
    providers = (Provider("primary", fake_upstream.url, token=claudeproxy.static_token("sk-primary-000000000")),
                 Provider("native", second_fake.url.rsplit("/v1", 1)[0], api="messages",
                          token=claudeproxy.static_token("sk-native-0000000000")))
    routes = (Route("*", RouteTarget("primary", "model-a"), fallbacks=(RouteTarget("native", "native-b"),)),)
    server = claudeproxy.start(providers=providers, routes=routes)
    body = {**load_json("requests", "claude_code_2_1_331_followup.anthropic.json"), "stream": False}
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "native-b", "stop_reason": "end_turn",
              "content": [{"type": "text", "text": "from native"}], "stop_sequence": None,
              "usage": {"input_tokens": 3, "output_tokens": 2}}
    try:
        for _ in range(2):
            fake_upstream.push(json_reply(BUSY, status=503))
            second_fake.push(json_reply(answer))
            resp = request(server.url, "POST", "/v1/messages", body, HEADERS)
            assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "from native"}]
            forwarded = second_fake.last.json
            system = [b for b in body["system"] if not b["text"].startswith("x-anthropic-billing-header:")]
            assert forwarded == {**body, "model": "native-b", "system": system}
    finally:
        server.shutdown(grace=1.0)


def test_when_all_fail_the_client_gets_the_last_error(fake_upstream: FakeUpstream, second_fake: FakeUpstream) -> None:
    server = chain(fake_upstream, second_fake, retries=1)
    try:
        fake_upstream.push(json_reply(BUSY, status=503), json_reply(BUSY, status=503))
        second_fake.push(json_reply(BUSY, status=529), json_reply({"error": {"message": "slow down"}}, status=429))
        resp = ask(server)
        assert resp.status == 429 and resp.json["error"]["type"] == "rate_limit_error"
        assert (len(fake_upstream.requests), len(second_fake.requests)) == (2, 2)
    finally:
        server.shutdown(grace=1.0)


def test_a_client_error_does_not_go_to_the_fallback(fake_upstream: FakeUpstream, second_fake: FakeUpstream) -> None:
    server = chain(fake_upstream, second_fake)
    try:
        fake_upstream.push(json_reply({"error": {"message": "bad request"}}, status=400))
        assert ask(server).status == 400
        assert second_fake.requests == []
    finally:
        server.shutdown(grace=1.0)


def test_a_model_the_target_does_not_have_goes_to_the_fallback_at_once(fake_upstream: FakeUpstream,
                                                                      second_fake: FakeUpstream) -> None:
    """A 404 (the model, or the URL's path) is the target's own: a healthy fallback after it was never
    asked (a verification); the same target is not asked again either."""
    server = chain(fake_upstream, second_fake, retries=2)
    try:
        fake_upstream.push(json_reply({"error": {"message": "The model `model-a` does not exist",
                                                 "code": "model_not_found"}}, status=404))
        second_fake.push(json_reply(completion("from backup")))
        resp = ask(server)
        assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "from backup"}]
        assert len(fake_upstream.requests) == 1
        fake_upstream.push(json_reply({"error": {"message": "no such model"}}, status=404))
        second_fake.push(json_reply({"error": {"message": "no such model"}}, status=404))
        assert ask(server).status == 404  # nowhere: the client hears it
    finally:
        server.shutdown(grace=1.0)


# ---------------------------------------------------------------------------
# Key commands.


KEY_SCRIPT = """
import sys
path = sys.argv[1]
try:
    n = int(open(path).read() or 0)
except FileNotFoundError:
    n = 0
open(path, "w").write(str(n + 1))
if len(sys.argv) > 2:
    sys.stdout.write("this output is secret\\n")
    sys.exit(int(sys.argv[2]))
sys.stdout.write(KEY_FORMAT % (n + 1))
"""


@pytest.fixture
def key_command(tmp_path: Any) -> Tuple[List[str], str]:
    script = tmp_path / "key.py"
    script.write_text(KEY_SCRIPT.replace("KEY_FORMAT", repr("  sk-cmd-%04d-abcdefgh \n")))
    counter = str(tmp_path / "count")
    return [sys.executable, str(script), counter], counter


def runs(counter: str) -> int:
    if not os.path.exists(counter):
        return 0
    with open(counter) as fh:
        return int(fh.read())


def command_proxy(fake: FakeUpstream, argv: List[str], ttl: float = 300.0) -> Any:
    from claudeproxy.credentials import command_token

    return claudeproxy.start(upstream=fake.url, token=command_token(argv, ttl, "test"), key_source="command")


def test_key_command_runs_once_and_is_cached(fake_upstream: FakeUpstream, key_command: Any) -> None:
    argv, counter = key_command
    server = command_proxy(fake_upstream, argv)
    try:
        assert runs(counter) == 0  # nothing runs before a request needs it
        assert ask(server).status == 200 and ask(server).status == 200
        assert runs(counter) == 1
        assert sent_keys(fake_upstream) == ["sk-cmd-0001-abcdefgh"] * 2  # stdout trimmed
    finally:
        server.shutdown(grace=1.0)


def test_key_command_runs_again_after_a_401_and_the_request_is_retried_once(fake_upstream: FakeUpstream,
                                                                           key_command: Any) -> None:
    argv, counter = key_command
    server = command_proxy(fake_upstream, argv)
    try:
        fake_upstream.push(json_reply({"error": {"message": "expired"}}, status=401), json_reply(completion("ok")))
        resp = ask(server)
        assert resp.status == 200, resp
        assert sent_keys(fake_upstream) == ["sk-cmd-0001-abcdefgh", "sk-cmd-0002-abcdefgh"]
        fake_upstream.push(*[json_reply({"error": {"message": "still no"}}, status=401)] * 3)
        # The key the command gave for a refusal is refused at once too: no second run within
        # REFUSED_RERUN_SECONDS (a key store handing out a refused key ran for every request).
        assert ask(server).status == 401
        assert len(fake_upstream.requests) == 3 and runs(counter) == 2
    finally:
        server.shutdown(grace=1.0)


def test_a_refused_command_key_runs_the_command_again_once_the_pause_is_over(fake_upstream: FakeUpstream,
                                                                              key_command: Any,
                                                                              monkeypatch: Any) -> None:
    from claudeproxy import credentials
    monkeypatch.setattr(credentials, "REFUSED_RERUN_SECONDS", 0.3)
    argv, counter = key_command
    server = command_proxy(fake_upstream, argv)
    try:
        refusal = json_reply({"error": {"message": "expired"}}, status=401)
        fake_upstream.push(refusal, json_reply(completion("ok")))
        assert ask(server).status == 200 and runs(counter) == 2
        time.sleep(0.4)  # the key rotates again, later
        fake_upstream.push(refusal, json_reply(completion("ok")))
        assert ask(server).status == 200 and runs(counter) == 3
        assert sent_keys(fake_upstream)[-2:] == ["sk-cmd-0002-abcdefgh", "sk-cmd-0003-abcdefgh"]
    finally:
        server.shutdown(grace=1.0)


def test_key_command_expires_after_its_ttl(fake_upstream: FakeUpstream, key_command: Any) -> None:
    argv, counter = key_command
    server = command_proxy(fake_upstream, argv, ttl=0.4)
    try:
        ask(server)
        time.sleep(0.6)
        ask(server)
        assert runs(counter) == 2 and sent_keys(fake_upstream)[-1] == "sk-cmd-0002-abcdefgh"
    finally:
        server.shutdown(grace=1.0)


def test_a_failing_key_command_is_a_502_naming_its_exit_status(fake_upstream: FakeUpstream, key_command: Any) -> None:
    argv, _ = key_command
    server = command_proxy(fake_upstream, argv + ["3"])
    try:
        resp = ask(server)
        assert resp.status == 502 and resp.json["error"]["type"] == "api_error"
        message = resp.json["error"]["message"]
        assert "exit status 3" in message and "secret" not in message
        assert fake_upstream.requests == []
    finally:
        server.shutdown(grace=1.0)


def test_a_programs_key_command_through_the_package(fake_upstream: FakeUpstream, key_command: Any) -> None:
    """README's library use: ``token=claudeproxy.command_token([...])`` (it was not exported, and
    its failure read "the key command 'x' of x failed": probe A)."""
    argv, counter = key_command
    server = claudeproxy.start(upstream=fake_upstream.url, token=claudeproxy.command_token(argv))
    failing = claudeproxy.start(upstream=fake_upstream.url, token=claudeproxy.command_token(argv + ["3"]))
    try:
        assert ask(server).status == 200 and runs(counter) == 1
        assert sent_keys(fake_upstream) == ["sk-cmd-0001-abcdefgh"]
        message = ask(failing).json["error"]["message"]
        assert message.endswith(f"the key command {argv[0]!r} failed with exit status 3"), message
    finally:
        server.shutdown(grace=1.0)
        failing.shutdown(grace=1.0)


def test_a_command_given_as_a_string_is_split_and_a_missing_program_stops_the_start(fake_upstream: FakeUpstream,
                                                                                       key_command: Any) -> None:
    """``command_token("echo key")`` ran the program "e" (a string is a sequence of letters), and a
    program that is not there started a server whose every request was a 502 (probe R); the
    command line splits the string and checks the program at start, and now the package does."""
    argv, counter = key_command
    server = claudeproxy.start(upstream=fake_upstream.url, token=claudeproxy.command_token(" ".join(argv)))
    try:
        assert ask(server).status == 200 and sent_keys(fake_upstream) == ["sk-cmd-0001-abcdefgh"]
    finally:
        server.shutdown(grace=1.0)
    with pytest.raises(ValueError, match=r"^command_token: /nonexistent/keycmd: command not found"):
        claudeproxy.command_token(["/nonexistent/keycmd"])


def test_a_programs_token_function_is_asked_again_after_a_401_and_the_request_retried(fake_upstream: FakeUpstream) -> None:
    """As the README says of it and as a key command does: the function was asked once and the client
    got the 401 of a key that had rotated meanwhile (probe Z, D6). Once, not forever."""
    calls: List[int] = []

    def rotating() -> str:
        calls.append(1)
        return f"sk-rotating-{len(calls):04d}-abcdefgh"

    server = claudeproxy.start(upstream=fake_upstream.url, token=rotating)
    try:
        refusal = json_reply({"error": {"message": "expired"}}, status=401)
        fake_upstream.push(refusal, json_reply(completion("ok")))
        assert ask(server).status == 200
        assert sent_keys(fake_upstream) == ["sk-rotating-0001-abcdefgh", "sk-rotating-0002-abcdefgh"]
        fake_upstream.push(refusal, refusal, refusal)
        assert ask(server).status == 401 and len(fake_upstream.requests) == 4
    finally:
        server.shutdown(grace=1.0)


def test_a_token_function_that_gives_the_refused_key_again_costs_no_second_refusal(fake_upstream: FakeUpstream,
                                                                                   caplog: Any) -> None:
    """start(token=lambda: KEY) (or a cached vault read) gives the same key after a 401: sending it again
    was a second refusal each request, and a warning of a "next key" there is none of (review AB F4, F13)."""
    server = claudeproxy.start(upstream=fake_upstream.url, token=lambda: "sk-the-only-key-0000")
    try:
        fake_upstream.push(json_reply({"error": {"message": "bad key"}}, status=401))
        with caplog.at_level(logging.WARNING, logger="claudeproxy"):
            assert ask(server).status == 401
        assert len(fake_upstream.requests) == 1
        assert not [r for r in caplog.records if "next one serves" in r.getMessage()]
    finally:
        server.shutdown(grace=1.0)


def test_a_programs_token_function_runs_once_a_request_and_only_for_its_provider(fake_upstream: FakeUpstream) -> None:
    """Every request ran each provider's token function, twice for the one it used (once for the key,
    once for masking): a slow vault behind a fallback provider held every call (probe R). The keys
    it gave are masked all the same."""
    calls = {"used": 0, "unused": 0}

    def used() -> str:
        calls["used"] += 1
        return f"FuncKEY{calls['used']}abcdefgh"  # a key of no known shape: only the server's list masks it

    def unused() -> str:
        calls["unused"] += 1
        return "never-asked-0123456789"

    server = claudeproxy.start(providers=[Provider("p1", fake_upstream.url, token=used),
                                          Provider("p2", fake_upstream.url, token=unused)],
                               routes=[Route("*", RouteTarget("p1"), fallbacks=(RouteTarget("p2"),))])
    try:
        fake_upstream.push(json_reply({"error": {"message": "bad key FuncKEY1abcdefgh"}}, status=400),
                           json_reply({"error": {"message": "FuncKEY2abcdefgh, and FuncKEY1abcdefgh before"}},
                                      status=400))
        messages = [ask(server).json["error"]["message"] for _ in range(2)]
        assert ask(server).status == 200
        assert calls == {"used": 3, "unused": 0}
        assert messages == ["upstream 400: bad key ***", "upstream 400: ***, and *** before"], messages
    finally:
        server.shutdown(grace=1.0)


def test_a_key_commands_earlier_key_stays_masked(fake_upstream: FakeUpstream, tmp_path: Any) -> None:
    """After the command printed a new key, a late echo of the old one is masked all the same
    (keys of no known shape: only the list of known secrets can mask them)."""
    script = tmp_path / "plain_key.py"
    script.write_text(KEY_SCRIPT.replace("KEY_FORMAT", repr("Plain%dKEYabcdefgh\n")))  # no known key shape
    server = command_proxy(fake_upstream, [sys.executable, str(script), str(tmp_path / "count")])
    try:
        fake_upstream.push(json_reply({"error": {"message": "key Plain1KEYabcdefgh expired"}}, status=401),
                           json_reply({"error": {"message": "Plain2KEYabcdefgh, and Plain1KEYabcdefgh before"}},
                                      status=401))
        resp = ask(server)
        assert resp.status == 401 and sent_keys(fake_upstream) == ["Plain1KEYabcdefgh", "Plain2KEYabcdefgh"]
        assert "KEYabcdefgh" not in resp.body.decode() and "before" in resp.json["error"]["message"]
    finally:
        server.shutdown(grace=1.0)


def test_a_key_command_keeps_a_bounded_list_of_its_earlier_keys() -> None:
    from claudeproxy.credentials import PREVIOUS_KEYS, CommandToken, current_secrets

    printed = iter(f"key-number-{n:03d}" for n in range(1, 100))
    token = CommandToken(["unused"], ttl=300.0)
    token._run = lambda: next(printed)  # type: ignore[method-assign]
    assert token() == "key-number-001" and current_secrets(token) == ("key-number-001",)
    for _ in range(20):
        token.expire()
        token()
    masked = current_secrets(token)
    assert masked[0] == "key-number-021" and len(masked) == 1 + PREVIOUS_KEYS
    assert "key-number-020" in masked and "key-number-001" not in masked


# ---------------------------------------------------------------------------
# Several keys in turn.


def test_key_ring_turns_and_rests_a_refused_key() -> None:
    ring = KeyRing([lambda: "k1", lambda: "k2", lambda: "k3"], rest_seconds=60)
    assert [ring() for _ in range(4)] == ["k1", "k2", "k3", "k1"]
    assert refused(ring, "k2", 429) is True
    assert [ring() for _ in range(4)] == ["k3", "k1", "k3", "k1"]
    assert refused(ring, "k1", 401) and refused(ring, "k3", 401) is False  # every key rests now
    assert ring() in ("k1", "k2", "k3")  # still a key: the longest-rested one


def test_a_429_on_one_key_makes_the_next_key_serve(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    server = make_proxy(token=KeyRing([lambda: "sk-first-key-0000000", lambda: "sk-second-key-000000"]))
    fake_upstream.push(json_reply({"error": {"message": "rate limited"}}, status=429), json_reply(completion("hi")))
    resp = ask(server)
    assert resp.status == 200, resp
    assert ask(server).status == 200
    # The first key rests after its 429: the retry and the next request both use the second.
    assert sent_keys(fake_upstream) == ["sk-first-key-0000000", "sk-second-key-000000", "sk-second-key-000000"]


def test_a_key_of_several_refused_with_a_401_is_said_in_the_log(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                  caplog: Any) -> None:
    """The next key served, and a bad key among several was never said anywhere (probe Z, N7)."""
    server = make_proxy(token=KeyRing([lambda: "sk-first-key-0000000", lambda: "sk-second-key-000000"]))
    fake_upstream.push(json_reply({"error": {"message": "bad key"}}, status=401), json_reply(completion("hi")))
    with caplog.at_level(logging.WARNING, logger="claudeproxy"):
        assert ask(server).status == 200
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "upstream refused its key 1 of 2 (upstream 401); the next one serves meanwhile: check that key" \
        in said, said
    # Keys from variables are named by them: with three, which one is bad (verification of probe Z N7).
    from claudeproxy.credentials import key_source
    server = make_proxy(token=key_source(["sk-a-000000000000", "sk-b-000000000000", "sk-c-000000000000"],
                                         ["$K1", "$K2", "$K3"]))
    fake_upstream.push(json_reply(completion("hi")), json_reply({"error": {"message": "bad"}}, status=401),
                       json_reply(completion("hi")))
    with caplog.at_level(logging.WARNING, logger="claudeproxy"):
        assert ask(server).status == 200 and ask(server).status == 200
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("refused its key $K2 (upstream 401)" in m for m in said), said


def test_keys_from_several_environment_variables(monkeypatch: Any) -> None:
    import io

    from claudeproxy import cli

    configs: List[Any] = []
    monkeypatch.setattr(cli, "serve", lambda config, stdout, metrics_path=None: configs.append(config) or 0)
    env = {"KEY_A": "sk-env-a-0000000000", "KEY_B": "sk-env-b-0000000000"}
    code = cli.main(["--api-key-env", "KEY_A", "--api-key-env", "KEY_B"], environ=env, stdout=io.StringIO(),
                    stderr=io.StringIO())
    assert code == 0
    token = configs[0].token
    assert [token(), token(), token()] == ["sk-env-a-0000000000", "sk-env-b-0000000000", "sk-env-a-0000000000"]


def test_no_key_leaks_from_a_retry_log(make_proxy: Any, fake_upstream: FakeUpstream, caplog: Any) -> None:
    server = make_proxy(retries=1)
    fake_upstream.push(json_reply({"error": {"message": f"bad key {UPSTREAM_KEY}"}}, status=503),
                       json_reply(completion()))
    with caplog.at_level("DEBUG", logger="claudeproxy"):
        assert ask(server).status == 200
    assert UPSTREAM_KEY not in caplog.text


class _Banner(LoopbackListener):
    """Another service on the upstream's port (an SSH server): a banner, then the end."""

    def __init__(self, banner: bytes) -> None:
        super().__init__()
        self.banner, self.connections = banner, 0

    def handle(self, conn: Any) -> None:
        self.connections += 1
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                conn.sendall(self.banner)
            except OSError:
                pass


@pytest.mark.parametrize("banner", [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1\r\n\r\n", b"\x15\x03\x01\x00\x02\x02\x46"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_that_is_no_http_is_a_502_not_worth_retrying(banner: bytes, stream: bool) -> None:
    """Not a 500 with a traceback (http.client closed a reader the proxy had wrapped), and not
    "retry": the same port gives the same banner every time, to the proxy's retries and the SDK's."""
    other = _Banner(banner)
    server = claudeproxy.start(upstream=f"http://127.0.0.1:{other.port}/v1", retries=2,
                               token=claudeproxy.static_token(UPSTREAM_KEY))
    try:
        resp = ask(server, stream=stream)
        assert resp.status == 502, resp
        assert resp.headers.get("x-should-retry") == "false"
        assert resp.json["error"]["type"] == "api_error"
        message = resp.json["error"]["message"]
        assert message.startswith(f"the upstream at 127.0.0.1:{other.port} cannot be used: its answer is not HTTP/1.1")
        assert "\n" not in message and "\r" not in message
        assert other.connections == 1  # no retry of an answer that cannot change
    finally:
        server.shutdown(grace=1.0)
        other.close()


def test_a_whole_answer_that_is_no_json_is_not_asked_again(make_proxy: Any, fake_upstream: FakeUpstream,
                                                           caplog: Any) -> None:
    """A 200 whose framed body does not parse gets the same on every try, and may have been billed:
    neither the proxy nor the SDK asks again, and the log does not call it a 502 the upstream sent."""
    server = make_proxy(retries=2)
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [b'{"id": "c1", "choices": [{"message": ']))
    with caplog.at_level("WARNING", logger="claudeproxy"):
        resp = ask(server)
    assert resp.status == 502 and resp.headers.get("x-should-retry") == "false"
    assert "not JSON" in resp.json["error"]["message"]
    assert len(fake_upstream.requests) == 1
    assert not any("answered 502" in r.getMessage() for r in caplog.records)


def test_a_whole_answer_that_is_no_json_gives_way_to_the_fallback(fake_upstream: FakeUpstream,
                                                                 second_fake: FakeUpstream) -> None:
    server = chain(fake_upstream, second_fake, retries=2)
    try:
        fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), [b"<html>maintenance</html>"]))
        second_fake.push(json_reply(completion("from backup")))
        resp = ask(server)
        assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "from backup"}]
        assert len(fake_upstream.requests) == 1
    finally:
        server.shutdown(grace=1.0)


def test_an_upstream_that_is_no_http_server_gives_way_to_the_fallback(second_fake: FakeUpstream) -> None:
    other = _Banner(b"SSH-2.0-OpenSSH_9.6\r\n")
    providers = (Provider("primary", f"http://127.0.0.1:{other.port}/v1", token=claudeproxy.static_token("sk-p-0000000")),
                 Provider("backup", second_fake.url, token=claudeproxy.static_token("sk-backup-0000000000")))
    routes = (Route("*", RouteTarget("primary", "model-a"), fallbacks=(RouteTarget("backup", "model-b"),)),)
    server = claudeproxy.start(providers=providers, routes=routes, retries=2)
    try:
        second_fake.push(json_reply(completion("from backup")))
        resp = ask(server)
        assert resp.status == 200 and resp.json["content"] == [{"type": "text", "text": "from backup"}]
        assert other.connections == 1
    finally:
        server.shutdown(grace=1.0)
        other.close()


def test_requests_waiting_on_a_failing_key_command_share_its_failure(fake_upstream: FakeUpstream,
                                                                    tmp_path: Any) -> None:
    """Three requests at once, a command that fails after a second: one run, three 502s after about a
    second. Each waiting request ran the command again in turn (30 s each for one that hangs)."""
    counter = tmp_path / "runs"
    script = tmp_path / "slow_fail.py"
    script.write_text(f"import time\nopen({str(counter)!r}, 'a').write('run ')\ntime.sleep(1)\nraise SystemExit(4)\n")
    server = command_proxy(fake_upstream, [sys.executable, str(script)])
    results: List[Any] = []
    try:
        import threading

        started = time.monotonic()
        threads = [threading.Thread(target=lambda: results.append(ask(server))) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        took = time.monotonic() - started
        assert [r.status for r in results] == [502, 502, 502]
        assert all("exit status 4" in r.json["error"]["message"] for r in results)
        assert counter.read_text().split() == ["run"], counter.read_text()
        assert took < 2.5, f"{took:.1f} s: the waiting requests ran the command again"
    finally:
        server.shutdown(grace=1.0)


def test_a_fallback_that_cannot_take_the_request_leaves_the_client_the_earlier_retryable_error(
        fake_upstream: FakeUpstream, second_fake: FakeUpstream) -> None:
    """An Anthropic primary answered 529; its Chat Completions fallback cannot take a file_id (a 400
    before anything is sent): the client got that 400, which it does not retry, where the 529 tells it
    to try again in a moment (review AG 3)."""
    providers = (Provider("anthropic", fake_upstream.url, api="messages",
                          token=claudeproxy.static_token("sk-primary-000000000")),
                 Provider("backup", second_fake.url, token=claudeproxy.static_token("sk-backup-0000000000")))
    routes = (Route("*", RouteTarget("anthropic", "claude-sonnet-4-5"), fallbacks=(RouteTarget("backup", "gpt-4.1"),)),)
    server = claudeproxy.start(providers=providers, routes=routes)
    try:
        overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        fake_upstream.push(json_reply(overloaded, status=529))
        image = {"type": "image", "source": {"type": "file", "file_id": "file_011"}}
        body = minimal_request(messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}])
        resp = request(server.url, "POST", "/v1/messages", body)
        assert resp.status == 529 and resp.json["error"]["type"] == "overloaded_error", resp
        assert len(second_fake.requests) == 0
    finally:
        server.shutdown(grace=1.0)


def test_a_fallback_answering_after_clients_named_fifty_models_keeps_its_row(fake_upstream: FakeUpstream,
                                                                             second_fake: FakeUpstream) -> None:
    """The server tells its metrics which models the routes name: a fallback that first answered after
    clients had made up 50 model names was counted under "(other)" (probe AE D1, review AG 7)."""
    from claudeproxy.metrics import CallRecord

    server = chain(fake_upstream, second_fake, retries=0)
    try:
        for i in range(60):
            server.metrics.record(CallRecord("/v1/messages", model=f"made-up-{i}", provider="primary",
                                             upstream_model=f"made-up-{i}", input_tokens=1, output_tokens=1))
        fake_upstream.push(json_reply(BUSY, status=503))
        second_fake.push(json_reply(completion("from the fallback")))
        assert request(server.url, "POST", "/v1/messages", minimal_request()).status == 200
        assert server.server.wait_idle(2)
        rows = {(m["provider"], m["model"]) for m in request(server.url, "GET", "/v1/usage").json["models"]}
        assert ("backup", "model-b") in rows and ("primary", "(other)") in rows, rows
    finally:
        server.shutdown(grace=1.0)


def test_a_401_from_a_provider_given_no_key_says_the_proxy_sent_none(make_proxy, fake_upstream, caplog):
    """Probe AN 4: a local server that wants a key answered 401 to a proxy given none; Claude Code
    said "Failed to authenticate" (its own login, to it) and nothing said how to give the key."""
    import claudeproxy

    proxy = make_proxy(token=claudeproxy.static_token(""), retries=0)
    refusal = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    fake_upstream.push(json_reply(refusal, status=401), json_reply(refusal, status=401))
    with caplog.at_level(logging.WARNING, logger="claudeproxy"):
        for _ in range(2):
            resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), timeout=10)
            assert resp.status == 401 and resp.json["error"]["type"] == "authentication_error", resp
            assert resp.json["error"]["message"].endswith("(claudeproxy sends provider 'upstream' no key)"), resp.json
    said = [r.getMessage() for r in caplog.records if "sends it no key" in r.getMessage()]
    assert len(said) == 1 and "--api-key-env" in said[0], said  # once, with the way to give one
    assert "authorization" not in {k.lower() for k in fake_upstream.requests[0].headers}
    # A credential in a header of the provider's own (review AO 2): it was sent, and refused as it is.
    carried = make_proxy(token=claudeproxy.static_token(""), retries=0, headers=(("Authorization", "Bearer t-1"),))
    fake_upstream.push(json_reply(refusal, status=401))
    resp = request(carried.url, "POST", "/v1/messages", minimal_request(), timeout=10)
    assert resp.status == 401 and "no key" not in resp.json["error"]["message"], resp.json
