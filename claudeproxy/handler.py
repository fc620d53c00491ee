"""The HTTP side facing clients: request reading, routing, response writing.

I/O. ``MessagesHandler`` is a ``BaseHTTPRequestHandler`` speaking HTTP/1.1
with keep-alive. It reads each body by Content-Length only, under a
per-request deadline (RELIABILITY.md S1-S3), checks Host/Origin and the
optional client key, routes by path (the query string is ignored: Claude Code
calls ``/v1/messages?beta=true``), and is the only place where exceptions
become HTTP answers. ``ResponseWriter`` writes one response: JSON in a single
write, or a chunked SSE stream with one write per batch of events, safe to
share with the watchdog thread that sends pings.
"""

from __future__ import annotations

import email.errors
import hmac
import http.client
import http.server
import io
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from .dialects import client_key
from .door import loads_request
from .errors import (
    ClientGone,
    InvalidRequest,
    ProxyError,
    error_payload,
    error_type_for_status,
)
from .http_head import MAX_HEAD, TOKEN_RE, HeadCutShort, HeadTooLarge, read_headers
from .ids import new_request_id
from .kernel_timeout import bound_by_kernel
from .sides import Endpoint
from .sse import encode_event


log = logging.getLogger(__name__)

Headers = Iterable[Tuple[str, str]]
_JSON_TYPES = ("application/json", "application/x-json", "text/json")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
# What a browser opens: the usage page and what it reads. Only these take the key as ?key=.
_PAGES = frozenset(("/", "/v1/usage", "/metrics", "/health"))
_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]+)(?::(\d{1,5}))?$")
_BODY_METHODS = ("POST", "PUT", "PATCH")
_BODY_PIECE = 256 * 1024
_STDLIB_5XX = {501: 405, 505: 400}  # what send_error answers instead (bad input is a 4xx)
_BROKEN_HEADER_DEFECTS = (email.errors.MissingHeaderBodySeparatorDefect, email.errors.FirstHeaderLineIsContinuationDefect)
_ABSOLUTE_TARGET_RE = re.compile(r"^[hH][tT][tT][pP][sS]?://([^/?#]*)([/?].*)?$")
_CHARSET_RE = re.compile(r"(?i);\s*charset\s*=\s*\"?([^\";\s]*)")  # a parameter of its own (not x-charset)
_WIDE_CHARSETS = ("utf-16", "utf16", "utf-32", "utf32", "ucs-2", "ucs2", "ucs-4", "ucs4")
# The blanks that may part the words of a request line (RFC 9112 3: SP, HTAB, VT, FF, a bare CR).
_BLANKS = re.compile(r"[ \t\x0b\x0c\r]+")
# RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line (clients that
# end a POST body with an extra CRLF). A few are passed over; a run longer than that is no request.
_EMPTY_LINES = (b"\r\n", b"\n")
_MAX_EMPTY_LINES = 8
_MAX_REQUEST_LINE = 65536  # the stdlib's (handle_one_request): longer is a 414


# What a browser client may read of a response's head: the SDKs' retry decisions (x-should-retry,
# retry-after-ms, retry-after) and the request id; "*" the rest (the rate limits' anthropic-ratelimit-*)
# for requests without credentials, where it means every header (with credentials it names none).
_EXPOSED = "request-id, x-should-retry, retry-after, retry-after-ms, *"


def _http_version(version: str) -> Optional[Tuple[int, int]]:
    """(major, minor) of ``HTTP/x.y`` (RFC 2145: two decimal numbers, leading zeros ignored), or None."""
    if not version.startswith("HTTP/"):
        return None
    parts = version[5:].split(".")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 10 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _connection_options(values: Optional[List[str]]) -> Set[str]:
    """The options of all ``Connection`` field lines: RFC 9110 7.6.1 makes it a comma-separated
    list of case-insensitive tokens, so ``TE, close`` (or a second line saying ``close``) closes."""
    return {option.strip().lower() for value in values or () for option in value.split(",")}


def _clean_header_value(value: str) -> str:
    """No CR, LF or NUL ever reaches a response header (RELIABILITY.md S5)."""
    return re.sub(r"[\r\n\x00]", " ", str(value))


# A stream's write this large (a whole tool input in one event) goes under the Python timeout,
# which bounds all of it: the kernel's bounds each part, which a client reading a little now and
# then could stretch. Smaller ones go at once into the socket's buffer.
_LARGE_WRITE = 256 * 1024


def _sendall_by(sock: socket.socket, data: bytes, seconds: float) -> None:
    sock.settimeout(seconds)
    try:
        sock.sendall(data)
    finally:
        sock.settimeout(None)


class ResponseWriter:
    """Writes the response to one request; thread-safe so pings can interleave."""

    def __init__(self, handler: "MessagesHandler", request_id: str) -> None:
        self._handler = handler
        self.request_id = request_id
        self.lock = threading.RLock()
        self.status: Optional[int] = None
        self.error_type: Optional[str] = None  # of the error answer, when it was one
        self.streaming = False
        self.finished = False
        self.last_write = time.monotonic()
        self._chunked = handler.request_version == "HTTP/1.1"
        # A HEAD answer is the GET answer's head alone: a body would be read as the next response.
        self._head_only = getattr(handler, "command", None) == "HEAD"
        # A stream's head, held until the first write: head and first events go out as one write
        # (one segment, one wake-up of the client) instead of two.
        self._pending = b""
        # Added to every response head (CORS headers for an allowed Origin).
        self.extra_headers: List[Tuple[str, str]] = []

    @property
    def started(self) -> bool:
        return self.status is not None

    def _head(self, status: int, headers: List[Tuple[str, str]]) -> bytes:
        phrase = http.server.BaseHTTPRequestHandler.responses.get(status, ("Error",))[0]
        lines = [f"{self._handler.protocol_version} {status} {phrase}"]
        base = [("Date", self._handler.date_time_string())]
        if not any(k.lower() == "request-id" for k, _ in headers):
            base.append(("request-id", self.request_id))
        if self._handler.close_connection or self._handler.body_left_unread:
            base.append(("Connection", "close"))  # an unread body ends the connection (_dispatch)
        elif self._handler.request_version != "HTTP/1.1":
            # An HTTP/1.0 connection is kept only when its client asked (Connection: keep-alive),
            # and such a client reuses it only if the answer says so (RFC 9112 C.2.2); one not
            # told waits for the close (30 s idle). Announcing, rather than closing, keeps the
            # reuse that client asked for (ab -k, curl -0); HTTP/1.1 readers (http.client, the
            # SDKs) ignore the token, as the status line says HTTP/1.1.
            base.append(("Connection", "keep-alive"))
        lines += [f"{k}: {_clean_header_value(v)}" for k, v in base + self.extra_headers + headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")

    def _write(self, data: bytes) -> None:
        if self._pending:
            data, self._pending = self._pending + data, b""
        sock = self._handler.connection
        try:
            if len(data) > _LARGE_WRITE and sock.gettimeout() is None:  # a stream's socket (start_raw_stream)
                _sendall_by(sock, data, self._handler.timeout)
            else:
                # The socket's own sendall: wfile.write wraps it in a Python call and a memoryview per write.
                sock.sendall(data)
        except (OSError, ValueError) as exc:  # BrokenPipe, reset, timeout, a closed socket
            self._handler.close_connection = True
            raise ClientGone() from exc
        self.last_write = time.monotonic()

    def json(self, status: int, payload: Any, headers: Headers = ()) -> None:
        try:
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate quoted in a message: escaped, still valid JSON
            body = json.dumps(payload).encode("utf-8")
        head = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers]
        with self.lock:
            if self.started:
                return
            self.status = status
            self._write(self._head(status, head) + (b"" if self._head_only else body))
        self._handler.log_request(status, len(body))

    def empty(self, status: int, headers: Headers = ()) -> None:
        """A response without a body (204: no Content-Length either)."""
        with self.lock:
            if self.started:
                return
            self.status = status
            self._write(self._head(status, list(headers)))
        self._handler.log_request(status, 0)

    def error(self, exc: ProxyError) -> None:
        if not self.started:
            self.error_type = exc.error_type
        self.json(exc.status, error_payload(exc.error_type, exc.message, self.request_id, exc.details), exc.headers)

    def start_stream(self, headers: Headers = ()) -> None:
        head = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
            *headers,
        ]
        self.start_raw_stream(head)

    def start_raw_stream(self, head: List[Tuple[str, str]]) -> None:
        """Status 200 and ``head`` for a body of unknown length (chunked on HTTP/1.1)."""
        head = list(head)
        with self.lock:
            if self.started:
                return
            if self._chunked:
                head.append(("Transfer-Encoding", "chunked"))
            else:
                self._handler.close_connection = True  # HTTP/1.0: the body ends when we close
            self.status, self.streaming = 200, True
            self._pending = self._head(200, head)  # every caller writes its first events next
            if getattr(self._handler, "sends_bounded", False):
                # A stream's many small writes: a blocking socket, whose sends the kernel bounds by the
                # client timeout (setup), sends without a poll before each (kernel_timeout). Not for a
                # single write (a JSON answer): there the Python timeout bounds all of sendall, not
                # each part of it, and the poll is one.
                self._handler.connection.settimeout(None)
        self._handler.log_request(200, "-")

    def events(self, events: List[Dict[str, Any]], end: bool = False) -> None:
        """Write events in one write, at once (never buffered); ``end``: the stream's last write."""
        # Most writes of a stream are one event: no join.
        data = encode_event(events[0]) if len(events) == 1 else b"".join([encode_event(e) for e in events])
        self.raw_chunk(data, end)

    def raw_chunk(self, data: bytes, end: bool = False) -> None:
        """One piece of a stream; with ``end`` the stream ends in the same write (no write of its own
        for the terminating chunk)."""
        with self.lock:
            if self.finished or not (data or end):
                return
            chunk = b"%x\r\n%s\r\n" % (len(data), data) if self._chunked and data else data
            if end:
                self.finished = True
                chunk += b"0\r\n\r\n" if self._chunked else b""
            if chunk or self._pending:  # HTTP/1.0 with nothing left to say still owes the held head
                self._write(chunk)

    def raw(self, status: int, headers: List[Tuple[str, str]], body: bytes) -> None:
        """A complete response with the given headers (passthrough)."""
        head = [*headers, ("Content-Length", str(len(body)))]
        with self.lock:
            if self.started:
                return
            self.status = status
            self._write(self._head(status, head) + (b"" if self._head_only else body))
        self._handler.log_request(status, len(body))

    def end_stream(self) -> None:
        self.raw_chunk(b"", end=True)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline per request (slow-loris, RELIABILITY.md S1)."""

    def __init__(self, sock: socket.socket, per_read: float) -> None:
        super().__init__()
        self._sock = sock
        self._per_read = per_read
        self.deadline: Optional[float] = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self._per_read
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("request deadline passed")
            timeout = min(timeout, left)
        self._sock.settimeout(timeout)
        return self._sock.recv_into(buffer)


class MessagesHandler(http.server.BaseHTTPRequestHandler):
    """Routes Anthropic API requests to the server's ``Proxy``."""

    protocol_version = "HTTP/1.1"
    server_version = "claudeproxy"
    sys_version = ""
    disable_nagle_algorithm = True  # small SSE writes must not wait for ACKs
    target_host: Optional[str] = None  # the host of an absolute-form target ("POST http://host/path")

    # ------------------------------------------------------------------
    # Connection set-up and the per-request deadline.

    def setup(self) -> None:
        config = self.server.config  # type: ignore[attr-defined]
        self.timeout = config.client_timeout
        super().setup()
        self._reader = _DeadlineReader(self.connection, config.client_timeout)
        # Set once a connection, used by streams (ResponseWriter.start_raw_stream); every read sets its own timeout.
        self.sends_bounded = bound_by_kernel(self.connection, socket.SO_SNDTIMEO, config.client_timeout)
        self.connection.settimeout(config.client_timeout)
        # The default 8 KiB buffer: headers come a line at a time and a large body is read past
        # the buffer; 64 KiB cost 56 KiB more heap per open connection.
        self.rfile = io.BufferedReader(self._reader)
        self._body_consumed = False
        self._body: Optional[bytes] = None
        self._served = False  # a request came on this connection (an idle keep-alive gives way last)

    def handle_one_request(self) -> None:
        server: Any = self.server
        self._reader.deadline = time.monotonic() + server.config.client_request_deadline
        server.awaiting_head(self.connection, self._served)  # the connection an overflow may end
        self._body_consumed = False
        self._body = None
        self.target_host = None
        try:
            super().handle_one_request()
        except (socket.timeout, ConnectionError):
            self.close_connection = True
        finally:
            self._reader.deadline = None

    def handle_expect_100(self) -> bool:
        """Refuse a request the client may not send (no access, no such path or method, no length, a
        body over the limit) before the client sends its body: no ``100 Continue`` for a body that
        would never be read."""
        writer = ResponseWriter(self, new_request_id())
        try:
            self._check_hosts()
            self._check_access(writer, preflight=False)
            self._find_route(self.command)  # an unknown path or method: the 404 or 405 at once
            if self.command in _BODY_METHODS:
                self._check_content_type()  # a body it would refuse unread (32 MiB were uploaded first)
            if self.command in _BODY_METHODS or self.headers.get_all("Content-Length") or "Transfer-Encoding" in self.headers:
                limit = self.server.config.max_body_bytes  # type: ignore[attr-defined]
                length = self._content_length()  # none: the 411 at once
                if length > limit:
                    raise ProxyError(f"request body of {length} bytes exceeds the {limit}-byte limit", status=413)
        except ProxyError as exc:
            self.close_connection = True
            self._fail(writer, exc)
            return False
        if not self._declares_body():
            return True  # nothing to ask for (a GET): no 100 Continue
        return super().handle_expect_100()

    def date_time_string(self, timestamp: Optional[float] = None) -> str:
        http_date = getattr(self.server, "http_date", None)  # the server's, cached a second
        if timestamp is None and http_date is not None:
            return http_date()  # type: ignore[no-any-return]
        return super().date_time_string(timestamp)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        log.debug('"%s" %s %s', getattr(self, "requestline", ""), code, size)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The stdlib's own errors (bad request line, 414, 431, unknown method, bad version) in Anthropic's shape.

        Bad input is never a 5xx (the SDKs retry those): the stdlib's 501 for an
        unknown method becomes 405, its 505 for an HTTP version other than 1.x a 400.
        """
        headers: List[Tuple[str, str]] = []
        if code == 501 and getattr(self, "path", None):  # an unknown method, on a path we may know
            path = self.route_path
            allowed = self.server.proxy.allowed_methods(path)  # type: ignore[attr-defined]
            code, message = (405, f"method {self.command} not allowed for {path}") if allowed else (404, f"not found: {path}")
            headers = [("Allow", ", ".join(allowed))] if allowed else []
        code = _STDLIB_5XX.get(code, code)
        self.close_connection = True
        writer = ResponseWriter(self, new_request_id())
        text = message or self.responses.get(code, ("error",))[0]
        try:
            writer.json(code, error_payload(error_type_for_status(code), text, writer.request_id), headers)
        except ClientGone:
            pass

    def parse_request(self) -> bool:
        """The stdlib's parse of the request line and head (Python 3.13's, on every version), with
        the header lines read by ``http_head`` (the same message, faster), stricter where it is
        lenient, and the absolute form of a target accepted.

        A header line without a colon ends the stdlib's header parse silently: every header after
        it (a ``Content-Length``, a ``Connection: close``) would be ignored and the body read as
        the next request. RFC 9112 3.2.2: a server must accept ``POST http://host/v1/messages``
        and take the host from it, not from ``Host``. Both checks come before ``Expect:
        100-continue`` is answered: a head refused gets no ``100 Continue`` first.
        """
        if not self._parse_request_line():
            return False
        try:
            self.headers = read_headers(self.rfile)
        except HeadCutShort:
            # The client closed inside the head: nobody to answer, and nothing of it is parsed.
            self.close_connection = True
            return False
        except HeadTooLarge as err:
            self.send_error(431, f"request header fields too large: more than {MAX_HEAD // 1024} KiB together", str(err))
            return False
        except http.client.LineTooLong as err:
            self.send_error(431, "Line too long", str(err))
            return False
        except http.client.HTTPException as err:
            self.send_error(431, "Too many headers", str(err))
            return False
        if any(isinstance(d, _BROKEN_HEADER_DEFECTS) for d in self.headers.defects):
            self.send_error(400, "malformed header line (no colon) in the request head")
            return False
        if any(isinstance(d, email.errors.InvalidHeaderDefect) for d in self.headers.defects):
            # ": value": the feed parser drops the line, where a front-end may have read it otherwise.
            self.send_error(400, "malformed header line (no name before the colon) in the request head")
            return False
        if self.headers.has_controls:  # never for a plain head: no scan of the values per request
            self.send_error(400, self._control_message())
            return False
        match = _ABSOLUTE_TARGET_RE.match(self.path)
        if match:
            rest = match.group(2) or "/"
            self.path = rest if rest.startswith("/") else "/" + rest
            self.target_host = match.group(1)
        options = _connection_options(self.headers.get_all("Connection"))
        if "close" in options:
            self.close_connection = True
        elif "keep-alive" in options and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = self.headers.get("Expect", "").lower()
        if expect == "100-continue" and self.protocol_version >= "HTTP/1.1" and self.request_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def _control_message(self) -> str:
        """Why a head whose values hold a control character is refused.

        A folded header (obs-fold) keeps its line break in the value: copied upstream (a client
        key in passthrough) it would be a second header line; RFC 9112 5.2 lets a server refuse
        it. Any other control character (RFC 9110 5.5: NUL must be refused) would go upstream as
        it is, and a server that cuts the value at a NUL reads another value than the proxy did.
        """
        if any("\n" in value or "\r" in value for value in self.headers.values()):
            return "folded header line (obs-fold) in the request head; send each header on one line"
        return "control character in a header value (only HTAB is allowed)"

    def _skip_empty_lines(self) -> bool:
        """Read past up to ``_MAX_EMPTY_LINES`` empty lines to the request line (the stdlib took the
        first for the request line and closed the connection without a word). False, with the
        answer given if one is due, when the input ends there or the next line is too long."""
        for _ in range(_MAX_EMPTY_LINES):
            if self.raw_requestline not in _EMPTY_LINES:
                break
            self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > _MAX_REQUEST_LINE:
            self.requestline = ""
            self.send_error(414)
            return False
        return bool(self.raw_requestline)  # b"": the client left after its empty lines

    def _parse_request_line(self) -> bool:
        """Method, target and version, as the stdlib's ``parse_request`` takes them (3.13)."""
        self.command = None  # type: ignore[assignment]  # set in case of an error on the first line
        self.request_version = self.default_request_version
        self.close_connection = True
        if not self._skip_empty_lines():
            return False
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        # Split at HTTP's blanks only (RFC 9112 3): str.split() also splits at "\xa0", "\x85" or
        # "\x1c", where a front-end sees one word and would route and frame the request otherwise.
        words = [word for word in _BLANKS.split(self.requestline) if word]
        if not words:  # blanks only, or more empty lines than are passed over
            self.send_error(400, "Bad request syntax (no request line)")
            return False
        if len(words) >= 3:
            version = words[-1]
            number = _http_version(version)
            if number is None:
                self.send_error(400, f"Bad request version ({version!r})")
                return False
            if number >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if number >= (2, 0):
                self.send_error(505, f"Invalid HTTP version ({version[5:]})")
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(400, f"Bad request syntax ({self.requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            # HTTP/0.9 has no head: the stdlib went on to read one, and the client, which sends
            # none, waited for the read timeout (30 s) to get nothing.
            self.send_error(400, f"Bad request syntax ({self.requestline!r}): HTTP/0.9 is not supported")
            return False
        self.command, self.path = command, path
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")  # gh-87389: //host/path would read as another host
        return True

    @property
    def route_path(self) -> str:
        """The request target without its query string: what routes and error messages name."""
        return self.path.partition("?")[0]

    @property
    def query(self) -> str:
        return self.path.partition("?")[2]

    # ------------------------------------------------------------------
    # Dispatch.

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        """Admit the request (head, access, route, whole body), then run it holding a slot.

        Only a request whose body is in takes one of the ``max_concurrency``
        slots: clients that stall inside their body cannot lock others out.
        """
        server: Any = self.server
        if not server.head_arrived(self.connection):
            self.close_connection = True  # ended for a newcomer as its head came: nothing is served
            return
        self._served = True
        writer = ResponseWriter(self, new_request_id())
        started = time.monotonic()
        try:
            route = self._guarded(method, writer, lambda: self._admit(method, writer))
            if route is None:
                self._record_refusal(writer, started)
                return
            if not server.slots.acquire(blocking=False):
                self._answer_busy(writer)
                self._record_refusal(writer, started)
                return
            server.request_started()
            try:
                self._guarded(method, writer, lambda: route(self, writer))
            finally:
                server.slots.release()  # first: a request_finished waiter may send the next request at once
                server.request_finished()
        finally:
            if self.body_left_unread:
                # An unread body would be parsed as the next request on this connection.
                self.close_connection = True

    @property
    def body_left_unread(self) -> bool:
        """A body was announced and is not read (a refusal, a GET with a body): the answer must
        say the connection closes, since it does."""
        return not self._body_consumed and self._declares_body()

    def _record_refusal(self, writer: ResponseWriter, started: float) -> None:
        """An API call refused at the door (no key, bad Host, unknown path, busy, bad body) is a call too."""
        path = self.route_path
        if writer.error_type is not None and path.startswith("/v1/"):
            self.server.proxy.record_refusal(path, writer.status or 0, writer.error_type,  # type: ignore[attr-defined]
                                             writer.request_id, started)

    def _admit(self, method: str, writer: ResponseWriter) -> Optional[Endpoint]:
        """The route to run, once the head is sane, access is granted and the body is read; None if answered."""
        self._check_hosts()
        preflight = method == "OPTIONS" and "Origin" in self.headers and "Access-Control-Request-Method" in self.headers
        self._check_access(writer, preflight)
        if preflight:
            self._preflight(writer)
            return None
        route = self._find_route(method)
        if method in _BODY_METHODS:
            self._body = self._read_body()
        else:
            self._done_reading()
        return route

    def _check_hosts(self) -> None:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1 or not hosts and self.request_version == "HTTP/1.1":
            self.close_connection = True  # RFC 9112 3.2: exactly one Host in HTTP/1.1, else a 400
            raise InvalidRequest("an HTTP/1.1 request carries exactly one Host header")

    def _declares_body(self) -> bool:
        length = (self.headers.get("Content-Length") or "").strip(" \t")
        return "Transfer-Encoding" in self.headers or bool(length.lstrip("0"))  # "00" is no body either

    def _answer_busy(self, writer: ResponseWriter) -> None:
        self.close_connection = True
        exc = ProxyError("too many requests in flight; try again shortly", status=529)
        try:
            writer.error(exc)
        except ClientGone:
            pass

    def _guarded(self, method: str, writer: ResponseWriter, step: Callable[[], Any]) -> Any:
        """Run ``step``; turn every failure into the right answer, never a traceback. None after a failure."""
        try:
            return step()
        except ClientGone:
            self.close_connection = True
        except ProxyError as exc:
            self._fail(writer, exc)
        except Exception as exc:
            # The traceback only at DEBUG: stderr stays clean (RELIABILITY.md section 4, invariant e).
            log.error("internal error on %s %s: %s: %s", method, self.route_path, type(exc).__name__,
                      exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self._fail(writer, ProxyError("internal proxy error; see the proxy log", status=500))
        return None

    def _fail(self, writer: ResponseWriter, exc: ProxyError) -> None:
        try:
            if writer.streaming:
                error = {"type": "error", "error": {"type": exc.error_type, "message": exc.message}}
                writer.events([error], end=True)
            else:
                writer.error(exc)
        except ClientGone:
            self.close_connection = True

    def _find_route(self, method: str) -> Endpoint:
        path = self.route_path
        proxy = self.server.proxy  # type: ignore[attr-defined]
        route = proxy.route(method, path)
        if route is None:
            raise self._no_route(method, path, proxy)
        return route  # type: ignore[no-any-return]

    def _no_route(self, method: str, path: str, proxy: Any) -> ProxyError:
        allowed = proxy.allowed_methods(path)
        if allowed:
            self.close_connection = self.close_connection or method != "OPTIONS"
            return ProxyError(
                f"method {method} not allowed for {path}", status=405, error_type="invalid_request_error",
                headers=(("Allow", ", ".join(allowed)),),
            )
        if path.startswith("/v1/v1/") and proxy.route(method, path[3:]) is not None:
            # The SDKs add /v1 themselves: a base URL that ends in it doubles it. Claude Code shows
            # the 404 only as "an issue with the selected model": the log says it (once).
            exc = ProxyError(f"not found: {path} (the client's base URL should not end in /v1: "
                             f"ANTHROPIC_BASE_URL=http://HOST:PORT)", status=404)
            proxy.warn_once("a client asked for a path under /v1/v1/: its base URL should not end in /v1 "
                            "(ANTHROPIC_BASE_URL=http://HOST:PORT)")  # not the path: the client's, any length
            return exc
        return ProxyError(f"not found: {path}", status=404)

    # ------------------------------------------------------------------
    # Access control (RELIABILITY.md section 5).

    def _check_access(self, writer: ResponseWriter, preflight: bool) -> None:
        config = self.server.config  # type: ignore[attr-defined]
        origin = self.headers.get("Origin")
        if origin is not None:
            if origin not in config.allowed_origins:
                raise ProxyError("cross-origin requests are not allowed", status=403)
            # Only an origin the operator listed may read responses from a browser.
            writer.extra_headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                                     ("Access-Control-Expose-Headers", _EXPOSED)]
        elif self.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
            # What another site's page loads or opens (an image, a script, an iframe, a link): browsers
            # send no Origin with it, and a GET of /v1/models made the proxy call the upstream with
            # its key. No API client sends it (the SDKs' fetch sends no site).
            raise ProxyError("cross-origin requests are not allowed", status=403)
        # With a client key the Host check is redundant (a rebinding page cannot
        # present the key, and its Origin is refused above) and would refuse the
        # LAN names a --host 0.0.0.0 listener is reached under.
        if config.auth_key:
            if not preflight:  # browsers send preflights without credentials
                self._check_key(config.auth_key)
        elif not self._host_allowed(config):
            raise ProxyError("unexpected Host header", status=403)

    def _preflight(self, writer: ResponseWriter) -> None:
        """CORS preflight (reached only for an allowed Origin): say what the route accepts."""
        path = self.route_path
        allowed = self.server.proxy.allowed_methods(path)  # type: ignore[attr-defined]
        if not allowed:
            raise ProxyError(f"not found: {path}", status=404)
        asked = self.headers.get("Access-Control-Request-Headers") or ""
        names = [n.strip() for n in asked.split(",") if n.strip()]
        headers = [("Access-Control-Allow-Methods", ", ".join(allowed)), ("Access-Control-Max-Age", "600")]
        if names and all(TOKEN_RE.match(n) for n in names):
            headers.append(("Access-Control-Allow-Headers", ", ".join(names)))
        writer.empty(204, headers)

    def _host_allowed(self, config: Any) -> bool:
        host = (self.target_host if self.target_host is not None else self.headers.get("Host") or "").strip()
        match = _HOST_RE.match(host)
        if not match:
            return False
        name = match.group(1).lower()
        bound = str(self.server.server_address[0]).lower()  # type: ignore[attr-defined]
        allowed = {h.lower() for h in config.allowed_hosts}  # "name" or "name:port"
        return name in _LOOPBACK_HOSTS or name in allowed or host.lower() in allowed or name in (bound, f"[{bound}]")

    def _check_key(self, expected: str) -> None:
        # Compared exactly (no strip): a key with trailing junk is a different key.
        header, given = client_key(self.headers)
        given = given or self._page_key()
        if not given:  # Anthropic's words for a request without a key
            raise ProxyError("x-api-key header is required", status=401)
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
            # The header it came in: Claude Code's ANTHROPIC_AUTH_TOKEN is sent as a bearer token.
            raise ProxyError("invalid bearer token (Authorization)" if header == "Authorization" else "invalid x-api-key",
                             status=401)

    # ------------------------------------------------------------------
    # Request bodies (RELIABILITY.md S3, F5-F7), read in ``_admit`` before a slot is taken.

    def read_body_bytes(self) -> bytes:
        """The raw request body (passthrough), under the same limits."""
        if self._body is None:
            self._body = self._read_body()
        return self._body

    def read_json_body(self) -> Any:
        """The request body as JSON; every way it can be wrong is a 4xx (``door.loads_request``).

        The bytes are handed over: the handler keeps none of them while a long stream runs.
        """
        self._check_content_type()
        raw, self._body = self.read_body_bytes(), b""
        return loads_request(raw)

    def _read_body(self) -> bytes:
        """The whole body by Content-Length, under the body deadline and the cap on connections reading one."""
        server: Any = self.server
        length = self._content_length()
        limit = server.config.max_body_bytes
        if length > limit:
            self.close_connection = True  # the body stays unread
            raise ProxyError(f"request body of {length} bytes exceeds the {limit}-byte limit", status=413)
        body_deadline = time.monotonic() + server.config.body_timeout
        self._reader.deadline = min(self._reader.deadline or body_deadline, body_deadline)
        ticket = server.body_readers.enter(self.connection) if length else None
        try:
            data = self._read_exact(length)
        except socket.timeout:
            self.close_connection = True
            raise ProxyError("timed out reading the request body", status=408) from None
        except OSError:
            self.close_connection = True
            raise ClientGone() from None
        finally:
            if ticket is not None:
                server.body_readers.leave(ticket)
        if ticket is not None and ticket.evicted:
            self.close_connection = True  # its read side is shut: no next request on this connection
            if len(data) != length:
                raise ProxyError("request body too slow: the proxy is reading too many bodies at once", status=408)
        if len(data) != length:
            self.close_connection = True
            raise InvalidRequest("request body is shorter than its Content-Length")
        self._body_consumed = True
        self._done_reading()
        return data

    def _read_exact(self, length: int) -> bytes:
        """Up to ``length`` bytes, in pieces: memory grows with what arrives, not with what is declared."""
        parts: List[bytes] = []
        left = length
        while left > 0:
            piece = self.rfile.read(min(left, _BODY_PIECE))
            if not piece:
                break
            parts.append(piece)
            left -= len(piece)
        return b"".join(parts)

    def _done_reading(self) -> None:
        """The request is in: no deadline for writing a long response, each write bounded by the
        client timeout (a stream's writes by the kernel's, where it can: ResponseWriter.start_raw_stream)."""
        self._reader.deadline = None
        self.connection.settimeout(self.server.config.client_timeout)  # type: ignore[attr-defined]

    def _page_key(self) -> str:
        """The client key of a page a browser opens, from ``?key=``: a browser sends no header of
        its own, and ``run`` prints the usage page's address with the session's key in it."""
        if self.command not in ("GET", "HEAD") or (self.route_path.rstrip("/") or "/") not in _PAGES:
            return ""
        return urllib.parse.parse_qs(self.query).get("key", [""])[0]

    def _check_content_type(self) -> None:
        for name in ("Content-Type", "Content-Encoding"):
            if len(self.headers.get_all(name) or ()) > 1:  # one was read, the other not: say it
                raise InvalidRequest(f"{name} is given twice; give it once")
        ctype, _, params = (self.headers.get("Content-Type") or "").partition(";")
        ctype = ctype.strip().lower()
        if ctype and ctype not in _JSON_TYPES:
            raise InvalidRequest(f"Content-Type must be application/json, not {ctype!r}")
        # What else would read as "not valid JSON: body is not UTF-8", naming neither cause.
        coding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if coding != "identity":
            raise InvalidRequest(f"Content-Encoding {coding!r} is not supported: send the body uncompressed")
        charset = _CHARSET_RE.search(";" + params)
        if charset and charset.group(1).lower().replace("_", "-").startswith(_WIDE_CHARSETS):
            # A wide encoding is never UTF-8 JSON (a Latin-1 body of ASCII is: it is left alone).
            raise InvalidRequest(f"charset {charset.group(1)!r} is not supported: send the body as UTF-8")

    def _content_length(self) -> int:
        # Present, not truthy: an empty Transfer-Encoding is one too, and RFC 9112 6.1 says a
        # message with one is not framed by Content-Length; a front-end that reads it so frames
        # the body otherwise than we would.
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise ProxyError("request bodies framed by Transfer-Encoding are not supported; send Content-Length",
                             status=411, error_type="invalid_request_error")
        values = {v.strip(" \t") for v in self.headers.get_all("Content-Length") or []}  # HTTP's blanks, not "\xa0"
        if not values:
            self.close_connection = True
            raise ProxyError("Content-Length is required", status=411, error_type="invalid_request_error")
        value = next(iter(values))
        # ASCII digits only: str.isdigit() also takes "²" or "٣", which int() then refuses.
        if len(values) > 1 or not (value.isascii() and value.isdigit()):
            self.close_connection = True
            raise InvalidRequest("invalid Content-Length header")
        digits = value.lstrip("0") or "0"  # "0090" is 90 (RFC 9110 8.6: 1*DIGIT)
        return int(digits) if len(digits) <= 15 else 10**15  # any such length is over the limit
