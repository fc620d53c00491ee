"""HTTP calls to the upstream through ``urllib.request``: the only outbound I/O.

``Upstream`` owns one opener per instance, built with:
- ``ProxyHandler({})`` unless ``--proxy`` (or ``--use-env-proxy``) says
  otherwise, so ``HTTPS_PROXY`` in the environment is never used silently
  (RELIABILITY.md S8);
- a redirect handler that refuses, because urllib would re-send credentials
  to the redirect target (S7); credentials also go in unredirected headers;
- connection classes that use the short connect timeout for the TCP/TLS
  handshake, then the long idle timeout for reads (S14), and hand the socket
  to an ``UpstreamCall`` so another thread can abort the call (S11).
Failures come out as ``errors.ProxyError`` subclasses with the status a client
should see (PROTOCOL.md 4.2, 4.3).
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, Optional, Tuple
from urllib.parse import urlsplit

from . import __version__
from .config import Config
from .ending import abort_error
from .errors import UpstreamTimeout, UpstreamUnavailable, error_from_status
from .redact import redact_headers, redact_text, redact_url

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024


class UpstreamCall:
    """One upstream request that another thread may abort (client gone, idle, deadline)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self.abort_reason: Optional[str] = None
        self.connected = False

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            self.connected = True
            if self.abort_reason is not None:
                _shutdown(sock)

    def abort(self, reason: str) -> None:
        """Unblock any read on the upstream socket at once; the first reason sticks."""
        with self._lock:
            if self.abort_reason is None:
                self.abort_reason = reason
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown on purpose: SSLSocket.shutdown would also drop the
    # TLS object under a reader in another thread.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _tracked(base: Any) -> Any:
    """An ``http.client`` connection class whose ``connect`` reports its socket."""

    class Tracked(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, call: Optional[UpstreamCall], read_timeout: float, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self._call = call
            self._read_timeout = read_timeout

        def connect(self) -> None:
            super().connect()  # TCP (+ proxy tunnel + TLS) under the connect timeout
            self.sock.settimeout(self._read_timeout)
            if self._call is not None:
                self._call.attach(self.sock)

    return Tracked


_TrackedHTTP = _tracked(http.client.HTTPConnection)
_TrackedHTTPS = _tracked(http.client.HTTPSConnection)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = functools.partial(_TrackedHTTP, call=getattr(req, "cp_call", None), read_timeout=self._read_timeout)
        return self.do_open(factory, req)  # type: ignore[no-any-return]


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._read_timeout = read_timeout
        self._ctx = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = functools.partial(_TrackedHTTPS, call=getattr(req, "cp_call", None), read_timeout=self._read_timeout)
        return self.do_open(factory, req, context=self._ctx)  # type: ignore[no-any-return]


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError and maps to 502


def build_opener(config: Config) -> urllib.request.OpenerDirector:
    if config.proxy:
        proxies: Optional[Dict[str, str]] = {"http": config.proxy, "https": config.proxy}
    else:
        proxies = None if config.use_env_proxy else {}
    context = ssl.create_default_context(cafile=config.ca_bundle)
    return urllib.request.build_opener(
        urllib.request.ProxyHandler(proxies),
        _RefuseRedirects(),
        _HTTPHandler(config.idle_timeout),
        _HTTPSHandler(config.idle_timeout, context),
    )


# --------------------------------------------------------------------------
# The client.


class Upstream:
    """The transport to every provider of one server: one opener, shared settings.

    Credentials and extra headers differ per provider and come with each call.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.opener = build_opener(config)

    def open(
        self,
        url: str,
        *,
        call: UpstreamCall,
        body: Optional[bytes] = None,
        headers: Tuple[Tuple[str, str], ...] = (),
        auth: Tuple[Tuple[str, str], ...] = (),
        method: str = "POST",
        secrets: Tuple[str, ...] = (),
    ) -> Any:
        """Send one request; a 2xx response is returned open, anything else raises.

        ``headers`` hold the API's and the provider's headers, ``auth`` the
        credential (never resent to a redirect target); ``secrets`` are masked in
        every error message.
        """
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("User-Agent", f"claudeproxy/{__version__}")
        for name, value in headers:
            req.add_header(name, value)
        for name, value in auth:
            req.add_unredirected_header(name, value)  # never follows a redirect (S7)
        req.cp_call = call  # type: ignore[attr-defined]
        if log.isEnabledFor(logging.DEBUG):
            sent = redact_headers(req.header_items(), secrets)
            log.debug("upstream %s %s headers=%s", method, redact_url(url), sent)
        try:
            return self.opener.open(req, timeout=self.config.connect_timeout)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            with exc:
                body_bytes = exc.read(MAX_ERROR_BODY) if exc.fp is not None else b""
            raise error_from_status(exc.code, body_bytes, exc.headers, secrets) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise _transport_error(exc, call, url, secrets) from None


def _transport_error(exc: BaseException, call: UpstreamCall, url: str, secrets: Tuple[str, ...]) -> Exception:
    aborted = abort_error(call.abort_reason)
    if aborted is not None:
        return aborted  # our own abort (client gone, shutdown, deadline) made the call fail
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.timeout) and call.connected:
        return UpstreamTimeout("upstream did not answer in time")
    detail = redact_text(f"{type(reason).__name__}: {reason}", secrets)
    host = urlsplit(url).hostname or "?"
    return UpstreamUnavailable(
        f"could not reach the upstream at {host} ({detail})", headers=(("x-should-retry", "true"),)
    )


# --------------------------------------------------------------------------
# Reading an open response.


def read_error(exc: BaseException, call: UpstreamCall, idle: float) -> Exception:
    """What a failed or aborted upstream read means for the client."""
    aborted = abort_error(call.abort_reason)
    if aborted is not None:
        return aborted
    if isinstance(exc, socket.timeout):
        return UpstreamTimeout(f"upstream sent nothing for {idle:g} s")
    return UpstreamUnavailable(f"upstream connection broke off ({type(exc).__name__})")


def iter_lines(resp: Any, limit: int) -> Iterator[bytes]:
    """The body's lines as they arrive; a line over ``limit`` bytes is an error, not a buffer."""
    while True:
        raw = resp.readline(limit + 1)
        if not raw:
            return
        if len(raw) > limit and not raw.endswith(b"\n"):
            raise UpstreamUnavailable(f"upstream sent an SSE line longer than {limit} bytes")
        yield raw


def read_json_body(resp: Any, call: UpstreamCall, limit: int) -> Any:
    """A whole JSON response body (non-streaming answers), size-capped."""
    try:
        raw = resp.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise read_error(exc, call, 0) from None
    if call.abort_reason is not None:
        raise read_error(OSError("aborted"), call, 0)
    if len(raw) > limit:
        raise UpstreamUnavailable(f"upstream response is larger than {limit} bytes")
    if (getattr(resp, "chunked", False) or getattr(resp, "length", None) is not None) and not clean_eof(resp):
        # The connection dropped inside a framed body: what came may parse, but it is not the answer.
        raise UpstreamUnavailable("upstream response body was cut short")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        ctype = resp.headers.get("Content-Type", "?") if resp.headers else "?"
        raise UpstreamUnavailable(f"upstream returned a body that is not JSON (Content-Type {ctype})") from None


def content_kind(resp: Any) -> str:
    """json, sse or other, from the upstream's Content-Type."""
    ctype = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if "json" in ctype:
        return "json"
    if ctype in ("", "text/event-stream", "text/plain", "application/octet-stream"):
        return "sse"
    return "other"


def clean_eof(resp: Any) -> bool:
    """Did the body end the way HTTP says it ends, rather than by the connection dropping?

    ``readline`` returns b"" in both cases (RELIABILITY.md S12); what is left
    tells them apart: ``chunk_left`` is None only after the terminating
    ``0`` chunk, ``length`` is 0 only when all Content-Length bytes came.
    A close-delimited body cannot tell a drop from an end, so it is never clean.
    """
    if getattr(resp, "chunked", False):
        return getattr(resp, "chunk_left", 0) is None
    return getattr(resp, "length", None) == 0
