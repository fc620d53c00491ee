"""A fake OpenAI-compatible upstream, fast enough never to be the bench's bottleneck (does socket I/O).

    python bench/fake_upstream.py [--tls CERT KEY]

Prints ``upstream listening on http(s)://127.0.0.1:PORT`` and serves until killed.

- ``POST .../chat/completions``: a canned ``chat.completion`` shaped like OpenAI's, or,
  when the body says ``"stream": true``, an SSE stream shaped like OpenAI's: a role
  chunk, N content chunks of one token each (about 250 bytes apiece, one socket write
  per chunk, as real servers send them), a finish chunk, a usage chunk and ``[DONE]``.
  The model name shapes the stream: ``bench-n20-p5`` is 20 content chunks with 5 ms
  between them (the first one at once); any other model gets 20 chunks, unpaced.
- ``GET /stats``: counters as JSON: ``connections`` (connections that sent a POST),
  ``handshakes`` (TLS handshakes completed), ``requests`` (POSTs answered).
- ``GET /last``: the body of the last POST; the bench captures claudeproxy's
  translation of its request this way.

Raw sockets and one thread per connection keep its cost per request to a few dozen
microseconds; keep-alive unless the client sends ``Connection: close``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from wire import Headers, Reader, chunk, chunks, parse_head, wants_close

MODEL = "gpt-4.1-2025-04-14"
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
SHAPE_RE = re.compile(rb'"model"\s*:\s*"bench-n(\d+)-p(\d+)"')
DEFAULT_SHAPE = (20, 0)
WORDS = ("The", " function", " reads", " the", " configuration", " file", ",", " validates", " each",
         " field", " against", " the", " schema", " and", " returns", " a", " typed", " object", ".",
         " Errors", " name", " the", " offending", " key", " so", " the", " user", " can", " fix", " it",
         " quickly", ".")
ANSWER = ("I read the configuration loader. It parses the JSON file, checks every field against "
          "the schema and returns a typed Settings object; unknown keys raise an error that names "
          "the key and the file. The tests cover the happy path and two error cases, so the change "
          "you asked for fits in load_settings() without touching the callers.")
USAGE = {"prompt_tokens": 5123, "completion_tokens": 64, "total_tokens": 5187,
         "prompt_tokens_details": {"cached_tokens": 4864, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                       "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def completion_body() -> bytes:
    """The non-streaming answer, as OpenAI's Chat Completions sends it."""
    return _compact({
        "id": "chatcmpl-BenchAnswer00000000000000", "object": "chat.completion", "created": 1741569952,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER, "refusal": None,
                                             "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": USAGE, "service_tier": "default", "system_fingerprint": "fp_b376dfbbd5"})


def _event(choices: List[Dict[str, Any]], **extra: Any) -> bytes:
    body = {"id": "chatcmpl-BenchStream00000000000000", "object": "chat.completion.chunk",
            "created": 1741569952, "model": MODEL, "service_tier": "default",
            "system_fingerprint": "fp_b376dfbbd5", "choices": choices}
    body.update(extra)
    return chunk(b"data: " + _compact(body) + b"\n\n")


def _delta(delta: Dict[str, Any], finish: Optional[str] = None) -> bytes:
    return _event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])


class Stream:
    """The pre-framed HTTP chunks of a streamed answer; ``content[i]`` is one token."""

    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
    role = _delta({"role": "assistant", "content": "", "refusal": None})
    content = [_delta({"content": w}) for w in WORDS]
    finish = _delta({}, "stop")
    usage = _event([], usage=USAGE)
    done = chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Stats:
    """Counters the bench reads between runs (``GET /stats``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {"connections": 0, "handshakes": 0, "requests": 0}
        self.last_body = b""

    def add(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def snapshot(self) -> bytes:
        with self.lock:
            return _compact(self.counts)


def respond(conn: socket.socket, status: str, body: bytes, ctype: bytes = b"application/json") -> None:
    conn.sendall(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                 % (status.encode(), ctype, len(body), body))


def send_stream(conn: socket.socket, n: int, pace_ms: int) -> None:
    """Role chunk with the head, then ``n`` tokens ``pace_ms`` apart (one write each), then the end."""
    conn.sendall(Stream.head + Stream.role)
    start = time.perf_counter()
    words = Stream.content
    for i in range(n):
        if pace_ms and i:
            delay = start + i * pace_ms / 1000.0 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        conn.sendall(words[i % len(words)])
    conn.sendall(Stream.finish)
    conn.sendall(Stream.usage)
    conn.sendall(Stream.done)


def stream_shape(body: bytes) -> Tuple[int, int]:
    """(content chunks, ms between them) from a model name like ``bench-n20-p5``."""
    m = SHAPE_RE.search(body)
    return (int(m.group(1)), int(m.group(2))) if m else DEFAULT_SHAPE


def request_body(reader: Reader, headers: Headers) -> bytes:
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return b"".join(chunks(reader))
    return reader.exact(int(headers.get(b"content-length", b"0")))


class Upstream:
    """The accept loop and one thread per connection."""

    completion = completion_body()

    def __init__(self, tls: Optional[ssl.SSLContext]) -> None:
        self.tls = tls
        self.stats = Stats()

    def answer(self, conn: socket.socket, method: bytes, path: bytes, body: bytes) -> None:
        if method == b"GET" and path.startswith(b"/stats"):
            respond(conn, "200 OK", self.stats.snapshot())
        elif method == b"GET" and path.startswith(b"/last"):
            respond(conn, "200 OK", self.stats.last_body)
        elif method == b"POST" and path.endswith(b"/chat/completions"):
            self.stats.last_body = body
            self.stats.add("requests")
            if STREAM_RE.search(body):
                send_stream(conn, *stream_shape(body))
            else:
                respond(conn, "200 OK", self.completion)
        else:
            respond(conn, "404 Not Found", b'{"error": {"message": "not found", "type": "not_found"}}')

    def serve_connection(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.stats.add("handshakes")
            self.exchanges(conn)
        except (OSError, EOFError, ValueError):
            pass  # the peer went away; nothing to report
        finally:
            conn.close()

    def exchanges(self, conn: socket.socket) -> None:
        reader, counted = Reader(conn), False
        while True:
            try:
                head = reader.until(b"\r\n\r\n")
            except EOFError:
                return
            start, headers = parse_head(head)
            method, path = start.split(b" ", 2)[:2]
            body = request_body(reader, headers)
            if method == b"POST" and not counted:
                self.stats.add("connections")
                counted = True
            self.answer(conn, method, path, body)
            if wants_close(headers):
                return

    def serve_forever(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self.serve_connection, args=(conn,), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS with this certificate")
    args = parser.parse_args()
    tls = None
    if args.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(*args.tls)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    scheme = "https" if tls else "http"
    print(f"upstream listening on {scheme}://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    try:
        Upstream(tls).serve_forever(listener)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
