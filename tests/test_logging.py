"""Logging: raw bodies at debug in both directions, the JSON log format, and no secret anywhere.

The sweep at the end runs every upstream API (Chat Completions, Messages,
Responses) through JSON answers, streams, count_tokens and upstream errors
that echo keys (whole, OpenAI's half-masked form, another vendor's, a key of
no known shape) at DEBUG with bodies logged, and asserts that neither
sentinel key nor any fragment of it appears in any log record or response.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from typing import Any, Iterator, List, Tuple

import pytest

import claudeproxy
from claudeproxy.cli import setup_logging
from claudeproxy.config import Provider, Route, RouteTarget
from conftest import CLIENT_KEY, UPSTREAM_KEY, load_bytes, load_json, minimal_request, request
from fakes import FakeUpstream, Reply, chunk, completion, json_reply, sse_reply
from test_messages_api import ANSWER, HEAD_EVENTS, TAIL_EVENTS, events_bytes, sse

FRAGMENT = "SENTINEL"  # in both sentinel keys: no part of a key may show, masked or not
AZURE_STYLE_KEY = "3f9c0a1b2c3d4e5f60718293a4b5c6d7"  # 32 hex digits: no prefix gives it away


@contextlib.contextmanager
def logged(level: str, fmt: str, secrets: Tuple[str, ...], bodies: bool = False) -> Iterator[io.StringIO]:
    """The server's own log set-up (cli.setup_logging) into a string for the block, undone after."""
    stream = io.StringIO()
    logger, bodies_logger = logging.getLogger("claudeproxy"), logging.getLogger("claudeproxy.bodies")
    saved = (logger.level, logger.propagate, bodies_logger.level)
    handler = setup_logging(level, lambda: secrets, stream, fmt, bodies=bodies)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        bodies_logger.setLevel(saved[2])


def _leaks(texts: List[str]) -> List[str]:
    return [t[:300] for t in texts if FRAGMENT in t or AZURE_STYLE_KEY in t]


def _bodies_records(caplog: Any) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == "claudeproxy.bodies"]


def test_debug_shows_raw_bodies_in_both_directions(make_proxy: Any, fake_upstream: FakeUpstream, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="claudeproxy")
    proxy = make_proxy(log_bodies=True)  # what --log-level debug sets
    fake_upstream.push(json_reply(completion("json answer")),
                       sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "streamed"}),
                                 chunk({}, "stop")))
    headers = {"x-api-key": CLIENT_KEY}
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(messages=[
        {"role": "user", "content": "question one"}]), headers).status == 200
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(stream=True), headers).status == 200
    assert proxy.server.wait_idle(2)
    lines = _bodies_records(caplog)
    kinds = {line.split(":", 1)[0] for line in lines}
    assert {"client request body", "upstream request body", "upstream response body", "client response body",
            "upstream stream line", "client events"} <= kinds, kinds
    assert any("question one" in line and line.startswith("client request body") for line in lines)
    assert any('"json answer"' in line and line.startswith("upstream response body") for line in lines)
    assert any("streamed" in line and line.startswith("client events") for line in lines)
    assert _leaks(lines) == []


def test_debug_logs_the_events_that_went_out_before_an_error_in_the_same_read(
        make_proxy: Any, fake_upstream: FakeUpstream, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="claudeproxy")
    proxy = make_proxy(log_bodies=True)
    packet = b"".join(b"data: " + json.dumps(obj).encode() + b"\n\n" for obj in (
        chunk({"role": "assistant", "content": ""}), chunk({"content": "before the error"}),
        {"error": {"message": "overloaded", "code": 503}}))
    fake_upstream.push(sse_reply(packet, done=False))  # one write: the relay folds it in one call
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=True), {"x-api-key": CLIENT_KEY})
    assert resp.status == 200 and b"before the error" in resp.body
    assert proxy.server.wait_idle(2)
    lines = _bodies_records(caplog)
    assert any("before the error" in line and line.startswith("client events") for line in lines), lines


def test_bodies_are_not_built_above_debug(make_proxy: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="claudeproxy")
    proxy = make_proxy()
    assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 200
    assert proxy.server.wait_idle(2)
    assert _bodies_records(caplog) == []
    assert any("-> upstream/claude-test 200" in r.getMessage() for r in caplog.records)  # the access line


def test_a_server_not_told_to_log_bodies_logs_none_at_a_hosts_debug(make_proxy: Any, caplog: Any) -> None:
    """A library server started without log_bodies logged every prompt and answer once the host
    application's logging was at DEBUG, and two servers could not differ (a probe)."""
    caplog.set_level(logging.DEBUG)
    quiet, loud = make_proxy(), make_proxy(log_bodies=True)
    for proxy, words in ((quiet, "quiet words"), (loud, "loud words")):
        body = minimal_request(messages=[{"role": "user", "content": words}])
        assert request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY}).status == 200
        assert proxy.server.wait_idle(2)
    lines = _bodies_records(caplog)
    assert any("loud words" in line for line in lines) and not any("quiet words" in line for line in lines)


def test_log_bodies_turns_on_bodies_at_info(make_proxy: Any) -> None:
    """--log-bodies: the bodies logger on its own, while everything else stays at INFO."""
    with logged("info", "text", (UPSTREAM_KEY,), bodies=True) as stream:
        proxy = make_proxy(log_bodies=True)
        assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 200
        assert proxy.server.wait_idle(2)
    text = stream.getvalue()
    assert "upstream request body" in text and "-> upstream/claude-test 200" in text
    assert " DEBUG claudeproxy.upstream" not in text  # only the bodies logger went to DEBUG
    assert FRAGMENT not in text


def test_text_log_keeps_an_upstream_message_on_one_line(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    """An upstream's error text with line breaks (or a binary body) cannot start a log line of its own."""
    forged = "boom\n2026-12-03 00:00:00,000 ERROR claudeproxy: FORGED\r\x1b[2J\x00"
    with logged("info", "text", (UPSTREAM_KEY,)) as stream:
        proxy = make_proxy(retries=0)
        fake_upstream.push(json_reply({"error": {"message": forged}}, status=500))
        assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 500
        assert proxy.server.wait_idle(2)
    lines = stream.getvalue().splitlines()
    assert lines and all(line[:2] == "20" and " claudeproxy" in line for line in lines), lines
    warning = [line for line in lines if "FORGED" in line]
    # (a NUL is taken out by the masking: it hid a key in a UTF-16 body read as bytes)
    assert len(warning) == 1 and "boom\\n2026-12-03" in warning[0] and "\\r\\x1b[2J)" in warning[0], warning
    assert not any(c in stream.getvalue() for c in "\r\x1b\x00")


def test_json_log_format_one_object_per_line_with_the_call(make_proxy: Any, fake_upstream: FakeUpstream) -> None:
    with logged("debug", "json", (UPSTREAM_KEY, CLIENT_KEY)) as stream:
        proxy = make_proxy()
        echo = f"Incorrect API key provided: {UPSTREAM_KEY}"
        fake_upstream.push(json_reply(completion("hi")), json_reply({"error": {"message": echo}}, status=401))
        assert request(proxy.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": CLIENT_KEY}).status == 200
        assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 401
        assert proxy.server.wait_idle(2)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    calls = [line["call"] for line in lines if "call" in line]
    assert [(c["status"], c["error_type"]) for c in calls] == [(200, None), (401, "authentication_error")]
    assert calls[0]["input_tokens"] == 10 and calls[0]["upstream_model"] == "claude-test"
    assert calls[0]["time"] > 0 and "cost_usd" in calls[0] and "ttft_ms" in calls[0]
    assert FRAGMENT not in stream.getvalue()


# ---------------------------------------------------------------------------
# The sweep.


def _echoes() -> List[str]:
    return [
        f"Incorrect API key provided: {UPSTREAM_KEY}. You can find your API key at https://platform.openai.com.",
        "Incorrect API key provided: sk-UPSTR**********************6789. You can find your API key there.",
        f"invalid x-api-key: {CLIENT_KEY}",
        f"Incorrect API key provided: {AZURE_STYLE_KEY}.",
        f"Authorization: Bearer {UPSTREAM_KEY} rejected; url https://h/v1?key={UPSTREAM_KEY}",
    ]


@pytest.mark.parametrize("kind", ["function", "ring of functions"])
def test_a_programs_token_functions_keys_are_masked_in_the_body_log(fake_upstream: FakeUpstream, caplog: Any,
                                                                      kind: str) -> None:
    """A program's token function is not asked for masking on every request (it ran twice a request,
    and every provider's); a body logged before a request used the key, or a ring's key used three
    turns ago, logged the key a prompt quoted (a review). A server logging bodies asks it then."""
    from claudeproxy.credentials import KeyRing

    caplog.set_level(logging.DEBUG, logger="claudeproxy")
    keys = ["RingKEYaaaaaaaa0001xyz", "RingKEYbbbbbbbb0002xyz", "RingKEYcccccccc0003xyz"]
    token = (lambda: keys[0]) if kind == "function" else KeyRing([(lambda k=k: k) for k in keys])
    proxy = claudeproxy.start(upstream=fake_upstream.url, token=token, log_bodies=True)
    try:
        for turn in range(4):
            fake_upstream.push(json_reply(completion("ok")))
            body = minimal_request(messages=[{"role": "user", "content": f"turn {turn}: the key {keys[0]}"}])
            assert request(proxy.url, "POST", "/v1/messages", body, {"x-api-key": "k"}).status == 200
        assert proxy.server.wait_idle(2)
    finally:
        proxy.shutdown(grace=1.0)
    assert len([r for r in _bodies_records(caplog) if "turn 3: the key ***" in r]) >= 2  # the client's and ours
    assert [r[:80] for r in _bodies_records(caplog) if keys[0] in r] == []


@pytest.fixture
def everything(fake_upstream: FakeUpstream) -> Iterator[Any]:
    providers = (
        Provider("chat", fake_upstream.url, api="chat", token=claudeproxy.static_token(UPSTREAM_KEY)),
        Provider("anthropic", fake_upstream.url.rsplit("/v1", 1)[0], api="messages"),  # forwards the client's key
        Provider("resp", fake_upstream.url, api="responses", token=claudeproxy.static_token(UPSTREAM_KEY)),
    )
    routes = (Route("opus", RouteTarget("anthropic", "claude-opus-4-1")), Route("haiku", RouteTarget("resp", "gpt-5")),
              Route("*", RouteTarget("chat", "gpt-4o")))
    proxy = claudeproxy.start(providers=providers, routes=routes, log_bodies=True)
    yield proxy
    proxy.shutdown(grace=1.0)


def _replies(api: str) -> List[Reply]:
    if api == "chat":
        good = [json_reply(completion("fine")),
                sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), chunk({}, "stop"))]
    elif api == "anthropic":
        good = [json_reply(ANSWER), sse(events_bytes(HEAD_EVENTS + TAIL_EVENTS))]
    else:
        good = [json_reply(load_json("responses_api", "responses", "text.response.json")),
                Reply(200, (("Content-Type", "text/event-stream"),),
                      [load_bytes("responses_api", "streams", "text.upstream.sse")], chunked=True)]
    errors = [json_reply({"error": {"message": m, "type": "invalid_request_error"}}, status=401) for m in _echoes()]
    return good + errors


@pytest.mark.parametrize("model, api", [("claude-sonnet-4-5", "chat"), ("claude-opus-4-1", "anthropic"),
                                        ("claude-haiku-4-5", "resp")])
def test_no_secret_in_any_log_record_or_answer_at_debug(everything: Any, fake_upstream: FakeUpstream, caplog: Any,
                                                        model: str, api: str) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"x-api-key": CLIENT_KEY, "Authorization": f"Bearer {CLIENT_KEY}", "anthropic-version": "2023-06-01"}
    fake_upstream.push(*_replies(api))
    answers = []
    for stream in (False, True) + (False,) * len(_echoes()):
        resp = request(everything.url, "POST", "/v1/messages", minimal_request(model=model, stream=stream), headers)
        answers.append(resp)
    assert [a.status for a in answers[:2]] == [200, 200], answers[:2]
    assert all(a.status == 401 and "upstream 401" in a.json["error"]["message"] for a in answers[2:]), answers[2:]
    fake_upstream.push(json_reply({"error": {"message": _echoes()[2]}}, status=403))
    count = request(everything.url, "POST", "/v1/messages/count_tokens",
                    {"model": model, "messages": [{"role": "user", "content": "hi"}]}, headers)
    answers.append(count)
    answers.append(request(everything.url, "GET", "/v1/usage"))
    answers.append(request(everything.url, "GET", "/"))
    answers.append(request(everything.url, "GET", "/metrics"))
    assert everything.server.wait_idle(2)
    texts = [a.body.decode("utf-8", "replace") + json.dumps(a.header_list) for a in answers]
    records = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any(r.startswith("upstream request body") for r in records)  # debug really logged the bodies
    assert _leaks(texts) == []
    assert _leaks(records) == []


def _odd_streams() -> List[Tuple[str, Any]]:
    """Streams whose every path through the relay's fold the body log wraps (probe AM 2.11-15)."""
    from fakes import Sleep

    return [
        ("json-to-a-stream", json_reply(completion("plain json"))),  # from_json
        ("cut-short", sse_reply(chunk({"role": "assistant", "content": "cut"}), done=False)),  # end
        ("error-first", sse_reply({"error": {"message": "overloaded", "code": 503}}, done=False)),  # began
        ("slow-first-token", sse_reply(Sleep(0.6), chunk({"role": "assistant", "content": "late"}),
                                       chunk({}, "stop"))),  # start, at the first ping
    ]


@pytest.mark.parametrize("case", range(4), ids=[name for name, _ in _odd_streams()])
def test_the_body_log_changes_no_stream(make_proxy: Any, fake_upstream: FakeUpstream, caplog: Any, case: int) -> None:
    """With bodies logged (--log-level debug), a stream the upstream answers oddly reaches the
    client as it does without, and what went to the client is in the log."""
    from sse_checks import events_of

    caplog.set_level(logging.DEBUG, logger="claudeproxy")
    name, reply = _odd_streams()[case]
    seen = []
    for proxy in (make_proxy(ping_interval=0.2, retries=0), make_proxy(ping_interval=0.2, retries=0, log_bodies=True)):
        fake_upstream.push(reply)
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=True), {"x-api-key": CLIENT_KEY})
        assert proxy.server.wait_idle(2)
        events = events_of(resp.body) if resp.status == 200 else []
        seen.append((resp.status, [(e["type"], e.get("delta", {}).get("text")) for e in events if e["type"] != "ping"]))
    assert seen[0] == seen[1], seen
    lines = _bodies_records(caplog)
    if seen[1][0] == 200:
        assert any(line.startswith("client events") for line in lines), lines
    if name == "json-to-a-stream":
        assert any('"plain json"' in line and line.startswith("upstream response body") for line in lines), lines
