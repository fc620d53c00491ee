"""Server-sent events: the decoder for upstream streams, the encoder for ours.

No I/O. ``SSEDecoder`` is a line-fed state machine after the WHATWG rules
(PROTOCOL.md 3.2): ``data:`` with or without a space, several ``data:`` lines
joined by newlines, ``:`` comments ignored, ``event:`` remembered, CR, LF and
CRLF line ends. ``encode_event`` writes one Anthropic event as one byte
string so it can go out in a single write.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import ProxyError, UpstreamUnavailable

MAX_BAD_EVENTS = 50  # consecutive non-JSON events before a stream counts as broken
# The most characters of data one event may gather over its lines. Each line is capped as it is read
# (``upstream.iter_lines``), but an event's data lines were gathered until a blank line came: an
# upstream that sent none grew the proxy without end. As large as the largest line may grow.
MAX_EVENT_CHARS = 16 * 1024 * 1024
MAX_EVENT_LINES = 65536  # and as many data lines (empty ones cost a list slot each, and count no characters)


class ServerSentEvent:
    """One decoded event: its data and its ``event:`` name ("" when it had none).

    A plain class with slots: one is made per upstream chunk, and a frozen dataclass's
    construction (a ``__setattr__`` call per field) cost three times as much."""

    __slots__ = ("data", "event")

    def __init__(self, data: str, event: str = "") -> None:
        self.data = data
        self.event = event

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServerSentEvent) and (self.data, self.event) == (other.data, other.event)

    def __hash__(self) -> int:
        return hash((self.data, self.event))

    def __repr__(self) -> str:
        return f"ServerSentEvent(data={self.data!r}, event={self.event!r})"


# json.loads takes three Python calls and two regex matches around the C scanner; an upstream
# chunk's data is almost always one JSON value with nothing around it, which the scanner takes alone.
_SCAN_ONCE = json.JSONDecoder().scan_once


def loads_data(data: str) -> Any:
    """``json.loads(data)``, the same value or the same error, in one call to the C scanner when
    ``data`` is exactly one JSON value (no whitespace around it)."""
    try:
        value, end = _SCAN_ONCE(data, 0)
    except StopIteration:
        return json.loads(data)  # leading whitespace, a BOM or no JSON: json.loads says which
    return value if end == len(data) else json.loads(data)


def _lines_of(text: str) -> List[str]:
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    if "\r" not in text and "\n" not in text:
        return [text]  # the common case: one line
    # Not str.splitlines: it also splits at VT, FF, U+2028 and more, which SSE does not.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


class SSEDecoder:
    """Feed lines without their terminator; get an event at each blank line."""

    def __init__(self, max_event: int = MAX_EVENT_CHARS) -> None:
        self._data: List[str] = []
        self._size, self._max_event = 0, max_event  # characters of data gathered for the event
        self._event = ""
        self._first = True
        self._cr_ended = False  # the last run of lines ended with a CR, whose LF may begin the next
        # The first line that is no SSE field at all (a web page's or a plain-text error's): what a
        # body with no events was instead, for the stream's error.
        self.stray: Optional[str] = None

    def decode(self, line: str) -> Optional[ServerSentEvent]:
        if self._first:
            # WHATWG decodes the stream as UTF-8, which drops one leading byte order mark.
            self._first = False
            line = line[1:] if line.startswith("\ufeff") else line
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment: keep-alive (": OPENROUTER PROCESSING")
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max_event:
                raise UpstreamUnavailable(f"upstream sent an SSE event of more than {self._max_event} characters")
            if len(self._data) > MAX_EVENT_LINES:
                raise UpstreamUnavailable(f"upstream sent an SSE event of more than {MAX_EVENT_LINES} lines")
        elif name == "event":
            self._event = value
        elif self.stray is None and name not in ("id", "retry") and not line.isspace():
            self.stray = line
        return None  # id, retry and unknown fields carry nothing we use

    def lines(self, text: str) -> List[str]:
        """The lines of a run of whole lines (one read's: ``upstream.iter_lines``). A run may end
        with a CR whose LF begins the next run (a CRLF the reads cut in two): that LF ends the line
        the CR ended, not one more (an empty line, which would end an event early)."""
        if self._cr_ended and text.startswith("\n"):
            text = text[1:]
        self._cr_ended = text.endswith("\r")
        return _lines_of(text) if text else []

    def lone_event(self, text: str) -> Optional[str]:
        """The data of ``text`` when it is one whole event of a single ``data: `` line read between
        two events (what ``decode`` would make of its lines), else None.

        Most reads of a stream bring just that: one chunk of the answer. Such a read then needs
        no line splitting and no decoder state; any other shape goes line by line.
        """
        if self._first or self._data or self._event or self._cr_ended or not text.startswith("data: ") \
                or not text.endswith("\n\n") or text.count("\n") != 2 or "\r" in text:
            return None
        return text[6:-2]

    def allow(self, chars: int) -> None:
        """Take events of up to ``chars`` characters of data: a line cap raised past the default
        (``max_line_bytes``) is an event's too."""
        self._max_event = max(self._max_event, chars)

    @property
    def pending(self) -> bool:
        """Are data lines waiting for the blank line that ends their event?"""
        return bool(self._data)

    def flush(self) -> Optional[ServerSentEvent]:
        """The last event of a stream that ended without a blank line."""
        return self._dispatch()

    def _dispatch(self) -> Optional[ServerSentEvent]:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent("\n".join(self._data), self._event)
        self._data, self._size, self._event = [], 0, ""
        return event


def iter_events(lines: Iterator[bytes]) -> Iterator[ServerSentEvent]:
    """All events of a byte-line iterator (for tools and tests; the relay feeds ``SSEDecoder`` itself)."""
    decoder = SSEDecoder()
    for raw in lines:
        for line in decoder.lines(raw.decode("utf-8", errors="replace")):
            event = decoder.decode(line)
            if event is not None:
                yield event
    last = decoder.flush()
    if last is not None:
        yield last


def is_done(data: str) -> bool:
    """OpenAI's end marker; matched by prefix like the openai SDK does."""
    return data.startswith("[DONE]")


# One encoder for every event: json.dumps with arguments builds a new JSONEncoder on each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ENCODE_STRING = json.encoder.encode_basestring  # what _ENCODER.encode does with a str, without its Python call
_TEXT_DELTA = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":%s}}\n\n'


def encode_event(payload: Dict[str, Any]) -> bytes:
    """One Anthropic SSE event; its ``event:`` name is the payload's ``type``."""
    delta = payload.get("delta")
    try:
        if payload["type"] == "content_block_delta" and len(payload) == 3 and type(payload.get("index")) is int \
                and type(delta) is dict and len(delta) == 2 and delta.get("type") == "text_delta" and type(delta.get("text")) is str:
            # Most events of a stream are text deltas: fill a template, as json.dumps would write it.
            return (_TEXT_DELTA % (payload["index"], _ENCODE_STRING(delta["text"]))).encode("utf-8")
        data = _ENCODER.encode(payload)
        return f"event: {payload['type']}\ndata: {data}\n\n".encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from the upstream ("\ud83d": half an emoji cut by a JS server)
        # has no UTF-8 form; escaped it is still valid JSON, as in JSON answers.
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {payload['type']}\ndata: {data}\n\n".encode("utf-8", "replace")


class SSEFold:
    """What every fold of an SSE upstream shares: lines in, each whole event to ``_on_event``.

    A subclass sets ``decoder`` and ``complete`` and defines ``_on_event(event) -> events``;
    once ``complete``, later events in the same lines are not looked at.
    """

    decoder: SSEDecoder
    complete: bool
    billed_cost: Optional[float] = None  # ``StreamFold.billed_cost``: only Chat upstreams report one
    line_allowance = 0.0  # ``StreamFold.line_allowance``: no line repeats the deltas before it
    longest_line = 0  # ``StreamFold.longest_line``: no line longer than the cap
    began = False  # ``StreamFold.began``: where the API's first events say nothing of the answer
    heard = 0  # ``StreamFold.heard``: events with data so far; comments are none, and pings take theirs back

    def line_skimmer(self) -> Any:
        """``StreamFold.line_skimmer``: None, a long line is read whole."""
        return None

    def feed_line(self, raw: bytes) -> List[Dict[str, Any]]:
        """Events for one or more whole lines; raises ``ProxyError`` for an upstream error event,
        carrying the events of the lines before it (``events_before``) that must go out first."""
        text = raw.decode("utf-8", errors="replace")
        data = self.decoder.lone_event(text)
        if data is not None:
            if self.complete:
                return []
            self.heard += 1
            return self._on_event(ServerSentEvent(data))
        events: List[Dict[str, Any]] = []
        for line in self.decoder.lines(text):
            event = self.decoder.decode(line)
            if event is not None and not self.complete:
                self.heard += 1
                try:
                    events += self._on_event(event)
                except ProxyError as exc:
                    # After the events of this read's earlier lines, those the failing event gave.
                    exc.events_before = tuple(events) + tuple(exc.events_before)
                    raise
        return events

    def _on_event(self, event: ServerSentEvent) -> List[Dict[str, Any]]:
        raise NotImplementedError

    # For the subclasses: what every API does with an event that is no JSON, and with the body's end.

    bad_events = 0  # non-JSON events in a row (a JSON one resets it)
    skipped_events = 0  # all of them, for the relay's log line

    def _not_json(self) -> List[Dict[str, Any]]:
        """An event whose data is no JSON (and no error): skipped, unless it is the
        ``MAX_BAD_EVENTS``-th in a row, which means the stream is something else."""
        self.bad_events += 1
        self.skipped_events += 1
        if self.bad_events >= MAX_BAD_EVENTS:
            raise UpstreamUnavailable("upstream stream is not JSON")
        return []

    def _last_event(self) -> Tuple[List[Dict[str, Any]], Optional[ProxyError]]:
        """``end``'s first step: the events of the body's last event, which its end cut off before
        the blank line that ends it, or the upstream error it was; nothing once ``complete``."""
        last = self.decoder.flush()
        if last is None or self.complete:
            return [], None
        self.heard += 1  # an event all the same (ending.stream_end: a body that had one is an event stream)
        try:
            return self._on_event(last), None
        except ProxyError as exc:
            return [], exc
