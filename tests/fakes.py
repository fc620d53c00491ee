"""A scripted fake OpenAI-compatible upstream on 127.0.0.1, for integration tests.

It records every request (method, path, headers, JSON body) and answers from
a queue of ``Reply`` scripts. A reply's body is a list of steps sent in
order: bytes (one chunk each, flushed), ``Gate`` (wait for the test to
release it), ``Sleep``, or ``Fault`` (reset, half-close, truncated chunk).
``ReplyClosedAt`` timing lets disconnect tests measure when the proxy let go.
Every wait has a timeout.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple, Union

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
class Fault:
    """``rst`` (abortive close), ``fin`` (close at a chunk boundary, no terminator),
    ``truncate`` (close inside a chunk), ``hang`` (send nothing more until the peer closes)."""

    kind: str


Step = Union[bytes, Gate, Sleep, Fault]


@dataclasses.dataclass
class Reply:
    status: int = 200
    headers: Tuple[Tuple[str, str], ...] = (("Content-Type", "application/json"),)
    body: List[Step] = dataclasses.field(default_factory=list)
    chunked: bool = False
    delay: float = 0.0  # before the status line


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

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
        fake.requests.append(rec)
        fake.received.set()
        reply = fake.next_reply()
        self.close_connection = True
        if reply.delay:
            if fake.wait_or_closed(self.connection, reply.delay):
                return
        self._send(reply, fake)

    def _send(self, reply: Reply, fake: "FakeUpstream") -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            size = sum(len(s) for s in reply.body if isinstance(s, bytes))
            self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for step in reply.body:
                if self._step(step, reply.chunked, fake):
                    return
            if reply.chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            fake.closed_at = time.monotonic()

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
                    fake.closed_at = time.monotonic()
                    return True
            return False
        if isinstance(step, Sleep):
            return fake.wait_or_closed(self.connection, step.seconds)
        return self._fault(step.kind, fake)

    def _fault(self, kind: str, fake: "FakeUpstream") -> bool:
        sock = self.connection
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
            fake.wait_or_closed(sock, WAIT)
        return True


class FakeUpstream:
    """Start with ``FakeUpstream()``; ``url`` is its ``/v1`` base; call ``close()``."""

    def __init__(self) -> None:
        self.requests: List[Recorded] = []
        self.received = threading.Event()
        self.replies: "queue.Queue[Reply]" = queue.Queue()
        self.default: Reply = json_reply(completion())
        self.closed_at: Optional[float] = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

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

        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def wait_or_closed(self, sock: socket.socket, seconds: float) -> bool:
        """Wait ``seconds``; True (and ``closed_at`` set) if the proxy closed first."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.peer_closed(sock):
                self.closed_at = time.monotonic()
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
