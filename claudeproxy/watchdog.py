"""One background thread per server that watches calls in flight.

I/O: it peeks at client sockets and calls each watch's ``tick``. Every 0.1 s
it checks each registered call:
- the client closed its connection -> abort the upstream call at once, also
  while the upstream has not sent its first byte (RELIABILITY.md S10, S11);
- the call has a deadline that passed -> abort it;
- ``tick(now)`` lets a stream session send pings and end a stream whose
  upstream went quiet after its finish_reason.
A handler thread blocked in an upstream read cannot notice any of this
itself, which is why the work lives here.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Protocol

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1


class Abortable(Protocol):
    """What a watch watches: an upstream call, or a pause between two."""

    abort_reason: Optional[str]

    def abort(self, reason: str) -> None: ...


class Pause:
    """A wait between two upstream attempts that the watchdog can end like a call.

    It stands in a ``Watch`` where an ``UpstreamCall`` would: the client leaving,
    shutdown or the deadline abort it, and ``wait`` returns at once.
    """

    def __init__(self) -> None:
        self.abort_reason: Optional[str] = None
        self._ended = threading.Event()

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
        self._ended.set()

    def wait(self, seconds: float) -> bool:
        """Wait ``seconds``; True when aborted first."""
        return self._ended.wait(max(0.0, seconds))


class Watch:
    """What the watchdog knows about one call in flight."""

    def __init__(
        self,
        call: Abortable,
        client: Optional[socket.socket],
        deadline: Optional[float] = None,
        tick: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.call = call
        self.client = client
        self.deadline = deadline
        self.deadline_reason = "deadline"  # the abort reason when the deadline passes
        self.tick = tick
        self.client_checked = client is not None


def _readable(socks: List[socket.socket]) -> List[socket.socket]:
    """The sockets with something to read (data, EOF or an error), without blocking."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit
        poller = select.poll()
        by_fd = {}
        for sock in socks:
            try:
                by_fd[sock.fileno()] = sock
                poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            except (OSError, ValueError):
                continue
        return [by_fd[fd] for fd, _ in poller.poll(0) if fd in by_fd]
    readable, _, _ = select.select(socks, [], [], 0)
    return list(readable)


def client_gone(sock: socket.socket) -> Optional[bool]:
    """For a readable socket: True if the peer closed, None if data is waiting."""
    try:
        # Readable, so this returns at once even on a socket with a timeout.
        data = sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError, socket.timeout):
        return False
    except OSError:
        return True
    return None if data else True


def client_left(watch: Watch) -> bool:
    """Whether the watched call's client has closed its connection, looked at now: the watchdog
    looks once a tick (0.1 s), and a retry or a fallback must not go upstream for nobody."""
    sock = watch.client
    if sock is None or not watch.client_checked:  # (not checked: a pipelined request is waiting)
        return False
    return bool(_readable([sock])) and client_gone(sock) is True


class Watchdog:
    def __init__(self, tick_seconds: float = TICK_SECONDS) -> None:
        self._tick_seconds = tick_seconds
        self._lock = threading.Lock()
        self._watches: Dict[int, Watch] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._chores: List[List[Any]] = []  # [every (s), due (monotonic), fn]: housekeeping on this thread
        self.pauses_ended: Optional[str] = None  # why no wait between attempts may begin (shutdown)

    def add_chore(self, every: float, chore: Callable[[], Any]) -> None:
        """Run ``chore`` every ``every`` seconds on the watchdog's thread (before ``start``)."""
        self._chores.append([every, time.monotonic() + every, chore])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="claudeproxy-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def add(self, watch: Watch) -> None:
        with self._lock:
            self._watches[id(watch)] = watch

    def remove(self, watch: Watch) -> None:
        with self._lock:
            self._watches.pop(id(watch), None)

    def abort_all(self, reason: str) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.call.abort(reason)

    def end_pauses(self, reason: str) -> None:
        """End every wait between two attempts now, and any begun later at once (``pauses_ended``);
        the calls in flight go on."""
        with self._lock:
            self.pauses_ended = reason
            watches = list(self._watches.values())
        for watch in watches:
            if isinstance(watch.call, Pause):
                watch.call.abort(reason)

    def _run(self) -> None:
        while not self._stop.wait(self._tick_seconds):
            with self._lock:
                watches = list(self._watches.values())
            self._check_clients(watches)
            now = time.monotonic()
            for watch in watches:
                try:
                    self._check(watch, now)
                except Exception:  # one bad watch must not stop the others
                    log.exception("watchdog check failed")
            self._run_chores(now)

    def _run_chores(self, now: float) -> None:
        for chore in self._chores:
            if now >= chore[1]:
                chore[1] = now + chore[0]
                try:
                    chore[2]()
                except Exception:  # housekeeping must not stop the watchdog
                    log.exception("watchdog chore failed")

    def _check_clients(self, watches: List[Watch]) -> None:
        by_sock = {id(w.client): w for w in watches if w.client is not None and w.client_checked}
        socks = [w.client for w in by_sock.values() if w.client is not None]
        for sock in _readable(socks) if socks else []:
            watch = by_sock[id(sock)]
            gone = client_gone(sock)
            if gone:
                watch.call.abort("client")
            elif gone is None:
                watch.client_checked = False  # a pipelined request is waiting: cannot tell any more

    def _check(self, watch: Watch, now: float) -> None:
        if watch.call.abort_reason is not None:
            return
        if watch.deadline is not None and now >= watch.deadline:
            watch.call.abort(watch.deadline_reason)
            return
        if watch.tick is not None:
            watch.tick(now)
