"""How an upstream stream ends, decided once for every upstream API. Pure.

Every API's stream fold (``apis/*``) turns upstream body lines into Anthropic
events and implements ``StreamFold``. When the body stops, the relay knows
only three facts: whether the HTTP framing ended properly (``clean``), whether
a read broke (``failure``), and whether this proxy aborted the call itself
(``abort_reason``: the client left, shutdown, a deadline, or "finished": the
upstream went quiet after saying it was done). ``stream_end`` turns those facts
and the fold's own view into the events that finish the message, or the one
error it ends with (RELIABILITY.md S12: EOF is not success).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Tuple

from .errors import NO_RETRY, ClientGone, ProxyError, UpstreamNotJson, UpstreamTimeout
from .redact import quoted

Event = Dict[str, Any]


class StreamFold(Protocol):
    """Upstream stream lines in, Anthropic event payloads out (sans-io). One per stream."""

    complete: bool  # the upstream's own end was seen: the relay stops reading
    # The fold ended the answer itself, before the upstream did (a stop string matched here):
    # the rest of the upstream's body is not wanted. Folds that never do may leave it out.
    cut_short: bool
    stop_reason: Optional[str]  # after the end, for metrics
    # Anthropic usage keys for the call record: the upstream's as soon as it was read, whatever the
    # ending (a stream cut after its usage still cost that); {} while nothing is known.
    usage: Dict[str, int]
    # What the upstream said it billed for the call (OpenRouter's usage.cost), the record's cost;
    # None where it does not say (the tokens are priced).
    billed_cost: Optional[float]
    # Bytes an SSE line may have beyond the cap per byte of body before it (``iter_lines``): 0
    # but where the API's closing events repeat what its deltas sent.
    line_allowance: float
    # The longest line the API may send whole where --max-line-bytes' cap would cut an answer (0: none).
    longest_line: int
    # The upstream began its answer before anything went to the client (a Chat chunk with a choice,
    # a passthrough message_start): an error now is no refusal, and what it spent is not known.
    began: bool
    # How many of the upstream's events said something (keep-alives do not: SSE comments, pings).
    # The relay's bound on a stream of nothing but keep-alives reads it.
    heard: int

    def line_skimmer(self) -> Any:
        """A ``skim.LineSkimmer`` for a line grown past ``skim.SKIM_AFTER`` (``iter_lines``), or None
        to read it whole: an API whose closing events repeat long texts its deltas sent."""

    @property
    def finishing(self) -> bool:
        """The upstream said it is done; only trailing data (usage, [DONE]) may follow."""

    def feed_line(self, raw: bytes) -> List[Event]:
        """Events for one or more whole lines; raises ``ProxyError`` for an upstream error event."""

    def end(self, clean: bool) -> Tuple[List[Event], Optional[ProxyError]]:
        """The body is over: the events that finish the message, or the error it ended with."""

    def start(self) -> List[Event]:
        """``message_start`` now, if not sent yet (pings while a slow upstream thinks)."""

    def fail(self, exc: ProxyError) -> List[Event]:
        """The one terminal ``error`` event; [] once the stream has ended."""

    def from_json(self, obj: Any) -> List[Event]:
        """The whole stream for a JSON answer to a stream request (without a message_start already sent)."""


def abort_error(reason: Optional[str]) -> Optional[Exception]:
    """What this proxy's own abort of an upstream call means for the client; None for none or "finished"."""
    if reason == "client":
        return ClientGone()
    if reason == "shutdown":
        return ProxyError("the proxy is shutting down", status=529)
    if reason == "deadline":
        return UpstreamTimeout("upstream did not finish in time")
    if reason == "keep-alives":
        return UpstreamTimeout("upstream sent nothing but keep-alives (pings, SSE comments) for longer than "
                               "--request-timeout (or --idle-timeout, where that is longer)")
    if reason == "head":
        return UpstreamTimeout("upstream did not send its response head within --connect-timeout + --idle-timeout")
    return None


def stream_end(
    fold: StreamFold, *, clean: bool, failure: Optional[ProxyError] = None, abort_reason: Optional[str] = None
) -> Tuple[List[Event], Optional[Exception]]:
    """The events that end a stream whose upstream body stopped, and the error it ends with.

    - the client left: nothing more to write (``ClientGone``);
    - shutdown or a deadline aborted the call: that is the error, whatever the fold saw;
    - otherwise the fold decides: a stream that said it was done finishes normally,
      also after a broken read or our "finished" abort; one that did not fails, with
      the read error when there was one (it says more than "ended early").
    """
    aborted = abort_error(abort_reason)
    if aborted is not None:
        return [], aborted
    events, error = fold.end(clean and failure is None and abort_reason is None)
    if error is not None and failure is not None:
        error = failure
    elif error is not None and clean and not fold.heard:
        error = _no_event_stream(fold) or error
    return events, error


def _no_event_stream(fold: StreamFold) -> Optional[ProxyError]:
    """A whole body without one event but with lines that are none (a page or a plain-text error
    served as text/plain, which passes for SSE): the same on every try, so neither the proxy nor
    the client asks again, as for a web page's Content-Type. None for an empty body, which may pass,
    and for a bare JSON body (an error object without SSE framing): the fold has read it as the API's."""
    stray = getattr(getattr(fold, "decoder", None), "stray", None)
    if stray is None or stray.lstrip().startswith(("{", "[")):
        return None
    return UpstreamNotJson("upstream answered a stream request with a body that is no event stream "
                           f"(its first line: {quoted(stray.strip(), 200)})", headers=(NO_RETRY,))
