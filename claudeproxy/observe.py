"""What the proxy notices about a call while it runs, beyond the answer itself.

I/O: logging only. Two things:

- ``log_body``: raw bodies in both directions (client request, upstream
  request, upstream answer, client answer), at DEBUG on the
  ``claudeproxy.bodies`` logger, always through the redactor. ``--log-level
  debug`` shows them, as the Go proxy this replaces did; ``--log-bodies``
  turns on that one logger at any level.
- ``ObservedFold``: wraps an API's ``StreamFold`` for the relay when bodies are
  logged, and logs every upstream line and the events sent for it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ProxyError
from .redact import redact_text

# The package's own logger, whatever the package is called: a copy vendored as myapp.vendor.cp logs
# under myapp.vendor.cp.* (every module's getLogger(__name__)), and its log setup must be there too.
PACKAGE_LOGGER = __name__.rpartition(".")[0]
BODIES_LOGGER = PACKAGE_LOGGER + ".bodies"
_MAX_LOGGED = 1024 * 1024  # one body line in the log at most this long: a 30 MB image is no use there

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
    """A ``StreamFold`` that logs the traffic at DEBUG (used only when bodies are logged)."""

    def __init__(self, fold: Any, secrets: Sequence[str]) -> None:
        self._fold = fold
        self._secrets = tuple(secrets)

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

    @property
    def billed_cost(self) -> Optional[float]:
        return self._fold.billed_cost  # type: ignore[no-any-return]

    @property
    def line_allowance(self) -> float:
        return float(self._fold.line_allowance)

    @property
    def longest_line(self) -> int:
        return int(self._fold.longest_line)

    @property
    def began(self) -> bool:
        return bool(self._fold.began)

    @property
    def heard(self) -> int:
        return int(self._fold.heard)

    def line_skimmer(self) -> Any:
        return self._fold.line_skimmer()

    def feed_line(self, raw: bytes) -> List[Event]:
        for line in raw.splitlines():  # the relay feeds the whole lines of one read
            if line.strip():
                log_body("upstream stream line", line, self._secrets)
        try:
            return self._seen(self._fold.feed_line(raw))
        except ProxyError as exc:
            self._seen(list(exc.events_before))  # they go out before the error event: log them too
            raise

    def end(self, clean: bool) -> Tuple[List[Event], Optional[ProxyError]]:
        events, error = self._fold.end(clean)
        return self._seen(events), error

    def start(self) -> List[Event]:
        return self._seen(self._fold.start())

    def fail(self, exc: ProxyError) -> List[Event]:
        return self._seen(self._fold.fail(exc))

    def from_json(self, obj: Any) -> List[Event]:
        log_body("upstream response body", obj, self._secrets)
        return self._seen(self._fold.from_json(obj))

    def _seen(self, events: List[Event]) -> List[Event]:
        if events:
            log_body("client events", events, self._secrets)
        return events
