"""A scripted fake OpenAI-compatible upstream on 127.0.0.1, for integration tests.

It records every request (method, path, headers, JSON body) and answers from
a queue of ``Reply`` scripts. A reply's body is a list of steps sent in
order: bytes (one chunk each, flushed), ``Gate`` (wait for the test to
release it), ``Sleep``, ``Hold`` (a sleep that does not watch the peer), or ``Fault`` (reset, half-close, truncated chunk).
``closed_at`` (and ``wait_closed``) lets disconnect tests measure when the
proxy let go. ``StreamClient`` is the other side: a raw-socket client that
reads a streamed response as it arrives, so tests can prove nothing is held
back. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import select
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

WAIT = 10.0  # longest any fake step waits


@dataclasses.dataclass
class Gate:
    """A step that blocks until the test calls ``release()``."""

    event: threading.Event = dataclasses.field(default_factory=threading.Event)
    reached: threading.Event = dataclasses.field(default_factory=threading.Event)

    def release(self) -> None:
        self.event.set()


@dataclasses.dataclass
class Sleep:
    seconds: float


@dataclasses.dataclass
class Hold:
    """Like ``Sleep`` but without watching the peer: hundreds of held replies cost no CPU."""

    seconds: float


@dataclasses.dataclass
class Fault:
    """``rst`` (abortive close), ``fin`` (close at a chunk boundary, no terminator),
    ``truncate`` (close inside a chunk), ``hang`` (send nothing more until the peer closes)."""

    kind: str


@dataclasses.dataclass
class Raw:
    """Bytes sent as they are, outside a chunked body's framing (a bad size line)."""

    data: bytes


Step = Union[bytes, Gate, Sleep, Hold, Fault, Raw]


@dataclasses.dataclass
class Reply:
    status: int = 200
    headers: Tuple[Tuple[str, str], ...] = (("Content-Type", "application/json"),)
    body: List[Step] = dataclasses.field(default_factory=list)
    chunked: bool = False
    delay: float = 0.0  # before the status line
    close_delimited: bool = False  # neither chunked nor Content-Length: the body ends when the socket closes
    # Before the status line (after ``delay``): "close" (close the connection without a byte), "partial" (half a
    # status line, close), "head" (a status line and half a header line, close), "interim" (a 103, close),
    # "junk" (a line that is no HTTP, close).
    drop: str = ""
    interim: Tuple[int, ...] = ()  # 1xx answers sent before the final one (103 Early Hints)


def json_reply(obj: Any, status: int = 200, headers: Tuple[Tuple[str, str], ...] = ()) -> Reply:
    data = json.dumps(obj).encode("utf-8")
    return Reply(status, (("Content-Type", "application/json"), *headers), [data])


def sse_reply(*chunks: Any, done: bool = True, status: int = 200) -> Reply:
    """An SSE reply: dicts become ``data:`` events, strings/bytes go out as they are."""
    steps: List[Step] = []
    for chunk in chunks:
        if isinstance(chunk, dict):
            steps.append(b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n")
        elif isinstance(chunk, str):
            steps.append(chunk.encode("utf-8"))
        else:
            steps.append(chunk)
    if done:
        steps.append(b"data: [DONE]\n\n")
    return Reply(status, (("Content-Type", "text/event-stream"),), steps, chunked=True)


def completion(content: Optional[str] = "Hello!", *, finish: str = "stop", tool_calls: Any = None,
               usage: Any = None, **message: Any) -> Dict[str, Any]:
    """A ChatCompletion body."""
    msg: Dict[str, Any] = {"role": "assistant", "content": content, **message}
    if tool_calls is not None:
        msg["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
        "usage": usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def chunk(delta: Optional[Dict[str, Any]] = None, finish: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
    """A ChatCompletionChunk with one choice."""
    body: Dict[str, Any] = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    body.update(extra)
    return body


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    headers: Dict[str, str]
    raw_headers: List[Tuple[str, str]]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


_DROPPED = {"partial": b"HTTP/1.1 2", "junk": b"SSH-2.0-OpenSSH_9.2\r\n", "head": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Enc",
            "interim": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a kept-alive reply's body must not wait for the proxy's delayed ACK

    def setup(self) -> None:
        super().setup()
        self.server.fake.connection_opened()  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake.connection_closed()  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except ConnectionError:
            # The proxy reset a connection it had pooled (closed with bytes unread, such as a fuzzed
            # answer's trailing junk) while this handler waited for the next request: the
            # connection's end, not the fake's failure (socketserver printed a traceback on stderr).
            self.close_connection = True

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake: FakeUpstream = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                       list(self.headers.items()), body)
        self.generation = fake.generation  # a reset() between tests orphans this connection
        fake.count_request(rec)
        fake.received.set()
        reply = fake.responder(rec) if fake.responder is not None else fake.next_reply()
        self.close_connection = not fake.keep_alive
        if reply.delay:
            if fake.wait_or_closed(self.connection, reply.delay, self.generation):
                return
        if reply.drop:
            if reply.drop in _DROPPED:
                self.wfile.write(_DROPPED[reply.drop])
                self.wfile.flush()
            self.close_connection = True
            return
        self._send(reply, fake)

    def _send(self, reply: Reply, fake: "FakeUpstream") -> None:
        for status in reply.interim:
            self.wfile.write(b"HTTP/1.1 %d Interim\r\nLink: </style.css>; rel=preload\r\n\r\n" % status)
            self.wfile.flush()
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif reply.close_delimited:
            pass
        else:
            size = sum(len(s) for s in reply.body if isinstance(s, bytes))
            self.send_header("Content-Length", str(size))
        if self.close_connection or reply.close_delimited:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            for step in reply.body:
                if self._step(step, reply.chunked, fake):
                    return
            if reply.chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            fake.mark_closed(self.generation)

    def _step(self, step: Step, chunked: bool, fake: "FakeUpstream") -> bool:
        """Send one step; True when the connection is finished."""
        if isinstance(step, bytes):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(step), step) if chunked else step)
            self.wfile.flush()
            return False
        if isinstance(step, Gate):
            step.reached.set()
            end = time.monotonic() + WAIT
            while not step.event.wait(0.02):
                if time.monotonic() > end or fake.peer_closed(self.connection):
                    fake.mark_closed(self.generation)
                    return True
            return False
        if isinstance(step, Sleep):
            return fake.wait_or_closed(self.connection, step.seconds, self.generation)
        if isinstance(step, Hold):
            time.sleep(step.seconds)
            return False
        if isinstance(step, Raw):
            self.wfile.write(step.data)
            self.wfile.flush()
            return False
        return self._fault(step.kind, fake)

    def _fault(self, kind: str, fake: "FakeUpstream") -> bool:
        sock = self.connection
        # A kept-alive connection would wait here for the next request, and the rfile still holds
        # the descriptor: the RST would only go out when the proxy gives up.
        self.close_connection = True
        if kind == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        elif kind == "truncate":
            self.wfile.write(b"400\r\ndata: {\"partial")
            self.wfile.flush()
            sock.shutdown(socket.SHUT_WR)
        elif kind == "fin":
            sock.shutdown(socket.SHUT_WR)
        elif kind == "hang":
            fake.wait_or_closed(sock, WAIT, self.generation)
        return True


class _TLSServer(ThreadingHTTPServer):
    """Accepts TLS; the handshake happens on the handler's first read, not in the accept loop."""

    def __init__(self, context: Any) -> None:
        self.context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> Any:
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused handshake is the expected outcome of some tests


class FakeUpstream:
    """Start with ``FakeUpstream()``; ``url`` is its ``/v1`` base; call ``close()``.

    ``keep_alive=True`` keeps connections open between replies (the default
    sends ``Connection: close`` on every one); ``tls`` (a server
    ``ssl.SSLContext``) serves HTTPS. ``connections`` counts the TCP
    connections accepted (with TLS, one handshake each). ``responder`` (a
    function of the ``Recorded`` request) picks each reply instead of the
    queue; ``keep_requests=False`` only counts requests (``request_count``),
    for runs of thousands.
    """

    def __init__(self, keep_alive: bool = False, tls: Any = None,
                 responder: Optional[Callable[[Recorded], Reply]] = None, keep_requests: bool = True) -> None:
        self.keep_alive = keep_alive
        self.tls = tls
        self.responder = responder
        self.keep_requests = keep_requests
        self.request_count = 0
        self.connections = 0
        self.closed_connections = 0
        self._count_lock = threading.Lock()
        self.requests: List[Recorded] = []
        self.received = threading.Event()
        self.replies: "queue.Queue[Reply]" = queue.Queue()
        self.default: Reply = json_reply(completion())
        self.closed_at: Optional[float] = None
        self.generation = 0
        self.server = _TLSServer(tls) if tls is not None else ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}/v1"

    def count_request(self, rec: Recorded) -> None:
        with self._count_lock:
            self.request_count += 1
        if self.keep_requests:
            self.requests.append(rec)

    def connection_opened(self) -> None:
        with self._count_lock:
            self.connections += 1

    def connection_closed(self) -> None:
        with self._count_lock:
            self.closed_connections += 1

    def wait_connections_closed(self, count: int, timeout: float) -> bool:
        """Until ``count`` connections have ended (the peer closed them); False after ``timeout``."""
        end = time.monotonic() + timeout
        while self.closed_connections < count and time.monotonic() < end:
            time.sleep(0.01)
        return self.closed_connections >= count

    def push(self, *replies: Reply) -> None:
        for reply in replies:
            self.replies.put(reply)

    def next_reply(self) -> Reply:
        try:
            return self.replies.get_nowait()
        except queue.Empty:
            return self.default

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def peer_closed(self, sock: socket.socket) -> bool:
        """Has the proxy closed its side? (non-blocking)"""
        import select

        if hasattr(select, "poll"):  # select() refuses descriptors above 1023 (the 1,000-connection test)
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return False
        else:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def wait_or_closed(self, sock: socket.socket, seconds: float, generation: Optional[int] = None) -> bool:
        """Wait ``seconds``; True (and ``closed_at`` set) if the proxy closed first."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.peer_closed(sock):
                self.mark_closed(self.generation if generation is None else generation)
                return True
            time.sleep(0.01)
        return False

    def mark_closed(self, generation: int) -> None:
        if generation == self.generation:  # not a connection left over from before reset()
            self.closed_at = time.monotonic()

    def reset(self) -> None:
        """Forget everything, so one fake can serve a module's tests one after another."""
        self.generation += 1
        self.requests.clear()
        self.received.clear()
        while not self.replies.empty():
            self.replies.get_nowait()
        self.default = json_reply(completion())
        self.closed_at = None

    def wait_closed(self, timeout: float) -> Optional[float]:
        """``closed_at`` once a step noticed the proxy closed its connection; None after ``timeout``."""
        end = time.monotonic() + timeout
        while self.closed_at is None and time.monotonic() < end:
            time.sleep(0.005)
        return self.closed_at

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoopbackListener:
    """A listener on 127.0.0.1 (``port``) that gives each connection to ``handle(conn)`` on a thread
    of its own, until ``close``; a subclass defines ``handle``. Sockets passed to ``track`` (and
    every accepted one) are closed by ``close``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: List[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self.handle, args=(conn,), daemon=True)
            self.track(conn)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(2)
        self.listener.close()
        with self._lock:
            for sock in self._socks:
                sock.close()


class ConnectProxy(LoopbackListener):
    """A CONNECT-only HTTP proxy on 127.0.0.1 that counts the tunnels it is asked for (``tunnels``,
    ``targets``). A subclass's ``answer`` says something else to a CONNECT (and returns False to
    open no tunnel): a proxy that misbehaves."""

    def __init__(self) -> None:
        self.tunnels = 0
        self.targets: List[str] = []
        super().__init__()

    def handle(self, client: socket.socket) -> None:
        client.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(4096)
            if not data:
                return
            head += data
        target = head.split(b" ", 2)[1].decode()
        with self._lock:
            self.tunnels += 1
            self.targets.append(target)
        if not self.answer(client):
            return
        host, port = target.rsplit(":", 1)
        server = socket.create_connection((host, int(port)), timeout=5)
        self.track(server)
        with client, server:  # one side closed: the tunnel is over, as a real proxy ends it
            self._pipe(client, server)

    def answer(self, client: socket.socket) -> bool:
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return True

    def _pipe(self, client: socket.socket, server: socket.socket) -> None:
        pair = {client: server, server: client}
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select(list(pair), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
            except OSError:
                return


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The socket is bound and never listens: the kernel refuses a connect to it, and cannot hand the
    port to another socket meanwhile. (A port closed at once can be given to the next server bound,
    even the proxy under test, which then answers its own upstream calls.)"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def closing_listener() -> int:
    """A loopback port that takes connections and closes them at once, for the rest of the process.

    An upstream that is there but answers nothing: ``run``'s start-up check finds it (no warning),
    and a call to it gets a closed connection, a quick 502."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            conn.close()

    threading.Thread(target=serve, daemon=True, name="closing-listener").start()
    return int(listener.getsockname()[1])


_PLAIN_DATA = (str, bytes, int, float, bool, type(None), tuple, list, dict, frozenset)


def _pool_key(value: Any) -> Any:
    """A setting's value as ``ServerPool`` tells servers apart: plain data by its repr, anything else
    (a token function, a sink) by its identity, also inside lists and settings' dataclasses (a
    ``Provider``'s token). A token's repr hides its key (``StaticToken(***)``): by repr, a test
    asking for a proxy with another key got the first one's."""
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_pool_key(v) for v in value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple((f.name, _pool_key(getattr(value, f.name)))
                                            for f in dataclasses.fields(value)))
    return repr(value) if isinstance(value, _PLAIN_DATA) else ("object", id(value))


class ServerPool:
    """One fake upstream and the proxies started against it, kept for a whole test module.

    Starting and stopping a server costs about 0.15 s, which adds up over
    hundreds of tests. ``get(**settings)`` starts a proxy once per distinct
    set of settings (the fake's URL is the default upstream); the fixture
    using it calls ``fake.reset()`` before each test.
    """

    def __init__(self, **defaults: Any) -> None:
        self.fake = FakeUpstream()
        self.defaults = defaults
        self._servers: Dict[str, Any] = {}
        self._kept: List[Dict[str, Any]] = []

    def get(self, **overrides: Any) -> Any:
        import claudeproxy

        key = repr(sorted((name, _pool_key(value)) for name, value in overrides.items()))
        if key not in self._servers:
            self._servers[key] = claudeproxy.start(**{"upstream": self.fake.url, **self.defaults, **overrides})
            self._kept.append(overrides)  # an object keyed by its id stays alive, so no other takes its id
        return self._servers[key]

    @property
    def servers(self) -> List[Any]:
        return list(self._servers.values())

    def close(self) -> None:
        for server in self._servers.values():
            server.shutdown(grace=1.0)
        self.fake.close()


class StreamClient:
    """One request on a raw socket; the response is read incrementally, every read under a deadline.

    ``status``/``headers`` are known after construction. ``next_event`` returns
    the next SSE payload as soon as its bytes arrived (None at the end of the
    body); ``chunks`` keeps each HTTP/1.1 chunk as framed on the wire.
    """

    def __init__(self, base_url: str, body: Any, path: str = "/v1/messages",
                 headers: Optional[Dict[str, str]] = None, timeout: float = WAIT, method: str = "POST") -> None:
        host, port = base_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.timeout = timeout
        self._buf = b""
        self.send(body, path, headers, method)

    def send(self, body: Any, path: str = "/v1/messages", headers: Optional[Dict[str, str]] = None,
             method: str = "POST") -> None:
        """Send a request (again, on the same connection) and read the response head."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        hdrs = {"Host": self.host, "Content-Type": "application/json", "Content-Length": str(len(data)),
                "anthropic-version": "2023-06-01"}
        hdrs.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        self.sock.sendall(head.encode("latin-1") + data)
        self._pending = b""  # decoded body bytes not yet parsed into events
        self.body = bytearray()  # grows in place: a multi-megabyte stream stays linear
        self.chunks: List[bytes] = []
        self.ended = False
        self.events: List[Dict[str, Any]] = []
        self.status, self.headers = self._read_head(time.monotonic() + self.timeout)
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self._left: Optional[int] = int(length) if length is not None else None

    # -- raw reading ------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at EOF. Raises AssertionError at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for the proxy")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError("timed out waiting for the proxy") from None
        except ConnectionResetError:
            data = b""
        self._buf += data
        return bool(data)

    def _read_until(self, marker: bytes, deadline: float) -> bytes:
        while marker not in self._buf:
            if not self._fill(deadline):
                raise AssertionError(f"connection closed before {marker!r}; got {self._buf[:200]!r}")
        out, self._buf = self._buf.split(marker, 1)
        return out

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            if not self._fill(deadline):
                raise AssertionError(f"connection closed inside a chunk ({len(self._buf)} of {n} bytes)")
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _read_head(self, deadline: float) -> Tuple[int, Dict[str, str]]:
        head = self._read_until(b"\r\n\r\n", deadline).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers: Dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def _next_piece(self, deadline: float) -> Optional[bytes]:
        """The next piece of the body as framed (one chunk), or None at its end."""
        if self.ended:
            return None
        if self.chunked:
            size = int(self._read_until(b"\r\n", deadline).split(b";")[0], 16)
            data = self._read_exact(size, deadline)
            assert self._read_exact(2, deadline) == b"\r\n", "chunk not followed by CRLF"
            if size == 0:
                self.ended = True
                return None
            self.chunks.append(data)
        elif self._left is not None:
            if self._left == 0:
                self.ended = True
                return None
            if not self._buf and not self._fill(deadline):
                raise AssertionError("connection closed before Content-Length bytes")
            data, self._buf = self._buf[: self._left], self._buf[self._left:]
            self._left -= len(data)
        else:
            if not self._buf and not self._fill(deadline):
                self.ended = True
                return None
            data, self._buf = self._buf, b""
        self.body += data
        return data

    # -- what tests use ----------------------------------------------------

    def next_event(self, timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """The next event's payload (its ``event:`` name must equal its type); None at the end."""
        from sse_checks import events_of

        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n\n" not in self._pending:
            piece = self._next_piece(deadline)
            if piece is None:
                assert not self._pending.strip(), f"body ended inside an event: {self._pending!r}"
                return None
            self._pending += piece
        raw, self._pending = self._pending.split(b"\n\n", 1)
        event = events_of(raw + b"\n\n")[0]
        self.events.append(event)
        return event

    def read_until(self, kind: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Events up to and including the first of type ``kind``; fails at the end of the body."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            event = self.next_event(max(0.001, deadline - time.monotonic()))
            assert event is not None, f"stream ended without {kind}: {[e['type'] for e in self.events]}"
            if event["type"] == kind:
                return event

    def read_all(self, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.next_event(max(0.001, deadline - time.monotonic())) is not None:
            pass
        return self.events

    def read_body(self, timeout: Optional[float] = None) -> bytes:
        """The whole body (a plain JSON answer)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._next_piece(deadline) is not None:
            pass
        return bytes(self.body)

    @property
    def json(self) -> Any:
        return json.loads(self.read_body().decode("utf-8"))

    def close(self, rst: bool = False) -> None:
        if rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> "StreamClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def upstream_tool_pairs(body: Dict[str, Any], api: str) -> Tuple[List[str], List[str]]:
    """The tool-call ids of an upstream request body (Chat or Responses) and its results' ids, in order."""
    if api == "chat":
        calls = [c["id"] for m in body["messages"] for c in m.get("tool_calls") or ()]
        return calls, [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]
    return ([i["call_id"] for i in body["input"] if i.get("type") == "function_call"],
            [i["call_id"] for i in body["input"] if i.get("type") == "function_call_output"])
