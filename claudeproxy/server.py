"""The listening server, and ``start()`` for library use.

I/O. ``ProxyServer`` is a ``ThreadingHTTPServer`` that owns everything one
proxy instance needs (config, metrics, watchdog, concurrency slots, the
``proxy`` with its router), so two servers in one process share
nothing. ``start()`` runs one in a background thread and returns its address
and a shutdown function, like ``Start()`` in the Go proxy this replaces.
"""

from __future__ import annotations

import collections
import dataclasses
import email.utils
import json
import logging
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any, Callable, List, Optional, Set, Tuple

from .config import Config, with_tuples
from .handler import MessagesHandler
from .keyless import refuse_keyless
from .metrics import Metrics, Sink
from .observe import PACKAGE_LOGGER
from .open_files import connection_cap, open_files_limit
from .pipeline import Proxy
from .watchdog import Watchdog

log = logging.getLogger(__name__)


class BodyTicket:
    """One connection reading its request body; ``evicted`` once a newcomer ended the read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.evicted = False


class BodyReaders:
    """The connections reading a request body now, at most ``limit`` (RELIABILITY.md R5).

    A request holds no concurrency slot while its body arrives. When ``limit``
    readers are already waiting, a newcomer ends the one that has waited
    longest (its read returns at once, the handler answers 408), so clients
    that stall inside their bodies can neither hold every slot nor keep a
    normal request out; they only push each other out.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._readers: "collections.OrderedDict[int, BodyTicket]" = collections.OrderedDict()

    def enter(self, sock: socket.socket) -> BodyTicket:
        ticket = BodyTicket(sock)
        with self._lock:
            while self._readers and len(self._readers) >= self.limit:
                _, oldest = self._readers.popitem(last=False)
                oldest.evicted = True
                try:
                    oldest.sock.shutdown(socket.SHUT_RD)  # its blocked recv returns b"" now
                except OSError:
                    pass
            self._readers[id(ticket)] = ticket
        return ticket

    def leave(self, ticket: BodyTicket) -> None:
        with self._lock:
            self._readers.pop(id(ticket), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._readers)


class HttpDate:
    """The Date header's value, formatted once a second (``email.utils.formatdate`` costs ~5 µs a
    call warm and ~40 µs on a core that idled between requests: on the path to a stream's first byte)."""

    def __init__(self) -> None:
        self._last: Tuple[int, str] = (-1, "")

    def __call__(self) -> str:
        now = int(time.time())
        second, text = self._last  # one tuple: threads see an old pair or a new one, never a mix
        if second != now:
            text = email.utils.formatdate(now, usegmt=True)
            self._last = (now, text)
        return text


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog (the kernel caps it at net.core.somaxconn). The stdlib's 5 drops bursts;
    # with 128, a burst of 1,000 connections lost SYNs and waited out TCP's 1-2-4 s retries
    # (connect p99 2 s, some 7 s: tests/reliability C1), before a 529 could even be sent.
    request_queue_size = 1024

    def __init__(self, config: Config, metrics_sink: Optional[Sink] = None) -> None:
        self.config = config
        self.metrics = Metrics(metrics_sink)
        self.watchdog = Watchdog()
        self.proxy = Proxy(config, self.metrics, self.watchdog)  # checks the settings: ValueError names a bad one
        self.metrics.keep_rows(self.proxy.router.named_targets())
        self.slots = threading.BoundedSemaphore(config.max_concurrency)
        # --max-connections, within what the process's open-file limit leaves (open_files.py).
        self.open_files = open_files_limit()
        self.max_connections, self.connections_lowered = connection_cap(
            config.max_connections, config.max_concurrency, self.open_files)
        self.body_readers = BodyReaders(config.max_body_readers)
        self.http_date = HttpDate()
        self._conns: Set[socket.socket] = set()
        # The connections waiting for a request's head, longest first; True once one served a request.
        self._waiting: "collections.OrderedDict[socket.socket, bool]" = collections.OrderedDict()
        self._refused: "collections.deque[Tuple[float, socket.socket]]" = collections.deque()  # answered 529
        self._evicted: Set[socket.socket] = set()  # ended for a newcomer: not to be served should a head come
        self._conns_lock = threading.Lock()
        self._active = 0
        self._idle = threading.Condition(self._conns_lock)
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        super().__init__((config.host.strip("[]"), config.port), MessagesHandler)
        self.watchdog.start()

    # Track connections so shutdown can wake handlers idling on keep-alive, and so that their number
    # stays within max_connections.
    def process_request(self, request: Any, client_address: Any) -> None:
        """On the accepting thread: a connection over ``max_connections`` ends the one that has waited
        longest for a request's head (one that never sent a request first: a slow-loris client's),
        and gets a 529 itself where every connection has a request in flight (probe AI 5: 250 heads
        a byte at a time held 253 threads, and nothing bounded them before any key was checked)."""
        if not self._admit(request):
            self._refuse(request)
            self.proxy.warn_once(f"{self.max_connections} client connections are open, each with a request "
                                 "in flight (--max-connections): new connections get 529 overloaded_error")
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)  # no thread to forget it (none could be started)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _admit(self, request: socket.socket) -> bool:
        with self._conns_lock:
            if len(self._conns) >= self.max_connections:
                waited = next((sock for sock, served in self._waiting.items() if not served), None)
                waited = waited or next(iter(self._waiting), None)
                if waited is None:
                    return False
                del self._waiting[waited]
                self._evicted.add(waited)
                try:
                    waited.shutdown(socket.SHUT_RDWR)  # its blocked read of a head returns b"": it closes
                except OSError:
                    pass
            self._conns.add(request)
        return True

    def _forget(self, request: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(request)
            self._waiting.pop(request, None)
            self._evicted.discard(request)

    def awaiting_head(self, sock: socket.socket, served: bool) -> None:
        """``sock`` waits for a request's head (``served``: it answered one before)."""
        with self._conns_lock:
            if sock in self._conns:
                self._waiting[sock] = served
                self._waiting.move_to_end(sock)

    def head_arrived(self, sock: socket.socket) -> bool:
        """``sock`` has a request's head; False where it was ended for a newcomer meanwhile (its head
        came as it was chosen): the request is not served, the client sees the connection end."""
        with self._conns_lock:
            self._waiting.pop(sock, None)
            return sock not in self._evicted

    def service_actions(self) -> None:
        """Every turn of the accepting loop (about twice a second): the refused connections close
        on time also when no new connection comes."""
        super().service_actions()
        self._close_refused(time.monotonic() - _REFUSED_LINGER)

    def request_started(self) -> None:
        with self._conns_lock:
            self._active += 1

    def request_finished(self) -> None:
        with self._conns_lock:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if some still are after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._conns_lock:
            while self._active > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def open_connections(self) -> List[socket.socket]:
        """The client connections being served now (tests check their socket options)."""
        with self._conns_lock:
            return list(self._conns)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr; the log decides what is shown.
        log.error("unexpected error serving %s", client_address[0] if client_address else "?",
                  exc_info=log.isEnabledFor(logging.DEBUG))

    def _refuse(self, sock: socket.socket) -> None:
        """A 529 to a connection over ``max_connections``, on the accepting thread: never blocking
        (the answer fits any send buffer). The socket is closed later (``_close_refused``): closed
        with the client's request unread, it would be a reset, and the client could lose the answer
        while still sending its body."""
        if answer_overloaded(sock, self.max_connections):
            with self._conns_lock:
                self._refused.append((time.monotonic(), sock))
                held = len(self._refused) > _REFUSED_HELD
            if held:
                self._close_refused(float("inf"), keep=_REFUSED_HELD)

    def _close_refused(self, before: float, keep: int = 0) -> None:
        """Close the refused connections answered before ``before`` (all but the ``keep`` newest)."""
        with self._conns_lock:
            done = []
            while len(self._refused) > keep and self._refused[0][0] < before:
                done.append(self._refused.popleft()[1])
        for sock in done:
            sock.close()

    def server_close(self) -> None:
        self._close_refused(float("inf"))
        self.watchdog.stop()
        self.proxy.upstream.close()  # idle keep-alive connections to the upstreams
        super().server_close()


# A refused connection stays open this long after its 529, at most this many at once (their
# sockets, not threads): the client finishes sending and reads the answer.
_REFUSED_LINGER = 2.0
_REFUSED_HELD = 256


def answer_overloaded(sock: socket.socket, limit: int) -> bool:
    """The 529 to a connection over ``limit``, and the end of what the proxy sends on it, without
    blocking; False (the socket closed) where the client is gone already."""
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": (
        f"the proxy has {limit} client connections open, each with a request in flight; try again")}}).encode()
    head = (f"HTTP/1.1 529 Overloaded\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n").encode("ascii")
    try:
        sock.setblocking(False)
        sock.send(head + body)
        sock.shutdown(socket.SHUT_WR)
        return True
    except OSError:
        sock.close()
        return False


def drain_and_close(server: ProxyServer, grace: float) -> None:
    """Stop accepting, let requests in flight finish for ``grace`` s, then end them."""
    server.shutdown()
    # Close the listening socket now: new clients are refused at once instead of
    # waiting in the backlog through the grace period.
    server.socket.close()
    # No retry starts now: a request waiting to try again gets its last answer at once.
    server.watchdog.end_pauses("shutdown")
    if not server.wait_idle(grace):
        log.warning("ending the requests still in flight after %.1f s", grace)
        server.watchdog.abort_all("shutdown")
        server.wait_idle(0.5)
    server.close_connections()
    server.server_close()


@dataclasses.dataclass(frozen=True)
class RunningServer:
    address: Tuple[str, int]
    url: str
    shutdown: Callable[..., None]
    metrics: Metrics
    server: ProxyServer


def _url_for(address: Tuple[Any, ...]) -> str:
    host = str(address[0])
    return f"http://[{host}]:{address[1]}" if ":" in host else f"http://{host}:{address[1]}"


def _quiet_without_logging() -> None:
    """A library's package logger gets a NullHandler (the logging HOWTO's advice): an application
    that set up no logging gets no warnings on its stderr from Python's last-resort handler, and
    one that did gets every record as before (they propagate). Done at the first start, not at import."""
    package = logging.getLogger(PACKAGE_LOGGER)
    if not any(isinstance(h, logging.NullHandler) for h in package.handlers):
        package.addHandler(logging.NullHandler())


def start(config: Optional[Config] = None, metrics_sink: Optional[Sink] = None, **overrides: Any) -> RunningServer:
    """Listen (default 127.0.0.1:0) and serve in a background thread.

    Returns the address, base URL, a ``shutdown(grace=None)`` function and the
    server's metrics. Every server is independent.
    """
    if config is not None and not isinstance(config, Config):
        raise ValueError(f"config: expected a claudeproxy.Config (or its fields as keywords: start(**settings)), "
                         f"got {type(config).__name__}")
    if metrics_sink is not None and not callable(metrics_sink):
        raise ValueError(f"metrics_sink=: expected a function called with each call's record, "
                         f"got {type(metrics_sink).__name__}")
    config = with_tuples((config or Config()).replace(**overrides))
    _quiet_without_logging()
    server = ProxyServer(config, metrics_sink)  # a bad setting raises here, naming it
    try:
        # As the command line: OpenAI, Groq... with no key would 401 every call. (The server's router.)
        refuse_keyless(server.proxy.router.providers.values(), library=True, forwarded=not config.auth_key)
    except ValueError:
        server.server_close()
        raise
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                              name="claudeproxy-server")
    thread.start()
    stopping = threading.Lock()
    stopped: List[bool] = []

    def shutdown(grace: Optional[float] = None) -> None:
        # A second caller waits for the first one's drain (it returned at once, the server still
        # draining), then returns: shut down already.
        with stopping:
            if stopped:
                return
            drain_and_close(server, config.shutdown_grace if grace is None else grace)
            thread.join(timeout=5)
            stopped.append(True)

    address = server.server_address[:2]
    return RunningServer((str(address[0]), int(address[1])), _url_for(address), shutdown, server.metrics, server)
