"""What the proxy notices about a call while it runs, beyond the answer itself.

I/O: logging only. Two things:

- ``log_body``: raw bodies in both directions (client request, upstream
  request, upstream answer, client answer), at DEBUG on the
  ``claudeproxy.bodies`` logger, always through the redactor. ``--log-level
  debug`` shows them, as the Go proxy this replaces did; ``--log-bodies``
  turns on that one logger at any level.
- ``ObservedFold``: wraps an API's ``StreamFold`` for the relay. It notes when
  the first content event came out (the relay writes each batch the moment the
  fold returns it, so this is the time to first token the client saw), and at
  DEBUG logs every upstream line and the events sent for it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ProxyError
from .redact import redact_text

BODIES_LOGGER = "claudeproxy.bodies"
_MAX_LOGGED = 1024 * 1024  # one body line in the log at most this long: a 30 MB image is no use there
_CONTENT_EVENTS = ("content_block_start", "content_block_delta")

Event = Dict[str, Any]


def bodies_logged() -> bool:
    return logging.getLogger(BODIES_LOGGER).isEnabledFor(logging.DEBUG)


def log_body(what: str, body: Any, secrets: Sequence[str]) -> None:
    """One DEBUG line with ``body`` (bytes, str or a JSON value), redacted; nothing unless enabled."""
    if not bodies_logged():
        return
    if isinstance(body, bytes):
        text = body.decode("utf-8", "replace")
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body, ensure_ascii=False)
    if len(text) > _MAX_LOGGED:
        text = f"{text[:_MAX_LOGGED]}... ({len(text)} characters)"
    logging.getLogger(BODIES_LOGGER).debug("%s: %s", what, redact_text(text, secrets))


class ObservedFold:
    """A ``StreamFold`` that records when content first came out and logs the traffic at DEBUG."""

    def __init__(self, fold: Any, secrets: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._fold = fold
        self._secrets = tuple(secrets)
        self._clock = clock
        self._log = bodies_logged()
        self.first_content_at: Optional[float] = None

    def __getattr__(self, name: str) -> Any:
        # What the relay and the pipeline read beyond the protocol (warnings, skipped_events, ...).
        return getattr(self._fold, name)

    @property
    def complete(self) -> bool:
        return bool(self._fold.complete)

    @property
    def finishing(self) -> bool:
        return bool(self._fold.finishing)

    @property
    def stop_reason(self) -> Optional[str]:
        return self._fold.stop_reason  # type: ignore[no-any-return]

    @property
    def usage(self) -> Dict[str, int]:
        return self._fold.usage  # type: ignore[no-any-return]

    def feed_line(self, raw: bytes) -> List[Event]:
        if self._log and raw.strip():
            log_body("upstream stream line", raw.rstrip(b"\r\n"), self._secrets)
        return self._seen(self._fold.feed_line(raw))

    def end(self, clean: bool) -> Tuple[List[Event], Optional[ProxyError]]:
        events, error = self._fold.end(clean)
        return self._seen(events), error

    def start(self) -> List[Event]:
        return self._seen(self._fold.start())

    def fail(self, exc: ProxyError) -> List[Event]:
        return self._seen(self._fold.fail(exc))

    def from_json(self, obj: Any) -> List[Event]:
        if self._log:
            log_body("upstream response body", obj, self._secrets)
        return self._seen(self._fold.from_json(obj))

    def _seen(self, events: List[Event]) -> List[Event]:
        if self.first_content_at is None and any(e.get("type") in _CONTENT_EVENTS for e in events):
            self.first_content_at = self._clock()
        if self._log and events:
            log_body("client events", events, self._secrets)
        return events
