"""Seeded re-chunking: the events never depend on where the upstream's bytes were cut.

For every golden stream fixture, 200 seeds each cut the upstream body at random byte
offsets into HTTP/1.1 chunks (sometimes with chunk extensions), and the fake socket under
a real ``http.client.HTTPResponse`` hands those bytes out in random-sized reads (CPython's
``test_httplib.FakeSocket`` idea: no network). The body is read with the relay's own
``upstream.iter_lines`` and fed to ``ChatFold``; the events must equal the
unsplit run. An ``"end": "open"`` fixture gets no chunked terminator and the socket fails
the test if anything reads past the last byte: such a stream must complete on its own
(PROTOCOL.md case 57). ``"error: <type>"`` fixtures end with a socket error.

Then tool arguments are cut at random points (200 seeds, live first call, buffered second
call, cumulative snapshots): the concatenated ``partial_json`` must parse to the object.
To replay one seed: ``RECHUNK_SEED=17 pytest tests/test_stream_rechunk.py -k text_plain``.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from claudeproxy import upstream
from claudeproxy.errors import UpstreamUnavailable
from claudeproxy.upstream import iter_lines
from sse_checks import assert_valid_event_sequence, final_message
from stream_playbook import (
    MAX_LINE,
    Playbook,
    case_stems,
    chunk,
    diff_text,
    load_case,
    read_failure,
    run_lines,
    run_transcript,
    tool_delta,
)

SEEDS = 200
ONLY_SEED = os.environ.get("RECHUNK_SEED")
SEED_RANGE = [int(ONLY_SEED)] if ONLY_SEED else list(range(SEEDS))
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Raw(io.RawIOBase):
    """Socket bytes in random-sized reads; after the last byte: EOF, an error, or a test failure."""

    def __init__(self, data: bytes, rng: random.Random, after: Optional[BaseException], strict: bool) -> None:
        self.data, self.pos, self.rng = data, 0, rng
        self.after, self.strict = after, strict

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.pos >= len(self.data):
            if self.strict:
                raise AssertionError("read past the last byte: the stream should have completed")
            if self.after is not None:
                raise self.after
            return 0
        n = min(len(buf), self.rng.randint(1, 96), len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


class FakeSocket:
    def __init__(self, raw: _Raw) -> None:
        self.raw = raw

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        assert "r" in mode
        return io.BufferedReader(self.raw)

    def recv_into(self, buf: Any) -> int:  # what the pooled response reads a socket with
        return self.raw.readinto(buf)

    def close(self) -> None:
        pass


def chunked(body: bytes, rng: random.Random, terminate: bool) -> bytes:
    """``body`` as HTTP/1.1 chunks cut at random offsets."""
    cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(0, 40)))) if len(body) > 1 else []
    if rng.random() < 0.1:
        cuts = list(range(1, len(body)))  # one byte per chunk
    out = [HEAD]
    for start, end in zip([0] + cuts, cuts + [len(body)]):
        ext = b";x=1" if rng.random() < 0.1 else b""
        out.append(b"%x%s\r\n%s\r\n" % (end - start, ext, body[start:end]))
    if terminate:
        out.append(b"0\r\n\r\n")
    return b"".join(out)


# The relay's own response class reads every chunk already buffered at once (read_available);
# http.client's reads one chunk per call (read1). Both must give the same events.
RESPONSE_CLASSES = {"read_available": upstream._Response, "read1": http.client.HTTPResponse}


def http_events(body: bytes, meta: Dict[str, Any], seed: int, reader: str = "read_available") -> List[Dict[str, Any]]:
    """The events for ``body`` read like the relay reads it: a real HTTPResponse over a fake socket."""
    rng = random.Random(seed)
    end = meta.get("end", "eof")
    wire = chunked(body, rng, terminate=end == "eof")
    sock = FakeSocket(_Raw(wire, rng, read_failure(end), strict=end == "open"))
    resp = RESPONSE_CLASSES[reader](sock)  # type: ignore[arg-type]
    try:
        resp.begin()
        assert resp.chunked and resp.status == 200
        return run_lines(iter_lines(resp, meta.get("max_line_bytes", MAX_LINE)), **meta)
    finally:
        resp.close()


@pytest.mark.parametrize("reader", sorted(RESPONSE_CLASSES))
@pytest.mark.parametrize("stem", case_stems(), ids=lambda s: f"{s}-seeds{SEED_RANGE[0]}-{SEED_RANGE[-1]}")
def test_rechunked_http_body_gives_identical_events(stem: str, reader: str) -> None:
    case = load_case(stem)
    reference = run_transcript(case.upstream, **case.meta)
    for seed in SEED_RANGE:
        got = http_events(case.upstream, case.meta, seed, reader)
        assert got == reference, f"{stem} seed={seed} {reader}\n" + diff_text(got, reference)


def test_harness_really_splits_and_fails_on_a_lost_byte() -> None:
    # The property above is only worth something if the harness can tell streams apart.
    case = load_case("text_plain")
    rng = random.Random(3)
    wire = chunked(case.upstream, rng, terminate=True)
    assert wire.count(b"\r\n") > 20
    damaged = case.upstream.replace(b'"He"', b'"Hx"')
    assert http_events(damaged, case.meta, 3) != run_transcript(case.upstream, **case.meta)


def test_open_stream_that_never_completes_is_caught() -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n'
    with pytest.raises(AssertionError, match="read past the last byte"):
        http_events(body, {"end": "open"}, 1)


# ----------------------------------------------------------------------------
# Tool arguments cut at random points.

ARGUMENTS: List[Dict[str, Any]] = [
    {},
    {"path": "/src/main.py", "content": "def f():\n    return \"q\"\n", "mode": 420},
    {"command": "grep -rn 'TODO' . | head -n 5", "timeout": 30000, "run_in_background": False},
    {"todos": [{"content": "write tests", "status": "in_progress", "activeForm": "Writing"},
               {"content": "ship", "status": "pending", "activeForm": "Shipping"}]},
    {"text": "üñíçødé ✓ 日本語 \\ backslash \"quoted\" \t tab", "n": -1.5e-3, "none": None},
    {"deep": {"a": [1, [2, [3, {"b": [True, False, None]}]]]}, "empty": {}, "list": []},
    {"old_string": "x" * 300, "new_string": "y" * 300, "replace_all": True},
]


def cut(text: str, rng: random.Random) -> List[str]:
    """``text`` in 1..25 random non-empty pieces."""
    if len(text) < 2:
        return [text]
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 24))))
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def serialize(obj: Dict[str, Any], rng: random.Random) -> str:
    style = rng.choice([{}, {"separators": (",", ":")}, {"indent": 2}, {"ensure_ascii": False}])
    return json.dumps(obj, **style)


def partial_json_by_block(events: List[Dict[str, Any]]) -> Dict[int, str]:
    out: Dict[int, str] = {}
    for event in events:
        delta = event.get("delta") or {}
        if delta.get("type") == "input_json_delta":
            out[event["index"]] = out.get(event["index"], "") + delta["partial_json"]
    return out


def tool_inputs(pb: Playbook) -> List[Tuple[str, Any]]:
    """(name, parsed concatenated partial_json) per tool block, after the grammar check."""
    assert_valid_event_sequence(pb.events, allow_error=False)
    parts = partial_json_by_block(pb.events)
    blocks = [e for e in pb.events if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"]
    return [(b["content_block"]["name"], json.loads(parts.get(b["index"], "{}"))) for b in blocks]


@pytest.mark.parametrize("seed", SEED_RANGE, ids=lambda s: f"seed{s}")
def test_split_arguments_reassemble(seed: int) -> None:
    rng = random.Random(seed)
    first, second = rng.choice(ARGUMENTS), rng.choice(ARGUMENTS)
    a_pieces, b_pieces = cut(serialize(first, rng), rng), cut(serialize(second, rng), rng)
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_a", "first", a_pieces[0])))
    pb.feed(chunk(tool_delta(1, "call_b", "second", b_pieces[0])))
    steps = _interleave(rng, a_pieces[1:], b_pieces[1:])  # each call keeps its order
    steps.insert(rng.randint(0, len(steps)), (-1, "note"))  # and a text delta somewhere among them
    a_left = len(a_pieces) - 1
    text_seen = text_started = False
    for index, piece in steps:
        out = pb.feed(chunk({"content": piece}) if index < 0 else chunk(tool_delta(index, arguments=piece)))
        a_left -= index == 0
        a_done = a_left == 0
        text_seen = text_seen or index < 0
        text_started = text_started or any(e["type"] == "content_block_start" and e["content_block"]["type"] == "text" for e in out)
        # The text waits while the live call's JSON is open, and not a fragment longer.
        assert text_started == (a_done and text_seen), f"seed={seed} after {piece!r}"
    pb.feed(chunk(finish="tool_calls", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    assert pb.complete
    assert tool_inputs(pb) == [("first", first), ("second", second)], f"seed={seed}"
    content = final_message(pb.events)["content"]
    assert content == [{"type": "tool_use", "id": "call_a", "name": "first", "input": first},
                       {"type": "text", "text": "note"},
                       {"type": "tool_use", "id": "call_b", "name": "second", "input": second}], f"seed={seed}"


def _interleave(rng: random.Random, a: List[str], b: List[str]) -> List[Tuple[int, str]]:
    out: List[Tuple[int, str]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and rng.random() < 0.5):
            out.append((0, a[i]))
            i += 1
        else:
            out.append((1, b[j]))
            j += 1
    return out


@pytest.mark.parametrize("seed", SEED_RANGE, ids=lambda s: f"seed{s}")
def test_cumulative_argument_snapshots_reassemble(seed: int) -> None:
    # FIELD-NOTES 19: some upstreams resend the whole argument string so far in every chunk.
    rng = random.Random(seed)
    obj = rng.choice(ARGUMENTS)
    pieces = cut(serialize(obj, rng), rng)
    snapshots = ["".join(pieces[: i + 1]) for i in range(len(pieces))]
    if rng.random() < 0.5:
        snapshots.append(snapshots[-1])  # and once more at the end
    pb = Playbook()
    pb.feed(chunk(tool_delta(0, "call_s", "snap", snapshots[0])))
    for snap in snapshots[1:]:
        pb.feed(chunk(tool_delta(0, arguments=snap)))
    pb.feed(chunk(finish="tool_calls"))
    pb.done()
    assert tool_inputs(pb) == [("snap", obj)], f"seed={seed} snapshots={snapshots[:3]}"


# ---------------------------------------------------------------------------
# iter_lines: a line that spans many reads, and the allowance for lines that repeat what came before.


class _Slices:
    """A body read ``size`` bytes at a time (``read1``)."""

    def __init__(self, body: bytes, size: int) -> None:
        self.body, self.size, self.pos = body, size, 0

    def read1(self, n: int) -> bytes:
        piece = self.body[self.pos:self.pos + min(n, self.size)]
        self.pos += len(piece)
        return piece


def _lines(body: bytes, size: int, limit: int, allowance: float = 0.0) -> List[bytes]:
    return b"".join(iter_lines(_Slices(body, size), limit, allowance)).splitlines(keepends=True)


@pytest.mark.parametrize("size", [1, 7, 1024, 1 << 20])
def test_lines_come_whole_however_the_body_is_read(size: int) -> None:
    body = b"data: a\n\n" + b"data: " + b"b" * 5000 + b"\n\n" + b"data: c\n\ndata: last-without-newline"
    assert _lines(body, size, 6000) == body.splitlines(keepends=True)


def test_a_line_over_the_cap_fails_without_an_allowance() -> None:
    body = b"data: " + b"x" * 300 + b"\n\n" + b"data: " + b"y" * 1200 + b"\n\n"
    with pytest.raises(UpstreamUnavailable, match="longer than 1000 bytes"):
        _lines(body, 64, 1000)
    with pytest.raises(UpstreamUnavailable, match="longer than 1000 bytes"):
        _lines(body, 5000, 1000)  # the same when one read holds it whole


@pytest.mark.parametrize("size", [64, 5000])
def test_the_allowance_grows_with_the_body_before_the_line(size: int) -> None:
    """With allowance 2 a line may have 2 bytes beyond the cap per byte before it: a Responses
    call's ``.done`` repeats its arguments; a first line, or one longer than the allowance, fails."""
    deltas = b"".join(b"data: " + b"d" * 90 + b"\n\n" for _ in range(10))  # 980 bytes
    repeat = b"data: " + b"r" * 2800 + b"\n\n"  # over the 1000-byte cap, within 1000 + 2 * 980
    assert _lines(deltas + repeat, size, 1000, 2.0) == (deltas + repeat).splitlines(keepends=True)
    with pytest.raises(UpstreamUnavailable, match="longer than 2960 bytes"):  # the cap it was held to
        _lines(deltas + b"data: " + b"r" * 3100 + b"\n\n", size, 1000, 2.0)
    with pytest.raises(UpstreamUnavailable, match="longer than"):
        _lines(repeat + deltas, size, 1000, 2.0)  # nothing before it to repeat
    with pytest.raises(UpstreamUnavailable, match="longer than"):
        _lines(deltas + b"data: " + b"e" * 100000, size, 1000, 2.0)  # an endless line stops at the cap


@pytest.mark.parametrize("size", [64, 1 << 20])
def test_the_allowance_stops_at_max_repeat_line(monkeypatch: Any, size: int) -> None:
    """Blank lines count as body too: megabytes of them (cheap to send compressed) would otherwise
    let the next line be twice as long. The cap never passes MAX_REPEAT_LINE."""
    monkeypatch.setattr(upstream, "MAX_REPEAT_LINE", 5000)
    blanks = b"\n" * 100000
    assert _lines(blanks + b"data: " + b"x" * 4900 + b"\n", size, 1000, 2.0)[-1].startswith(b"data: x")
    with pytest.raises(UpstreamUnavailable, match="longer than 5000 bytes"):
        _lines(blanks + b"data: " + b"x" * 6000 + b"\n", size, 1000, 2.0)
    with pytest.raises(UpstreamUnavailable, match="longer than 5000 bytes"):
        _lines(blanks + b"data: " + b"x" * 60000, size, 1000, 2.0)  # without an end


def test_a_line_of_many_reads_is_joined_once() -> None:
    """The unfinished line was grown with ``+`` per read: 8 MB in 1 KB reads copied 32 GB."""
    body = b"data: " + b"z" * (8 * 1024 * 1024) + b"\n\n"
    started = time.monotonic()
    lines = _lines(body, 1024, 9 * 1024 * 1024)
    assert lines == [body[:-1], b"\n"] and time.monotonic() - started < 5.0


FRAMINGS = [
    b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",       # extensions
    b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",            # a trailer
    b" 5 \r\nhello\r\n0\r\n\r\n",                           # spaces around the size
    b"5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n",                   # no CRLF after the data: two bytes tossed all the same
    b"zz\r\nhello\r\n",                                     # a size that is no number
    b"5\r\nhello\r\n",                                      # the body ends after a chunk
    b"5\r\nhel",                                            # ... inside a chunk
    b"5\r\nhello\r",                                        # ... inside the CRLF after it
    b"5\r\nhello\r\n" + b"1" * 70000 + b"\r\n",             # a size line over http.client's cap
    b"",                                                    # no chunk at all
]
# Sizes int(..., 16) reads and RFC 9112 does not (hex digits alone): http.client reads -3 as a body
# to the close, and the others as sizes; _Response refuses each, as it does "zz".
NOT_SIZES = [b"-3\r\nabc\r\n0\r\n\r\n", b"0x3\r\nabc\r\n0\r\n\r\n", b"+3\r\nabc\r\n0\r\n\r\n",
             b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"]


@pytest.mark.parametrize("framing", FRAMINGS, ids=range(len(FRAMINGS)))
@pytest.mark.parametrize("seed", range(5))
def test_a_chunk_is_read_as_http_client_reads_it(framing: bytes, seed: int) -> None:
    # _Response reads a chunk's end and the next size line itself (_get_chunk_left): the same
    # bytes and the same error as http.client, however the socket hands the bytes over.
    assert _read_chunks(upstream._Response, framing, seed) == _read_chunks(http.client.HTTPResponse, framing, seed)


@pytest.mark.parametrize("framing", NOT_SIZES, ids=range(len(NOT_SIZES)))
def test_a_size_that_is_not_hex_digits_alone_is_refused(framing: bytes) -> None:
    assert _read_chunks(upstream._Response, framing, 0)[:2] == (b"", repr(http.client.IncompleteRead(b"")))


def _read_chunks(cls: Any, framing: bytes, seed: int) -> Tuple[bytes, Optional[str], int]:
    """What the reads gave, the error (with what it says) and how far the socket was read."""
    rng = random.Random(seed)
    raw = _Raw(HEAD + framing, rng, None, strict=False)
    resp = cls(FakeSocket(raw))
    got: List[bytes] = []
    error: Optional[str] = "did not end"
    try:
        resp.begin()
        for _ in range(100):
            piece = resp.read1(rng.randint(1, 8))
            if not piece:
                error = None
                break
            got.append(piece)
    except (http.client.HTTPException, ValueError) as exc:
        error = repr(exc)
    finally:
        resp.close()
    return b"".join(got), error, raw.pos  # (a trailer left unread would be the next answer's start)


@pytest.mark.parametrize("size", [1, 7, 1024])
def test_a_server_ending_lines_with_cr_alone_is_read_line_by_line(size: int) -> None:
    # SSE allows CR alone as a line end. Such a body is read as it arrives, in whole lines, not
    # held as one line until its end (or until the line cap failed the stream).
    body = b"data: a\r\r" + b"data: " + b"b" * 5000 + b"\r\r" + b"data: c\r\rdata: last-without-end"
    runs = list(iter_lines(_Slices(body, size), 6000))
    assert b"".join(runs) == body
    assert all(run.endswith(b"\r") for run in runs[:-1]) and runs[-1].endswith(b"data: last-without-end")
    assert len(runs) >= 4 if size < 1024 else len(runs) >= 2  # a read of whole lines goes at once
    given: List[bytes] = []
    with pytest.raises(UpstreamUnavailable, match="longer than 3000 bytes"):
        given.extend(iter_lines(_Slices(body, size), 3000))  # the cap holds for CR-ended lines too
    assert b"".join(given) == b"data: a\r\r"  # the lines before the long one went out first


def test_a_read_of_many_cr_ended_lines_over_the_cap_gives_those_before_the_long_one() -> None:
    body = b"data: a\r\r" + b"data: " + b"b" * 5000 + b"\r\r"
    given: List[bytes] = []
    with pytest.raises(UpstreamUnavailable, match="longer than 3000 bytes"):
        given.extend(iter_lines(_Slices(body, 1 << 20), 3000))  # one read holds every line
    assert b"".join(given) == b"data: a\r\r"


@pytest.mark.parametrize("stem", case_stems())
def test_cr_and_crlf_line_ends_give_the_events_of_lf(stem: str) -> None:
    # Every golden stream, its line ends rewritten to CR alone and to CRLF (a CRLF may be cut
    # between its CR and LF by the chunking): the same events as with LF.
    case = load_case(stem)
    reference = run_transcript(case.upstream, **case.meta)
    for ending in (b"\r", b"\r\n"):
        body = case.upstream.replace(b"\n", ending)
        for seed in range(8):
            got = http_events(body, case.meta, seed)
            assert got == reference, f"{stem} seed={seed} ending={ending!r}\n" + diff_text(got, reference)


def test_lines_ended_by_cr_after_an_lf_in_the_same_read_are_lines_of_their_own() -> None:
    # A read may hold LF-ended lines and then CR-ended ones (SSE allows any mix): those are whole
    # lines too, not one unfinished line held to the cap.
    event = b"data: 0123456789\r\r"  # 18 bytes
    body = b"data: first\n\n" + event * 20
    runs = list(iter_lines(_Slices(body, 1 << 20), 100))
    assert b"".join(runs) == body
    first = event * 10 + b"data: x\r"  # then a CRLF cut between two reads
    body = first + b"\n\r\n" + event * 10
    assert b"".join(iter_lines(_Slices(body, len(first)), 100)) == body
