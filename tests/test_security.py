"""RELIABILITY.md section 5, tested on loopback: credentials, Host/Origin, client key, logs, proxies, TLS.

PROTOCOL.md 4.4 and cases 74, 75; stdlib traps S7 (redirects carry secrets),
S8 (environment proxies) and S1's figure: the sentinel keys appear 0 times
in every log record and error body.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, List, Tuple

import pytest

import claudeproxy
from claudeproxy import cli

from conftest import CLIENT_KEY, ROOT, UPSTREAM_KEY, minimal_request, record_for, request
from fakes import FakeUpstream, Reply, chunk, completion, json_reply, sse_reply, upstream_tool_pairs
from test_http_errors import assert_error, connect, http_bytes, peer_closed, read_response

SHARED_SERVERS = True  # one fake upstream and its proxies serve the whole module (conftest)

SENTINELS = (CLIENT_KEY, UPSTREAM_KEY)

# What the proxy may send upstream; anything else came from the client.
UPSTREAM_HEADERS = {"host", "accept-encoding", "content-length", "content-type", "accept", "user-agent",
                    "authorization", "connection"}


# An Anthropic-compatible upstream's answer (passthrough).
ANTHROPIC_ANSWER = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
                    "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 12, "output_tokens": 3}}


# One fake and one proxy serve the whole module (starting and stopping a server
# per test costs more than the tests); each test gets the fake reset.




@pytest.fixture
def second_fake() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


def client_headers(**extra: str) -> dict:
    headers = {"x-api-key": CLIENT_KEY, "Authorization": f"Bearer {CLIENT_KEY}", "anthropic-version": "2023-06-01",
               "anthropic-beta": "prompt-caching-2024-07-31", "Accept-Encoding": "gzip, br", "Cookie": "session=abc"}
    headers.update(extra)
    return headers


# ---------------------------------------------------------------------------
# 3. Credential isolation (case 74).


@pytest.mark.parametrize("stream", [False, True])
def test_client_credentials_never_reach_the_upstream(proxy: Any, fake_upstream: Any, stream: bool) -> None:
    if stream:
        fake_upstream.push(sse_reply(chunk({"content": "Hi"}), chunk({}, "stop")))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), client_headers())
    assert resp.status == 200, resp
    sent = fake_upstream.last
    everything = repr(sent.raw_headers) + sent.body.decode("utf-8")
    assert CLIENT_KEY not in everything
    assert everything.count(UPSTREAM_KEY) == 1
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert set(sent.headers) <= UPSTREAM_HEADERS, set(sent.headers) - UPSTREAM_HEADERS
    # Accept-Encoding: the proxy reads the body line by line, so it never asks for compression.
    assert "gzip" not in sent.headers.get("accept-encoding", "") and "br" not in sent.headers.get("accept-encoding", "")


def test_no_anthropic_version_is_accepted(proxy: Any, fake_upstream: Any) -> None:
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": CLIENT_KEY})
    assert resp.status == 200, resp
    assert "x-api-key" not in fake_upstream.last.headers


def test_azure_dialect_sends_api_key_header(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy(provider="azure", model="my-deployment")
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), client_headers())
    assert resp.status == 200, resp
    sent = fake_upstream.last
    assert sent.path.startswith("/v1/openai/deployments/my-deployment/chat/completions?api-version=")
    assert sent.headers["api-key"] == UPSTREAM_KEY
    assert "authorization" not in sent.headers
    assert CLIENT_KEY not in repr(sent.raw_headers)


def test_configured_extra_headers_are_sent(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy(headers=(("HTTP-Referer", "https://example.org"), ("X-Title", "claudeproxy tests")))
    assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 200
    assert fake_upstream.last.headers["http-referer"] == "https://example.org"
    assert fake_upstream.last.headers["x-title"] == "claudeproxy tests"


def test_no_key_configured_sends_no_authorization(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy(token=claudeproxy.static_token(""))
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), client_headers()).status == 200
    assert "authorization" not in fake_upstream.last.headers
    assert CLIENT_KEY not in repr(fake_upstream.last.raw_headers)


def test_token_function_is_asked_per_request(make_proxy: Any, fake_upstream: Any) -> None:
    tokens = iter(["sk-rotated-first-000", "sk-rotated-second-000"])
    lock = threading.Lock()
    current: List[str] = []

    def token() -> str:
        with lock:
            if not current:
                current.append(next(tokens))
            return current[-1]

    proxy = make_proxy(token=token)
    assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 200
    current.append(next(tokens))
    assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 200
    assert [r.headers["authorization"] for r in fake_upstream.requests] == [
        "Bearer sk-rotated-first-000", "Bearer sk-rotated-second-000"]


# ---------------------------------------------------------------------------
# 6. The upstream URL is never taken from a request; redirects are refused (S7).


def test_base_url_in_the_body_is_ignored(proxy: Any, fake_upstream: Any, second_fake: FakeUpstream) -> None:
    body = minimal_request(api_base=second_fake.url, base_url=second_fake.url, upstream=second_fake.url)
    resp = request(proxy.url, "POST", "/v1/messages", body)
    assert resp.status == 200, resp
    assert len(fake_upstream.requests) == 1 and second_fake.requests == []
    sent = fake_upstream.last.json
    assert not {"api_base", "base_url", "upstream"} & set(sent)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_upstream_redirect_is_502_and_not_followed(proxy: Any, fake_upstream: Any, second_fake: FakeUpstream,
                                                   status: int, stream: bool) -> None:
    fake_upstream.push(Reply(status, (("Location", second_fake.url + "/chat/completions"),), []))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream))
    assert_error(resp, 502, "api_error")
    assert second_fake.requests == []
    assert UPSTREAM_KEY not in resp.body.decode()


# ---------------------------------------------------------------------------
# 7. Host allow-list and Origin (DNS rebinding, browsers).


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example", ":8080", "127.0.0.1.nip.io",
                                  "evil.example:{port}", "", "127.0.0.1 evil"])
def test_foreign_host_is_403(proxy: Any, fake_upstream: Any, host: str) -> None:
    host = host.format(port=proxy.address[1])
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"Host": host})
    assert_error(resp, 403, "permission_error")
    assert fake_upstream.requests == []


def test_missing_host_is_400_in_http_1_1_and_403_in_http_1_0(proxy: Any) -> None:
    # RFC 9112 3.2: an HTTP/1.1 request without Host is a 400; HTTP/1.0 may omit it, and then the
    # Host check (DNS rebinding) finds no loopback name.
    with connect(proxy.url) as sock:
        sock.sendall(http_bytes("GET", "/health", []))
        assert_error(read_response(sock), 400, "invalid_request_error")
    with connect(proxy.url) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert_error(read_response(sock), 403, "permission_error")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "localhost:{port}",
                                  "LOCALHOST:{port}", "[::1]:{port}", "[::1]"])
def test_loopback_hosts_are_accepted(proxy: Any, host: str) -> None:
    resp = request(proxy.url, "GET", "/health", headers={"Host": host.format(port=proxy.address[1])})
    assert resp.status == 200, resp


def test_allowed_host_flag(make_proxy: Any) -> None:
    proxy = make_proxy(allowed_hosts=("proxy.lan", "box.example:9000"))
    ok = ["proxy.lan", "proxy.lan:8082", "PROXY.LAN", "box.example:9000", "localhost"]
    for host in ok:
        assert request(proxy.url, "GET", "/health", headers={"Host": host}).status == 200, host
    for host in ["evil.example", "proxy.lan.evil.example"]:
        assert_error(request(proxy.url, "GET", "/health", headers={"Host": host}), 403, "permission_error")


def test_origin_is_403_unless_allowed(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy(allowed_origins=("http://app.local:3000",))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"Origin": "http://evil.example"})
    assert_error(resp, 403, "permission_error")
    assert not [k for k in resp.headers if k.startswith("access-control-")]
    assert fake_upstream.requests == []
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"Origin": "null"})
    assert_error(resp, 403, "permission_error")
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"Origin": "http://app.local:3000"})
    assert resp.status == 200, resp
    # A listed origin can read the answer from a browser, and only that origin.
    assert resp.headers["access-control-allow-origin"] == "http://app.local:3000"
    exposed = [h.strip() for h in resp.headers["access-control-expose-headers"].split(",")]
    # The SDKs decide a retry by these: a browser hides every header not named (probe N).
    assert {"request-id", "x-should-retry", "retry-after", "retry-after-ms"} <= set(exposed)


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
@pytest.mark.parametrize("mode, dest", [("no-cors", "image"), ("no-cors", "script"), ("navigate", "iframe"),
                                        ("navigate", "document")])
def test_what_another_site_loads_or_opens_is_403(make_proxy: Any, fake_upstream: Any, site: str, mode: str,
                                                 dest: str) -> None:
    """A page's <img src="http://127.0.0.1:PORT/v1/models"> (or iframe, or link) carries no Origin:
    the proxy called the upstream's model list with its key for it (probe E, review G). The SDKs'
    fetch says mode cors, no site."""
    proxy = make_proxy()
    loaded = {"Sec-Fetch-Mode": mode, "Sec-Fetch-Site": site, "Sec-Fetch-Dest": dest}
    assert_error(request(proxy.url, "GET", "/v1/models", headers=loaded), 403, "permission_error")
    assert fake_upstream.requests == []
    sdk = {"Sec-Fetch-Mode": "cors"}  # what Claude Code's fetch sends (tests/test_http_head.py)
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), sdk).status == 200
    typed = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none"}  # the usage page's address typed in
    assert request(proxy.url, "GET", "/health", headers=typed).status == 200


def test_an_origin_flag_is_written_as_browsers_send_it() -> None:
    """``--allowed-origin HTTPS://App.Example:8443/`` is kept as the Origin header a browser sends."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--port", "0", "--allowed-origin", "HTTPS://App.Example:8443/", "--allowed-origin",
                     "https://other.example:443", "--allowed-origin", "http://[::1]:3000", "--print-config"],
                    environ={}, stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert json.loads(out.getvalue())["settings"]["allowed_origin"] == [
        "https://app.example:8443", "https://other.example", "http://[::1]:3000"]  # no default port: browsers omit it


def test_preflight_from_an_allowed_origin(make_proxy: Any) -> None:
    proxy = make_proxy(allowed_origins=("http://app.local:3000",), auth_key=CLIENT_KEY)
    resp = request(proxy.url, "OPTIONS", "/v1/messages", headers={
        "Origin": "http://app.local:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type, anthropic-version"})
    assert resp.status == 204, resp
    assert resp.body == b""
    assert resp.headers["access-control-allow-origin"] == "http://app.local:3000"
    assert resp.headers["access-control-allow-methods"] == "POST"
    assert "x-api-key" in resp.headers["access-control-allow-headers"]
    bad = request(proxy.url, "OPTIONS", "/v1/messages", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert_error(bad, 403, "permission_error")
    assert not [k for k in bad.headers if k.startswith("access-control-")]


def test_no_cors_headers_by_default(proxy: Any) -> None:
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request())
    assert resp.status == 200
    assert not [k for k in resp.headers if k.startswith("access-control-")]


# ---------------------------------------------------------------------------
# 2. The optional client key.

AUTH_KEY = "cp-local-key-0123456789abcdef"


@pytest.fixture
def keyed(make_proxy: Any) -> Any:
    return make_proxy(auth_key=AUTH_KEY)


@pytest.mark.parametrize("headers", [
    {},
    {"x-api-key": "wrong-key-0123456789abcdef00"},
    {"x-api-key": AUTH_KEY[:-1]},
    {"x-api-key": AUTH_KEY + "0"},
    {"x-api-key": AUTH_KEY.upper()},
    {"Authorization": f"Bearer {AUTH_KEY}x"},
    {"Authorization": f"Basic {AUTH_KEY}"},
    {"Authorization": AUTH_KEY},
    {"x-api-key": "", "Authorization": "Bearer "},
], ids=["missing", "wrong", "shorter", "longer", "case", "bearer-longer", "basic", "bare", "empty"])
def test_wrong_client_key_is_401_with_a_fixed_message(keyed: Any, fake_upstream: Any, headers: dict) -> None:
    resp = request(keyed.url, "POST", "/v1/messages", minimal_request(), headers)
    message = assert_error(resp, 401, "authentication_error")
    sent = headers.get("x-api-key") or headers.get("Authorization", "")[:7].lower() == "bearer " and \
        headers["Authorization"][7:]
    # Anthropic's words, naming the header the key came in (Claude Code's ANTHROPIC_AUTH_TOKEN is a bearer token)
    wrong = "invalid x-api-key" if headers.get("x-api-key") else "invalid bearer token (Authorization)"
    assert message == (wrong if sent else "x-api-key header is required")
    assert AUTH_KEY not in resp.body.decode()
    assert fake_upstream.requests == []


@pytest.mark.parametrize("header", ["x-api-key", "Authorization"])
def test_key_with_a_folded_line_is_refused(keyed: Any, header: str) -> None:
    # http.client refuses to send a newline in a value; an obs-folded line carries one.
    value = AUTH_KEY if header == "x-api-key" else f"Bearer {AUTH_KEY}"
    body = json.dumps(minimal_request()).encode()
    data = (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}: {value}\r\n \r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with connect(keyed.url) as sock:
        sock.sendall(data)
        resp = read_response(sock)
        assert "obs-fold" in assert_error(resp, 400, "invalid_request_error")
        # The refused body was never read: the connection must not carry on (request desync).
        assert peer_closed(sock, 2.0)


def test_a_folded_client_key_never_reaches_a_passthrough_upstream(make_proxy: Any, fake_upstream: Any) -> None:
    """Without a key of its own a passthrough proxy forwards the client's: folded, it would be a
    second header line upstream (RFC 9112 5.2 lets a server refuse obs-fold)."""
    through = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    body = json.dumps(minimal_request()).encode()
    data = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: plainclientkey0123456789\r\n"
            b"\tX-Injected: yes\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    with connect(through.url) as sock:
        sock.sendall(data)
        assert_error(read_response(sock), 400, "invalid_request_error")
    assert fake_upstream.requests == []


@pytest.mark.parametrize("value", [b"plainclientkey0123456789\x00junk", b"plainclientkey0123456789\x01",
                                   b"plainclientkey0123456789\x7f", b"\x1b[2Jplainclientkey0123456789",
                                   # A bare CR is a line break to the feed parser: a second, hidden field.
                                   b"a\rx-api-key: plainclientkey0123456789",
                                   b"plainclientkey0123456789\r\rX-Smuggled: 1"],
                         ids=["nul", "soh", "del", "escape", "bare-cr-hides-a-field", "bare-cr-before-crlf"])
def test_a_control_character_in_a_header_value_is_400_and_never_forwarded(make_proxy: Any, fake_upstream: Any,
                                                                            value: bytes) -> None:
    """RFC 9110 5.5: a NUL in a value must be refused. A passthrough proxy without a key of its own
    forwarded ``x-api-key: k\\x00junk`` as it was; a server that cuts values at NUL reads another key."""
    through = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    body = json.dumps(minimal_request()).encode()
    data = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + value
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    with connect(through.url) as sock:
        sock.sendall(data)
        assert "control character" in assert_error(read_response(sock), 400, "invalid_request_error")
        assert peer_closed(sock, 2.0)
    assert fake_upstream.requests == []


def test_a_tab_in_a_header_value_is_accepted(make_proxy: Any, fake_upstream: Any) -> None:
    """HTAB is the one control character a value may hold (RFC 9110 5.5)."""
    through = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    fake_upstream.default = json_reply(ANTHROPIC_ANSWER)
    body = json.dumps(minimal_request()).encode()
    data = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: plainclientkey0123456789\r\n"
            b"anthropic-beta: prompt-caching-2024-07-31,\tinterleaved-thinking-2025-05-14\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    with connect(through.url) as sock:
        sock.sendall(data + body)
        assert read_response(sock).status == 200
    assert len(fake_upstream.requests) == 1


def test_expect_100_from_a_client_without_the_key_gets_401_not_continue(keyed: Any) -> None:
    data = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 30000000\r\nExpect: 100-continue\r\n\r\n")
    with connect(keyed.url) as sock:
        sock.sendall(data)
        resp = read_response(sock)  # the first answer: a 100 here would invite 30 MB never read
        assert_error(resp, 401, "authentication_error")
        assert peer_closed(sock, 2.0)



@pytest.mark.parametrize("headers", [{"x-api-key": AUTH_KEY}, {"Authorization": f"Bearer {AUTH_KEY}"},
                                     {"Authorization": f"bearer {AUTH_KEY}"}])
def test_right_client_key_is_accepted(keyed: Any, fake_upstream: Any, headers: dict) -> None:
    resp = request(keyed.url, "POST", "/v1/messages", minimal_request(), headers)
    assert resp.status == 200, resp
    assert AUTH_KEY not in repr(fake_upstream.last.raw_headers)
    assert fake_upstream.last.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_with_a_client_key_any_host_name_works_but_only_with_the_key(keyed: Any) -> None:
    # Decision: the key replaces the Host allow-list (a LAN listener is reached by names we
    # cannot list; a DNS-rebinding page has no key, and its Origin is refused anyway).
    lan = {"Host": "workstation.lan:8082"}
    assert_error(request(keyed.url, "GET", "/health", headers=lan), 401, "authentication_error")
    assert request(keyed.url, "GET", "/health", headers={**lan, "x-api-key": AUTH_KEY}).status == 200
    page = {**lan, "x-api-key": AUTH_KEY, "Origin": "http://workstation.lan:8082"}
    assert_error(request(keyed.url, "GET", "/health", headers=page), 403, "permission_error")

def test_client_key_guards_every_route(keyed: Any) -> None:
    for method, path in [("GET", "/v1/models"), ("GET", "/health"), ("GET", "/metrics"),
                         ("POST", "/v1/messages/count_tokens")]:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]} if method == "POST" else None
        assert_error(request(keyed.url, method, path, body), 401, "authentication_error")


# ---------------------------------------------------------------------------
# 4 and 10. No secret in any log record or error body, even at DEBUG with bodies logged.


def _leaks(texts: List[str]) -> List[Tuple[str, str]]:
    return [(s, t[:200]) for t in texts for s in SENTINELS if s in t]


def test_sentinels_never_logged_or_returned(make_proxy: Any, fake_upstream: Any, caplog: Any, capfd: Any) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = make_proxy(log_bodies=True)
    bodies: List[str] = []
    echo = f"Incorrect API key provided: {UPSTREAM_KEY}. Authorization: Bearer {UPSTREAM_KEY}"
    fake_upstream.push(
        json_reply(completion("fine")),
        sse_reply(chunk({"content": "Hi"}), chunk({}, "stop")),
        json_reply({"error": {"message": echo, "type": "invalid_request_error"}}, status=401),
        json_reply({"error": {"message": echo}}, status=500),
        sse_reply(chunk({"content": "Hi"}), {"error": {"message": echo, "code": 500}}, done=False),
    )
    for stream in (False, True, False, False, True):
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), client_headers())
        bodies.append(resp.body.decode("utf-8", "replace"))
        bodies.append(json.dumps(resp.header_list))
    assert '"authentication_error"' in bodies[4] and '"api_error"' in bodies[6]
    assert "Incorrect API key provided" in bodies[4]  # the message survives, only the key is masked
    records = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any("upstream request body" in r for r in records), "log_bodies logged nothing"
    assert _leaks(bodies) == []
    assert _leaks(records) == []
    captured = capfd.readouterr()
    assert _leaks([captured.out, captured.err]) == []


def _chat_call_with_id(tool_id: str, stream: bool) -> Reply:
    call = {"id": tool_id, "type": "function", "function": {"name": "Read", "arguments": '{"path":"a"}'}}
    if not stream:
        return json_reply(completion(None, finish="tool_calls", tool_calls=[call]))
    return sse_reply(chunk({"role": "assistant", "tool_calls": [{"index": 0, **call}]}), chunk({}, "tool_calls"))


def _responses_fixture(kind: str, case: str, old: str, new: str) -> Reply:
    name = f"{case}.upstream.sse" if kind == "streams" else f"{case}.response.json"
    with open(os.path.join(ROOT, "tests", "fixtures", "responses_api", kind, name), "rb") as fh:
        body = fh.read()
    assert old.encode() in body
    body = body.replace(old.encode(), new.encode())
    if kind == "responses":
        return Reply(200, (("Content-Type", "application/json"),), [body])
    steps = [part + b"\n\n" for part in body.split(b"\n\n") if part.strip()]
    return Reply(200, (("Content-Type", "text/event-stream"),), steps, chunked=True)


ECHOES = [("chat", "", "call_7", f"call_{UPSTREAM_KEY}"),
          ("responses", "parallel_calls", "call_Qe4Ua1", f"call_{UPSTREAM_KEY}"),
          ("responses", "web_search_citations", '"url": "https://peps.python.org/pep-0745/"',
           f'"url": "https://peps.python.org/pep-0745/?k={UPSTREAM_KEY}"'),
          ("responses", "web_search_citations", "Python Release Python 3.14.0", f"Python 3.14.0 {UPSTREAM_KEY}")]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api,case,old,new", ECHOES, ids=["chat-call-id", "responses-call-id", "citation-url",
                                                          "citation-title"])
def test_an_upstream_key_in_a_field_the_upstream_chose_is_not_relayed(make_proxy: Any, fake_upstream: Any,
                                                                      api: str, case: str, old: str, new: str,
                                                                      stream: bool) -> None:
    """A tool call's id, a citation's URL or title come from the provider, not the model: one that
    echoes the key would hand it to the client (passthrough masks them; so do the translations).
    A call keeps working: its id is a fresh one, which the next turn sends back."""
    if api == "chat":
        proxy, reply = make_proxy(), _chat_call_with_id(new, stream)
    else:
        proxy = make_proxy(upstream_api="responses", model="gpt-5")
        reply = _responses_fixture("streams" if stream else "responses", case, old, new)
    fake_upstream.push(reply)
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), client_headers())
    assert resp.status == 200, resp
    text = resp.body.decode("utf-8")
    assert UPSTREAM_KEY not in text
    if "call" not in old:
        assert "peps.python.org" in text and "***" in text  # the rest of the citation stays
        return
    compact = text.replace(", ", ",").replace('": "', '":"')
    assert '"tool_use","id":"toolu_' in compact
    fresh = compact.split('"tool_use","id":"', 1)[1].split('"', 1)[0]
    # The next turn sends the fresh id back with the result: the upstream gets a call and its result
    # paired by it, and no key.
    fake_upstream.push(json_reply(completion("done")) if api == "chat" else _responses_fixture(
        "responses", "text", "", ""))
    turn = minimal_request(messages=[
        {"role": "user", "content": "read a"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": fresh, "name": "Read", "input": {"path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": fresh, "content": "A"}]}])
    assert request(proxy.url, "POST", "/v1/messages", turn, client_headers()).status == 200
    call_ids, result_ids = upstream_tool_pairs(fake_upstream.last.json, api)
    assert call_ids == result_ids == [fresh]


@pytest.mark.parametrize("stream", [False, True])
def test_the_clients_auth_key_echoed_by_an_upstream_error_is_masked(make_proxy: Any, fake_upstream: Any,
                                                                    stream: bool) -> None:
    # The client's --auth-key never goes upstream, but an upstream error may still name it (a gateway
    # a client talked to directly, a misrouted header): the answer must not hand it on.
    proxy = make_proxy(auth_key=AUTH_KEY)
    echo = f"key {AUTH_KEY} is not valid here; Bearer {AUTH_KEY}"
    fake_upstream.push(json_reply({"error": {"message": echo}}, status=400))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), {"x-api-key": AUTH_KEY})
    message = assert_error(resp, 400, "invalid_request_error")
    assert "is not valid here" in message and AUTH_KEY not in resp.body.decode("utf-8", "replace")


def test_a_short_auth_key_does_not_shred_upstream_messages(make_proxy: Any, fake_upstream: Any) -> None:
    # A placeholder key such as "claude" (shorter than 8) is not masked in free text: every client
    # that sees the message sent it, and masking would turn claude-x-model into claude-***-model.
    proxy = make_proxy(auth_key="claude")
    fake_upstream.push(json_reply({"error": {"message": "model `claude-x-model` does not exist"}}, status=404))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": "claude"})
    assert "claude-x-model" in assert_error(resp, 404, "not_found_error")


def test_upstream_url_query_secret_stays_out_of_errors_and_logs(make_proxy: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as closed:  # a port with no listener: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    proxy = make_proxy(upstream=f"http://127.0.0.1:{port}/v1?key=QUERY-SECRET-VALUE", connect_timeout=2)
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request())
    assert_error(resp, 502, "api_error")
    assert "QUERY-SECRET-VALUE" not in resp.body.decode()
    assert not [r for r in caplog.records if "QUERY-SECRET-VALUE" in r.getMessage()]


# Secrets written into the configuration, of no known shape: an upstream that echoes one bare
# (not in URL or header form) has it masked like a key.
QUERY_SECRET = "URLQSECRET77abc"
HEADER_SECRET = "HdrSECRET12345"


def _echoes_of(proxy: Any, fake: Any, secret: str) -> List[str]:
    """The answers to a JSON error, a text error and a stream error event that each repeat ``secret``."""
    fake.push(json_reply({"error": {"message": f"API key not valid: {secret}"}}, status=400),
              Reply(500, (("Content-Type", "text/plain"),), [f"crashed on {secret}".encode()]),
              sse_reply(chunk({"content": "Hi"}), {"error": {"message": f"quota for {secret} exceeded"}}, done=False))
    texts = []
    for stream in (False, False, True):
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), client_headers())
        texts.append(resp.body.decode("utf-8", "replace"))
    assert proxy.server.wait_idle(2)
    assert "API key not valid: ***" in texts[0] and "crashed on ***" in texts[1] and "quota for ***" in texts[2]
    return texts


def test_a_key_in_the_upstream_urls_query_is_masked_when_echoed_bare(make_proxy: Any, fake_upstream: Any,
                                                                     caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = make_proxy(upstream=f"{fake_upstream.url}?key={QUERY_SECRET}", log_bodies=True)
    texts = _echoes_of(proxy, fake_upstream, QUERY_SECRET)
    assert fake_upstream.last.path.endswith(f"?key={QUERY_SECRET}")  # sent as configured
    records = [r.getMessage() for r in caplog.records]
    assert any("stream failed after it began" in r for r in records)
    assert [t for t in texts + records if QUERY_SECRET in t] == []


@pytest.mark.parametrize("name", ["X-Auth", "cf-aig-authorization", "X-Goog-Api-Key", "Ocp-Apim-Subscription-Key",
                                  "X-Password", "Cookie"])
def test_a_credential_header_value_is_masked_when_echoed(make_proxy: Any, fake_upstream: Any, caplog: Any,
                                                         name: str) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = make_proxy(headers=((name, HEADER_SECRET), ("X-Title", "my-title-app")), log_bodies=True)
    texts = _echoes_of(proxy, fake_upstream, HEADER_SECRET)
    assert fake_upstream.last.headers.get(name.lower()) == HEADER_SECRET
    records = [r.getMessage() for r in caplog.records]
    assert any("upstream POST" in r and "my-title-app" in r for r in records)  # a harmless header stays readable
    assert [t for t in texts + records if HEADER_SECRET in t] == []


_ECHO_RECORDS: List[Any] = []  # the call records of the proxy below (one for the module)


@pytest.mark.parametrize("status", [200, 429])
def test_a_forwarded_key_echoed_in_relayed_headers_and_the_request_id_is_masked(make_proxy: Any, fake_upstream: Any,
                                                                                status: int) -> None:
    """Passthrough relays the upstream's anthropic-ratelimit-* headers and records its request-id
    (usage log, /v1/usage); an upstream echoing the key it was sent put the key in both."""
    key = "plainclientkey0123456789"  # not key-shaped: only the call's own secrets can mask it
    proxy = make_proxy(passthrough=True, token=claudeproxy.static_token(""), metrics_sink=_ECHO_RECORDS.append)
    echoes = (("anthropic-ratelimit-requests-limit", key), ("anthropic-ratelimit-tokens-reset", f"Bearer {key}"),
              ("anthropic-ratelimit-requests-remaining", "99"), ("request-id", key))
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    fake_upstream.push(json_reply(ANTHROPIC_ANSWER if status == 200 else error, status=status, headers=echoes))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": key})
    assert resp.status == status, resp
    assert fake_upstream.last.headers["x-api-key"] == key  # it was the key sent
    assert resp.headers["anthropic-ratelimit-requests-limit"] == "***"
    assert resp.headers["anthropic-ratelimit-tokens-reset"] == "Bearer ***"
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "99"  # a value without a secret is as sent
    assert [(k, v) for k, v in resp.header_list if key in v] == []
    assert record_for(_ECHO_RECORDS, resp.headers["request-id"]).upstream_request_id == ""
    assert key not in request(proxy.url, "GET", "/v1/usage").body.decode()


def test_a_request_id_holding_a_key_of_no_known_name_is_not_recorded(make_proxy: Any, fake_upstream: Any) -> None:
    """An upstream's request id "req_sk-proj-...": a key the proxy does not know (the upstream's own
    backend key), after "_", which the redactor missed (probe B): the id reached the log line, the
    usage log and /v1/usage. It is no id now, as one holding a known key is not."""
    other = "sk-proj-OTHERKEYabcdefghijklmnopqrstuvwxyz0123456789"
    proxy = make_proxy(passthrough=True, metrics_sink=_ECHO_RECORDS.append)
    fake_upstream.push(json_reply(ANTHROPIC_ANSWER, headers=(("request-id", "req_" + other),)))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": CLIENT_KEY})
    assert resp.status == 200, resp
    assert record_for(_ECHO_RECORDS, resp.headers["request-id"]).upstream_request_id == ""
    assert other not in request(proxy.url, "GET", "/v1/usage").body.decode()


def test_a_key_with_a_slash_echoed_json_escaped_is_masked(make_proxy: Any, fake_upstream: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    key = "Ab/cd+efSECRET99/xyz"
    escaped = key.replace("/", "\\/")
    proxy = make_proxy(token=claudeproxy.static_token(key), log_bodies=True)
    fake_upstream.push(
        Reply(401, (("Content-Type", "text/plain"),), [('{"error":{"message":"bad key %s"' % escaped).encode()]),
        Reply(200, (("Content-Type", "text/event-stream"),),
              [b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
               ('data: {"error":{"message":"bad key %s"}}\n\n' % escaped).encode()], chunked=True))
    texts = [request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), client_headers()).body.decode()
             for stream in (False, True)]
    assert proxy.server.wait_idle(2)
    records = [r.getMessage() for r in caplog.records]
    assert any(r.startswith("upstream stream line") and "bad key ***" in r for r in records)
    assert [t for t in texts + records if "SECRET99" in t] == []


def test_half_of_the_provider_key_quoted_by_an_upstream_is_masked(make_proxy: Any, fake_upstream: Any,
                                                                    caplog: Any) -> None:
    """A gateway that quotes the start of the key it got ("API key not valid: Qx7UPSTREAMs") gave
    the client and the log half of a key with no vendor shape (probe E F3)."""
    caplog.set_level(logging.DEBUG)
    proxy = make_proxy(token=claudeproxy.static_token(PLAIN_KEY), log_bodies=True)
    half = PLAIN_KEY[:(len(PLAIN_KEY) + 1) // 2]
    texts = _echoes_of(proxy, fake_upstream, half)
    records = [r.getMessage() for r in caplog.records]
    assert [t for t in texts + records if half in t or PLAIN_KEY[-12:] in t] == []


# Values of the upstream's own making, quoted or relayed: a key an upstream echoes there is masked or
# left out too (an outside probe put it in each of these; none is key-shaped, so only the call's own
# secrets can mask it).
PLAIN_KEY = "Qx7UPSTREAMsentinel42zz"
FORWARDED = "FWDclientSENTINEL99ab"


def _no_key_in(resp: Any, key: str) -> str:
    text = resp.body.decode("utf-8", "replace") + json.dumps(resp.header_list)
    assert key not in text and key not in text.replace("\x00", "") and key[:11] not in text, text[:400]
    return text


def test_retry_headers_pass_on_only_what_they_may_say(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy(token=claudeproxy.static_token(PLAIN_KEY), retries=0)
    echoed = (("retry-after", PLAIN_KEY), ("retry-after-ms", PLAIN_KEY), ("x-should-retry", PLAIN_KEY))
    fake_upstream.push(json_reply({"error": {"message": "slow down"}}, status=429, headers=echoed))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), client_headers())
    assert_error(resp, 429, "rate_limit_error")
    _no_key_in(resp, PLAIN_KEY)
    said = (("retry-after", "7"), ("retry-after-ms", "6500.5"), ("x-should-retry", "False"))
    fake_upstream.push(json_reply({"error": {"message": "slow down"}}, status=429, headers=said))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), client_headers())
    assert (resp.headers.get("retry-after"), resp.headers.get("retry-after-ms"),
            resp.headers.get("x-should-retry")) == ("7", "6500.5", "false")
    date = (("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),)
    fake_upstream.push(json_reply({"error": {"message": "down"}}, status=503, headers=date))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), client_headers())
    assert resp.headers.get("retry-after") == "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstreams_head_quoted_in_an_error_is_masked(make_proxy: Any, fake_upstream: Any, caplog: Any,
                                                        stream: bool) -> None:
    caplog.set_level(logging.INFO)
    proxy = make_proxy(token=claudeproxy.static_token(PLAIN_KEY), retries=0)
    fake_upstream.push(Reply(200, (("Content-Type", f"text/html; k={PLAIN_KEY}"),), [b"<html>hi</html>"]),
                       Reply(200, (("Content-Type", "application/json"), ("Content-Encoding", PLAIN_KEY)), [b"{}"]))
    for _ in range(2):
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=stream), client_headers())
        assert "***" in assert_error(resp, 502, "api_error")
        _no_key_in(resp, PLAIN_KEY)
    assert proxy.server.wait_idle(2)
    assert [r.getMessage() for r in caplog.records if PLAIN_KEY.lower() in r.getMessage().lower()] == []


def test_a_forwarded_key_quoted_by_a_broken_passthrough_stream_is_masked(make_proxy: Any, fake_upstream: Any,
                                                                        caplog: Any) -> None:
    """The forwarded key is known to the call only (no log filter knows it): the message it is
    quoted in is masked before the client or the log gets it."""
    caplog.set_level(logging.INFO)
    proxy = make_proxy(passthrough=True, token=claudeproxy.static_token(""), retries=0)
    start = {"type": "message_start", "message": {**ANTHROPIC_ANSWER, "content": [], "stop_reason": None}}
    broken = {"type": "content_block_start", "index": FORWARDED, "content_block": {"type": "text", "text": ""}}
    fake_upstream.push(sse_reply(start, broken, done=False))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=True), {"x-api-key": FORWARDED})
    assert "broke the event order" in assert_error(resp, 502, "api_error")
    _no_key_in(resp, FORWARDED)
    assert proxy.server.wait_idle(2)
    assert [r.getMessage() for r in caplog.records if FORWARDED in r.getMessage()] == []


def test_an_upstream_message_is_masked_before_it_is_cut(make_proxy: Any, fake_upstream: Any) -> None:
    # Cut first, the key across the cut was no longer the secret, and its first half went out.
    proxy = make_proxy(token=claudeproxy.static_token(PLAIN_KEY), retries=0)
    for cut_at in (2000, 500):  # an error object's message; a body that is only text
        text = "A" * (cut_at - 15) + " is " + PLAIN_KEY
        fake_upstream.push(json_reply({"error": {"message": text}}, status=400) if cut_at == 2000 else
                           Reply(400, (("Content-Type", "text/plain"),), [text.encode()]))
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), client_headers())
        assert "AAAA is ***" in assert_error(resp, 400, "invalid_request_error")
        _no_key_in(resp, PLAIN_KEY)


def test_a_header_value_is_quoted_whole_or_not_at_all() -> None:
    from claudeproxy import upstream

    for value in (PLAIN_KEY, "x" * 60):
        with pytest.raises(Exception) as raised:
            upstream._content_length([value])
        message = str(raised.value)
        assert (repr(value) in message) if len(value) <= 40 else ("60 characters" in message and "x" * 20 not in message)


@pytest.mark.parametrize("encoding, charset", [("utf-16", "; charset=utf-16"), ("utf-16-le", ""),
                                               ("utf-16-be", "; charset=UTF-16BE"), ("utf-32", "")])
def test_an_error_body_in_utf16_is_read_as_text_and_masked(make_proxy: Any, fake_upstream: Any, encoding: str,
                                                           charset: str) -> None:
    proxy = make_proxy(token=claudeproxy.static_token(PLAIN_KEY), retries=0)
    body = json.dumps({"error": {"message": f"invalid key {PLAIN_KEY}"}}).encode(encoding)
    fake_upstream.push(Reply(401, (("Content-Type", "application/json" + charset),), [body]))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), client_headers())
    message = assert_error(resp, 401, "authentication_error")
    assert "invalid key ***" in message, message
    _no_key_in(resp, PLAIN_KEY)


@pytest.mark.parametrize("charset", ["undefined", "idna", "no-such-charset", "utf-16"])
def test_a_charset_that_cannot_read_the_body_leaves_the_error_as_it_was(make_proxy: Any, fake_upstream: Any,
                                                                        charset: str) -> None:
    # "undefined" and "idna" are codecs that refuse to decode (a 500 and a traceback); a UTF-8 body
    # labelled UTF-16 is read as the UTF-8 it is.
    proxy = make_proxy(token=claudeproxy.static_token(PLAIN_KEY), retries=0)
    body = json.dumps({"error": {"message": f"slow down, {PLAIN_KEY}"}}).encode()
    fake_upstream.push(Reply(429, (("Content-Type", f"application/json; charset={charset}"),), [body]))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), client_headers())
    assert "slow down, ***" in assert_error(resp, 429, "rate_limit_error")


def test_a_url_encoded_key_is_masked() -> None:
    from claudeproxy.redact import redact_text

    key = "Ab+cd/EF=gh12345678zz"
    # as urllib.parse.quote writes it ("/" kept, and not), with the hex in lower case, and a request line's
    echoed = "Bearer%20Ab%2Bcd/EF%3Dgh12345678zz, Ab%2Bcd%2FEF%3Dgh12345678zz, Ab%2bcd%2fEF%3dgh12345678zz, " \
             "GET /v1?key=Ab%2Bcd%2FEF%3Dgh12345678zz"
    masked = redact_text(echoed, (key,))
    assert "gh12345678zz" not in masked and masked.count("***") == 4, masked


def test_a_listed_model_holding_the_key_is_left_out(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    fake_upstream.push(json_reply({"data": [{"type": "model", "id": "claude-a"}, {"type": "model", "id": FORWARDED},
                                            {"type": "model", "id": "claude-b", "display_name": f"B {FORWARDED}"}],
                                   "has_more": False}))
    resp = request(proxy.url, "GET", "/v1/models", headers={"x-api-key": FORWARDED})
    assert resp.status == 200 and [m["id"] for m in resp.json["data"]] == ["claude-a"]
    # A short key (a local server's placeholder) is no name's part worth hiding: test-model stays.
    fake_upstream.push(json_reply({"data": [{"type": "model", "id": "test-model"}], "has_more": False}))
    resp = request(proxy.url, "GET", "/v1/models", headers={"x-api-key": "test"})
    assert resp.status == 200 and [m["id"] for m in resp.json["data"]] == ["test-model"]


def test_an_unknown_passthrough_event_holding_the_key_goes_nowhere(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = make_proxy(passthrough=True, token=claudeproxy.static_token(""))
    start = {"type": "message_start", "message": {**ANTHROPIC_ANSWER, "content": [], "stop_reason": None}}
    fake_upstream.push(sse_reply(start, {"type": FORWARDED}, {"type": "server_note", "note": f"key {FORWARDED}"},
                                 {"type": "server_note", "note": "kept"},
                                 {"type": "server_note", "note": "sk-lookalike-0123456789 is no key of this call"},
                                 {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": 1}},
                                 {"type": "message_stop"}, done=False))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(stream=True), {"x-api-key": FORWARDED})
    assert resp.status == 200 and "event: message_stop" in resp.body.decode()
    assert '"note": "kept"' in resp.body.decode() or '"note":"kept"' in resp.body.decode()
    assert "sk-lookalike-0123456789" in resp.body.decode()  # only the call's own secrets take an event out
    _no_key_in(resp, FORWARDED)


# ---------------------------------------------------------------------------
# 9. Outbound proxy only when asked for (S8).


def _clear_proxy_env(monkeypatch: Any) -> None:
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_outbound_proxy_is_used_when_set(make_proxy: Any, fake_upstream: Any, second_fake: FakeUpstream,
                                         caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    second_fake.default = json_reply(completion("via proxy"))
    proxy_url = f"http://user:proxy-SECRET-pass@127.0.0.1:{second_fake.port}"
    proxy = make_proxy(proxy=proxy_url)
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request())
    assert resp.status == 200, resp
    assert resp.json["content"][0]["text"] == "via proxy"
    assert fake_upstream.requests == []
    seen = second_fake.last
    assert seen.path == f"http://127.0.0.1:{fake_upstream.port}/v1/chat/completions"  # absolute-URI form
    expected = base64.b64encode(b"user:proxy-SECRET-pass").decode()
    assert seen.headers["proxy-authorization"] == f"Basic {expected}"
    assert not [r for r in caplog.records if "proxy-SECRET-pass" in r.getMessage() or expected in r.getMessage()]


def test_environment_proxy_is_ignored_without_the_flag(make_proxy: Any, fake_upstream: Any,
                                                       second_fake: FakeUpstream, monkeypatch: Any) -> None:
    _clear_proxy_env(monkeypatch)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{second_fake.port}")
    proxy = make_proxy()
    assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 200
    assert len(fake_upstream.requests) == 1 and second_fake.requests == []


def test_environment_proxy_is_used_with_use_env_proxy(make_proxy: Any, fake_upstream: Any,
                                                      second_fake: FakeUpstream, monkeypatch: Any) -> None:
    # The control for the test above: the same environment does route through the proxy when allowed.
    _clear_proxy_env(monkeypatch)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{second_fake.port}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{second_fake.port}")
    proxy = make_proxy(use_env_proxy=True)
    assert request(proxy.url, "POST", "/v1/messages", minimal_request()).status == 200
    assert fake_upstream.requests == [] and len(second_fake.requests) == 1


# ---------------------------------------------------------------------------
# 8. TLS to the upstream: verified by default, --ca-bundle for a private CA.


class _TLSHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.hits += 1  # type: ignore[attr-defined]
        body = json.dumps(completion("over tls")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    hits = 0

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _TLSHandler)
        self.context = context

    def get_request(self) -> Any:
        sock, addr = super().get_request()
        sock.settimeout(5)
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the refused handshake is the expected outcome of one test


@pytest.fixture
def tls_upstream(tmp_path: Any) -> Iterator[Tuple[str, str]]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = _TLSServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/v1", cert
    server.shutdown()
    server.server_close()


def test_tls_upstream_with_an_unknown_ca_is_502(make_proxy: Any, tls_upstream: Tuple[str, str],
                                               monkeypatch: Any) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    proxy = make_proxy(upstream=tls_upstream[0], connect_timeout=5)
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request())
    assert_error(resp, 502, "api_error", "CERTIFICATE")


def test_tls_upstream_with_ca_bundle_works(make_proxy: Any, tls_upstream: Tuple[str, str]) -> None:
    proxy = make_proxy(upstream=tls_upstream[0], ca_bundle=tls_upstream[1], connect_timeout=5)
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request())
    assert resp.status == 200, resp
    assert resp.json["content"][0]["text"] == "over tls"



@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_openssls_ca_variables_are_honoured_without_ca_bundle(make_proxy: Any, tls_upstream: Tuple[str, str],
                                                              monkeypatch: Any, tmp_path: Any, variable: str) -> None:
    """README (--ca-bundle): without it, SSL_CERT_FILE or SSL_CERT_DIR stand in for the system's CA
    file and folder (a corporate CA given the usual way)."""
    cert = tls_upstream[1]
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    if variable == "SSL_CERT_FILE":
        monkeypatch.setenv(variable, cert)
    else:  # a folder as `openssl rehash` leaves it: the certificate under its subject hash
        digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", cert], check=True,
                                capture_output=True, text=True, timeout=60).stdout.strip()
        shutil.copy(cert, str(tmp_path / f"{digest}.0"))
        monkeypatch.setenv(variable, str(tmp_path))
    proxy = make_proxy(upstream=tls_upstream[0], connect_timeout=5)
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request())
    assert resp.status == 200, resp
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        row = [line for line in fh if line.startswith("| `--ca-bundle PATH` |")]
    assert len(row) == 1 and f"`{variable}`" in row[0], row
