"""Socket timeouts the kernel keeps (kernel_timeout): what the relay's reads and writes rely on."""

from __future__ import annotations

import socket
import sys
import time
from typing import Iterator, Tuple

import pytest

from claudeproxy.kernel_timeout import bound_by_kernel

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_RCVTIMEO is set on Linux only")


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    listener.close()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


@linux_only
def test_a_receive_waits_the_bound_then_fails_as_a_timeout(pair: Tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.settimeout(5)
    assert bound_by_kernel(client, socket.SO_RCVTIMEO, 0.3)
    assert client.gettimeout() is None, "the socket is blocking: no poll before each receive"
    server.sendall(b"ready")
    assert client.recv(16) == b"ready"  # data waiting: at once
    started = time.monotonic()
    with pytest.raises(BlockingIOError):
        client.recv(16)  # nothing comes: the kernel's bound ends the wait
    assert 0.2 <= time.monotonic() - started < 2.0


@linux_only
def test_a_send_to_a_peer_that_stopped_reading_fails_at_the_bound(pair: Tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert bound_by_kernel(client, socket.SO_SNDTIMEO, 0.3)
    started = time.monotonic()
    with pytest.raises(OSError):  # EAGAIN once the buffers are full: the client's write fails as a timeout would
        for _ in range(10_000):
            client.sendall(b"x" * 65536)
    assert time.monotonic() - started < 5.0


def test_where_the_kernel_cannot_keep_it_the_python_timeout_stays(
        pair: Tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = pair
    client.settimeout(5)
    assert not bound_by_kernel(client, socket.SO_RCVTIMEO, 0)  # no bound: never a wait without end
    assert not bound_by_kernel(client, socket.SO_RCVTIMEO, float("inf"))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not bound_by_kernel(client, socket.SO_RCVTIMEO, 1.0)
    assert client.gettimeout() == 5, "a socket the kernel does not bound keeps its timeout"


@linux_only
def test_a_value_the_kernel_reads_back_otherwise_is_not_trusted(
        pair: Tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = pair
    client.settimeout(5)
    real = socket.socket.getsockopt

    def halved(sock: socket.socket, *args: int) -> bytes:
        value = real(sock, *args)
        return value[:len(value) // 2] + bytes(len(value) // 2)  # seconds kept, microseconds dropped

    monkeypatch.setattr(socket.socket, "getsockopt", halved)
    assert not bound_by_kernel(client, socket.SO_RCVTIMEO, 1.5)
    assert client.gettimeout() == 5


def test_a_bound_under_a_millisecond_is_not_set(pair: Tuple[socket.socket, socket.socket]) -> None:
    # The kernel would keep 0.5 µs as 0 s, which means no bound at all: a read would wait forever.
    client, _ = pair
    client.settimeout(5)
    assert not bound_by_kernel(client, socket.SO_RCVTIMEO, 5e-7)
    assert client.gettimeout() == 5


class _Handler:
    """What ResponseWriter uses of its request handler."""

    request_version = protocol_version = "HTTP/1.1"
    command = "POST"
    close_connection = body_left_unread = False

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.connection, self.timeout = sock, timeout
        self.sends_bounded = bound_by_kernel(sock, socket.SO_SNDTIMEO, timeout)
        sock.settimeout(timeout)

    def date_time_string(self) -> str:
        return "Thu, 01 Jan 2026 00:00:00 GMT"

    def log_request(self, *args: object) -> None:
        pass


@linux_only
def test_a_large_stream_write_to_a_client_reading_slowly_ends_at_the_client_timeout(
        pair: Tuple[socket.socket, socket.socket]) -> None:
    # The kernel's bound is per send: a client taking 64 KiB every 0.2 s would stretch a 6 MiB
    # write to 20 s. A large write goes under the Python timeout, which bounds all of it.
    import threading

    from claudeproxy.errors import ClientGone
    from claudeproxy.handler import ResponseWriter

    server_side, client_side = pair[1], pair[0]
    handler = _Handler(server_side, 0.5)
    writer = ResponseWriter(handler, "req_1")  # type: ignore[arg-type]
    writer.start_stream()
    assert server_side.gettimeout() is None  # a stream: the kernel-timed socket
    writer.raw_chunk(b"data: small\n\n")  # small writes go at once
    stop = threading.Event()

    def read_slowly() -> None:
        client_side.settimeout(5)
        while not stop.is_set():
            try:
                if not client_side.recv(65536):
                    return
            except OSError:
                return
            stop.wait(0.2)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        with pytest.raises(ClientGone):
            writer.raw_chunk(b"x" * (6 << 20))
        assert time.monotonic() - started < 3.0
    finally:
        stop.set()
        reader.join(5)
