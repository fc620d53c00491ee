"""Shared fixtures: a fake upstream, proxies started against it, a small HTTP client.

All traffic stays on 127.0.0.1 and every wait has a timeout.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import claudeproxy  # noqa: E402
from fakes import FakeUpstream, ServerPool, refused_port  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
UPSTREAM_KEY = "sk-UPSTREAM-SENTINEL-0123456789"
CLIENT_KEY = "sk-ant-CLIENT-SENTINEL-0123456789"
SENTINEL_KEYS = (UPSTREAM_KEY, CLIENT_KEY)
TIMEOUT = 15.0


def load_json(*parts: str) -> Any:
    with open(os.path.join(FIXTURES, *parts), encoding="utf-8") as fh:
        return json.load(fh)


def load_bytes(*parts: str) -> bytes:
    with open(os.path.join(FIXTURES, *parts), "rb") as fh:
        return fh.read()


class Response:
    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.header_list = headers
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:300]!r})"


def request(url: str, method: str = "GET", path: str = "/", body: Any = None,
            headers: Optional[Dict[str, str]] = None, timeout: float = TIMEOUT) -> Response:
    """One HTTP request with http.client; ``body`` may be bytes or a JSON-able object."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    conn = http.client.HTTPConnection(host_port, timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode("utf-8")
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        answer = Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()
    # Suite-wide: no answer of the proxy ever carries a sentinel key (RELIABILITY.md 5 #4).
    seen = answer.body.decode("utf-8", "replace") + repr(answer.header_list)
    assert not [k for k in SENTINEL_KEYS if k in seen], f"a sentinel key leaked into {method} {path}: {answer!r}"
    return answer


def minimal_request(**overrides: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"model": "claude-test", "max_tokens": 256,
                            "messages": [{"role": "user", "content": "Hello"}]}
    body.update(overrides)
    return body


def quota_probe(**overrides: Any) -> Dict[str, Any]:
    """Claude Code's quota probe, the one request the proxy answers itself ("ok", no upstream call)."""
    return minimal_request(max_tokens=1, messages=[{"role": "user", "content": "quota"}], **overrides)


def _shares_servers(request: Any) -> bool:
    """A module that sets ``SHARED_SERVERS = True`` gets one fake and its proxies for all its tests."""
    return bool(getattr(request.module, "SHARED_SERVERS", False))


@pytest.fixture(autouse=True)
def _no_sentinel_in_log_records(caplog: Any) -> Iterator[None]:
    """Suite-wide: no log record any test produced (at the level it captured) holds a sentinel key.

    Only ``test_logging.py`` and ``test_security.py`` run at DEBUG with bodies logged;
    the whole suite at DEBUG would log every body of every test.
    """
    yield
    records = [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    leaked = [r.getMessage()[:200] for r in records
              if any(k in r.getMessage() or k in (r.exc_text or "") for k in SENTINEL_KEYS)]
    assert leaked == [], f"sentinel keys in log records: {leaked}"


# RFC 6761's reserved top-level names: the tests' upstreams "on the internet" are named under them.
_NEVER_RESOLVED = (".test", ".example", ".invalid")


@pytest.fixture(autouse=True, scope="session")
def _reserved_names_resolve_without_dns() -> Iterator[None]:
    """Suite-wide: a name under a reserved TLD fails as an unknown name does, without a DNS query.
    A resolver that answers NXDOMAIN with an address of its own would send a test's connection
    off the machine (all test traffic stays on loopback), and one out of reach makes each lookup
    wait for its timeout (a review found four tests looking up api.example.test)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
        if isinstance(name, str) and name.rstrip(".").lower().endswith(_NEVER_RESOLVED):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture(autouse=True, scope="module")
def _cycles_collected_per_module() -> Iterator[None]:
    """A socket lost in a reference cycle is closed, and its ResourceWarning (an error here) raised,
    only when the garbage collector gets to it: at a random later test of another module. Collected
    at each module's end, the warning falls in the module that lost it."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def pool() -> Iterator[ServerPool]:
    """One fake upstream and the proxies started against it, kept for a whole module."""
    servers = ServerPool(token=claudeproxy.static_token(UPSTREAM_KEY))
    yield servers
    servers.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: Any) -> Tuple[str, str]:
    """(cert, key) PEM files of a self-signed certificate for 127.0.0.1: the cert is also its CA bundle."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="session")
def corporate_ca(tmp_path_factory: Any) -> Tuple[str, str, str]:
    """(CA, cert, key) PEM files: a CA made as TLS-inspecting proxies' often are, with no keyUsage
    extension, and a certificate for 127.0.0.1 it signed."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make a test certificate")
    where = tmp_path_factory.mktemp("corp-ca")
    ca, ca_key, cert, key, csr, ext = (str(where / name) for name in
                                       ("ca.pem", "ca.key", "cert.pem", "key.pem", "cert.csr", "ext.cnf"))
    with open(ext, "w", encoding="ascii") as fh:
        fh.write("subjectAltName=IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
         "-subj", "/CN=Corp Inspection CA", "-addext", "basicConstraints=CA:TRUE"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1",
         "-extfile", ext],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], check=True, capture_output=True, timeout=60)
    return ca, cert, key


@pytest.fixture(name="refused_port")
def refused_port_fixture() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (see ``fakes.refused_port``)."""
    with refused_port() as port:
        yield port


@pytest.fixture
def fake_upstream(request: Any) -> Iterator[FakeUpstream]:
    """A fake upstream as good as new: the module's shared one (reset) or a fresh one."""
    if _shares_servers(request):
        shared: ServerPool = request.getfixturevalue("pool")
        shared.fake.reset()
        yield shared.fake
        return
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture
def make_proxy(request: Any, fake_upstream: FakeUpstream) -> Iterator[Callable[..., Any]]:
    """Start proxies (default: against ``fake_upstream`` with the sentinel key).

    In a ``SHARED_SERVERS`` module a proxy per distinct set of settings lives for
    the whole module (starting one costs about 0.15 s); otherwise all stop after the test.
    """
    if _shares_servers(request):
        yield request.getfixturevalue("pool").get
        return
    started: List[Any] = []

    def make(**overrides: Any) -> Any:
        settings: Dict[str, Any] = {"upstream": fake_upstream.url, "token": claudeproxy.static_token(UPSTREAM_KEY)}
        settings.update(overrides)
        server = claudeproxy.start(**settings)
        started.append(server)
        return server

    yield make
    for server in started:
        server.shutdown(grace=1.0)


@pytest.fixture
def proxy(make_proxy: Callable[..., Any]) -> Any:
    return make_proxy()


@pytest.fixture
def post(proxy: Any) -> Callable[..., Response]:
    """POST /v1/messages (or ``path``) to the default proxy with a client key."""

    def send(body: Any, path: str = "/v1/messages", headers: Optional[Dict[str, str]] = None) -> Response:
        hdrs = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
        hdrs.update(headers or {})
        return request(proxy.url, "POST", path, body, hdrs)

    return send


def record_for(records: List[Any], request_id: str, timeout: float = 3.0) -> Any:
    """The call record of one answer (by its request-id header): written just after the answer
    went out, so it may take a moment; other tests' late records never match."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in list(records):
            if rec.request_id == request_id:
                return rec
        time.sleep(0.01)
    raise AssertionError(f"no call record for {request_id} in {[r.request_id for r in records]}")
