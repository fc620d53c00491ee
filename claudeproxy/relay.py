"""The streaming relay: upstream SSE lines in, Anthropic events out, as they come.

I/O. ``StreamRelay.run`` reads the upstream body one line at a time
(``iter_lines``: ``readline`` with a 1 MiB cap, RELIABILITY.md S13), hands
each line to the sans-io ``UpstreamStream`` and writes what comes back at
once. Nothing is held back beyond the current line. ``tick`` runs on the
watchdog thread: it commits the stream and sends pings while the upstream is
quiet, and ends a stream whose upstream stays silent after its finish_reason.
Failures follow PROTOCOL.md 4.3: before the stream is committed a failure is
a plain HTTP error; after it, exactly one ``event: error`` and the end.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .apis.chat.stream import StreamTranslator, UpstreamStream, events_for_message
from .errors import ClientGone, ProxyError, UpstreamUnavailable
from .ids import new_id
from .upstream import UpstreamCall, clean_eof, content_kind, iter_lines, read_error, read_json_body

if TYPE_CHECKING:
    from .pipeline import Call, Proxy

log = logging.getLogger(__name__)


class StreamRelay:
    """Relays one upstream stream to one client. See the module docstring."""

    def __init__(self, proxy: "Proxy", call: "Call") -> None:
        self.proxy = proxy
        self.call = call
        self.config = proxy.config
        self.writer = call.writer
        self.upstream_call = UpstreamCall()
        self.lock = threading.RLock()  # one writer at a time: handler thread or watchdog
        self.committed = False
        self.finished = False
        self.response_open = False  # upstream answered 200: from now on we may commit
        self.failure: Optional[ProxyError] = None  # what ended the stream with event: error
        self.opened_at = self.last_upstream = time.monotonic()
        self.translator = StreamTranslator(
            message_id="msg_" + new_id(),
            model=call.req.model,
            input_tokens=call.input_estimate,
            new_id=new_id,
            tool_names=call.translation.tool_names,
            stop_sequences=call.req.stop_sequences,
            dialect_name=call.dialect.name,
            think_tags=call.dialect.think_tags,
            secrets=proxy.upstream.secrets(),
        )
        self.stream = UpstreamStream(self.translator)

    # ------------------------------------------------------------------
    # The handler thread.

    def run(self) -> None:
        resp = self.proxy.open_upstream(self.call, self.upstream_call)
        self.opened_at = self.last_upstream = time.monotonic()
        self.response_open = True
        with resp:
            kind = content_kind(resp)
            if kind == "json":
                self._from_json(resp)
            elif kind == "other":
                ctype = resp.headers.get("Content-Type")
                raise UpstreamUnavailable(f"upstream returned non-SSE content ({ctype}) to a stream request")
            else:
                self._relay(resp)
        if self.stream.skipped_events:
            log.warning("skipped %d non-JSON upstream events", self.stream.skipped_events)

    def _relay(self, resp: Any) -> None:
        try:
            for raw in iter_lines(resp, self.config.max_line_bytes):
                # Parse and write under the lock, so the watchdog cannot slip a ping
                # (or a second message_start) between translating a line and writing it.
                with self.lock:
                    self.last_upstream = time.monotonic()
                    self._write(self.stream.feed_line(raw))
                    if self.stream.complete:
                        return
            self._eof(resp)
        except ClientGone:
            self.upstream_call.abort("client")
            raise
        except ProxyError as exc:
            self._fail(exc)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failure = read_error(exc, self.upstream_call, self.config.idle_timeout)
            if isinstance(failure, ClientGone):
                raise failure from None
            if self.upstream_call.abort_reason in (None, "finished"):
                self._end(failure)  # a stream that had its finish_reason ends normally
            else:
                self._fail(failure)  # type: ignore[arg-type]

    def _eof(self, resp: Any) -> None:
        """The body ended without an error: why, decides between finishing and failing."""
        reason = self.upstream_call.abort_reason
        if reason == "client":
            raise ClientGone()
        if reason not in (None, "finished"):
            # Our own abort (shutdown, deadline) also reads as EOF: say what happened.
            self._fail(read_error(OSError("aborted"), self.upstream_call, self.config.idle_timeout))  # type: ignore[arg-type]
            return
        self._end(clean=reason is None and clean_eof(resp))

    def _end(self, failure: Optional[ProxyError] = None, clean: bool = False) -> None:
        """The upstream body is over: finish, or fail if it never said it was done."""
        with self.lock:
            events, error = self.stream.end(clean)
            self._write(events)
            if error is not None:
                self._fail(failure or error)

    def _write(self, events: List[Dict[str, Any]]) -> None:
        if not events:
            return
        with self.lock:
            if not self.committed:
                self.writer.start_stream()
                self.committed = True
            self.writer.events(events)
            if self.stream.complete and not self.finished:
                self.finished = True
                self.writer.end_stream()

    def _fail(self, exc: ProxyError) -> None:
        with self.lock:
            if not self.committed:
                raise exc  # nothing sent yet: the handler answers with a plain HTTP error
            if self.finished:
                return
            self.finished = True
            self.failure = exc
            log.warning("stream failed after it began: %s", exc.message)
            self.writer.events(self.translator.fail(exc))
            self.writer.end_stream()

    # ------------------------------------------------------------------
    # A JSON answer to a stream request (upstreams that ignore "stream").

    def _from_json(self, resp: Any) -> None:
        try:
            # Read outside the lock: the watchdog may ping while a slow body arrives.
            obj = read_json_body(resp, self.upstream_call, self.config.max_body_bytes * 2)
        except ProxyError as exc:
            self._fail(exc)
            return
        with self.lock:
            try:
                message = self.proxy.translate_back(self.call, obj)
            except ProxyError as exc:
                self._fail(exc)  # an error object: plain HTTP error unless pings already began
                return
            self.translator.stop_reason = message["stop_reason"]
            self.translator.final_usage = message["usage"]
            events = events_for_message(message)
            if self.committed:
                events = events[1:]  # the watchdog already sent message_start while the body was slow
            self.writer.start_stream()
            self.committed = self.finished = True
            self.writer.events(events)
            self.writer.end_stream()

    # ------------------------------------------------------------------
    # The watchdog thread.

    def tick(self, now: float) -> None:
        """Pings while quiet; commit when the first event is slow; end after a silent finish."""
        if self.finished or not self.lock.acquire(blocking=False):
            return  # the handler thread is writing right now: next tick
        try:
            quiet_since = self.writer.last_write if self.committed else self.opened_at
            if self.response_open and now - quiet_since >= self.config.ping_interval:
                if not self.committed:
                    # Reasoning models can think for minutes before their first byte (PROTOCOL.md 3.7).
                    self._write(self.translator.start())
                self.writer.events([{"type": "ping"}])
            if self.translator.has_finish_reason and now - self.last_upstream >= self.config.finish_grace:
                self.upstream_call.abort("finished")
        except ClientGone:
            self.upstream_call.abort("client")
        finally:
            self.lock.release()
