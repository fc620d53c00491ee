"""The streaming relay: upstream SSE lines in, Anthropic events out, as they come.

I/O. ``StreamRelay.run`` reads the upstream body one line at a time
(``readline`` with a 1 MiB cap, RELIABILITY.md S13), feeds parsed chunks to
the sans-io ``StreamTranslator`` and writes what it returns at once. Nothing
is held back beyond the current line. ``tick`` runs on the watchdog thread:
it commits the stream and sends pings while the upstream is quiet, and ends a
stream whose upstream stays silent after its finish_reason. Failure handling
follows PROTOCOL.md 4.3: before the stream is committed a failure is a plain
HTTP error; after it, exactly one ``event: error`` and the end.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from .ids import new_id
from .errors import ClientGone, ProxyError, UpstreamTimeout, UpstreamUnavailable, error_from_object
from .openai_types import parse_chat_chunk
from .sse import ServerSentEvent, SSEDecoder, is_done, split_lines
from .translate_stream import StreamTranslator, events_for_message
from .translate_response import message_id
from .upstream import UpstreamCall

if TYPE_CHECKING:
    from .pipeline import Call, Proxy

log = logging.getLogger(__name__)

MAX_BAD_EVENTS = 50  # consecutive non-JSON data lines before the stream counts as broken


def _read_error(exc: BaseException, call: UpstreamCall, idle: float) -> Exception:
    """What a failed upstream read means for the client."""
    if call.abort_reason == "client":
        return ClientGone()
    if call.abort_reason == "shutdown":
        return ProxyError("the proxy is shutting down", status=529)
    if call.abort_reason == "deadline":
        return UpstreamTimeout("upstream did not finish in time")
    if isinstance(exc, socket.timeout):
        return UpstreamTimeout(f"upstream sent nothing for {idle:g} s")
    return UpstreamUnavailable(f"upstream connection broke off ({type(exc).__name__})")


def read_json_body(resp: Any, call: UpstreamCall, limit: int) -> Any:
    """A whole JSON response body (non-streaming answers), size-capped."""
    try:
        raw = resp.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise _read_error(exc, call, 0) from None
    if call.abort_reason is not None:
        raise _read_error(OSError("aborted"), call, 0)
    if len(raw) > limit:
        raise UpstreamUnavailable(f"upstream response is larger than {limit} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        ctype = resp.headers.get("Content-Type", "?") if resp.headers else "?"
        raise UpstreamUnavailable(f"upstream returned a body that is not JSON (Content-Type {ctype})") from None


def _content_kind(resp: Any) -> str:
    ctype = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if "json" in ctype:
        return "json"
    if ctype in ("", "text/event-stream", "text/plain", "application/octet-stream", "application/x-ndjson"):
        return "sse"
    return "other"


class StreamRelay:
    """Relays one upstream stream to one client. See the module docstring."""

    def __init__(self, proxy: "Proxy", call: "Call") -> None:
        self.proxy = proxy
        self.call = call
        self.config = proxy.config
        self.writer = call.writer
        self.upstream_call = UpstreamCall()
        self.lock = threading.RLock()
        self.decoder = SSEDecoder()
        self.committed = False
        self.finished = False
        self.response_open = False  # upstream answered 200: from now on we may commit
        self.bad_events = 0
        self.opened_at = time.monotonic()
        self.last_upstream = self.opened_at
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

    # ------------------------------------------------------------------
    # The handler thread.

    def run(self) -> None:
        resp = self.proxy.open_upstream(self.call, self.upstream_call)
        self.opened_at = self.last_upstream = time.monotonic()
        self.response_open = True
        with resp:
            kind = _content_kind(resp)
            if kind == "json":
                self._from_json(resp)
            elif kind == "other":
                ctype = resp.headers.get("Content-Type")
                raise UpstreamUnavailable(f"upstream returned non-SSE content ({ctype}) to a stream request")
            else:
                self._relay(resp)

    def _relay(self, resp: Any) -> None:
        try:
            self._read_all(resp)
        except ClientGone:
            self.upstream_call.abort("client")
            raise
        except ProxyError as exc:
            self._fail(exc)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if self.upstream_call.abort_reason == "finished" or (
                self.translator.has_finish_reason and self.upstream_call.abort_reason is None
            ):
                self._finish()  # the answer was complete; only the goodbye was lost
            else:
                self._fail(_read_error(exc, self.upstream_call, self.config.idle_timeout))

    def _read_all(self, resp: Any) -> None:
        limit = self.config.max_line_bytes
        while not self.finished:
            raw = resp.readline(limit + 1)
            if not raw:
                self._at_eof()
                return
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise UpstreamUnavailable(f"upstream sent an SSE line longer than {limit} bytes")
            self.last_upstream = time.monotonic()
            for line in split_lines(raw):
                event = self.decoder.decode(line)
                if event is not None and self._on_event(event):
                    return

    def _at_eof(self) -> None:
        last = self.decoder.flush()
        if last is not None and self._on_event(last):
            return
        if self.upstream_call.abort_reason not in (None, "finished"):
            raise _read_error(OSError("aborted"), self.upstream_call, self.config.idle_timeout)
        if self.translator.has_finish_reason or self.upstream_call.abort_reason == "finished":
            self._finish()
            return
        # EOF is not success (RELIABILITY.md S12): no [DONE] and no finish_reason.
        raise UpstreamUnavailable("upstream stream ended early (no finish_reason and no [DONE])")

    def _on_event(self, event: ServerSentEvent) -> bool:
        """Handle one upstream event; True when the stream is complete."""
        if is_done(event.data):
            self._finish()
            return True
        try:
            obj = json.loads(event.data)
        except (ValueError, RecursionError):
            self.bad_events += 1
            log.warning("skipping a non-JSON upstream event: %.200r", event.data)
            if self.bad_events >= MAX_BAD_EVENTS:
                raise UpstreamUnavailable("upstream stream is not JSON") from None
            return False
        self.bad_events = 0
        chunk = parse_chat_chunk(obj)
        if event.event == "error" and chunk.error is None:
            chunk = dataclasses.replace(chunk, error=obj if isinstance(obj, dict) else {"message": event.data})
        with self.lock:
            if not self.committed:
                if chunk.error is not None:  # first event is an error: a plain HTTP error
                    raise _Uncommitted(error_from_object(chunk.error, self.proxy.upstream.secrets()))
                self._commit(chunk.id)
            self.writer.events(self.translator.feed(chunk))
            if self.translator.ready_to_finish:
                self._finish()
                return True
        return False

    def _commit(self, upstream_id: str = "") -> None:
        """Start the client's stream: headers and message_start (once)."""
        with self.lock:
            if self.committed:
                return
            if upstream_id and not self.translator.started:
                self.translator.message_id = message_id(upstream_id, new_id)
            self.writer.start_stream()
            self.committed = True
            self.writer.events(self.translator.start())

    def _finish(self) -> None:
        with self.lock:
            if self.finished:
                return
            self._commit()
            self.finished = True
            self.writer.events(self.translator.finish())
            self.writer.end_stream()

    def _fail(self, exc: ProxyError) -> None:
        if isinstance(exc, _Uncommitted):
            raise exc.error
        with self.lock:
            if not self.committed:
                raise exc  # nothing sent yet: the handler answers with a plain HTTP error
            if self.finished:
                return
            self.finished = True
            log.warning("stream failed after it began: %s", exc.message)
            self.writer.events(self.translator.fail(exc))
            self.writer.end_stream()
        self.upstream_call.abort("done")

    # ------------------------------------------------------------------
    # A JSON answer to a stream request (upstreams that ignore "stream").

    def _from_json(self, resp: Any) -> None:
        obj = read_json_body(resp, self.upstream_call, self.config.max_body_bytes * 2)
        message = self.proxy.translate_back(self.call, obj)
        self.translator.stop_reason = message["stop_reason"]
        self.translator.final_usage = message["usage"]
        with self.lock:
            self.writer.start_stream()
            self.committed = self.finished = True
            self.writer.events(events_for_message(message))
            self.writer.end_stream()

    # ------------------------------------------------------------------
    # The watchdog thread.

    def tick(self, now: float) -> None:
        """Pings while quiet; commit when the first event is slow; end after a silent finish."""
        if self.finished or not self.lock.acquire(blocking=False):
            return  # the handler thread is writing right now: next tick
        try:
            interval = self.config.ping_interval
            if not self.committed and self.response_open and now - self.opened_at >= interval:
                self._commit()
                self._ping()
            elif self.committed and not self.finished and now - self.writer.last_write >= interval:
                self._ping()
            if self.translator.has_finish_reason and now - self.last_upstream >= self.config.finish_grace:
                self.upstream_call.abort("finished")
        except ClientGone:
            self.upstream_call.abort("client")
        finally:
            self.lock.release()

    def _ping(self) -> None:
        self.writer.events([{"type": "ping"}])


class _Uncommitted(ProxyError):
    """Carries an error that must become a plain HTTP answer through ``_fail``."""

    def __init__(self, error: ProxyError) -> None:
        super().__init__(error.message, status=error.status, error_type=error.error_type)
        self.error = error
