"""Drive the pure stream core exactly as the relay does, and compare with golden transcripts.

Public API (other test modules may import these; keep it small):

- ``counter_ids(prefix="gen")``: a deterministic ``new_id`` (``gen1``, ``gen2``, ...), so
  generated tool ids are ``toolu_gen1`` ... and can be written in a golden file.
- ``make_translator(**meta)``: a ``StreamTranslator`` with test defaults (``message_id``
  ``msg_test``, ``model`` ``claude-test``, ``input_tokens`` 25, dialect ``generic``).
- ``drive(fold, lines)``: any API's fold driven exactly as the relay drives it.
- ``run_lines(lines, **meta)`` / ``run_transcript(upstream_bytes, **meta)``: the events
  the client would receive. Lines go through ``ChatFold.feed_line`` one
  ``readline()`` result at a time; reading stops once the stream is complete (the relay
  stops there too); otherwise ``end()`` runs at EOF. A raised ``ProxyError`` or the error
  ``end()`` returns becomes ``translator.fail(exc)``, except when nothing at all was
  emitted yet: then the ``ProxyError`` is raised, because the relay answers such a stream
  with a plain HTTP error (PROTOCOL.md 3.7). ``lines`` may raise ``OSError`` /
  ``http.client.HTTPException`` like a socket read; that maps through the relay's own
  ``upstream.read_error``, and how the stream then ends is ``ending.stream_end``'s decision.
- ``read_failure(end)``: the exception a socket raises for an ``end`` meta value.
- ``Playbook(**meta)``: feed chunk dicts one at a time and check what each one yields
  (mitmproxy's ``Playbook`` idea): ``pb.feed(chunk)``, ``pb.done()``, ``pb.eof()``,
  ``pb.expect(chunk, *events)``; ``pb.events`` holds everything so far.
- ``normalize(events)``: signatures ``cpx1.<base64url JSON>`` become ``{"cpx1": <JSON>}``
  so golden files can state the provider state they carry.
- ``same_events(actual, expected)``: equality after ``normalize``; an ``error`` event's
  expected message only needs to be contained in the actual one.
- ``load_case(stem)`` -> ``Case(upstream, expected, meta)`` for ``fixtures/streams/``.

Meta keys (``<case>.meta.json``): ``stop_sequences``, ``local_stops`` (those of them the
upstream was not sent: a ``LocalStopTranslator``), ``tool_names``, ``think_tags``,
``input_tokens``, ``dialect``, ``model``, ``message_id``; ``end``: ``"eof"`` (default: the
body stopped without an error, but the relay cannot tell it was whole -- a FIN at a chunk
boundary, or a close-delimited body -- so ``clean`` is false), ``"error: <type>"`` (the read broke after the last byte: the relay
turns that into an error of that type unless the stream already had a finish_reason) or
``"open"`` (the upstream never closes: the stream must complete on its own, PROTOCOL.md
case 57); ``coalesce``: compare after merging consecutive deltas of one block (for cases
whose delta boundaries the spec leaves open, such as ``<think>`` tag splitting).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import os
import socket
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from claudeproxy.apis.chat.stream import ChatFold, LocalStopFold, LocalStopTranslator, StreamTranslator
from claudeproxy.dialects import DIALECTS
from claudeproxy.ending import stream_end
from claudeproxy.errors import ProxyError
from claudeproxy.upstream import UpstreamCall, iter_lines, read_error

Event = Dict[str, Any]
STREAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "streams")
MAX_LINE = 1 << 20  # the relay's default line cap (RELIABILITY.md S13)
IDLE_TIMEOUT = 600.0  # only named in the timeout message
_TRANSLATOR_KEYS = ("message_id", "model", "input_tokens", "tool_names", "stop_sequences", "think_tags", "secrets",
                    "thinking")
_RUN_KEYS = ("end", "coalesce", "max_line_bytes")


def counter_ids(prefix: str = "gen") -> Callable[[], str]:
    """A ``new_id`` that returns ``gen1``, ``gen2``, ... (one counter per translator)."""
    count = [0]

    def new_id() -> str:
        count[0] += 1
        return f"{prefix}{count[0]}"

    return new_id


def make_translator(**meta: Any) -> StreamTranslator:
    unknown = set(meta) - set(_TRANSLATOR_KEYS) - set(_RUN_KEYS) - {"dialect", "new_id", "local_stops"}
    assert not unknown, f"unknown meta keys {sorted(unknown)}"
    kwargs: Dict[str, Any] = {"message_id": "msg_test", "model": "claude-test", "input_tokens": 25}
    kwargs.update((k, meta[k]) for k in _TRANSLATOR_KEYS if k in meta)
    kwargs["stop_sequences"] = tuple(kwargs.get("stop_sequences", ()))
    kwargs["dialect_name"] = meta.get("dialect", "generic")
    kwargs["hold_calls"] = DIALECTS[kwargs["dialect_name"]].thought_signatures  # as ChatApi.fold sets it
    kwargs["new_id"] = meta.get("new_id") or counter_ids()
    if meta.get("local_stops"):  # stop strings the upstream was not sent: the proxy matches them
        return LocalStopTranslator(local_stops=tuple(meta["local_stops"]), **kwargs)
    return StreamTranslator(**kwargs)


def make_fold(translator: StreamTranslator) -> ChatFold:
    """The fold ``ChatApi.fold`` gives the translator."""
    return LocalStopFold(translator) if isinstance(translator, LocalStopTranslator) else ChatFold(translator)


_FAILURES: Dict[str, Callable[[], BaseException]] = {
    "api_error": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "timeout_error": lambda: socket.timeout("timed out"),
}


def read_failure(end: str) -> Optional[BaseException]:
    """What the upstream read raises after the last byte, for an ``end`` meta value."""
    if end in ("eof", "open"):
        return None
    assert end.startswith("error: ") and end[7:] in _FAILURES, f"bad end {end!r}"
    return _FAILURES[end[7:]]()


def _lines_then(lines: Iterable[bytes], end: str) -> Iterator[bytes]:
    yield from lines
    failure = read_failure(end)
    if failure is not None:
        raise failure
    if end == "open":
        raise AssertionError("the stream did not complete before the upstream went quiet (case 57)")


def run_lines(lines: Iterable[bytes], **meta: Any) -> List[Event]:
    """Events for ``readline()`` results, driven like ``Relay._relay`` (see ``drive``)."""
    return drive(make_fold(make_translator(**meta)), _lines_then(lines, meta.get("end", "eof")))


def drive(fold: Any, lines: Iterable[bytes], clean: bool = False) -> List[Event]:
    """Any API's fold, driven as the relay drives it: each run of lines in, stop once complete.

    The end of the body goes through ``ending.stream_end``, the relay's own rule,
    not a copy of it. A ``ProxyError`` (an upstream error event) or the error the
    stream ends with is raised when nothing was written yet (the relay answers a
    plain HTTP error), else it becomes the fold's one error event, after the
    events its own read brought before it (``events_before``).
    """
    events: List[Event] = []
    failure: Optional[ProxyError] = None
    try:
        for raw in lines:
            events += fold.feed_line(raw)
            if fold.complete:
                return events
    except ProxyError as exc:
        events += exc.events_before
        return events + _fail(fold, events, exc)
    except (OSError, http.client.HTTPException) as exc:
        failure = read_error(exc, UpstreamCall(), IDLE_TIMEOUT)  # type: ignore[assignment]
    tail, error = stream_end(fold, clean=clean, failure=failure)
    events += tail
    return events + _fail(fold, events, error) if error is not None else events


def _fail(fold: Any, events: List[Event], exc: Any) -> List[Event]:
    if not events:
        raise exc  # nothing written yet: the relay answers with a plain HTTP error
    return fold.fail(exc)


def run_transcript(upstream: bytes, **meta: Any) -> List[Event]:
    """Events for a raw upstream body, split into lines by ``iter_lines`` like the relay."""
    limit = meta.get("max_line_bytes", MAX_LINE)
    # iter_lines is lazy: its "line too long" ProxyError surfaces inside run_lines, as in the relay.
    return run_lines(iter_lines(io.BytesIO(upstream), limit), **meta)


def sse_data(obj: Any) -> bytes:
    """One upstream event: ``data: <json>`` plus the blank line."""
    return b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n"


# ----------------------------------------------------------------------------
# Comparing events.


def decode_cpx1(signature: str) -> Any:
    body = signature[len("cpx1."):]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii"))


def normalize(events: List[Event]) -> List[Event]:
    out = json.loads(json.dumps(events))
    for event in out:
        delta = event.get("delta") if event.get("type") == "content_block_delta" else None
        if delta and delta.get("type") == "signature_delta" and str(delta["signature"]).startswith("cpx1."):
            delta["signature"] = {"cpx1": decode_cpx1(delta["signature"])}
    return out


def coalesce(events: List[Event]) -> List[Event]:
    """Consecutive text/thinking/input_json deltas of one block merged into one."""
    fields = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
    out: List[Event] = []
    for event in json.loads(json.dumps(events)):
        prev = out[-1] if out else None
        kind = event.get("delta", {}).get("type") if event["type"] == "content_block_delta" else None
        if kind in fields and prev and prev["type"] == "content_block_delta" and prev["delta"]["type"] == kind:
            prev["delta"][fields[kind]] += event["delta"][fields[kind]]
        else:
            out.append(event)
    return out


def same_events(actual: List[Event], expected: List[Event], *, merge: bool = False) -> bool:
    act, exp = normalize(actual), normalize(expected)
    if merge:
        act, exp = coalesce(act), coalesce(exp)
    if len(act) != len(exp):
        return False
    return all(_same_event(a, e) for a, e in zip(act, exp))


def _same_event(actual: Event, expected: Event) -> bool:
    if expected.get("type") == "error" and actual.get("type") == "error":
        return (actual["error"]["type"] == expected["error"]["type"]
                and expected["error"]["message"] in actual["error"]["message"])
    return actual == expected


def diff_text(actual: List[Event], expected: List[Event]) -> str:
    """Both transcripts side by side, one compact JSON event per line (assertion messages)."""
    dump = lambda evs: [json.dumps(e, sort_keys=True) for e in normalize(evs)]  # noqa: E731
    act, exp = dump(actual), dump(expected)
    lines = []
    for i in range(max(len(act), len(exp))):
        a = act[i] if i < len(act) else "<none>"
        e = exp[i] if i < len(exp) else "<none>"
        lines.append(f"{'  ' if a == e else '!!'} {i:2d} got      {a}")
        if a != e:
            lines.append(f"         expected {e}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Fixtures.


@dataclasses.dataclass
class Case:
    stem: str
    upstream: bytes
    expected: List[Event]
    meta: Dict[str, Any]


def case_stems() -> List[str]:
    return sorted(f[: -len(".openai.sse")] for f in os.listdir(STREAMS) if f.endswith(".openai.sse"))


def load_case(stem: str) -> Case:
    from sse_checks import parse_sse

    def read(suffix: str) -> Optional[bytes]:
        path = os.path.join(STREAMS, stem + suffix)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as fh:
            return fh.read()

    upstream, transcript, meta = read(".openai.sse"), read(".anthropic.sse"), read(".meta.json")
    assert upstream is not None and transcript is not None, f"{stem}: missing fixture file"
    pairs = parse_sse(transcript)
    for name, payload in pairs:
        assert payload["type"] == name, f"{stem}: golden event {name!r} has type {payload['type']!r}"
    return Case(stem, upstream, [p for _, p in pairs], json.loads(meta) if meta else {})


# ----------------------------------------------------------------------------
# Playbook: one chunk in, the events it yields out.


class Playbook:
    """Feed upstream chunks one by one through the real ``ChatFold``."""

    def __init__(self, **meta: Any) -> None:
        self.translator = make_translator(**meta)
        self.stream = make_fold(self.translator)
        self.events: List[Event] = []

    def feed_bytes(self, raw: bytes) -> List[Event]:
        """Raw upstream bytes, split into lines as ``readline()`` would."""
        out: List[Event] = []
        for line in io.BytesIO(raw).readlines():
            out += self.stream.feed_line(line)
        self.events += out
        return out

    def feed(self, chunk: Any) -> List[Event]:
        """One ``data:`` event holding ``chunk`` (a dict, or a string sent verbatim)."""
        return self.feed_bytes(sse_data(chunk) if not isinstance(chunk, str) else b"data: " + chunk.encode() + b"\n\n")

    def done(self) -> List[Event]:
        return self.feed("[DONE]")

    def eof(self) -> Tuple[List[Event], Optional[ProxyError]]:
        out, error = self.stream.end()
        self.events += out
        return out, error

    def expect(self, chunk: Any, *expected: Event) -> "Playbook":
        got = self.feed(chunk)
        assert same_events(got, list(expected)), "after " + json.dumps(chunk) + "\n" + diff_text(got, list(expected))
        return self

    @property
    def complete(self) -> bool:
        return self.stream.complete


def chunk(delta: Optional[Dict[str, Any]] = None, finish: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
    """A ChatCompletionChunk with one choice (no ``id``, so the message id stays ``msg_test``)."""
    body: Dict[str, Any] = {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    body.update(extra)
    return body


def tool_delta(index: Optional[int] = None, id: str = "", name: str = "", arguments: Optional[str] = None) -> Dict[str, Any]:
    """``{"tool_calls": [one fragment]}`` for ``chunk()``; only the given fields are set."""
    call: Dict[str, Any] = {}
    if index is not None:
        call["index"] = index
    if id:
        call["id"], call["type"] = id, "function"
    function: Dict[str, Any] = {}
    if name:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    call["function"] = function
    return {"tool_calls": [call]}
