"""Just enough HTTP/1.1 on raw sockets for the bench's fake upstream and load generator (does socket I/O).

``http.server`` and ``http.client`` parse headers with the ``email`` package and cost
a few hundred microseconds per request; the bench's own processes share one core, so
they speak HTTP here in a few dozen lines instead: a buffered reader, head parsing,
and bodies by Content-Length or chunked transfer coding. No keep-alive policy, no
validation beyond what the bench needs: the peers are the bench's own targets.
"""

from __future__ import annotations

import socket
from typing import Dict, Iterator, Tuple

Headers = Dict[bytes, bytes]


class Reader:
    """Buffered reads from one socket; ``EOFError`` when the peer closes too early."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("peer closed the connection")
        self.buf += data

    def until(self, delim: bytes) -> bytes:
        """The bytes before ``delim``, consuming both."""
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(delim)]
                return out
            start = max(0, len(self.buf) - len(delim) + 1)
            self._fill()

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self) -> Iterator[bytes]:
        """Everything until the peer closes (a body without length)."""
        if self.buf:
            yield bytes(self.buf)
            self.buf.clear()
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            yield data


def parse_head(head: bytes) -> Tuple[bytes, Headers]:
    """The start line, and the header fields with lower-case names."""
    lines = head.split(b"\r\n")
    headers: Headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def chunks(reader: Reader) -> Iterator[bytes]:
    """The data of a chunked body, one HTTP chunk at a time, trailer consumed."""
    while True:
        size = int(reader.until(b"\r\n").split(b";", 1)[0], 16)
        if size == 0:
            while reader.until(b"\r\n"):  # trailer fields, then the empty line
                pass
            return
        data = reader.exact(size)
        reader.exact(2)
        yield data


def body_parts(reader: Reader, headers: Headers) -> Iterator[bytes]:
    """A message body in the pieces it arrives in, however its length is given."""
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        yield from chunks(reader)
    elif b"content-length" in headers:
        n = int(headers[b"content-length"])
        if n:
            yield reader.exact(n)
    else:
        yield from reader.rest()


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def wants_close(headers: Headers) -> bool:
    return headers.get(b"connection", b"").lower() == b"close"
