"""HTTP calls to the upstream through ``urllib.request``: all the outbound I/O of a call (the start's
reachability check, ``reachability.py``, is the only other).

``Upstream`` owns one opener and one ``ConnectionPool`` per instance (per
server), the opener built with:
- a proxy handler with no proxy unless ``--proxy`` (or ``--use-env-proxy``) says
  otherwise, so ``HTTPS_PROXY`` in the environment is never used silently
  (RELIABILITY.md S8), and ``NO_PROXY`` only with ``--use-env-proxy``;
- a redirect handler that refuses, because urllib would re-send credentials
  to the redirect target (S7); credentials also go in unredirected headers;
- HTTP and HTTPS handlers over pooled keep-alive ``http.client`` connections
  (``_PooledOpen``): N sequential calls to one upstream use one TCP connection
  and one TLS handshake; through ``--proxy`` the connection to the proxy (for
  HTTPS, the CONNECT tunnel) is what is pooled. A connection goes back to the
  pool only when its response was read to its end and closed, and never after
  an abort; a reused connection the upstream closed meanwhile is replaced by a
  fresh one once, only when no byte of the response had arrived;
- connection classes that use the short connect timeout for TCP, the proxy's
  CONNECT and the TLS handshake together, then the long idle timeout for reads
  (S14), and hand the socket to an ``UpstreamCall`` as soon as TCP is up, so
  another thread can abort the call, its set-up included (S11).
Failures come out as ``errors.ProxyError`` subclasses with the status a client
should see (PROTOCOL.md 4.2, 4.3).
"""

from __future__ import annotations

import base64
import functools
import http.client
import io
import ipaddress
import json
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Generator, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import unquote, urlsplit

from .config import Config, env_proxies, is_loopback_host, unused_proxy_hint, unused_proxy_variables
from .content_coding import ContentDecoder, decoder_for
from .door import too_many_values
from .ending import abort_error
from .errors import (
    NO_RETRY,
    UpstreamNotJson,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
    body_text,
    error_from_status,
    is_json_answer,
    retry_headers,
)
from .http_head import MAX_RESPONSE_HEAD, HeadCutShort, read_headers
from .kernel_timeout import bound_by_kernel
from .redact import quoted, redact_headers, redact_text, redact_url
from .skim import SKIM_AFTER, LineSkimmer
from .version import __version__

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
_LINE_END = re.compile(rb"[\r\n]")  # what ends an SSE line (a CRLF: the CR, then an empty line the decoder drops)
_READ_SIZE = 64 * 1024  # one read of a streamed body: what one or a few packets bring
# The most a line may grow to with an allowance (``iter_lines``). No model's answer comes near
# it (128k output tokens are about 0.5 MB); an upstream that sends megabytes of blank lines first,
# or a compressed body that decodes to them, gets no further than this.
MAX_REPEAT_LINE = 16 * 1024 * 1024
_READ_SLICE = 256 * 1024  # one read of a JSON answer (see _read_capped)


class UpstreamCall:
    """One upstream request that another thread may abort (client gone, idle, deadline)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self.abort_reason: Optional[str] = None
        self.connected = False
        # A TCP connection to the first hop (the upstream, or the outbound proxy) was made:
        # a failure before it is the proxy's own when there is one.
        self.reached = False
        # The outbound proxy answered CONNECT with 200 (or the connection came set up from the
        # pool): an answer that is no HTTP, or a refused certificate, is the upstream's from then on.
        self.tunnelled = False
        # The idle timeout the call's reads run under, for the message when one times out.
        self.idle_timeout: Optional[float] = None
        # What to mask in anything made of this call's answer (set by ``Upstream.open``): the
        # proxy's secrets and the credential sent, a forwarded client key included.
        self.secrets: Tuple[str, ...] = ()
        # The caller's own work that need not wait for the answer (the prompt's token estimate): run
        # once the request is sent, while the upstream reads it, instead of after its head arrived.
        self.meanwhile: Optional[Callable[[], None]] = None
        # The whole request went out: from then on the upstream has the prompt, and may bill for it
        # whatever becomes of the answer.
        self.sent = False
        # The client has its whole answer (a stream's end went out): the client leaving now aborts
        # nothing. A one-shot client closes at once, and its abort cut the short drain of the
        # upstream's last bytes that gives the connection back to the pool (a new CONNECT and TLS
        # handshake for every stream). The drain is bounded by DRAIN_SECONDS all the same.
        self.answered = False
        # Requests made for this call (a changed request after a refusal, a fresh connection for a
        # pooled one that failed): the record's ``attempts`` counts them all.
        self.requests = 0
        # When a non-streaming call must be done (``time.monotonic()``; None: a stream): connecting too.
        self.deadline: Optional[float] = None
        # The attempt took a pooled connection, one that had carried an answer: the server speaks
        # the URL's scheme (a close is no TLS server refusing plain HTTP).
        self.pooled = False

    def hold(self, sock: socket.socket) -> None:
        """Take ``sock`` while its connection is set up (the proxy's CONNECT, the TLS handshake):
        an abort shuts it down as an attached one, but a timeout now is no read timeout yet."""
        with self._lock:
            self._sock = sock
            self.reached = True
            if self.abort_reason is not None:
                _shutdown(sock)

    def attach(self, sock: socket.socket) -> None:
        """Take ``sock`` once its connection is set up: from now on the call reads its answer."""
        with self._lock:
            self._sock = sock
            self.connected = self.reached = self.tunnelled = True
            if self.abort_reason is not None:
                _shutdown(sock)

    def detach(self, sock: socket.socket) -> bool:
        """Let go of ``sock`` (it goes back to the pool); False if the call was aborted: never reuse it then."""
        with self._lock:
            if self._sock is sock:
                self._sock = None
            return self.abort_reason is None

    def abort(self, reason: str) -> None:
        """Unblock any read on the upstream socket at once; the first reason sticks."""
        with self._lock:
            if reason == "client" and self.answered:
                return
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


# --------------------------------------------------------------------------
# Keep-alive connections: a pool per Upstream, bounded per (scheme, host, port, proxy).

# A connection idle this long is closed rather than reused: a NAT or firewall may have
# dropped it without a word, and a request sent into such a connection waits for the
# whole idle timeout. Servers that close sooner say so (FIN), which take() notices.
POOL_IDLE_SECONDS = 30.0
# Reading the rest of a response nobody wants any more (the [DONE] line, the final
# chunk) keeps its connection reusable; anything longer or slower closes it instead.
DRAIN_BYTES = 64 * 1024
MAX_INTERIM_RESPONSES = 16  # 1xx answers skipped before the final one; more is an upstream looping
ERROR_BODY_SECONDS = 5.0  # the most an error answer's body is waited for: its status is the answer
# A reused connection that fails this soon after the request went out, before any byte of an
# answer, was closed by the upstream while idle (its FIN crossed the request): the request is
# sent again on a fresh one. Later, the upstream had it (a worker that crashed, a balancer's cut
# after seconds of work): sent again, a request that costs tokens would be paid twice.
STALE_WINDOW = 1.0
DRAIN_SECONDS = 0.25

PoolKey = Tuple[str, str, Optional[str]]  # scheme, host[:port] connected to, tunnel target through a proxy


def _reusable(sock: Any) -> bool:
    """An idle connection is reusable when it has nothing to say: readable means EOF, a reset or junk."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            ready = bool(poller.poll(0))
        else:
            ready = bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False
    if not ready:
        return True
    if isinstance(sock, ssl.SSLSocket):
        # A TLS record that is not application data (a late session ticket) makes the
        # socket readable too; a non-blocking read consumes it and finds nothing.
        try:
            sock.settimeout(0.0)
            sock.recv(1)
        except ssl.SSLWantReadError:
            return True
        except (OSError, ValueError):
            return False
    return False


def _readable_within(sock: Any, seconds: float) -> bool:
    """Has ``sock`` something to read within ``seconds``? By poll where there is one: select takes no
    descriptor over 1023, and a raised open-file limit gives such numbers (open_files.py)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(max(0, -int(-seconds * 1000 // 1))))  # whole milliseconds, rounded up
    return bool(select.select([sock], [], [], seconds)[0])


class ConnectionPool:
    """Idle keep-alive connections of one ``Upstream``; thread-safe, no module-level state.

    ``take`` hands out an idle connection for a key (or None), ``give`` takes one
    back after a complete response, ``close`` ends every idle one (shutdown).
    Connections in use belong to their call, never to the pool.
    """

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._lock = threading.Lock()
        self._idle: Dict[PoolKey, List[Tuple[http.client.HTTPConnection, float]]] = {}
        self._closed = False
        self.opened = 0  # connections made so far (tests, diagnostics)

    def take(self, key: PoolKey) -> Optional[http.client.HTTPConnection]:
        while True:
            with self._lock:
                stale = self._expired(time.monotonic())
                idle = self._idle.get(key)
                conn = idle.pop()[0] if idle else None  # the most recently used first
            _close_all(stale)
            if conn is None or (conn.sock is not None and _reusable(conn.sock)):
                return conn
            conn.close()

    def give(self, key: PoolKey, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            keep = not self._closed and conn.sock is not None and len(idle) < self.per_host
            if keep:
                idle.append((conn, time.monotonic()))
        if not keep:
            conn.close()

    def counted(self) -> None:
        with self._lock:
            self.opened += 1

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def prune(self) -> None:
        """Close the connections idle too long, also when no call comes to take one (the
        watchdog's chore): a NAT forgets them, and they hold a socket on both ends meanwhile."""
        with self._lock:
            stale = self._expired(time.monotonic())
        _close_all(stale)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c, _ in idle]
            self._idle.clear()
        _close_all(conns)

    def _expired(self, now: float) -> List[http.client.HTTPConnection]:
        """Remove and return the connections idle too long (called under the lock)."""
        out = []
        for key in list(self._idle):
            keep = [(c, t) for c, t in self._idle[key] if now - t < POOL_IDLE_SECONDS]
            out += [c for c, t in self._idle[key] if now - t >= POOL_IDLE_SECONDS]
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return out


def _close_all(conns: List[http.client.HTTPConnection]) -> None:
    for conn in conns:
        conn.close()


_MAX_SIZE_LINE = 65536  # http.client's _MAXLINE, which caps a chunk's size line
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_DIGITS = "0123456789"


class _NoWait(io.RawIOBase):
    """The socket's raw reader, which can be told not to wait: while ``hold`` is set it reads
    nothing (as a non-blocking socket with nothing to read would), without a system call.

    It reads from the socket itself: the stdlib's reader adds two Python calls and three checks
    to every read, one read per streamed chunk. That reader (``raw``) is kept all the same: its
    ``close`` is what lets the connection's close leave an open response's socket alone.

    A read that timed out ends the reading, as the stdlib's reader does: the buffered reader
    above loses what it had taken of a line when a read times out, so a later read (the pool's
    drain) would take the rest of the body out of step and might hand back a connection whose
    body it misread as complete."""

    def __init__(self, raw: Any, sock: Any) -> None:
        super().__init__()
        self.raw = raw
        self.sock = sock
        self.recv_into = sock.recv_into
        self.hold = False
        self.timed_out = False

    def read_often(self) -> None:
        """A body that comes in pieces: its reads wait as long, without a poll before each (kernel_timeout)."""
        if type(self.sock) is socket.socket:  # (not TLS: kernel_timeout)
            timeout = self.sock.gettimeout()
            if timeout:
                bound_by_kernel(self.sock, socket.SO_RCVTIMEO, timeout)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> Optional[int]:
        if self.hold:
            return None
        if self.timed_out:
            raise OSError("cannot read from timed out object")
        try:
            return self.recv_into(buffer)  # type: ignore[no-any-return]
        except socket.timeout:
            self.timed_out = True
            raise
        except BlockingIOError:  # the kernel's bound passed (read_often)
            self.timed_out = True
            raise socket.timeout("timed out") from None

    def fileno(self) -> int:
        return self.raw.fileno()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.raw.close()
        super().close()


class _ReadsBy(io.RawIOBase):
    """A socket's raw reader whose reads all end by ``deadline`` (monotonic): the proxy's answer to
    CONNECT within what is left of the connect timeout. A proxy that trickled it a byte a second
    held the call as long as it liked: each byte started the socket's timeout anew."""

    def __init__(self, raw: Any, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.raw, self.sock, self.deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> Optional[int]:
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            return self.raw.readinto(buffer)  # type: ignore[no-any-return]
        except socket.timeout:
            raise socket.timeout("the outbound proxy did not answer CONNECT within the connect timeout") from None

    def fileno(self) -> int:
        return self.raw.fileno()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.raw.close()
        super().close()


# What a status line cut short can be: a beginning of "HTTP/1.1 200 OK" (a TLS alert or an SSH
# banner that ends without a newline is no HTTP, cut or not).
_STATUS_LINE_START = re.compile(rb"H(?:T(?:T(?:P(?:/(?:\d(?:\.(?:\d(?: \d{0,3}(?: [^\r\n]*)?)?)?)?)?)?)?)?)?\r?\Z")


class HeadCutOff(http.client.HTTPException):
    """The connection ended inside a response head: the answer is lost, not an empty one."""


class _HeadWatch:
    """The reader ``begin`` parses a head from; it notes a line that the connection's end cut short.

    http.client takes the end of the connection for the end of the head: a head cut after
    ``Transfer-Enc`` would pass for a complete response with an empty body.
    """

    def __init__(self, fp: Any) -> None:
        self.fp = fp
        self.cut = False
        self.cut_line = b""  # the line the end cut short

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self.fp.readline(limit)
        if not line.endswith(b"\n") and len(line) != limit:  # a line over the limit fails in http.client
            self.cut, self.cut_line = True, line
        return line

    def close(self) -> None:
        self.fp.close()  # http.client closes its reader when the status line is no HTTP


class _Response(http.client.HTTPResponse):
    """A response whose connection goes back to the pool when it is closed after a complete body."""

    cp_release: Optional[Callable[[bool], None]] = None  # set per response by _PooledOpen

    def __init__(self, sock: Any, *args: Any, **kw: Any) -> None:
        super().__init__(sock, *args, **kw)
        # Nothing is buffered yet: the same socket reader, behind one that can be held (read_available).
        self.fp = io.BufferedReader(_NoWait(self.fp.detach(), sock))
        self._interim = 0
        self.terminated = False  # a chunked body's terminating chunk was read: it is whole

    def begin(self) -> None:
        if self.headers is not None:
            return  # already begun
        reader, watch = self.fp, _HeadWatch(self.fp)
        self.fp = watch  # type: ignore[assignment]
        try:
            self._begin()
        except ConnectionError as exc:  # RemoteDisconnected too: no status line at all, a stale connection maybe
            exc.cp_answered = self._interim > 0  # type: ignore[attr-defined]  # a 1xx came: the upstream had it
            raise
        except (http.client.HTTPException, ValueError):
            if watch.cut and _STATUS_LINE_START.match(watch.cut_line):
                # "HTTP/1.1 2" and the end: an answer cut short (retried), not one that is no HTTP
                raise HeadCutOff("the connection closed inside the response head") from None
            raise
        finally:
            if self.fp is watch:  # else http.client closed it (a status line that is no HTTP): stays None
                self.fp = reader
        if watch.cut:
            raise HeadCutOff("the connection closed inside the response head")
        if self.status < 200:
            self.will_close = True  # a final 1xx (101): whatever follows is no HTTP/1.1 response
        elif self.chunked:
            reader.raw.read_often()

    def _begin(self) -> None:
        """http.client's ``begin`` (the same from 3.8 to 3.13), the header lines read by ``http_head``
        (the stdlib's message without the email feed parser); ``_read_status`` skips every 1xx."""
        version, status, reason = self._read_status()
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10  # some servers still say 0.9: read as 1.0
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        try:
            self.headers = self.msg = read_headers(self.fp, MAX_RESPONSE_HEAD)
        except HeadCutShort:  # as begin says of it (_HeadWatch): an answer lost, not a server that is no HTTP
            raise HeadCutOff("the connection closed inside the response head") from None
        bodiless = status in (204, 304) or 100 <= status < 200 or self._method == "HEAD"  # type: ignore[attr-defined]
        codings = self.headers.get_all("transfer-encoding")
        self.chunked = not bodiless and _chunked(codings)
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._check_close()  # type: ignore[attr-defined]
        # Transfer-Encoding beside a Content-Length, or in an HTTP/1.0 answer, is framing RFC 9112 6.1
        # calls faulty: the body is read as chunked, and the connection is not used again.
        if codings and (self.version == 10 or "content-length" in self.headers):
            self.will_close = True
        self.length = None if self.chunked or bodiless else _content_length(self.headers.get_all("content-length"))
        if bodiless:
            self.length = 0  # a body of fixed length 0, whatever its head says
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # an open connection with no way to tell the body's end: its close

    def _read_status(self) -> Tuple[str, int, str]:
        # http.client passes over 100 Continue alone: any other interim answer (103 Early Hints)
        # would be taken for the final one, and the real answer, still on its way, read as the
        # next request's on this pooled connection. RFC 9110 15.2: a client skips every 1xx.
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                raise http.client.HTTPException(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses")
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]  # its head: nothing we use

    def _get_chunk_left(self) -> Optional[int]:
        """http.client's own (the same from 3.8 to 3.13) with the two steps it calls for, once per
        streamed chunk, written in: toss the CRLF that ends the chunk just read (``_safe_read(2)``)
        and read the next size line (``_read_next_chunk_size``). The same errors, the same state."""
        chunk_left = self.chunk_left
        if chunk_left:
            return chunk_left
        fp: Any = self.fp
        if chunk_left is not None:
            crlf = fp.read(2)
            if len(crlf) < 2:
                raise http.client.IncompleteRead(crlf, 2 - len(crlf))
        line = fp.readline(_MAX_SIZE_LINE + 1)
        if len(line) > _MAX_SIZE_LINE:
            raise http.client.LineTooLong("chunk size")
        try:
            chunk_left = _chunk_size(line)
        except ValueError:
            # Out of step with the upstream: closed, and never whole (``terminated`` stays False), so
            # what it sends next is no answer to a later request on a pooled connection.
            self._close_conn()  # type: ignore[attr-defined]
            raise http.client.IncompleteRead(b"") from None
        if chunk_left == 0:  # the last chunk: its trailer, and the body is read
            self._read_and_discard_trailer()  # type: ignore[attr-defined]
            self._close_conn()  # type: ignore[attr-defined]
            self.terminated = True
            chunk_left = None
        self.chunk_left = chunk_left
        return chunk_left

    def read_available(self, most: int) -> bytes:
        """What ``read1`` gives, and every further HTTP/1.1 chunk already in the reader's buffer.

        ``read1`` stops at the end of a chunk, and upstreams send a chunk per token: a burst
        of 30 tokens that arrived in one packet cost 30 folds and 30 writes to the client.
        Only bytes already buffered (one socket read fills up to 8 KiB) are added; the wait is
        ``read1``'s alone.
        """
        if not self.chunked or self.fp is None or self._method == "HEAD":  # type: ignore[attr-defined]
            return self.read1(most)
        data = self._read1_chunked(most)  # type: ignore[attr-defined]  # what read1 does then, a call less
        if not data:
            return data
        parts, total = [data], len(data)
        nowait: _NoWait = self.fp.raw  # type: ignore[assignment]
        nowait.hold = True
        try:
            while total < most and self._next_chunk_buffered():
                piece = self._read1_chunked(most - total)  # type: ignore[attr-defined]
                parts.append(piece)
                total += len(piece)
        finally:
            nowait.hold = False
        return b"".join(parts) if len(parts) > 1 else data

    def _next_chunk_buffered(self) -> bool:
        """Can ``read1`` return data from the buffer alone (the end of the last chunk, the next
        chunk's size line and at least a byte of it)? The last chunk is left to ``read1``."""
        if self.fp is None:
            return False
        buffered = self.fp.peek(1)  # held: what is buffered, no socket read
        if self.chunk_left:
            return bool(buffered)
        start = 0
        if self.chunk_left == 0:  # the CRLF ending the chunk just read comes first
            if len(buffered) <= 2 or not buffered.startswith(b"\r\n"):
                return False  # most reads of a stream: that CRLF is all there is
            start = 2
        line = _size_line(buffered, start)  # None when incomplete or bad: read1 reports a bad one
        return line is not None and line[0] > 0 and len(buffered) > line[1]

    def close(self) -> None:
        release, self.cp_release = self.cp_release, None
        if release is None:
            super().close()
            return
        done = False
        try:
            done = not self.will_close and self._finish()
        finally:
            super().close()
            release(done)

    def rest_is_here(self, within: float) -> bool:
        """Is the rest of the body here, or here within ``within`` seconds? Nothing of it is consumed
        (only the CRLF ending the last chunk read, as http.client would): a stream's last events
        may then wait for the drain (``close``), which puts the connection back in the pool before
        the client can ask again on another connection. An upstream slow to end its body (the
        terminating chunk a second after message_stop) would otherwise hold them DRAIN_SECONDS."""
        if self._complete():
            return True
        sock = getattr(self, "cp_sock", None)
        if self.fp is None or sock is None:
            return False
        deadline = time.monotonic() + within
        while True:
            buffered = self._buffered()
            if self._rest_in(buffered):
                return True
            if self.chunked and self.chunk_left == 0 and buffered.startswith(b"\r\n"):
                # The CRLF ending the last chunk read, which http.client tosses before the next size
                # line: tossed now, the buffer is empty and can take what arrives (the terminator).
                self.fp.read(2)  # type: ignore[union-attr]
                self.chunk_left = None
                continue
            left = deadline - time.monotonic()
            try:
                # TLS may hold decrypted bytes the socket no longer shows as readable.
                arrived = _pending(sock) or left > 0 and _readable_within(sock, left)
            except (OSError, ValueError):
                return False
            if buffered or not arrived:
                return False  # (a part already buffered cannot be topped up without reading on)
            try:
                sock.settimeout(max(left, 0.001))  # a TLS record that trickles in holds no longer
                self.fp.peek(1)  # the buffer is empty: one read of what arrived, nothing consumed
            except (OSError, ValueError):
                return False  # the drain that follows sets its own timeout

    def _buffered(self) -> bytes:
        """What the reader holds, without a socket read."""
        nowait: _NoWait = self.fp.raw  # type: ignore[union-attr]
        nowait.hold = True
        try:
            return self.fp.peek(1)  # type: ignore[no-any-return,union-attr]
        finally:
            nowait.hold = False

    def _rest_in(self, buffered: bytes) -> bool:
        """Is the whole rest of the body in ``buffered`` (a chunked body's terminating chunk and the
        blank line after it; a sized body's remaining bytes)?"""
        if not self.chunked:
            return self.length is not None and len(buffered) >= self.length
        # Where the next size line starts: past the rest of the chunk being read and its CRLF.
        pos = self.chunk_left + 2 if self.chunk_left else (2 if self.chunk_left == 0 else 0)
        while True:
            line = _size_line(buffered, pos)
            if line is None:
                return False
            size, pos = line
            if size == 0:
                return _blank_line_follows(buffered, pos)  # after any trailer lines
            pos += size + 2

    def _complete(self) -> bool:
        if self.chunked:
            # Past the terminating chunk; not merely closed (a bad size line closes the reader too,
            # and that connection pooled gave the next request the rest of this answer).
            return self.terminated
        return self.length == 0

    def _finish(self) -> bool:
        """Is the body complete? Reads a short remainder first (within DRAIN_BYTES and DRAIN_SECONDS)."""
        if self._complete():
            return True
        sock = getattr(self, "cp_sock", None)
        if self.fp is None or sock is None or (self.length is not None and self.length > DRAIN_BYTES):
            return False
        deadline, budget = time.monotonic() + DRAIN_SECONDS, DRAIN_BYTES
        try:
            while not self._complete() and budget > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                sock.settimeout(left)
                piece = self.read(min(budget, 16384))
                if not piece and not self._complete():
                    return False
                budget -= len(piece)
        except (OSError, ValueError, http.client.HTTPException):
            return False
        return self._complete()


def _pending(sock: Any) -> bool:
    """Does a TLS socket hold decrypted bytes not read yet (which select() cannot see)?"""
    pending = getattr(sock, "pending", None)
    return bool(pending()) if pending is not None else False


def _size_line(data: bytes, pos: int) -> Optional[Tuple[int, int]]:
    """(size, where its data starts) of the chunk whose size line starts at ``pos`` in ``data``;
    None when the line is not all there, or is no size line."""
    end = data.find(b"\n", pos)
    if end < 0:
        return None
    try:
        return _chunk_size(data[pos:end]), end + 1
    except ValueError:
        return None


def _chunk_size(line: bytes) -> int:
    """The size a chunk's size line gives (its extensions after ``;`` left out); ValueError unless
    it is hex digits alone (RFC 9112 7.1): ``int`` also reads ``-1``, ``+5``, ``0x10`` and ``1_0``,
    and a size of -1 read the body to its close, a JSON answer waiting out its whole deadline."""
    size = line.split(b";", 1)[0].strip(b" \t\r\n")
    if not size or size.strip(_HEX_DIGITS) or len(size.lstrip(b"0")) > 16:  # leading zeros are allowed
        raise ValueError(f"bad chunk size {quoted(size)}")
    return int(size, 16)


def _chunked(codings: Optional[List[str]]) -> bool:
    """Is the body chunked (``Transfer-Encoding: chunked``)? None of it: a close ends it. Another
    coding (``gzip, chunked``) is refused: read as no transfer coding, its body was the raw chunks."""
    if not codings:
        return False
    names = [name.strip().lower() for value in codings for name in value.split(",") if name.strip()]
    names = [name for name in names if name != "identity"]  # RFC 2616's no-coding, still sent by a few
    if not names:
        return False
    if names == ["chunked"]:
        return True
    raise http.client.HTTPException(f"Transfer-Encoding {quoted(', '.join(names), 100)} is not supported (only chunked)")


def _content_length(values: Optional[List[str]]) -> Optional[int]:
    """The body's length from its Content-Length lines, None without one. Lines that disagree
    (``5`` and ``7``), or one that is not digits, leave the body's end unknown, and a connection
    read to the wrong end gives the next answer's bytes to this one (RFC 9112 6.3): an error."""
    if not values:
        return None
    parts = [part.strip() for value in values for part in value.split(",")]
    lengths = set()
    for part in [part for part in parts if part] or [""]:  # a list's empty elements are none (RFC 9110 5.6.1)
        if not part or part.strip(_DIGITS) or len(part.lstrip("0")) > 18:
            raise http.client.HTTPException(f"Content-Length {quoted(part)} is not a length")
        lengths.add(int(part))  # "5" and "05" agree
    if len(lengths) != 1:
        raise http.client.HTTPException(f"Content-Length lines disagree ({', '.join(map(str, sorted(lengths)))[:100]})")
    return lengths.pop()


def _blank_line_follows(data: bytes, pos: int) -> bool:
    """Does a blank line (the end of a chunked body's trailer) come in ``data`` from ``pos`` on?"""
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            return False
        if data[pos:end] in (b"", b"\r"):
            return True
        pos = end + 1


class _Tracked:
    """What the proxy adds to an ``http.client`` connection (``_TrackedHTTP``, ``_TrackedHTTPS``): its
    ``connect`` reports the socket to the call, one connect timeout covers TCP, a proxy's tunnel
    and TLS, and a request goes out in one send."""

    response_class = _Response

    def __init__(self, *args: Any, call: Optional[UpstreamCall], read_timeout: float,
                 pool: Optional[ConnectionPool] = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cp_call = call
        self._read_timeout = read_timeout
        self._pool = pool
        self._tcp = self._create_connection  # type: ignore[has-type]
        self._create_connection = self._first_hop
        self._set_up_by = 0.0  # when the connect timeout ends (monotonic), set by connect()

    def _first_hop(self, *args: Any, **kw: Any) -> socket.socket:
        sock = self._tcp(*args, **kw)
        if self.cp_call is not None:
            # What fails from now on is past the proxy's door; and the call can end the set-up
            # (CONNECT, TLS) from another thread: the client left, the deadline passed.
            self.cp_call.hold(sock)
        return sock  # type: ignore[no-any-return]

    def _time_left(self) -> float:
        left = self._set_up_by - time.monotonic()
        if left <= 0:
            raise socket.timeout("the connection was not set up within the connect timeout")
        return left

    def _tunnel(self) -> None:
        # Before 3.12 http.client leaves the CONNECT's response open, and a refusal's
        # traceback keeps it alive: its reader holds the socket's fd until the next GC.
        made: List[http.client.HTTPResponse] = []

        def response(*args: Any, **kw: Any) -> http.client.HTTPResponse:
            made.append(_Response(*args, **kw))
            made[-1].fp = io.BufferedReader(_ReadsBy(made[-1].fp.detach(), self.sock, self._set_up_by))
            return made[-1]

        self.response_class = response  # type: ignore[assignment]
        host = self._tunnel_host  # type: ignore[has-type]
        if ":" in host and not host.startswith("["):
            # An IPv6 address goes in brackets (RFC 9110's authority form: "CONNECT [::1]:443"); before
            # 3.12 http.client wrote it bare, which a strict proxy cannot tell from the port.
            self._tunnel_host = f"[{host}]"
        try:
            super()._tunnel()
            if self.cp_call is not None:
                self.cp_call.tunnelled = True  # the proxy said 200: what follows is the upstream's
        finally:
            self._tunnel_host = host  # bare again, for the TLS handshake
            del self.response_class  # the class's own again, for the real response
            for resp in made:
                resp.close()

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        # http.client sends the head and a bytes body in two sends: two segments, and the
        # upstream wakes twice, for every request. The proxy's bodies are bytes it just encoded
        # (a Claude Code turn, tens of KB): one send. (_buffer holds the head's lines, 3.8-3.13.)
        if isinstance(message_body, bytes) and not encode_chunked:
            self._buffer.extend((b"", b""))
            head = b"\r\n".join(self._buffer)
            del self._buffer[:]
            self.send(head + message_body)
            return
        super()._send_output(message_body, encode_chunked)

    def connect(self) -> None:
        # One connect timeout for TCP, the proxy's tunnel and TLS together.
        self._set_up_by = time.monotonic() + self.timeout
        if isinstance(self, http.client.HTTPSConnection):
            http.client.HTTPConnection.connect(self)  # TCP (+ the proxy's tunnel)
            self.sock = self._handshake()
        else:
            super().connect()  # TCP
        if self._pool is not None:
            self._pool.counted()
        self.sock.settimeout(self._read_timeout)
        if self.cp_call is not None:
            self.cp_call.attach(self.sock)

    def _handshake(self) -> ssl.SSLSocket:
        """``HTTPSConnection.connect``'s TLS step (the same from 3.8 to 3.13), but the TLS socket is
        the call's before the handshake starts, so that an abort ends a handshake that stalls,
        and the handshake has what is left of the connect timeout."""
        tls = self._context.wrap_socket(self.sock, server_hostname=self._tunnel_host or self.host,
                                        do_handshake_on_connect=False)
        try:
            if self.cp_call is not None:
                self.cp_call.hold(tls)
            tls.settimeout(self._time_left())
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls


class _TrackedHTTP(_Tracked, http.client.HTTPConnection):
    pass


class _TrackedHTTPS(_Tracked, http.client.HTTPSConnection):
    pass


class _Stale(Exception):
    """A reused connection failed before any byte of the response came: try a fresh one."""


# ConnectionError covers RemoteDisconnected (EOF where the status line should be),
# resets and broken pipes; a timeout is not staleness and is never retried.
_STALE_ERRORS = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class _PooledOpen:
    """``do_open`` for pooled connections (one instance per handler; the pool is the Upstream's).

    What urllib's own ``do_open`` does, except that the connection is not
    forced to close: it comes from the pool, and goes back to it when its
    response is closed after a complete body. A reused connection that fails
    before any response byte arrives is replaced by a fresh one, once.
    """

    def __init__(self, pool: ConnectionPool, read_timeout: float) -> None:
        self.pool = pool
        self.read_timeout = read_timeout

    def open(self, factory: Any, req: urllib.request.Request, scheme: str) -> http.client.HTTPResponse:
        if not req.host:
            raise urllib.error.URLError("no host given")
        call: Optional[UpstreamCall] = getattr(req, "cp_call", None)
        key: PoolKey = (scheme, req.host, req._tunnel_host or None)  # type: ignore[attr-defined]
        headers, tunnel_headers = _headers(req)
        read_timeout = call.idle_timeout if call is not None and call.idle_timeout else self.read_timeout
        conn = self.pool.take(key)
        if conn is not None:
            if call is not None:
                call.pooled = True
            conn.cp_call = call  # type: ignore[attr-defined]
            conn.sock.settimeout(read_timeout)
            if call is not None:
                call.attach(conn.sock)
            try:
                return self._exchange(conn, key, req, headers, call, reused=True)
            except _Stale:
                if call is not None:
                    call.sent = call.pooled = False  # the request died with the stale connection; the fresh one sends it
                    call.requests += 1  # it may have reached the upstream all the same (one that crashed)
                log.debug("reused upstream connection to %s was closed; opening a new one", req.host)
        conn = factory(req.host, timeout=req.timeout, call=call, read_timeout=read_timeout, pool=self.pool)
        if req._tunnel_host:  # type: ignore[attr-defined]
            conn.set_tunnel(req._tunnel_host, headers=tunnel_headers)  # type: ignore[attr-defined]
        return self._exchange(conn, key, req, headers, call, reused=False)

    def _exchange(self, conn: Any, key: PoolKey, req: urllib.request.Request, headers: Dict[str, str],
                  call: Optional[UpstreamCall], reused: bool) -> http.client.HTTPResponse:
        try:
            sent_at = time.monotonic()
            early = None
            try:
                conn.request(req.get_method(), req.selector, req.data, headers,
                             encode_chunked=req.has_header("Transfer-encoding"))
                sent_at = time.monotonic()
            except OSError as err:
                early = _early_answer(conn, err)
                if early is None and self._stale(err, call, reused, sent_at):
                    raise _Stale() from err
                if early is None:
                    raise urllib.error.URLError(err) from None
            if call is not None:
                call.sent = True
            if call is not None and call.meanwhile is not None:
                work, call.meanwhile = call.meanwhile, None
                work()
            resp = early or conn.getresponse()
            if reused and resp.status == 408 and time.monotonic() - sent_at < STALE_WINDOW:
                # The upstream's word that the idle connection timed out, sent as it closed it,
                # not an answer to this request (which it never read): a fresh connection, as for a FIN.
                resp.close()
                raise _Stale()
        except _STALE_ERRORS as err:
            conn.close()
            if self._stale(err, call, reused, sent_at):
                raise _Stale() from err
            raise
        except http.client.BadStatusLine as err:
            conn.close()
            if reused:
                # A connection that carried an HTTP answer before: a broken keep-alive, worth another
                # try (on a fresh one), not an upstream that is no HTTP server (told so, no retry).
                # Not sent again here: the upstream had the request, and may have run it.
                raise ConnectionResetError(f"a reused connection's answer began with {quoted(err.line)}, "
                                           "not a status line") from err
            raise
        except BaseException:
            conn.close()
            raise
        resp.url = req.get_full_url()  # type: ignore[attr-defined]
        resp.msg = resp.reason  # type: ignore[assignment]  # what urllib's do_open does
        if not resp.will_close:
            resp.cp_sock = conn.sock  # type: ignore[attr-defined]
            resp.cp_release = functools.partial(self._release, key, conn, call)  # type: ignore[attr-defined]
        return resp  # type: ignore[no-any-return]

    @staticmethod
    def _stale(err: BaseException, call: Optional[UpstreamCall], reused: bool, sent_at: float) -> bool:
        """Did a reused connection fail because the upstream had closed it while idle? Only if it
        failed soon after the request went out (``STALE_WINDOW``) and before any answer (a 1xx)."""
        aborted = call is not None and call.abort_reason is not None
        return (reused and not aborted and isinstance(err, _STALE_ERRORS) and not isinstance(err, socket.timeout)
                and not getattr(err, "cp_answered", False) and time.monotonic() - sent_at < STALE_WINDOW)

    def _release(self, key: PoolKey, conn: Any, call: Optional[UpstreamCall], complete: bool) -> None:
        sock = conn.sock
        conn.cp_call = None
        if sock is None or call is not None and not call.detach(sock) or not complete:
            conn.close()  # aborted, broken or partly read: never reused
            return
        sock.settimeout(self.read_timeout)
        self.pool.give(key, conn)


def _early_answer(conn: Any, err: OSError) -> Optional[http.client.HTTPResponse]:
    """The answer an upstream sent before it read the whole request, then closed (nginx's 413
    for a body over ``client_max_body_size``): the send fails, yet the answer is there to read.
    It was "could not reach the upstream", retried with the whole body each time. None when
    there is none (an idle connection the upstream had closed, a send that timed out)."""
    if not isinstance(err, ConnectionError) or getattr(conn, "sock", None) is None:
        return None  # a timeout (a read now would wait as long again), or no connection made
    try:
        return conn.getresponse()  # type: ignore[no-any-return]
    except (OSError, http.client.HTTPException, ValueError):
        return None


def _where_not_found(message: str, method: str, url: str, secrets: Tuple[str, ...]) -> str:
    """A 404's message with the URL that gave it: "Not Found" alone reads like an unknown model,
    where most often the upstream URL lacks the ``/v1`` its server serves under (Ollama's). Not for
    an Azure deployment's URL, which has no /v1 (a wrong deployment name is its usual 404)."""
    path = urlsplit(url).path
    hint = "" if "/v1" in path or "/openai/deployments/" in path else "; does the upstream URL need /v1?"
    return f"{message} ({method} {redact_url(url, secrets)}{hint})"


def _headers(req: urllib.request.Request) -> Tuple[Dict[str, str], Dict[str, str]]:
    """The request's headers as urllib's ``do_open`` builds them, minus its ``Connection: close``;
    and the headers of a CONNECT through a proxy (Proxy-Authorization, never sent to the origin)."""
    headers = dict(req.unredirected_hdrs)
    headers.update({k: v for k, v in req.headers.items() if k not in headers})
    headers = {name.title(): val for name, val in headers.items()}
    tunnel = {}
    if req._tunnel_host and "Proxy-Authorization" in headers:  # type: ignore[attr-defined]
        tunnel["Proxy-Authorization"] = headers.pop("Proxy-Authorization")
    return headers, tunnel


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, opener: _PooledOpen) -> None:
        super().__init__()
        self._pooled = opener

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self._pooled.open(_TrackedHTTP, req, "http")


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, opener: _PooledOpen, context: "TLSContext") -> None:
        # Not HTTPSHandler.__init__: from Python 3.12 it loads the system CA store
        # (about 50 ms) even when no HTTPS upstream is ever called.
        urllib.request.AbstractHTTPHandler.__init__(self)
        self._pooled = opener
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = functools.partial(_TrackedHTTPS, context=self._tls.get())
        return self._pooled.open(factory, req, "https")


class TLSContext:
    """The SSL context for HTTPS upstreams, built on first use.

    Loading the system CA store costs about 50 ms of start-up, which a plain-HTTP
    upstream (Ollama, vLLM, a local server) should never pay. A ``--ca-bundle``
    is loaded at once, so a bad one stops the start.
    """

    def __init__(self, ca_bundle: Optional[str]) -> None:
        self._ca_bundle = ca_bundle
        self._lock = threading.Lock()
        self._context = tls_context(ca_bundle) if ca_bundle is not None else None

    def get(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                self._context = tls_context(self._ca_bundle)
            return self._context


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError and maps to 502


def tls_context(ca_bundle: Optional[str], setting: str = "--ca-bundle") -> ssl.SSLContext:
    """The context for HTTPS upstreams (S18); a bad ``--ca-bundle`` is a ValueError naming ``setting``."""
    if ca_bundle is None:
        return _as_before_313(ssl.create_default_context())
    if os.path.isdir(ca_bundle):
        raise ValueError(f"{setting} {ca_bundle}: is a directory; give a PEM file of CA certificates")
    if not os.path.isfile(ca_bundle):
        raise ValueError(f"{setting} {ca_bundle}: no such file")
    try:
        return _as_before_313(ssl.create_default_context(cafile=ca_bundle))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise ValueError(f"{setting} {ca_bundle}: not a PEM file of CA certificates ({reason})") from None


def _as_before_313(context: ssl.SSLContext) -> ssl.SSLContext:
    """Without the strict X.509 checks Python 3.13 turned on by default: a corporate CA without a
    keyUsage extension (TLS-inspecting proxies' often lack it) failed every call on 3.13 alone,
    "CA cert does not include key usage extension", while curl, browsers and Python 3.8 to 3.12
    take it. The chain and the host name are verified as ever."""
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


class _ProxyHandler(urllib.request.ProxyHandler):
    """urllib's ProxyHandler, but ``NO_PROXY`` is the one given, not read from the environment.

    urllib's own asks ``proxy_bypass`` on every call, which reads the environment (and, on
    macOS, the system settings) even for an explicit proxy: ``NO_PROXY=*`` turned ``--proxy``
    off without a word. Only http:// proxies reach here (``config.check_proxy_url``).
    """

    def __init__(self, proxies: Dict[str, str], no_proxy: str) -> None:
        super().__init__(proxies)
        self._no_proxy = no_proxy

    def proxy_open(self, req: urllib.request.Request, proxy: str, kind: str) -> None:
        port = 443 if req.type == "https" else 80  # the URL's when it names none
        if self._no_proxy and req.host and bypasses_proxy(req.host, self._no_proxy, port):
            return  # straight to the upstream
        parts = urlsplit(proxy)
        if parts.username or parts.password:  # as curl: a user alone is sent with an empty password
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode("utf-8")
            req.add_header("Proxy-authorization", "Basic " + base64.b64encode(pair).decode("ascii"))
        req.set_proxy(unquote(parts.netloc.rpartition("@")[2]), "http")
        # None: the http/https handlers go on, to the proxy (a CONNECT tunnel for https).


# NO_PROXY's entries are separated by commas and/or blanks, as curl reads them (Claude Code's docs
# write "NO_PROXY=localhost example.com"); urllib splits on commas alone.
_NO_PROXY_SPLIT_RE = re.compile(r"[,\s]+")
_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def bypasses_proxy(host: str, no_proxy: str, default_port: Optional[int] = None) -> bool:
    """Does ``NO_PROXY`` send ``host`` (``name[:port]``, ``[v6]:port``) past the proxy?

    Read as curl reads it: ``*`` alone matches everything; a name matches itself and its
    subdomains (``corp.example``, ``.corp.example`` and ``*.corp.example`` match
    ``llm.corp.example``, not ``xcorp.example``), without case, a trailing dot ignored on either side; an address
    (``127.0.0.1``, ``::1`` with or without brackets) or a range (``10.0.0.0/8``, ``fd00::/8``)
    matches an upstream given as an address, compared as addresses (no name is looked up, as in
    curl); ``:port`` on an entry must be the URL's own (``default_port`` when it names none).
    urllib compared addresses and ranges as text and split on commas only: a corporate NO_PROXY
    of ranges, or written with spaces, sent calls to in-house servers through the proxy.
    """
    entries = [entry for entry in _NO_PROXY_SPLIT_RE.split(no_proxy) if entry]
    if entries == ["*"]:
        return True
    parts = urlsplit("//" + host)
    name = (parts.hostname or "").rstrip(".")
    try:
        address: Optional[_Address] = ipaddress.ip_address(name)
    except ValueError:
        address = None
    port = parts.port or default_port
    return any(_no_proxy_match(entry, name, port, address) for entry in entries)


def _no_proxy_match(entry: str, name: str, port: Optional[int], address: Optional[_Address]) -> bool:
    """Does one NO_PROXY entry match the upstream ``name`` (lower case; ``address`` when it is one)?"""
    if entry.startswith("["):  # [v6] or [v6]:port
        entry, _, rest = entry[1:].partition("]")
        wanted = rest[1:] if rest.startswith(":") else None
    elif entry.count(":") == 1:  # name:port, v4:port
        entry, wanted = entry.split(":")
    else:  # a name, a v4 address or range, a bare v6 one (its colons are no port)
        wanted = None
    if wanted is not None and wanted != str(port):
        return False
    entry = entry.lower().rstrip(".")
    if address is not None:
        try:
            network = ipaddress.ip_network(entry, strict=False)  # an address is a range of one
        except ValueError:
            return False  # a name never matches an address
        return network.version == address.version and address in network
    # "*.corp.example" is the suffix ".corp.example", as Go, Node's proxy-from-env and many tools
    # read it (curl matched it against nothing: a corporate list of them went unheeded).
    entry = entry[1:] if entry.startswith("*.") else entry
    entry = entry.lstrip(".")
    return bool(entry) and (name == entry or name.endswith("." + entry))


def proxy_settings(config: Config, environ: Mapping[str, str]) -> Tuple[Dict[str, str], str]:
    """The proxy per upstream scheme and the NO_PROXY list: --proxy alone (the environment is not
    consulted at all), else with --use-env-proxy the environment's (ValueError naming a bad one)."""
    if config.proxy:
        return {"http": config.proxy, "https": config.proxy}, ""
    if config.use_env_proxy:
        return env_proxies(environ)
    return {}, ""


def proxy_urls(config: Config, environ: Mapping[str, str]) -> List[str]:
    """The outbound proxy URLs calls go through: --proxy, or with --use-env-proxy the environment's.
    Their passwords are secrets to mask wherever they came from (ValueError for a bad one)."""
    return sorted(set(proxy_settings(config, environ)[0].values()))


def build_opener(config: Config, pool: Optional[ConnectionPool] = None,
                 environ: Optional[Mapping[str, str]] = None) -> urllib.request.OpenerDirector:
    proxies, no_proxy = proxy_settings(config, os.environ if environ is None else environ)
    pooled = _PooledOpen(pool or ConnectionPool(config.max_idle_per_host), config.idle_timeout)
    return urllib.request.build_opener(
        _ProxyHandler(proxies, no_proxy),  # also keeps build_opener from adding urllib's own
        _RefuseRedirects(),
        _HTTPHandler(pooled),
        _HTTPSHandler(pooled, TLSContext(config.ca_bundle)),
    )


# --------------------------------------------------------------------------
# The client.


class Upstream:
    """The transport to every provider of one server: one opener, one connection pool, shared settings.

    Credentials and extra headers differ per provider and come with each call.
    ``close()`` (at shutdown) closes the idle pooled connections.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pool = ConnectionPool(config.max_idle_per_host)
        # Read once: the proxies calls go through and the passwords masked come from the same values.
        environ = dict(os.environ)
        self.opener = build_opener(config, self.pool, environ)
        self.proxy_urls = proxy_urls(config, environ)  # their passwords: for the secrets to mask
        # HTTPS_PROXY and the like that no setting lets us use, for the "could not reach" message.
        self.unused_proxies = unused_proxy_variables(config, environ)

    def close(self) -> None:
        self.pool.close()

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
        read_timeout: Optional[float] = None,
    ) -> Any:
        """Send one request; a 2xx response is returned open, anything else raises.

        ``headers`` hold the API's and the provider's headers, ``auth`` the
        credential (never resent to a redirect target); ``secrets`` are masked in
        every error message. Close the response (``with resp:``) after reading
        it: a complete one gives its connection back to the pool. ``read_timeout``
        replaces the idle timeout for this call's reads.
        """
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("User-Agent", f"claudeproxy/{__version__}")
        for name, value in headers:
            req.add_header(name, value)
        for name, value in auth:
            req.add_unredirected_header(name, value)  # never follows a redirect (S7)
        req.cp_call = call  # type: ignore[attr-defined]
        call.idle_timeout = read_timeout or self.config.idle_timeout
        call.secrets = secrets
        # This attempt's: a connect timeout is no read timeout, a refusal before the tunnel the proxy's.
        call.connected = call.reached = call.tunnelled = call.sent = call.pooled = False
        call.requests += 1
        if log.isEnabledFor(logging.DEBUG):
            sent = redact_headers(req.header_items(), secrets)
            log.debug("upstream %s %s headers=%s", method, redact_url(url), sent)
        connect = self.config.connect_timeout
        if call.deadline is not None:
            # Within the call's deadline too: the watchdog can end a call only once it holds a
            # socket, and a connect held the deadline off (8 s of --connect-timeout past a 2 s one).
            # A moment past it, so that the watchdog has marked the call ended by its deadline (the
            # client's 504) when the connect gives up, not a "could not reach" the client retries.
            connect = max(0.05, min(connect, call.deadline - time.monotonic() + _PAST_THE_DEADLINE))
        try:
            resp = self.opener.open(req, timeout=connect)
        except urllib.error.HTTPError as exc:
            with exc:
                body_bytes = _error_body(exc) if exc.fp is not None else b""
            proxy = _proxy_of(req)
            if exc.code == 407 and proxy is not None or _maybe_the_proxys(exc.code, body_bytes, req):
                # An answer, as the upstream's own error status is: not a prompt sent and then lost
                # (what it cost is known, nothing), though the whole request went to the proxy.
                call.sent = False
                raise (_proxy_auth_refused(proxy) if exc.code == 407 and proxy is not None else
                       _proxys_answer(exc.code, body_bytes, exc.headers, req, secrets)) from None
            error = error_from_status(exc.code, body_bytes, exc.headers, secrets)
            if exc.code == 404:
                error.message = _where_not_found(error.message, method, url, secrets)
            raise error from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise _transport_error(exc, call, req, secrets, self.unused_proxies) from None
        try:
            decoder = content_decoder(resp.headers)
        except UpstreamUnavailable:
            resp.close()
            raise
        if decoder is not None:
            resp.cp_decoder = decoder
        return resp


def content_decoder(headers: Any) -> Optional[ContentDecoder]:
    """A decoder for a body the upstream compressed although it was asked for ``identity``
    (gateways that compress anyway); None for a plain one. Other codings are refused: no retry,
    the same upstream will send the same."""
    coding = (headers.get("Content-Encoding") or "").strip().lower() if headers is not None else ""
    return decoder_for(coding)


def _decoded(data: bytes, decoder: ContentDecoder, limit: int) -> bytes:
    """A whole compressed body, decoded; at most ``limit`` bytes of it (more is an error, not a buffer)."""
    out = decoder.decompress(data, limit + 1)
    if len(out) <= limit and not decoder.has_more:
        out += decoder.finish()
    if len(out) > limit or decoder.has_more:
        raise UpstreamUnavailable(f"upstream response is larger than {limit} bytes")
    return out


def _error_body(exc: urllib.error.HTTPError) -> bytes:
    """An error answer's body, decoded if a gateway compressed it; empty if it cannot be read.

    The status is the answer: a body cut by a reset or a bad chunk, or one that never ends on a
    connection held open, leaves the message empty, within ``ERROR_BODY_SECONDS``. (A read that
    failed here was a 500; a body held open held the call until its whole deadline.)
    """
    sock = getattr(getattr(getattr(exc.fp, "fp", None), "raw", None), "sock", None)  # _Response's _NoWait
    if sock is not None:
        try:
            current = sock.gettimeout()
            if current is None:  # blocking, its reads bounded by the kernel (read_often)
                bound_by_kernel(sock, socket.SO_RCVTIMEO, ERROR_BODY_SECONDS)
            else:
                sock.settimeout(min(current, ERROR_BODY_SECONDS))
        except OSError:
            return b""
    try:
        body = exc.read(MAX_ERROR_BODY)
    except (OSError, http.client.HTTPException, ValueError):
        return b""
    try:
        decoder = content_decoder(exc.headers)
        return _decoded(body, decoder, MAX_ERROR_BODY) if decoder is not None else body
    except UpstreamUnavailable:
        return b""  # binary is no message: the status speaks alone


_RETRY = ("x-should-retry", "true")
# What http.client raises when a proxy answers CONNECT with anything but 200 (Python 3.8 to 3.13).
_TUNNEL_REFUSED_RE = re.compile(r"^OSError: Tunnel connection failed: (\d{3})\b ?(.*)$")


def _proxy_of(req: urllib.request.Request) -> Optional[str]:
    """The outbound proxy's host:port (never its credentials) when the request went through one."""
    through = req._tunnel_host or req.has_proxy()  # type: ignore[attr-defined]  # CONNECT, or absolute-URI
    return req.host if through else None


def _proxy_auth_refused(proxy: str) -> UpstreamUnavailable:
    # Not the proxy's 407 itself: to an HTTP client a 407 says that *its own* proxy wants
    # credentials. And no retry: the same credentials will be refused again.
    return UpstreamUnavailable(
        f"the outbound proxy at {proxy} refused authentication (407); check the user and password "
        "in the proxy URL (http://USER:PASSWORD@HOST:PORT). They go as Basic credentials, the only kind "
        "claudeproxy sends: a proxy that takes only NTLM or Negotiate (Kerberos) needs a local relay "
        "that speaks it (cntlm, px) as --proxy", headers=(NO_RETRY,))


# What a forwarding proxy answers itself: its policy (403), its login page (a 3xx to it), or its own
# way on failing (502 to 504).
_PROXY_STATUSES = frozenset({301, 302, 303, 307, 308, 403, 502, 503, 504})


def _maybe_the_proxys(status: int, body: bytes, req: urllib.request.Request) -> bool:
    """Might this error answer be the outbound proxy's own, not the upstream's? Only for an http://
    upstream, whose request the proxy forwards and answers for (through an https:// tunnel every
    answer is the upstream's), and only when the body is not an API's JSON error: "403 Blocked by
    policy" in HTML passed for the upstream's, and blamed the key."""
    forwarded = _proxy_of(req) is not None and not req._tunnel_host  # type: ignore[attr-defined]
    return forwarded and status in _PROXY_STATUSES and not is_json_answer(body)


def _proxys_answer(status: int, body: bytes, headers: Any, req: urllib.request.Request,
                   secrets: Tuple[str, ...]) -> UpstreamUnavailable:
    """A 502 naming the proxy (host:port, never its credentials) as the likely author. A 403 is its
    policy and a 3xx its login page, the same on every try (no retry, as its refusal of a tunnel);
    a 5xx is worth another,
    when its Retry-After says (whoever wrote the page, the wait it asks for is passed on)."""
    proxy, host = _proxy_of(req), urlsplit(req.full_url).netloc.rpartition("@")[2]
    text = redact_text(" ".join(body_text(body, headers).split()), secrets)[:200]  # masked, then cut
    said = f"{status} {http.client.responses.get(status, '')}".strip() + (f": {text}" if text else "")
    policy = status == 403 or status < 400  # the same on every try: its rule, its login page
    location = headers.get("Location") if status < 400 and headers is not None else None
    if location:  # a portal's page, or the upstream's own move to https: the address tells which
        said += f", to {quoted(redact_url(location, secrets), 200)}"
    why = (f"its policy may not allow {host}" if status == 403 else
           "it may want a login first (a portal's redirect)" if status < 400 else f"it may not have reached {host}")
    return UpstreamUnavailable(redact_text(f"the outbound proxy at {proxy} may have answered for the upstream at "
                                           f"{host} ({said}), not the upstream's API: {why}", secrets),
                               headers=(NO_RETRY,) if policy else
                               (_RETRY, *(h for h in retry_headers(headers) if h[0] != _RETRY[0])))


def _transport_error(exc: BaseException, call: UpstreamCall, req: urllib.request.Request,
                     secrets: Tuple[str, ...], unused_proxies: List[str]) -> Exception:
    aborted = abort_error(call.abort_reason)
    if aborted is not None:
        return aborted  # our own abort (client gone, shutdown, deadline) made the call fail
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.timeout) and call.connected:
        return UpstreamTimeout(f"upstream sent nothing for {call.idle_timeout or 0:g} s")
    detail = redact_text(f"{type(reason).__name__}: {reason}", secrets)
    parts = urlsplit(req.full_url)
    name = parts.hostname or "?"
    name = f"[{name}]" if ":" in name else name  # an IPv6 address, told from its port
    host = name + (f":{parts.port}" if parts.port else "")  # which of several local servers
    proxy = _proxy_of(req)
    if proxy is not None:
        return _proxy_failure(reason, call, req, proxy, host, detail)
    lasting = _lasting_failure(reason, f"the upstream at {host}", detail)
    if lasting is not None:
        return lasting
    # The corporate laptop: the upstream is reachable only through the proxy its HTTPS_PROXY names.
    hint = ""
    if unused_proxies and not is_loopback_host(parts.hostname or ""):
        hint = f"; {unused_proxy_hint(unused_proxies)}"
    # Once a connection was made, the upstream was reached: a reset then broke its answer.
    said = (f"the connection to the upstream at {host} broke before its answer ({detail})" if call.connected
            else f"could not reach the upstream at {host} ({detail})")
    if call.connected and not call.pooled and parts.scheme == "http" and isinstance(
            reason, (http.client.RemoteDisconnected, ConnectionResetError)):
        # OpenSSL's and Python's TLS servers close a plain-HTTP request without a word.
        hint += "; an http:// URL for an https:// server?"
    nobody = _nobody_there(reason, redact_text(redact_url(req.full_url), secrets))
    if nobody is not None:
        return UpstreamUnreachable(f"{said}: {nobody}{hint}", headers=(NO_RETRY,))
    return UpstreamUnavailable(f"{said}{hint}", headers=(_RETRY,))


# getaddrinfo's answers that the name does not exist. Not EAI_AGAIN ("Temporary failure in name
# resolution"), what a laptop between two networks gets: the client's own retries ride that out.
_NO_SUCH_NAME = frozenset(getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name))


def _nobody_there(reason: BaseException, url: str, what: str = "server") -> Optional[str]:
    """What to check when no connection could be made at all (UpstreamUnreachable); None for a
    failure a retry may get past (a timeout, a reset, a network that is down for a moment)."""
    if isinstance(reason, ConnectionRefusedError):
        return f"nothing accepts connections for {url} (is the {what} running?)"
    if isinstance(reason, socket.gaierror) and reason.errno in _NO_SUCH_NAME:
        return f"the host name of {url} does not resolve (a typo in the URL?)"
    return None


_NAME_MISMATCH = 62  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH ("Hostname mismatch")
_PAST_THE_DEADLINE = 0.3  # s: three of the watchdog's ticks (watchdog.TICK_SECONDS)


def _lasting_failure(reason: BaseException, where: str, detail: str,
                     through_proxy: bool = False) -> Optional[UpstreamUnavailable]:
    """A failure the same call meets again every time (a refused certificate, a server that does
    not speak TLS or HTTP): the client is told not to retry, and the proxy tries the next target
    at once. A break in the connection is no such thing: that one is worth another try.
    ``where`` names who failed; ``through_proxy``: the call went through an outbound proxy, whose
    TLS inspection is the usual reason for a refused certificate there."""
    if isinstance(reason, ssl.SSLCertVerificationError) and getattr(reason, "verify_code", None) == _NAME_MISMATCH:
        # A CA bundle cannot help: the certificate is for another name than the URL's.
        why = f"its TLS certificate is for another host name ({detail}); use the name it was issued for in the URL"
    elif isinstance(reason, ssl.SSLCertVerificationError):
        inspecting = " (a TLS-inspecting proxy needs its CA there)" if through_proxy else ""
        why = f"its TLS certificate was refused ({detail}); see --ca-bundle{inspecting}"
    elif isinstance(reason, ssl.SSLError) and reason.reason == "WRONG_VERSION_NUMBER":
        why = "it does not speak TLS on this port (an https:// URL for an http:// server?)"
    elif isinstance(reason, http.client.HTTPException) and not isinstance(reason, (HeadCutOff, ConnectionError)):
        # A status line that is no HTTP (another service's banner), a head line over 64 KiB,
        # more than 100 header lines.
        why = "its answer is not HTTP/1.1 ({})".format(detail[:200].strip().replace("\n", " ").replace("\r", " "))
    else:
        return None
    return UpstreamUnavailable(f"{where} cannot be used: {why}", headers=(NO_RETRY,))


def _proxy_failure(reason: BaseException, call: UpstreamCall, req: urllib.request.Request, proxy: str, host: str,
                   detail: str) -> Exception:
    """A failure through the outbound proxy, blamed on the hop that failed; one that comes back every
    time (a refused certificate, an answer that is no HTTP) is said so, and not retried, as direct."""
    refused = _TUNNEL_REFUSED_RE.match(detail) if type(reason) is OSError else None
    if refused and refused.group(1) == "407":
        return _proxy_auth_refused(proxy)
    if refused:
        status = refused.group(1)
        # A 4xx is the proxy's policy (this host is not allowed), a 3xx its login page: the same
        # again is refused again.
        retry = NO_RETRY if status.startswith(("3", "4")) else _RETRY
        said = f"{status} {refused.group(2)[:200]}".strip()
        return UpstreamUnavailable(f"the outbound proxy at {proxy} refused the tunnel to {host} ({said})",
                                   headers=(retry,))
    if not call.reached:
        said = f"could not reach the outbound proxy at {proxy} ({detail})"
        nobody = _nobody_there(reason, f"http://{proxy}", "proxy")
        if nobody is not None:  # as an upstream nothing answers at: the client is told not to retry
            return UpstreamUnreachable(f"{said}: {nobody}", headers=(NO_RETRY,))
        return UpstreamUnavailable(said, headers=(_RETRY,))
    # Before the tunnel is up, what answered is the proxy (its answer to CONNECT); after, the upstream.
    # Without a tunnel (a plain-http upstream) every byte of the answer is the proxy's: a forward
    # proxy speaks HTTP to us whatever the upstream said to it.
    its_answer = not req._tunnel_host or not call.tunnelled  # type: ignore[attr-defined]
    where = (f"the outbound proxy at {proxy}" if its_answer
             else f"the upstream at {host} (through the outbound proxy at {proxy})")
    lasting = _lasting_failure(reason, where, detail, through_proxy=True)
    if lasting is not None:
        return lasting
    return UpstreamUnavailable(f"could not reach the upstream at {host} through the outbound proxy at {proxy} "
                               f"({detail})", headers=(_RETRY,))


# --------------------------------------------------------------------------
# Reading an open response.


def read_error(exc: BaseException, call: UpstreamCall, idle: Optional[float] = None) -> Exception:
    """What a failed or aborted upstream read means for the client."""
    aborted = abort_error(call.abort_reason)
    if aborted is not None:
        return aborted
    if isinstance(exc, socket.timeout):
        seconds = idle or call.idle_timeout or 0
        return UpstreamTimeout(f"upstream sent nothing for {seconds:g} s")
    return UpstreamUnavailable(f"upstream connection broke off ({type(exc).__name__})")


def iter_lines(resp: Any, limit: int, allowance: float = 0.0,
               skimmer: Optional[Callable[[], Optional[LineSkimmer]]] = None) -> Iterator[bytes]:
    """The body's whole lines as they arrive, all those of one read as one bytes; a line over
    its cap is an error, not a buffer.

    One ``read1`` takes what the network delivered (an upstream often sends several
    SSE lines in one packet, and each event is two lines: ``data:`` and the blank one)
    and the fold takes them in one call, so the Python work per event stays per
    event, not per line. Nothing is held back but the unfinished last line, kept in
    pieces while it spans reads (joined once at its end: ``+`` per read was quadratic).

    A line's cap is ``limit``, plus ``allowance`` bytes per byte of body before it, for an
    API whose closing events repeat what its deltas sent (the Responses API's ``.done``
    events and ``response.completed`` carry a call's whole arguments again); never more
    than ``MAX_REPEAT_LINE`` (or ``limit``, when that is larger). A line that comes first
    is held to ``limit``.

    A line past ``skim.SKIM_AFTER`` goes, as it arrives, to the ``LineSkimmer`` that ``skimmer``
    gives (if it gives one): the line given is the short one it makes (``skim``).
    """
    spill: List[bytes] = []  # the unfinished last line, in pieces
    spilled = 0
    before = 0  # bytes of the lines already given
    skim: Optional[LineSkimmer] = None  # taking the unfinished line instead of spill
    read = getattr(resp, "read_available", resp.read1)
    decoder = getattr(resp, "cp_decoder", None)
    if decoder is not None:
        read = _decoding(read, decoder)
    while True:
        data = read(_READ_SIZE)
        if not data:
            if skim is not None:
                yield skim.finish()  # the last line of a body without a final newline
            elif spill:
                yield b"".join(spill)
            return
        if skim is not None:
            found = _LINE_END.search(data)  # the line's end: its LF or CR
            end = found.start() if found else -1
            skim.feed(data if end < 0 else data[:end])
            spilled += len(data) if end < 0 else end  # the line without its newline, as a whole one is held
            _check_unfinished(spilled, limit, allowance, before)
            if end < 0:
                continue
            yield skim.finish(data[end:end + 1])
            before += spilled + 1
            skim, spilled, data = None, 0, data[end + 1:]
            if not data:
                continue
        # A line ends at LF, CRLF or CR alone (SSE allows each). A CR last in the read may be half
        # a CRLF: the decoder takes an LF beginning the next run as its end (SSEDecoder.lines).
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if not cut:  # no line ends in this read
            spill.append(data)
            spilled += len(data)
            _check_unfinished(spilled, limit, allowance, before)
            if spilled > SKIM_AFTER and skimmer is not None:
                skim = skimmer()
                if skim is not None:
                    for piece in spill:
                        skim.feed(piece)
                    spill = []
            continue
        if spill:
            spill.append(data)
            data, cut = b"".join(spill), cut + spilled
        run, rest = data[:cut], data[cut:]
        spill, spilled = ([rest], len(rest)) if rest else ([], 0)
        if len(run) > limit:
            # rare: a run this long may hide a line over the cap
            run = yield from _lines_below(run, limit, allowance, before)
        if run:
            yield run
            before += len(run)
        if spilled > limit:  # (as _check_unfinished begins: most reads leave nothing, or little, unfinished)
            _check_unfinished(spilled, limit, allowance, before)


def _line_cap(limit: int, allowance: float, before: int) -> int:
    """The cap of a line after ``before`` bytes of body (``iter_lines``)."""
    extra = allowance * before
    if not extra < MAX_REPEAT_LINE:  # so too a NaN or an infinite allowance, which int() refuses
        return max(limit, MAX_REPEAT_LINE)
    return max(limit, min(limit + int(extra), MAX_REPEAT_LINE))


def _check_unfinished(size: int, limit: int, allowance: float, before: int) -> None:
    """An unfinished line already over its cap is an error (``iter_lines``): no need to wait for its end."""
    if size > limit:  # the cap is never below the limit: most reads stop here
        cap = _line_cap(limit, allowance, before)
        if size > cap:
            raise _too_long(cap)


def _too_long(cap: int) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"upstream sent an SSE line longer than {cap} bytes")


def _decoding(read: Callable[[int], bytes], decoder: Any) -> Callable[[int], bytes]:
    """``read``, decompressed: each call gives what the next reads decode to, at most ``most``
    bytes (the rest stays in the decoder), b"" at the end."""

    def read_decoded(most: int) -> bytes:
        while True:
            data = b"" if decoder.has_more else read(_READ_SIZE)
            if not data and not decoder.has_more:
                return decoder.finish()
            out = decoder.decompress(data, most)
            if out:
                return out

    return read_decoded


def _lines_below(run: bytes, limit: int, allowance: float, before: int) -> Generator[bytes, None, bytes]:
    """``run`` back if no line in it is over its cap (``iter_lines``); else the lines before the
    first that is go out (as in a stream read line by line) and the stream fails."""
    offset = before
    given = 0  # the bytes of the lines below their caps
    for line in _LINE_END.split(run):  # (a CRLF is two ends, the line between them empty)
        cap = _line_cap(limit, allowance, offset)
        if len(line) > cap:
            if given:
                yield run[:given]
            raise _too_long(cap)
        offset += len(line) + 1
        given += len(line) + 1
    return run


def _read_capped(resp: Any, most: int) -> bytes:
    """At most ``most`` bytes of the body, in slices: before Python 3.10 ``read(n)`` allocates
    all n bytes first, and ``n`` is the 64 MiB cap (measured: 40 ms and 64 MB for every answer)."""
    parts: List[bytes] = []
    got = 0
    while got < most:
        piece = resp.read(min(_READ_SLICE, most - got))
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def read_json_body(resp: Any, call: UpstreamCall, limit: int) -> Any:
    """A whole JSON response body (non-streaming answers), size-capped."""
    return json_body(read_whole_body(resp, call, limit), resp)


def read_whole_body(resp: Any, call: UpstreamCall, limit: int) -> bytes:
    """A whole response body, size-capped, decoded if a gateway compressed it."""
    try:
        raw = _read_capped(resp, limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise read_error(exc, call) from None
    if call.abort_reason is not None:
        raise read_error(OSError("aborted"), call)
    if len(raw) > limit:
        raise UpstreamUnavailable(f"upstream response is larger than {limit} bytes")
    framed = getattr(resp, "chunked", False) or getattr(resp, "length", None) is not None
    if framed and not clean_eof(resp):
        # The connection dropped inside a framed body: what came may parse, but it is not the answer.
        raise UpstreamUnavailable("upstream response body was cut short")
    decoder = getattr(resp, "cp_decoder", None)
    return _decoded(raw, decoder, limit) if decoder is not None else raw


def json_body(raw: bytes, resp: Any) -> Any:
    """A whole body (``read_whole_body``) as JSON; ``UpstreamNotJson`` if it is none. Read as a
    stream's lines are: a UTF-8 BOM is no part of it, bytes that are no UTF-8 are U+FFFD, and a
    body in another charset is read by its label (``body_text``: it was a 502 where the same
    answer streamed was read)."""
    over = too_many_values(raw)
    if over is not None:  # decoded, it took 1.7 GB for 61 MB of "{}" (the client's body is held to the same)
        raise UpstreamUnavailable(f"upstream response holds {over}", headers=(NO_RETRY,))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = body_text(raw, resp.headers)
    try:
        return json.loads(text[1:] if text.startswith("\ufeff") else text)
    except (ValueError, RecursionError):
        framed = getattr(resp, "chunked", False) or getattr(resp, "length", None) is not None
        ctype = resp.headers.get("Content-Type", "?") if resp.headers else "?"
        # A whole answer (its framing says so) that does not parse: asking again gets the same, and
        # the upstream may have billed it; a fallback may do better. A body ended by the connection's
        # close may have been cut: that one may be asked again.
        raise UpstreamNotJson(f"upstream returned a body that is not JSON (Content-Type {quoted(ctype, 100)})",
                              headers=(NO_RETRY,) if framed else ()) from None


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
        terminated = getattr(resp, "terminated", None)  # ours (_Response): a bad size line leaves chunk_left None too
        return terminated if terminated is not None else getattr(resp, "chunk_left", 0) is None
    return getattr(resp, "length", None) == 0
