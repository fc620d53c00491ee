"""The outbound HTTP proxy (--proxy, --use-env-proxy): which one, when, and whose failure it is.

- An explicit proxy is used for every upstream: NO_PROXY in the environment is read only
  with --use-env-proxy.
- Credentials in the proxy URL are its only way in: accepted everywhere, shown nowhere.
- Only http:// proxies: https:// would send the CONNECT (credentials too) in clear text, socks5://
  is not spoken at all; refused at start, naming the flag, the file's key or the variable.
- A failure of the proxy names the proxy; its 407 is the proxy's refusal (502, no retry), never a
  407 to the client, whose own proxy that status would be about.
- A failure that comes back every time (a refused certificate, no TLS where TLS is due, an answer
  that is no HTTP) is said as such and not retried, through the proxy as direct.

All traffic on 127.0.0.1; every wait has a timeout.
"""

from __future__ import annotations

import base64
import io
import json
import select
import socket
import ssl
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import claudeproxy
from claudeproxy import cli
from conftest import CLIENT_KEY, UPSTREAM_KEY, minimal_request, request
from fakes import ConnectProxy, FakeUpstream, LoopbackListener, Reply, closing_listener, completion, json_reply

HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
PASSWORD = "proxy-PASS-4711"
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                   "no_proxy", "NO_PROXY", "REQUEST_METHOD")
# Names only the proxy could resolve: a call that went direct would fail on DNS instead.
NAMED_UPSTREAM = {"http": "http://api.example.test/v1", "https": "https://api.example.test/v1"}


class StatusProxy(LoopbackListener):
    """An outbound proxy on 127.0.0.1 that answers every request, CONNECT too, with one status."""

    def __init__(self, status: str, body: bytes = b"") -> None:
        self.answer = (f"HTTP/1.1 {status}\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii") + body
        self.heads: List[str] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            head, body = data.split(b"\r\n\r\n", 1)
            length = _content_length(head)
            while len(body) < length:  # read the whole request: closing on unread bytes would reset
                piece = conn.recv(65536)
                if not piece:
                    return
                body += piece
            with self._lock:
                self.heads.append(head.decode("latin-1"))
            conn.sendall(self.answer)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1024)  # until the client closes (or the timeout)
        except OSError:
            pass

    def seen(self) -> List[str]:
        with self._lock:
            return list(self.heads)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


@pytest.fixture
def clean_env(monkeypatch: Any) -> Any:
    """No proxy variable from the machine running the tests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def refusing() -> Iterator[Any]:
    made: List[StatusProxy] = []

    def make(status: str, body: bytes = b"") -> StatusProxy:
        made.append(StatusProxy(status, body))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def send(server: Any, stream: bool = False) -> Any:
    return request(server.url, "POST", "/v1/messages", minimal_request(stream=stream), HEADERS, timeout=10)


def error_of(resp: Any) -> Dict[str, Any]:
    body = resp.json
    assert body["type"] == "error", body
    return body["error"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# D2: NO_PROXY does not turn an explicit proxy off.


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*"])
def test_no_proxy_in_the_environment_leaves_an_explicit_proxy_alone(make_proxy: Any, fake_upstream: FakeUpstream,
                                                                    clean_env: Any, no_proxy: str) -> None:
    clean_env.setenv("NO_PROXY", no_proxy)
    clean_env.setenv("no_proxy", no_proxy)
    outbound = FakeUpstream()
    try:
        outbound.default = json_reply(completion("via proxy"))
        server = make_proxy(proxy=f"http://127.0.0.1:{outbound.port}")
        resp = send(server)
        assert resp.status == 200, resp
        assert fake_upstream.requests == [] and len(outbound.requests) == 1
    finally:
        outbound.close()


def test_no_proxy_leaves_an_explicit_proxy_alone_for_https_upstreams(make_proxy: Any, clean_env: Any,
                                                                     refusing: Any, refused_port: int) -> None:
    # The CONNECT reaching the proxy (which refuses it) shows the call did not go direct.
    clean_env.setenv("NO_PROXY", "*")
    outbound = refusing("403 Forbidden")
    server = make_proxy(upstream=f"https://127.0.0.1:{refused_port}/v1", proxy=f"http://127.0.0.1:{outbound.port}",
                        use_env_proxy=True)  # --proxy wins: the environment is not read at all
    resp = send(server)
    assert resp.status == 502, resp
    assert [h.split(" HTTP/")[0] for h in outbound.seen()] == [f"CONNECT 127.0.0.1:{refused_port}"]  # 1.0 or 1.1 (3.12+)


@pytest.mark.parametrize("no_proxy,direct", [
    ("127.0.0.1", True),
    ("127.0.0.0/8", True),  # a range, as curl, Go and requests take it (urllib alone never matched one)
    ("10.0.0.0/8, 127.0.0.1/32", True),
    ("10.0.0.0/8,::1/128", False),  # ranges the upstream is outside of: through the proxy
    ("corp.example 127.0.0.1", True),  # separated by a blank
])
def test_no_proxy_still_applies_to_the_environments_proxy(make_proxy: Any, fake_upstream: FakeUpstream,
                                                          clean_env: Any, no_proxy: str, direct: bool) -> None:
    outbound = FakeUpstream()
    try:
        outbound.default = json_reply(completion("via proxy"))
        clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{outbound.port}")
        clean_env.setenv("NO_PROXY", no_proxy)
        server = make_proxy(use_env_proxy=True)
        assert send(server).status == 200
        if direct:
            assert len(fake_upstream.requests) == 1 and outbound.requests == []
        else:
            assert fake_upstream.requests == [] and len(outbound.requests) == 1
    finally:
        outbound.close()


@pytest.mark.parametrize("host,no_proxy,bypassed", [
    ("10.1.2.3:8000", "10.0.0.0/8", True),
    ("10.1.2.3", "192.168.0.0/16, 10.1.0.0/16", True),
    ("10.1.2.3", "10.0.0.0/16", False),
    ("[fd00::5]:443", "fd00::/8", True),
    ("[::1]:443", "127.0.0.0/8", False),  # another address family
    ("llm.corp.example", "10.0.0.0/8", False),  # a name is not looked up to match a range
    ("llm.corp.example", "corp.example", True),  # urllib's own suffix match stays
    ("10.1.2.3", "not/a-range,10.1.2.3", True),
])
def test_no_proxy_address_ranges(host: str, no_proxy: str, bypassed: bool) -> None:
    from claudeproxy.upstream import bypasses_proxy

    assert bypasses_proxy(host, no_proxy) is bypassed


@pytest.mark.parametrize("host,no_proxy,bypassed", [
    # Entries separated by blanks, as curl reads them (Claude Code's docs write NO_PROXY that way).
    ("api.corp.test", "foo api.corp.test", True),
    ("127.0.0.1:8080", "localhost 127.0.0.1", True),
    ("api.corp.test", "foo,\tbar  api.corp.test ,", True),
    # A bare IPv6 address, with or without brackets, for an IPv6 literal upstream.
    ("[::1]:8443", "::1", True),
    ("[::1]:8443", "localhost,[::1]", True),
    ("[::1]:8443", "[::1]:8443", True),
    ("[::1]:8443", "[::1]:9999", False),
    ("[::1]", "0:0:0:0:0:0:0:1", True),  # compared as addresses, not as text
    ("[::2]:8443", "::1", False),
    # A trailing dot (the fully qualified form) on either side.
    ("api.corp.test", "api.corp.test.", True),
    ("api.corp.test.:443", "corp.test", True),
    # What stays as before: suffixes on a dot boundary, ports, case.
    ("api.corp.test", "orp.test", False),
    ("api.corp.test", "*", True),
    # A leading "*." is a domain suffix, as ".corp.test" (Go, Node's proxy-from-env); "*" elsewhere
    # is no wildcard.
    ("api.corp.test", "*.corp.test", True),
    ("API.Corp.Test:8443", "*.CORP.test:8443", True),
    ("api.corp.test", "*.corp.test:8443", False),
    ("corp.test", "*.corp.test", True),  # as ".corp.test" matches it (curl)
    ("xcorp.test", "*.corp.test", False),
    ("api.corp.test", "*corp.test", False),
    ("api.corp.test", "api.*.test", False),
    ("api.corp.test", "*.", False),
    ("10.1.2.3", "*.2.3", False),  # an address is no name
    ("API.Corp.Test:8443", ".CORP.test:8443", True),
    ("api.corp.test:8443", "api.corp.test:443", False),
    ("api.corp.test", "api.corp.test:8443", False),
    ("10.1.2.3", "2.3", False),  # an address is no name: no suffix match
    ("localhost:11434", "127.0.0.1", False),  # nor a name an address (no lookup)
])
def test_no_proxy_is_read_as_curl_reads_it(host: str, no_proxy: str, bypassed: bool) -> None:
    from claudeproxy.upstream import bypasses_proxy

    assert bypasses_proxy(host, no_proxy, 443) is bypassed


@pytest.mark.parametrize("scheme,no_proxy,bypassed", [
    ("https", "api.example.test:443", True),  # an entry's port against the URL's default one
    ("http", "api.example.test:80", True),
    ("https", "api.example.test:80", False),
])
def test_a_no_proxy_port_is_matched_against_the_urls_default_port(make_proxy: Any, clean_env: Any, refusing: Any,
                                                                  scheme: str, no_proxy: str, bypassed: bool) -> None:
    outbound = refusing("403 Forbidden")
    clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{outbound.port}")
    clean_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{outbound.port}")
    clean_env.setenv("NO_PROXY", no_proxy)
    server = make_proxy(upstream=NAMED_UPSTREAM[scheme], use_env_proxy=True)
    message = error_of(send(server))["message"]
    assert (outbound.seen() == []) is bypassed, message  # direct: a name no one resolves


def test_schemeless_environment_proxy_with_credentials_is_http(make_proxy: Any, fake_upstream: FakeUpstream,
                                                               clean_env: Any) -> None:
    outbound = FakeUpstream()
    try:
        outbound.default = json_reply(completion("via proxy"))
        clean_env.setenv("http_proxy", f"bob:{PASSWORD}@127.0.0.1:{outbound.port}")
        server = make_proxy(use_env_proxy=True)
        assert send(server).status == 200
        expected = base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
        assert outbound.last.headers["proxy-authorization"] == f"Basic {expected}"
        assert fake_upstream.requests == []
    finally:
        outbound.close()


# ---------------------------------------------------------------------------
# D1, D3: the proxy URL at start.


def run_main(argv: List[str], environ: Optional[Dict[str, str]] = None,
             files: Tuple[Tuple[str, Any], ...] = ()) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    base = ["--upstream", "http://127.0.0.1:9/v1", "--model", "m", "--print-config"]
    code = cli.main(base + argv, environ=environ or {}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def one_error_line(code: int, out: str, err: str, *parts: str) -> str:
    assert code == 2, (code, out, err)
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("claudeproxy: error: "), err
    for part in parts:
        assert part in err, err
    assert PASSWORD not in err
    return err


def write_config(tmp_path: Any, obj: Any) -> str:
    path = tmp_path / "claudeproxy.json"
    path.write_text(json.dumps(obj))
    return str(path)


def test_credentials_in_the_proxy_flag_are_accepted_and_masked() -> None:
    code, out, err = run_main(["--proxy", f"http://bob:{PASSWORD}@127.0.0.1:3128"])
    assert code == 0, err
    assert json.loads(out)["settings"]["proxy"] == "http://***@127.0.0.1:3128"
    assert PASSWORD not in out + err


def test_credentials_in_the_config_files_proxy_are_accepted_and_masked(tmp_path: Any) -> None:
    path = write_config(tmp_path, {"proxy": f"http://bob:{PASSWORD}@127.0.0.1:3128"})
    code, out, err = run_main(["--config", path])
    assert code == 0, err
    assert json.loads(out)["settings"]["proxy"] == "http://***@127.0.0.1:3128"
    assert PASSWORD not in out + err


@pytest.mark.parametrize("url", [f"https://bob:{PASSWORD}@127.0.0.1:3128", "socks5://127.0.0.1:1080",
                                 "socks5h://127.0.0.1:1080"])
def test_only_http_proxies_are_accepted_by_the_flag(url: str) -> None:
    one_error_line(*run_main(["--proxy", url]), "--proxy: only http:// proxies are supported")


@pytest.mark.parametrize("url", ["127.0.0.1:3128", f"bob:{PASSWORD}@127.0.0.1:3128"])
def test_a_proxy_url_without_a_scheme_is_said_so_and_shows_no_password(url: str, tmp_path: Any) -> None:
    # urlsplit reads "bob" as the scheme of bob:PASSWORD@host: there was no netloc to mask.
    said = "the proxy URL has no scheme (got '"
    one_error_line(*run_main(["--proxy", url]), f"--proxy: {said}", "): write http:// before it")
    path = write_config(tmp_path, {"proxy": url})
    one_error_line(*run_main(["--config", path]), f"--config {path}: proxy: {said}")
    with pytest.raises(ValueError, match=r"^--proxy: the proxy URL has no scheme") as caught:
        claudeproxy.start(upstream="http://127.0.0.1:9/v1", proxy=url)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("url", [f"http://bob:{PASSWORD}@127.0.0.1", "http://127.0.0.1:", "http://proxy.corp.test"])
def test_a_proxy_url_without_a_port_stops_the_start(url: str, tmp_path: Any) -> None:
    """urllib would take the upstream's default port: an https upstream's CONNECT, password and all,
    in clear text to the proxy host's port 443 (a probe); the same from the config file, the
    environment and a library caller."""
    said = "the proxy URL has no port (got '"
    one_error_line(*run_main(["--proxy", url]), f"--proxy: {said}", "as in http://proxy.corp.example:3128")
    path = write_config(tmp_path, {"proxy": url})
    one_error_line(*run_main(["--config", path]), f"--config {path}: proxy: {said}")
    one_error_line(*run_main(["--use-env-proxy"], {"HTTPS_PROXY": url}), said)
    # HTTP_PROXY serves http upstreams alone: port 80, as urllib reads it (a review).
    assert run_main(["--use-env-proxy"], {"HTTP_PROXY": url})[0] == 0
    with pytest.raises(ValueError, match="the proxy URL has no port"):
        claudeproxy.start(upstream="http://127.0.0.1:9/v1", proxy=url)


@pytest.mark.parametrize("url,part", [
    (f"http://bob:{PASSWORD}/x@127.0.0.1:3128", "not a valid URL"),  # the password read as the port
    (f"http://bob:{PASSWORD}#x@127.0.0.1:3128", "not a valid URL"),
    (f"http:///bob:{PASSWORD}@127.0.0.1:3128", "the proxy URL has no host"),
    (f"http://bob:12/{PASSWORD}@127.0.0.1:3128", "an \"@\" after the proxy's host"),  # host bob, port 12
])
def test_a_malformed_proxy_url_shows_no_part_of_the_password(url: str, part: str) -> None:
    one_error_line(*run_main(["--proxy", url]), f"--proxy: {part}")  # and no password in the line
    one_error_line(*run_main(["--use-env-proxy"], {"HTTPS_PROXY": url}), f"HTTPS_PROXY: {part}")


def test_a_bad_proxy_in_the_config_file_names_the_files_key(tmp_path: Any) -> None:
    path = write_config(tmp_path, {"proxy": f"https://bob:{PASSWORD}@127.0.0.1:3128"})
    err = one_error_line(*run_main(["--config", path]), f"--config {path}: proxy: only http://")
    assert "--proxy" not in err


@pytest.mark.parametrize("name,value,part", [
    ("HTTPS_PROXY", f"socks5://bob:{PASSWORD}@127.0.0.1:1080", "only http://"),
    ("https_proxy", f"https://bob:{PASSWORD}@127.0.0.1:3128", "only http://"),
    ("HTTP_PROXY", "https://127.0.0.1:3128", "only http://"),
    ("HTTP_PROXY", f"http://bob:{PASSWORD}@127.0.0.1:notaport", "not a valid URL"),
])
def test_a_bad_environment_proxy_stops_the_start_naming_the_variable(name: str, value: str, part: str) -> None:
    one_error_line(*run_main(["--use-env-proxy"], {name: value}), f"{name}: ", part)


def test_environment_proxies_are_not_checked_without_use_env_proxy() -> None:
    code, _, err = run_main([], {"HTTPS_PROXY": "socks5://127.0.0.1:1080"})
    assert code == 0, err


def test_an_explicit_proxy_sets_the_environments_aside() -> None:
    code, _, err = run_main(["--use-env-proxy", "--proxy", "http://127.0.0.1:3128"],
                            {"HTTPS_PROXY": "socks5://127.0.0.1:1080"})
    assert code == 0, err


def test_start_refuses_a_proxy_that_is_not_http(clean_env: Any) -> None:
    with pytest.raises(ValueError, match=r"^--proxy: only http:// proxies") as caught:
        claudeproxy.start(upstream="http://127.0.0.1:9/v1", proxy=f"https://bob:{PASSWORD}@127.0.0.1:3128")
    assert PASSWORD not in str(caught.value)
    clean_env.setenv("HTTPS_PROXY", f"socks5://bob:{PASSWORD}@127.0.0.1:1080")
    with pytest.raises(ValueError, match=r"^HTTPS_PROXY: only http:// proxies") as caught:
        claudeproxy.start(upstream="http://127.0.0.1:9/v1", use_env_proxy=True)
    assert PASSWORD not in str(caught.value)


# ---------------------------------------------------------------------------
# D4, D5: the proxy's failures are the proxy's.


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("stream", [False, True])
def test_proxy_407_is_a_502_without_retry(make_proxy: Any, refusing: Any, scheme: str, stream: bool) -> None:
    outbound = refusing("407 Proxy Authentication Required")
    server = make_proxy(upstream=NAMED_UPSTREAM[scheme], proxy=f"http://bob:{PASSWORD}@127.0.0.1:{outbound.port}",
                        retries=2)
    resp = send(server, stream)
    assert resp.status == 502, resp
    error = error_of(resp)
    assert error["type"] == "api_error"
    assert error["message"].startswith(f"the outbound proxy at 127.0.0.1:{outbound.port} refused authentication")
    assert "the only kind claudeproxy sends: a proxy that takes only NTLM or Negotiate" in error["message"]
    assert resp.headers.get("x-should-retry") == "false"
    assert "proxy-authenticate" not in resp.headers
    assert len(outbound.seen()) == 1  # not retried: the same credentials would be refused again
    assert PASSWORD not in resp.body.decode()
    # The upstream never had the prompt: a call of 0 tokens at $0, not one whose cost is unknown.
    assert request(server.url, "GET", "/v1/usage").json["totals"]["unpriced_requests"] == 0


@pytest.mark.parametrize("userinfo,sent", [("bob@", "bob:"), ("bob:@", "bob:"), (":pw@", ":pw"), ("", None)])
def test_a_user_without_a_password_is_sent_as_curl_sends_it(make_proxy: Any, refusing: Any, userinfo: str,
                                                            sent: Any) -> None:
    """A user alone (or a password alone) went as no credentials at all, and the 407 then said to
    check them (a probe); curl sends the user with an empty password."""
    outbound = refusing("407 Proxy Authentication Required")
    server = make_proxy(upstream=NAMED_UPSTREAM["https"], proxy=f"http://{userinfo}127.0.0.1:{outbound.port}")
    assert send(server).status == 502
    [head] = outbound.heads
    auth = [line.split(":", 1)[1].strip() for line in head.split("\r\n")
            if line.lower().startswith("proxy-authorization:")]
    assert auth == ([] if sent is None else ["Basic " + base64.b64encode(sent.encode()).decode()])


@pytest.mark.parametrize("status,retry", [("403 Forbidden", "false"), ("502 Bad Gateway", "true"),
                                          ("302 Found", "false")])  # its login page: no retry (a probe)
def test_a_refused_tunnel_names_the_proxy_and_the_host(make_proxy: Any, refusing: Any, status: str,
                                                       retry: str) -> None:
    outbound = refusing(status)
    server = make_proxy(upstream=NAMED_UPSTREAM["https"], proxy=f"http://127.0.0.1:{outbound.port}")
    resp = send(server)
    assert resp.status == 502, resp
    assert error_of(resp)["message"] == (f"the outbound proxy at 127.0.0.1:{outbound.port} refused the tunnel "
                                         f"to api.example.test ({status})")
    assert resp.headers.get("x-should-retry") == retry


@pytest.mark.parametrize("status,retry", [("403 Forbidden", "false"), ("502 Bad Gateway", "true"),
                                          ("503 Service Unavailable", "true"), ("504 Gateway Timeout", "true"),
                                          ("302 Found", "false")])
@pytest.mark.parametrize("stream", [False, True])
def test_a_forwarding_proxys_own_answer_names_the_proxy_not_the_key(make_proxy: Any, refusing: Any, caplog: Any,
                                                                   status: str, retry: str, stream: bool) -> None:
    # An http:// upstream: the proxy forwards the request itself, and its refusal ("403 Blocked by
    # policy" in HTML) passed for the upstream's, blaming the API key.
    outbound = refusing(status, b"<html>\n<body>Blocked by  policy</body></html>")
    server = make_proxy(upstream=NAMED_UPSTREAM["http"], proxy=f"http://bob:{PASSWORD}@127.0.0.1:{outbound.port}",
                        retries=1)
    with caplog.at_level("WARNING", logger="claudeproxy"):
        resp = send(server, stream)
    assert resp.status == 502, resp
    error = error_of(resp)
    assert error["type"] == "api_error"
    assert error["message"] == (f"the outbound proxy at 127.0.0.1:{outbound.port} may have answered for the upstream "
                                f"at api.example.test ({status}: <html> <body>Blocked by policy</body></html>), not "
                                "the upstream's API: " + ("its policy may not allow api.example.test"
                                                          if status.startswith("403") else
                                                          "it may want a login first (a portal's redirect)"
                                                          if status.startswith("3") else
                                                          "it may not have reached api.example.test"))
    assert resp.headers.get("x-should-retry") == retry
    assert len(outbound.seen()) == (1 if retry == "false" else 2)  # a policy refuses again: not retried
    assert PASSWORD not in resp.body.decode() and "bob" not in error["message"]
    assert not [r for r in caplog.records if "key" in r.getMessage()]  # the key is not blamed
    # An answer, as the upstream's own error status is: its cost is known (nothing), not lost.
    assert request(server.url, "GET", "/v1/usage").json["totals"]["unpriced_requests"] == 0


def test_a_redirect_through_a_forwarding_proxy_says_where_it_goes(make_proxy: Any, refusing: Any) -> None:
    """A portal's login page or the upstream's own move to https: the address tells which (a review:
    "may want a login first" alone blamed the proxy for an upstream that moved)."""
    outbound = refusing("301 Moved Permanently", b"<html>moved</html>")
    moved = b"Location: https://api.example.test/v1/chat/completions?key=" + PASSWORD.encode()
    outbound.answer = outbound.answer.replace(b"\r\n\r\n", b"\r\n" + moved + b"\r\n\r\n", 1)
    server = make_proxy(upstream=NAMED_UPSTREAM["http"], proxy=f"http://bob:{PASSWORD}@127.0.0.1:{outbound.port}")
    resp = send(server)
    assert resp.status == 502 and resp.headers.get("x-should-retry") == "false", resp
    message = error_of(resp)["message"]
    assert "(301 Moved Permanently: <html>moved</html>, to 'https://api.example.test/v1/chat/completions?key=" in message
    assert PASSWORD not in message


def test_a_forwarding_proxys_own_5xx_keeps_its_retry_after(make_proxy: Any, refusing: Any) -> None:
    # Whoever wrote the page, the wait it asks for reaches the client, as the upstream's own would.
    outbound = refusing("503 Service Unavailable", b"busy")
    outbound.answer = outbound.answer.replace(b"\r\n\r\n", b"\r\nRetry-After: 30\r\n\r\n", 1)
    server = make_proxy(upstream=NAMED_UPSTREAM["http"], proxy=f"http://127.0.0.1:{outbound.port}")
    resp = send(server)
    assert resp.status == 502, resp
    assert "may have answered for the upstream" in error_of(resp)["message"]
    assert (resp.headers.get("retry-after"), resp.headers.get("x-should-retry")) == ("30", "true")


def test_an_api_error_through_a_forwarding_proxy_is_the_upstreams(make_proxy: Any, clean_env: Any) -> None:
    # JSON is the API's own answer, passed on as before: a refused key is the key.
    outbound = FakeUpstream()
    try:
        outbound.default = json_reply({"error": {"message": "Invalid API key", "type": "invalid_request_error"}},
                                      status=403)
        server = make_proxy(upstream=NAMED_UPSTREAM["http"], proxy=f"http://127.0.0.1:{outbound.port}")
        resp = send(server)
        assert resp.status == 403 and error_of(resp)["type"] == "permission_error", resp
        assert error_of(resp)["message"] == ("upstream 403: Invalid API key (the key claudeproxy sends to provider "
                                             "'upstream')")
    finally:
        outbound.close()


def test_a_page_from_an_upstream_reached_directly_is_still_the_upstreams(make_proxy: Any, clean_env: Any,
                                                                         fake_upstream: FakeUpstream) -> None:
    fake_upstream.push(Reply(403, (("Content-Type", "text/html"),), [b"<html>Forbidden</html>"]))
    resp = send(make_proxy())
    assert resp.status == 403 and error_of(resp)["message"].startswith("upstream 403: <html>Forbidden</html>"), resp


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_is_down_is_named_not_the_upstream(make_proxy: Any, refused_port: int, scheme: str) -> None:
    server = make_proxy(upstream=NAMED_UPSTREAM[scheme], proxy=f"http://bob:{PASSWORD}@127.0.0.1:{refused_port}")
    resp = send(server)
    assert resp.status == 502, resp
    message = error_of(resp)["message"]
    assert message.startswith(f"could not reach the outbound proxy at 127.0.0.1:{refused_port} ("), message
    assert message.endswith(f": nothing accepts connections for http://127.0.0.1:{refused_port} (is the proxy "
                            "running?)"), message
    assert "api.example.test" not in message and PASSWORD not in message and "bob" not in message
    # Nothing listens: as for an upstream that is down, the client is told not to retry for minutes.
    assert resp.headers.get("x-should-retry") == "false"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_failure_past_the_proxys_door_names_both(make_proxy: Any, scheme: str) -> None:
    # The proxy took the connection, then closed it: the way to the upstream failed, through it.
    port = closing_listener()
    server = make_proxy(upstream=NAMED_UPSTREAM[scheme], proxy=f"http://127.0.0.1:{port}")
    resp = send(server)
    assert resp.status == 502, resp
    message = error_of(resp)["message"]
    assert message.startswith(f"could not reach the upstream at api.example.test through the outbound proxy "
                              f"at 127.0.0.1:{port} ("), message
    assert resp.headers.get("x-should-retry") == "true"


# ---------------------------------------------------------------------------
# The same failure again on every try is no reason to retry, through the proxy as direct.


@pytest.fixture
def tls_upstream(certificate: Tuple[str, str]) -> Iterator[FakeUpstream]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    fake = FakeUpstream(tls=context)
    yield fake
    fake.close()


@pytest.fixture
def tunnels() -> Iterator[Any]:
    made: List[ConnectProxy] = []

    def make(kind: Any = ConnectProxy) -> ConnectProxy:
        made.append(kind())
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


class BannerProxy(ConnectProxy):
    """Another service on the proxy's port: it answers CONNECT with its banner."""

    def answer(self, client: socket.socket) -> bool:
        client.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        return False


def test_a_refused_certificate_through_the_proxy_is_said_and_not_retried(make_proxy: Any, clean_env: Any,
                                                                         tls_upstream: FakeUpstream,
                                                                         tunnels: Any) -> None:
    """The corporate case: a TLS-inspecting proxy's CA missing from --ca-bundle (here: no bundle for
    a self-signed upstream). Every try is refused alike; "could not reach" sent users to the network."""
    clean_env.delenv("SSL_CERT_FILE", raising=False)
    tunnel = tunnels()
    server = make_proxy(upstream=tls_upstream.url, proxy=f"http://127.0.0.1:{tunnel.port}", retries=2)
    resp = send(server)
    assert resp.status == 502, resp
    assert resp.headers.get("x-should-retry") == "false"
    message = error_of(resp)["message"]
    assert message.startswith(f"the upstream at 127.0.0.1:{tls_upstream.port} (through the outbound proxy at "
                              f"127.0.0.1:{tunnel.port}) cannot be used: its TLS certificate was refused ("), message
    assert message.endswith("; see --ca-bundle (a TLS-inspecting proxy needs its CA there)"), message
    assert tunnel.tunnels == 1  # not retried


def test_no_tls_where_tls_is_due_through_the_proxy_is_said_and_not_retried(make_proxy: Any, clean_env: Any,
                                                                           fake_upstream: FakeUpstream,
                                                                           tunnels: Any) -> None:
    tunnel = tunnels()
    server = make_proxy(upstream=fake_upstream.url.replace("http://", "https://"),
                        proxy=f"http://127.0.0.1:{tunnel.port}", retries=2)
    resp = send(server)
    assert resp.status == 502, resp
    assert resp.headers.get("x-should-retry") == "false"
    assert error_of(resp)["message"] == (
        f"the upstream at 127.0.0.1:{fake_upstream.port} (through the outbound proxy at 127.0.0.1:{tunnel.port}) "
        "cannot be used: it does not speak TLS on this port (an https:// URL for an http:// server?)")
    assert tunnel.tunnels == 1


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_proxy_whose_answer_is_no_http_is_named_and_not_retried(make_proxy: Any, clean_env: Any,
                                                                  tunnels: Any, scheme: str) -> None:
    """Its answer to CONNECT, or to a plain-http request it forwards: either is the proxy's own
    (a plain-http upstream's answer reaches the proxy, never the client, as bytes)."""
    tunnel = tunnels(BannerProxy)
    server = make_proxy(upstream=NAMED_UPSTREAM[scheme], proxy=f"http://127.0.0.1:{tunnel.port}", retries=2)
    resp = send(server)
    assert resp.status == 502, resp
    assert resp.headers.get("x-should-retry") == "false"
    assert error_of(resp)["message"] == (f"the outbound proxy at 127.0.0.1:{tunnel.port} cannot be used: its answer "
                                         "is not HTTP/1.1 (BadStatusLine: SSH-2.0-OpenSSH_9.6)")
    assert tunnel.tunnels == 1


def test_an_upstream_that_drops_the_tunnel_is_worth_a_retry(make_proxy: Any, clean_env: Any, tunnels: Any) -> None:
    # The proxy opened the tunnel, the upstream closed it during the TLS handshake: a break, not a verdict.
    tunnel = tunnels()
    port = closing_listener()
    server = make_proxy(upstream=f"https://127.0.0.1:{port}/v1", proxy=f"http://127.0.0.1:{tunnel.port}")
    resp = send(server)
    assert resp.status == 502, resp
    assert resp.headers.get("x-should-retry") == "true"
    assert error_of(resp)["message"].startswith(f"could not reach the upstream at 127.0.0.1:{port} through the "
                                                f"outbound proxy at 127.0.0.1:{tunnel.port} (")


# ---------------------------------------------------------------------------
# The set-up through the proxy (its CONNECT answer, the TLS handshake) is bounded like the rest.


class SlowProxy(ConnectProxy):
    """A proxy that opens no tunnel: it answers CONNECT with a status line and then one header byte
    every 0.2 s (``trickle``), or with a whole 200 and then nothing (a TLS handshake that stalls).
    ``released`` is when the caller closed the connection (None while it holds it); it gives up
    after WAIT_SECONDS."""

    trickle = True
    WAIT_SECONDS = 8.0

    def __init__(self) -> None:
        self.released: Optional[float] = None
        super().__init__()

    def answer(self, client: socket.socket) -> bool:
        client.sendall(b"HTTP/1.1 200 Connection established\r\n" + (b"" if self.trickle else b"\r\n"))
        end = time.monotonic() + self.WAIT_SECONDS
        padding = b"X-Padding: " + b"a" * 1000  # a header line that never ends within the wait
        sent = 0
        while time.monotonic() < end and not self._stop.is_set():
            if self._closed_by_peer(client, 0.2):
                self.released = time.monotonic()
                break
            if self.trickle:
                client.sendall(padding[sent % len(padding):][:1])
                sent += 1
        return False

    @staticmethod
    def _closed_by_peer(client: socket.socket, wait: float) -> bool:
        # The caller sends nothing after CONNECT (or only its TLS hello): readable and empty is its close.
        try:
            if not select.select([client], [], [], wait)[0]:
                return False
            return client.recv(65536) == b""
        except OSError:
            return True


class StallingTLSProxy(SlowProxy):
    trickle = False


def test_a_proxy_that_trickles_its_connect_answer_is_held_to_the_connect_timeout(make_proxy: Any, clean_env: Any,
                                                                                 tunnels: Any) -> None:
    """Each byte started the socket's timeout anew: the call lasted as long as the proxy went on."""
    tunnel = tunnels(SlowProxy)
    server = make_proxy(upstream=NAMED_UPSTREAM["https"], proxy=f"http://127.0.0.1:{tunnel.port}", connect_timeout=1)
    began = time.monotonic()
    resp = send(server)
    assert time.monotonic() - began < 4, resp  # the proxy trickles for 8 s
    assert resp.status == 502, resp
    assert "did not answer CONNECT within the connect timeout" in error_of(resp)["message"]
    assert resp.headers.get("x-should-retry") == "true"


@pytest.mark.parametrize("kind", [SlowProxy, StallingTLSProxy])
def test_the_deadline_ends_a_call_stuck_in_the_proxys_tunnel_or_the_tls_handshake(make_proxy: Any, clean_env: Any,
                                                                                  tunnels: Any, kind: Any) -> None:
    tunnel = tunnels(kind)
    server = make_proxy(upstream=NAMED_UPSTREAM["https"], proxy=f"http://127.0.0.1:{tunnel.port}",
                        connect_timeout=8, request_timeout=1)
    began = time.monotonic()
    resp = send(server)
    assert time.monotonic() - began < 4, resp
    assert resp.status == 504, resp
    assert error_of(resp)["message"] == "upstream did not finish in time"
    deadline = time.monotonic() + 2
    while tunnel.released is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tunnel.released is not None  # the connection to the proxy was let go, not left to its timeout


@pytest.mark.parametrize("kind", [SlowProxy, StallingTLSProxy])
def test_a_client_that_leaves_ends_the_set_up_through_the_proxy(make_proxy: Any, clean_env: Any, tunnels: Any,
                                                                kind: Any) -> None:
    tunnel = tunnels(kind)
    server = make_proxy(upstream=NAMED_UPSTREAM["https"], proxy=f"http://127.0.0.1:{tunnel.port}", connect_timeout=8)
    body = json.dumps(minimal_request()).encode()
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"x-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.address[1]), timeout=5) as client:
        client.sendall(head.encode() + body)
        deadline = time.monotonic() + 5
        while tunnel.tunnels == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tunnel.tunnels == 1
        time.sleep(0.3)  # into the trickle, or the handshake
    left = time.monotonic()
    while tunnel.released is None and time.monotonic() < left + 3:
        time.sleep(0.02)
    assert tunnel.released is not None and tunnel.released - left < 2


# ---------------------------------------------------------------------------
# HTTPS_PROXY set, but no --proxy or --use-env-proxy: said at start, and when a call cannot get through.

UNUSED = ("are set in the environment but not used: pass --use-env-proxy to go through the proxy named there, "
          "or --proxy URL")


@pytest.mark.parametrize("settings,environ,said", [
    ({}, {"HTTPS_PROXY": f"http://bob:{PASSWORD}@127.0.0.1:3128", "all_proxy": "http://127.0.0.1:3128"},
     [f"HTTPS_PROXY, all_proxy {UNUSED}"]),
    ({}, {"http_proxy": "127.0.0.1:3128", "NO_PROXY": "x"}, [f"http_proxy {UNUSED.replace('are', 'is', 1)}"]),
    ({}, {"HTTPS_PROXY": " ", "NO_PROXY": "x"}, []),  # empty: nothing is set
    ({"use_env_proxy": True}, {"HTTPS_PROXY": "http://127.0.0.1:3128", "ALL_PROXY": "http://127.0.0.1:3128"}, []),
    ({"proxy": "http://127.0.0.1:3128"}, {"HTTPS_PROXY": "http://127.0.0.1:3128"}, []),
    ({"upstream": "http://localhost:11434/v1"}, {"HTTPS_PROXY": "http://127.0.0.1:3128"}, []),  # no proxy needed
    ({"upstream": "http://192.168.1.20:8000/v1"}, {"HTTPS_PROXY": "http://127.0.0.1:3128"}, []),  # a LAN server
    ({"upstream": "http://gpu.lan:8000/v1"}, {"HTTPS_PROXY": "http://127.0.0.1:3128"}, []),
])
def test_an_unused_environment_proxy_is_said_once_at_start(make_proxy: Any, clean_env: Any, caplog: Any,
                                                           settings: Dict[str, Any], environ: Dict[str, str],
                                                           said: List[str]) -> None:
    server = make_proxy(**{"upstream": NAMED_UPSTREAM["https"], **settings})
    assert cli.unused_proxies(server.server, environ) == said
    with caplog.at_level("WARNING", logger="claudeproxy"):
        cli._warn_about(server.server, environ)  # noqa: SLF001  # what serve and run log at start
    assert [r.getMessage() for r in caplog.records if "set in the environment" in r.getMessage()] == said


def test_could_not_reach_says_that_the_environments_proxy_is_not_used(make_proxy: Any, clean_env: Any) -> None:
    clean_env.setenv("https_proxy", f"http://bob:{PASSWORD}@127.0.0.1:3128")
    server = make_proxy(upstream=NAMED_UPSTREAM["https"], connect_timeout=3)
    resp = send(server)
    assert resp.status == 502, resp
    message = error_of(resp)["message"]
    assert message.startswith("could not reach the upstream at api.example.test ("), message
    assert message.endswith(f"); https_proxy {UNUSED.replace('are', 'is', 1)}"), message
    assert PASSWORD not in message


def test_could_not_reach_a_local_upstream_says_nothing_of_proxies(make_proxy: Any, clean_env: Any,
                                                                  refused_port: int) -> None:
    clean_env.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    server = make_proxy(upstream=f"http://127.0.0.1:{refused_port}/v1")
    message = error_of(send(server))["message"]
    assert message.startswith(f"could not reach the upstream at 127.0.0.1:{refused_port} (") and "PROXY" not in message


# ---------------------------------------------------------------------------
# The proxy's password is masked alike, from --proxy or from the environment.


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_the_proxy_password_is_masked_wherever_it_came_from(make_proxy: Any, clean_env: Any, refusing: Any,
                                                             given: str) -> None:
    # A corporate proxy's refusal page that echoes the credentials it refused (no "password:" to go by).
    outbound = refusing("403 Forbidden", f"<html>bob / {PASSWORD} may not go there</html>".encode())
    url = f"http://bob:{PASSWORD}@127.0.0.1:{outbound.port}"
    if given == "flag":
        server = make_proxy(upstream=NAMED_UPSTREAM["http"], proxy=url)
    else:
        clean_env.setenv("HTTP_PROXY", url)
        server = make_proxy(upstream=NAMED_UPSTREAM["http"], use_env_proxy=True)
    resp = send(server)
    assert len(outbound.seen()) == 1 and resp.status == 502, resp  # the proxy's refusal came, said as its own
    assert PASSWORD not in resp.body.decode() and "bob / ***" in resp.body.decode(), resp


def test_the_log_masks_the_environments_proxy_password(clean_env: Any) -> None:
    clean_env.setenv("https_proxy", f"bob:{PASSWORD}@127.0.0.1:3128")  # no scheme: http:// all the same
    config = claudeproxy.Config(upstream="https://api.example.test/v1", use_env_proxy=True)
    assert PASSWORD in cli.fixed_secrets(config) and PASSWORD in cli.secrets_source(config)()
    assert PASSWORD not in cli.fixed_secrets(config.replace(use_env_proxy=False))


def test_a_corporate_ca_without_key_usage_is_taken_on_every_python(make_proxy: Any, clean_env: Any,
                                                                   corporate_ca: Tuple[str, str, str],
                                                                   tunnels: Any) -> None:
    """Python 3.13's default strict X.509 checks refused such a CA (no keyUsage, basicConstraints not
    critical: "CA cert does not include key usage extension", or the basicConstraints complaint) on
    every call, through the proxy or not, while 3.8 to 3.12 took it (a probe). Fails on 3.13 alone."""
    ca, cert, key = corporate_ca
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    upstream = FakeUpstream(tls=context)
    try:
        for proxy in (None, f"http://127.0.0.1:{tunnels().port}"):
            upstream.push(json_reply(completion("through")))
            server = make_proxy(upstream=upstream.url, proxy=proxy, ca_bundle=ca)
            resp = send(server)
            assert resp.status == 200, resp
    finally:
        upstream.close()


def test_an_ipv6_upstream_is_named_in_brackets_in_connect(make_proxy: Any, refusing: Any) -> None:
    """RFC 9110's authority form: "CONNECT [::1]:8443". Before 3.12 http.client wrote "CONNECT ::1:8443",
    which a strict proxy cannot split into host and port (a probe)."""
    outbound = refusing("403 Forbidden")
    server = make_proxy(upstream="https://[::1]:8443/v1", proxy=f"http://127.0.0.1:{outbound.port}")
    assert send(server).status == 502
    [head] = outbound.heads
    assert head.split("\r\n")[0] in ("CONNECT [::1]:8443 HTTP/1.0", "CONNECT [::1]:8443 HTTP/1.1"), head


def test_an_ssl_cert_file_that_names_nothing_is_said_at_start(make_proxy: Any, monkeypatch: Any, tmp_path: Any,
                                                              certificate: Tuple[str, str]) -> None:
    """Python's TLS reads its CA file there when no --ca-bundle is given: a path that names nothing
    failed every call to an https upstream the CA signs, hinting at --ca-bundle alone (a probe). Said
    at start, not refused: the system's CA folder is still read (a review)."""
    missing = str(tmp_path / "corp-ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", missing)
    said = [f"SSL_CERT_FILE {missing} names no file: the CA certificates meant to be read there are not (Python's "
            "TLS reads them there for https upstreams); correct or unset it, or give --ca-bundle"]
    warned = {}
    for name, settings in (("https", {"upstream": "https://127.0.0.1:9/v1"}),
                           ("http", {"upstream": "http://127.0.0.1:9/v1"}),
                           ("bundle", {"upstream": "https://127.0.0.1:9/v1", "ca_bundle": certificate[0]})):
        server = make_proxy(**settings)
        warned[name] = [line for line in cli.start_warnings(server.server, {}) if "SSL_CERT_FILE" in line]
    assert warned == {"https": said, "http": [], "bundle": []}


def test_an_ssl_cert_file_that_holds_no_certificates_is_said_at_start(make_proxy: Any, monkeypatch: Any,
                                                                      tmp_path: Any, certificate: Tuple[str, str]) -> None:
    """A file of junk there failed every https call with a hint at --ca-bundle alone (probe M); a
    good one says nothing."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    server = make_proxy(upstream="https://127.0.0.1:9/v1")
    monkeypatch.setenv("SSL_CERT_FILE", str(junk))
    [line] = [line for line in cli.start_warnings(server.server, {}) if "SSL_CERT_FILE" in line]
    assert line.startswith(f"SSL_CERT_FILE {junk} holds no CA certificates Python's TLS can read") and \
        line.endswith("every https call will refuse its certificate; correct or unset it, or give --ca-bundle"), line
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
    assert [line for line in cli.start_warnings(server.server, {}) if "SSL_CERT_FILE" in line] == []

def test_an_unreachable_ipv6_upstream_is_named_in_brackets(make_proxy: Any, refused_port: int) -> None:
    """"could not reach the upstream at ::1:PORT" could not be told from its port (a probe)."""
    server = make_proxy(upstream=f"http://[::1]:{refused_port}/v1")
    message = error_of(send(server))["message"]
    assert f"the upstream at [::1]:{refused_port}" in message, message
