"""The upstream client: URLs, proxies, credentials, timeouts (RELIABILITY.md S7, S8, S14; case 75)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, Dict, List

import pytest

import claudeproxy
from claudeproxy.config import Config
from claudeproxy.errors import ProxyError
from claudeproxy.dialects import auth_header
from claudeproxy.upstream import Upstream, UpstreamCall
from claudeproxy.urls import chat_url, join_path, models_url
from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request, request
from fakes import FakeUpstream, Reply, completion, json_reply

HEADERS = {"x-api-key": CLIENT_KEY}

# ---------------------------------------------------------------------------
# URL building.


@pytest.mark.parametrize("base,expected", [
    ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
    ("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
    ("https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1/chat/completions"),
    ("https://api.openai.com/v1/chat/completions/", "https://api.openai.com/v1/chat/completions"),
    ("http://localhost:11434/v1", "http://localhost:11434/v1/chat/completions"),
    ("https://gw.example/v1?key=abc&x=1", "https://gw.example/v1/chat/completions?key=abc&x=1"),
    ("https://generativelanguage.googleapis.com/v1beta/openai",
     "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"),
])
def test_chat_url_appends_chat_completions_once_and_keeps_the_query(base, expected):
    assert chat_url(base, "gpt-4o") == expected


@pytest.mark.parametrize("base,expected", [
    ("https://r.openai.azure.com",
     "https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
    ("https://r.openai.azure.com/",
     "https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
    ("https://r.openai.azure.com/openai/deployments/prod-dep",
     "https://r.openai.azure.com/openai/deployments/prod-dep/chat/completions?api-version=2024-10-21"),
    ("https://r.openai.azure.com/openai/deployments/prod-dep/chat/completions?api-version=2025-01-01",
     "https://r.openai.azure.com/openai/deployments/prod-dep/chat/completions?api-version=2025-01-01"),
    ("https://r.openai.azure.com/openai/v1", "https://r.openai.azure.com/openai/v1/chat/completions"),
])
def test_azure_chat_url(base, expected):
    """Case 75: the deployment goes in the path, api-version in the query (an existing one wins)."""
    assert chat_url(base, "gpt-4o", "2024-10-21") == expected


def test_azure_deployment_name_is_quoted():
    url = chat_url("https://r.openai.azure.com", "my dep/1", "2024-10-21")
    assert "/openai/deployments/my%20dep%2F1/chat/completions?" in url


def test_a_deployment_of_dots_is_refused_not_sent_up_the_path(make_proxy, fake_upstream):
    """A client's model ".." (no --model) would send the keyed request to /openai/chat/completions
    wherever the path is normalised: a 400 that names the model, and nothing upstream."""
    proxy = make_proxy(upstream=f"http://127.0.0.1:{fake_upstream.port}", provider="azure")
    for name in ("..", ".", "..."):
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(model=name), HEADERS)
        assert resp.status == 400, resp
        assert resp.json["error"] == {"type": "invalid_request_error",
                                      "message": f"model: {name!r} is not an Azure deployment name"}
    assert fake_upstream.requests == []
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(model="v1.2"), HEADERS).status == 200
    assert fake_upstream.last.path.startswith("/openai/deployments/v1.2/chat/completions?")


@pytest.mark.parametrize("base,expected", [
    ("https://api.openai.com/v1", "https://api.openai.com/v1/models"),
    ("https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1/models"),
    ("https://gw.example/v1/?key=abc", "https://gw.example/v1/models?key=abc"),
])
def test_models_url(base, expected):
    assert models_url(base) == expected


def test_join_path_does_not_double_a_suffix():
    assert join_path("http://h/v1/models", "/models") == "http://h/v1/models"
    assert join_path("http://h/v1", "/models") == "http://h/v1/models"


@pytest.mark.parametrize("base, suffix, expected", [
    ("http://h/v1/chat/completions", "/responses", "http://h/v1/responses"),
    ("http://h/v1/responses/", "/chat/completions", "http://h/v1/chat/completions"),
    ("http://h/v1/responses?key=k", "/responses", "http://h/v1/responses?key=k"),
])
def test_a_base_pasted_with_one_apis_endpoint_serves_the_other_api_too(base, suffix, expected):
    """A Responses-only model of a provider whose URL was pasted with /chat/completions went to
    /v1/chat/completions/responses, which no server has (probe Z, D8)."""
    assert join_path(base, suffix) == expected
    assert models_url(base) == "http://h/v1/models" + ("?key=k" if "key" in base else "")


# ---------------------------------------------------------------------------
# What reaches the upstream.


def test_upstream_request_headers(proxy, fake_upstream):
    """Case 74: the configured token once as Bearer, never the client's key; JSON in, JSON asked for."""
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(),
                   {**HEADERS, "Authorization": f"Bearer {CLIENT_KEY}", "Cookie": "a=b", "api-key": CLIENT_KEY})
    assert resp.status == 200, resp
    sent = fake_upstream.last
    assert sent.path == "/v1/chat/completions"
    assert [v for k, v in sent.raw_headers if k.lower() == "authorization"] == [f"Bearer {UPSTREAM_KEY}"]
    assert "x-api-key" not in sent.headers and "cookie" not in sent.headers and "api-key" not in sent.headers
    assert CLIENT_KEY not in repr(sent.raw_headers) + sent.body.decode("utf-8")
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["user-agent"].startswith("claudeproxy/")


def test_no_token_means_no_auth_header(make_proxy, fake_upstream):
    proxy = make_proxy(token=claudeproxy.static_token(""))
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS).status == 200
    assert "authorization" not in fake_upstream.last.headers and "api-key" not in fake_upstream.last.headers


@pytest.mark.parametrize("token, said", [
    (lambda: (_ for _ in ()).throw(RuntimeError("vault said: sk-live-SECRET-0123456789")), "failed (RuntimeError)"),
    (lambda: "sk-abc\r\nX-Injected: 1", "gave a key no HTTP header can carry"),
    (lambda: 42, "gave a int, not a string"),
], ids=["raises", "line-break", "not-a-string"])
def test_a_library_key_source_that_fails_is_a_502_naming_it(make_proxy, fake_upstream, caplog, token, said):
    """start(token=f): f raising was a 500 with its text (which may hold the key) in the log; a key
    with a line break was "could not reach the upstream". Nothing reaches the upstream."""
    proxy = make_proxy(token=token)
    with caplog.at_level("DEBUG", logger="claudeproxy"):
        resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS)
    assert resp.status == 502 and resp.json["error"]["type"] == "api_error", resp
    assert resp.json["error"]["message"].startswith("the key source of provider ") and said in resp.json["error"]["message"]
    assert fake_upstream.requests == []
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "SECRET" not in logged + resp.body.decode() and "Traceback" not in logged


def test_a_library_key_source_that_gives_none_sends_no_key(make_proxy, fake_upstream):
    proxy = make_proxy(token=lambda: None)
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS).status == 200
    assert "authorization" not in fake_upstream.last.headers


def test_extra_headers_are_sent(make_proxy, fake_upstream):
    proxy = make_proxy(headers=(("HTTP-Referer", "https://example.org"), ("X-Title", "claudeproxy tests")))
    request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS)
    assert fake_upstream.last.headers["http-referer"] == "https://example.org"
    assert fake_upstream.last.headers["x-title"] == "claudeproxy tests"


def test_azure_request_through_the_proxy(make_proxy, fake_upstream):
    """Case 75 end to end: deployment path, api-version query, api-key header instead of Bearer."""
    base = f"http://127.0.0.1:{fake_upstream.port}"
    proxy = make_proxy(upstream=base, provider="azure", model="prod-dep", azure_api_version="2024-10-21")
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS)
    assert resp.status == 200, resp
    sent = fake_upstream.last
    assert sent.path == "/openai/deployments/prod-dep/chat/completions?api-version=2024-10-21"
    assert [v for k, v in sent.raw_headers if k.lower() == "api-key"] == [UPSTREAM_KEY]
    assert "authorization" not in sent.headers


def test_azure_o_series_deployment_gets_an_api_version_it_accepts(make_proxy, fake_upstream):
    """Azure answers 400 to an o3 deployment called with the GA default 2024-10-21."""
    base = f"http://127.0.0.1:{fake_upstream.port}"
    proxy = make_proxy(upstream=base, provider="azure", model="o3")
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS).status == 200
    assert fake_upstream.last.path == "/openai/deployments/o3/chat/completions?api-version=2025-04-01-preview"


# ---------------------------------------------------------------------------
# Outbound proxies (S8).


@pytest.fixture
def env_proxy(monkeypatch) -> Any:
    """A second fake playing an HTTP proxy, named in every proxy variable of the environment."""
    fake = FakeUpstream()
    url = f"http://127.0.0.1:{fake.port}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    yield fake
    fake.close()


def test_environment_proxy_is_ignored_by_default(make_proxy, fake_upstream, env_proxy):
    proxy = make_proxy()
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS).status == 200
    assert len(fake_upstream.requests) == 1
    assert env_proxy.requests == []


def test_environment_proxy_is_used_when_asked(make_proxy, fake_upstream, env_proxy):
    proxy = make_proxy(use_env_proxy=True)
    assert request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS).status == 200
    assert fake_upstream.requests == []
    assert env_proxy.last.path == f"{fake_upstream.url}/chat/completions"  # absolute URI: a proxy request


def test_configured_proxy_is_used(make_proxy, fake_upstream):
    outbound = FakeUpstream()
    try:
        proxy = make_proxy(proxy=f"http://127.0.0.1:{outbound.port}")
        assert request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS).status == 200
        assert fake_upstream.requests == []
        assert outbound.last.path == f"{fake_upstream.url}/chat/completions"
        assert outbound.last.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    finally:
        outbound.close()


# ---------------------------------------------------------------------------
# Credentials never follow a redirect (S7).


class _Capture:
    """An opener stand-in that keeps the Request ``Upstream.open`` built."""

    def __init__(self) -> None:
        self.requests: List[urllib.request.Request] = []

    def open(self, req: urllib.request.Request, timeout: float) -> Any:
        self.requests.append(req)
        return OPENED


class _Opened:
    """What an opener returns: a response (plain here: no Content-Encoding), not read by these tests."""

    headers: Dict[str, str] = {}

    def close(self) -> None:
        pass


OPENED = _Opened()


@pytest.mark.parametrize("style,header", [("bearer", "Authorization"), ("api-key", "Api-key"),
                                          ("x-api-key", "X-api-key")])
def test_credentials_are_unredirected_headers(style, header):
    upstream = Upstream(Config())
    capture = _Capture()
    upstream.opener = capture  # type: ignore[assignment]
    assert upstream.open("http://127.0.0.1:9/v1/chat/completions", call=UpstreamCall(), body=b"{}",
                         auth=auth_header(style, UPSTREAM_KEY)) is OPENED
    req = capture.requests[0]
    assert UPSTREAM_KEY in req.unredirected_hdrs[header]
    assert header not in req.headers
    # What urllib's own redirect handler would send to a redirect target: no credential.
    follow = urllib.request.HTTPRedirectHandler().redirect_request(
        req, None, 302, "Found", {}, "http://127.0.0.1:10/elsewhere")
    assert follow is not None
    assert UPSTREAM_KEY not in repr(follow.headers) + repr(follow.unredirected_hdrs)


# ---------------------------------------------------------------------------
# Connect vs read timeouts (S14).


def test_short_connect_timeout_does_not_limit_a_slow_first_byte(make_proxy, fake_upstream):
    """The connect timeout covers the TCP handshake only; waiting for the answer uses the idle timeout."""
    proxy = make_proxy(connect_timeout=0.2, idle_timeout=5)
    body = json_reply(completion("worth the wait")).body
    fake_upstream.push(Reply(200, (("Content-Type", "application/json"),), body, delay=0.7))
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS)
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "worth the wait"}]


def test_transport_errors_do_not_leak_the_key(make_proxy, refused_port):
    proxy = make_proxy(upstream=f"http://127.0.0.1:{refused_port}/v1?key={UPSTREAM_KEY}")
    resp = request(proxy.url, "POST", "/v1/messages", minimal_request(), HEADERS)
    assert resp.status == 502
    assert UPSTREAM_KEY not in resp.body.decode("utf-8")


def test_http_error_from_open_carries_the_status():
    """``Upstream.open`` turns an HTTPError into the mapped ProxyError (PROTOCOL.md 4.2)."""
    fake = FakeUpstream()
    try:
        fake.push(json_reply({"error": {"message": "nope"}}, status=403))
        upstream = Upstream(Config())
        with pytest.raises(ProxyError) as info:
            upstream.open(fake.url + "/chat/completions", call=UpstreamCall(), body=b"{}")
        assert info.value.status == 403 and info.value.error_type == "permission_error"
        assert "nope" in info.value.message
        assert not isinstance(info.value, urllib.error.HTTPError)
    finally:
        fake.close()


class _RecordingBody:
    """A response body that records every read() size (Python < 3.10 allocates all of it first)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: List[int] = []
        self.headers = {"Content-Type": "application/json"}
        self.length = len(data)
        self.chunked = False

    def read(self, amt: int = -1) -> bytes:
        self.asked.append(amt)
        out, self.data = self.data[:amt], self.data[amt:]
        self.length -= len(out)
        return out


@pytest.mark.parametrize("size", [100, 600 * 1024])
def test_json_answer_is_read_in_slices_not_one_read_of_the_cap(size):
    """Found by the C2 keep-alive figure on 3.8: read(64 MiB + 1) allocated 64 MiB for every JSON answer
    (40 ms each); now no single read asks for more than 256 KiB."""
    import json as _json

    from claudeproxy.upstream import read_json_body

    body = _RecordingBody(_json.dumps({"pad": "x" * size}).encode())
    assert read_json_body(body, UpstreamCall(), 64 * 1024 * 1024)["pad"] == "x" * size
    assert max(body.asked) <= 256 * 1024, body.asked


def test_json_answer_over_the_cap_is_still_refused():
    from claudeproxy.upstream import read_json_body

    body = _RecordingBody(b"[" + b"1," * 600 * 1024 + b"1]")
    with pytest.raises(ProxyError, match="larger than"):
        read_json_body(body, UpstreamCall(), 1024 * 1024)


@pytest.mark.parametrize("keep_alive", [False, True])
def test_meanwhile_runs_while_the_upstream_holds_its_answer(keep_alive):
    """The caller's own work (the prompt's token estimate) runs once the request is sent, before
    the answer is awaited: an upstream that answers only after it ran is not a deadlock. It runs
    once per call, also on a pooled connection."""
    import threading

    ran = threading.Event()
    waited: List[bool] = []

    def responder(rec: Any) -> Reply:
        waited.append(ran.wait(5))  # the request is in: the proxy must not be waiting for the answer yet
        return json_reply(completion())

    fake = FakeUpstream(keep_alive=keep_alive, responder=responder)
    upstream = Upstream(Config())
    try:
        for _ in range(2):  # the second over the kept-alive connection, when there is one
            ran.clear()
            call = UpstreamCall()
            runs: List[int] = []
            call.meanwhile = lambda: (runs.append(1), ran.set())
            with upstream.open(fake.url + "/chat/completions", call=call, body=b"{}") as resp:
                assert resp.status == 200 and b"Hello" in resp.read()
            assert runs == [1] and call.meanwhile is None
        assert waited == [True, True]
        assert fake.connections == (1 if keep_alive else 2)
    finally:
        upstream.close()
        fake.close()


def test_the_date_header_is_formatted_once_a_second(monkeypatch):
    """Every answer carries an IMF-fixdate Date (RFC 9110 6.6.1); the server formats it once per second."""
    import email.utils
    from claudeproxy import server as server_module

    now = [1_700_000_000.2]
    monkeypatch.setattr(server_module.time, "time", lambda: now[0])
    date = server_module.HttpDate()
    first = date()
    assert first == "Tue, 14 Nov 2023 22:13:20 GMT" == email.utils.formatdate(1_700_000_000, usegmt=True)
    now[0] += 0.7
    assert date() is first  # the same second: the string already made
    now[0] += 0.2
    assert date() == "Tue, 14 Nov 2023 22:13:21 GMT"


def test_answers_carry_the_current_date(proxy):
    import email.utils
    import time

    answer = request(proxy.url, "POST", "/v1/messages", minimal_request(), headers=HEADERS)
    assert answer.status == 200
    sent = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp()
    assert abs(sent - time.time()) < 5
