"""The one streaming relay: an open upstream response in, Anthropic events out, as they come.

I/O only. The pipeline opens the upstream and hands ``Relay.begin`` the open
response and the API's ``StreamFold`` (``ending.py``); the relay reads the body
as it arrives (``iter_lines``: the whole lines of each read, a 1 MiB cap per
line, RELIABILITY.md S13), gives them to the fold and writes what comes back at
once, in one write. Nothing is held back beyond an unfinished line. How the
stream ends is decided by ``ending.stream_end``, the same for every upstream API.

``tick`` runs on the watchdog thread: it commits the stream and sends pings
while the upstream is quiet, and ends a stream whose upstream stays silent
after it said it was done. Failures follow PROTOCOL.md 4.3: before the stream
is committed a failure is a plain HTTP error (raised to the handler); after it,
exactly one ``event: error`` and the end.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .config import Config
from .ending import StreamFold, stream_end
from .errors import NO_RETRY, ClientGone, ProxyError, UpstreamNotJson, says_no_retry
from .redact import quoted
from .sides import Writer
from .upstream import (
    UpstreamCall,
    clean_eof,
    content_kind,
    iter_lines,
    read_error,
    read_json_body,
)

log = logging.getLogger(__name__)
_CONTENT_EVENTS = ("content_block_start", "content_block_delta")
_REST_WAIT = 0.005  # how long the stream's end waits for the rest of the upstream body (the pool's gain)


class Relay:
    """Relays one upstream stream to one client through one fold. See the module docstring."""

    def __init__(self, writer: Writer, fold: StreamFold, call: UpstreamCall, config: Config,
                 headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        self.writer = writer
        self.headers = headers  # the upstream's headers the client gets with the stream's head
        self.fold = fold
        self.call = call
        self.config = config
        self.lock = threading.RLock()  # one writer at a time: handler thread or watchdog
        self.committed = False
        self.finished = False
        self.response_open = False  # the upstream answered 200: from now on we may commit
        self.failure: Optional[ProxyError] = None  # what ended the stream with event: error
        # The upstream's first event was its error (a rate limit, a context error): a refusal,
        # which costs no tokens, like the same refusal as an HTTP status.
        self.refused = False
        # When the first content went out: the time to first token the client saw.
        self.first_content_at: Optional[float] = None
        self.opened_at = self.last_upstream = self.last_content = time.monotonic()
        self._resp: Any = None  # the open upstream response, until the fold completes
        self._opened: Any = None  # the same response, closed when the relay ends
        self._lines: Iterator[bytes] = iter(())  # its lines, read by begin() and then by finish()
        self.deadline: Optional[float] = None  # monotonic time the call is aborted at (a JSON answer)

    # ------------------------------------------------------------------
    # The handler thread.

    def begin(self, resp: Any) -> bool:
        """Relay ``resp`` (open, 200) until the stream commits or ends; True if ``finish`` must relay the rest.

        Until the first event goes out a failure raises (the pipeline may retry or fall
        back); once it has gone out nothing can be retried, so the caller can let go of
        the request before ``finish`` relays the rest.
        """
        self.opened_at = self.last_upstream = self.last_content = time.monotonic()
        self.response_open = True
        self._resp = self._opened = resp
        try:
            kind = content_kind(resp)
            if kind == "json":
                # A plain JSON answer is held to the request timeout, as a non-stream call is;
                # pings would otherwise keep a slow body alive forever.
                self.deadline = self.opened_at + self.config.request_timeout
                self._from_json(resp)
            elif kind == "other":
                # A web page or a file, not events: the same on every try (a URL that names no API),
                # so neither the proxy nor the client asks again, as for a JSON request's answer.
                ctype = resp.headers.get("Content-Type")
                self._fail(UpstreamNotJson(f"upstream returned non-SSE content ({quoted(ctype, 100)}) to a stream "
                                           "request", headers=(NO_RETRY,)))
            else:
                limit = max(self.config.max_line_bytes, self.fold.longest_line)
                decoder = getattr(self.fold, "decoder", None)  # (every SSE fold's: sse.SSEFold)
                if decoder is not None:
                    decoder.allow(limit)  # an event may be as long as a line
                self._lines = iter_lines(resp, limit, self.fold.line_allowance,
                                         self.fold.line_skimmer)
                if self._relay(until_committed=True):
                    return True
        except BaseException:
            self._end()
            raise
        self._end()
        return False

    def finish(self) -> None:
        """The rest of a stream ``begin`` left open; closes the upstream response."""
        try:
            self._relay(until_committed=False)
        finally:
            self._end()

    def _end(self) -> None:
        self._opened.close()
        skipped = getattr(self.fold, "skipped_events", 0)
        if skipped:
            log.warning("skipped %d non-JSON upstream events", skipped)

    def _relay(self, until_committed: bool) -> bool:
        """Lines to events until the stream ends (False) or, with ``until_committed``, commits (True)."""
        failure: Optional[ProxyError] = None
        folding = False  # a ProxyError now is the fold's (an upstream error event), not the read's
        heard = self.fold.heard  # the upstream's events that were no keep-alive, so far
        try:
            for raw in self._lines:
                # Fold and write under the lock, so the watchdog cannot slip a ping
                # (or a second message_start) between translating a line and writing it.
                with self.lock:
                    self.last_upstream = time.monotonic()
                    folding = True
                    events = self.fold.feed_line(raw)
                    folding = False
                    if self.fold.complete:
                        self._write(events)  # the last events, and the stream's end
                        return False
                    if self.fold.heard != heard:
                        heard, self.last_content = self.fold.heard, self.last_upstream
                    if events:
                        self._send(events)
                    if until_committed and self.committed:
                        return True
        except ClientGone:
            self.call.abort("client")
            raise
        except ProxyError as exc:  # an error event from the upstream, or a line over the cap
            # Only the upstream's error as its first event is a refusal (not after a role-only chunk or
            # a held message_start: the answer had begun). A line over the cap is an answer under
            # way, whatever it cost: its tokens are not known, not 0.
            self.refused = folding and not self.committed and not exc.events_before and not self.fold.began
            self._fail(exc)
            return False
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failure = read_error(exc, self.call, self.config.idle_timeout)  # type: ignore[assignment]
        resp = self._opened
        with self.lock:
            events, error = stream_end(self.fold, clean=clean_eof(resp), failure=failure,
                                       abort_reason=self.call.abort_reason)
            self._write(events)
        if isinstance(error, ClientGone):
            raise error
        if error is not None:
            self._fail(error)  # type: ignore[arg-type]
        return False

    def _write(self, events: List[Dict[str, Any]]) -> None:
        """Write what the fold gave (every caller holds the lock)."""
        if not events:
            return
        if not self.fold.complete or self.finished:
            self._send(events)
            return
        # The last events: the stream's end goes in the same write. The upstream response goes
        # back to the pool first, ready for the client's next request (the rest of a finished
        # body, such as its terminating chunk, is drained at once) -- when that rest is here.
        # When a stop string matched here the upstream is still generating, and an upstream
        # may be slow to end its body: the drain may then wait its whole
        # upstream.DRAIN_SECONDS, so it comes after the client has its end.
        self.finished = True
        first = not getattr(self.fold, "cut_short", False) and self._rest_is_here()
        if first:
            self._close_upstream()
        self._send(events, end=True)
        self.call.answered = True  # a client closing now leaves the drain below alone
        if not first:
            self._close_upstream()

    def _send(self, events: List[Dict[str, Any]], end: bool = False) -> None:
        """Commit the stream if need be and write ``events`` at once, in one write (under the lock)."""
        if not self.committed:
            self.writer.start_stream(self.headers)
            self.committed = True
        self.writer.events(events, end)
        if self.first_content_at is None and any(e["type"] in _CONTENT_EVENTS for e in events):
            self.first_content_at = time.monotonic()

    def _rest_is_here(self) -> bool:
        """Is the rest of the upstream body here (or coming within a few ms), so closing the
        response first costs the client nothing?"""
        resp = self._resp
        here = getattr(resp, "rest_is_here", None)
        return here is None or bool(here(_REST_WAIT))

    def _close_upstream(self) -> None:
        """Close the upstream response before the client sees the end: a complete one gives its
        keep-alive connection back to the pool, ready for the client's next request."""
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()

    def _fail(self, exc: ProxyError) -> None:
        with self.lock:
            before = list(exc.events_before)  # what the same read brought before an error event
            if not self.committed and not before:
                raise exc  # nothing sent yet: the handler answers with a plain HTTP error
            if self.finished:
                return
            self.finished = True
            self.failure = exc
            # Masked here too: not every failure is made by the fold (which masks the call's secrets);
            # an upstream's value quoted in a message of the relay's or the reader's is not.
            exc.mask(self.call.secrets)
            log.warning("stream failed after it began: %s", exc.message)
            self._send(before + self.fold.fail(_resumable(exc)), end=True)

    # ------------------------------------------------------------------
    # A JSON answer to a stream request (upstreams that ignore "stream").

    def _from_json(self, resp: Any) -> None:
        try:
            # Read outside the lock: the watchdog may ping while a slow body arrives.
            obj = read_json_body(resp, self.call, self.config.max_body_bytes * 2)
            with self.lock:
                events = self.fold.from_json(obj)
        except ProxyError as exc:
            self._fail(exc)  # a plain HTTP error unless pings already began
            return
        with self.lock:
            self._write(events)

    # ------------------------------------------------------------------
    # The watchdog thread.

    @property
    def _longest_quiet(self) -> float:
        """How long an upstream may send nothing but keep-alives: the request timeout, or the idle
        timeout where that is longer (a user who waits that long for a first byte waits for this)."""
        return max(self.config.request_timeout, self.config.idle_timeout)

    def tick(self, now: float) -> None:
        """Pings while quiet; commit when the first event is slow; end after a silent finish."""
        if self.deadline is not None and now >= self.deadline and not self.finished:
            self.call.abort("deadline")
            return
        if self.finished or not self.lock.acquire(blocking=False):
            return  # the handler thread is writing right now: next tick
        try:
            quiet_since = self.writer.last_write if self.committed else self.opened_at
            if self.response_open and now - quiet_since >= self.config.ping_interval:
                if not self.committed:
                    # Reasoning models can think for minutes before their first byte (PROTOCOL.md 3.7).
                    # What starts the stream here says nothing yet (a passthrough's held empty block
                    # start): the first content, timed, is still to come.
                    began = self.first_content_at
                    self._write(self.fold.start())
                    self.first_content_at = began
                self.writer.events([{"type": "ping"}])
            if self.fold.finishing and now - self.last_upstream >= self.config.finish_grace:
                self.call.abort("finished")
            elif now - self.last_content >= self._longest_quiet:
                # Pings and SSE comments keep a stream alive through a long think, but not forever:
                # an upstream that sends nothing else held the client, its thread and a slot.
                self.call.abort("keep-alives")
        except ClientGone:
            self.call.abort("client")
        finally:
            self.lock.release()


def _resumable(exc: ProxyError) -> ProxyError:
    """The error event for a stream that began. A rate limit met mid-stream (OpenRouter's provider
    at its limit) goes as an overload: Claude Code ends the turn on a rate_limit_error event, but
    asks again after an overloaded_error one, as the client of a 429 before the stream would have.
    Not a limit no wait gets past (an exhausted quota): that one stops the client as it is."""
    if exc.error_type != "rate_limit_error" or says_no_retry(exc):
        return exc
    return ProxyError(exc.message, status=529, error_type="overloaded_error")
