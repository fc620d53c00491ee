"""Long SSE lines skimmed as they arrive (claudeproxy/skim.py), and the Responses fold that uses it.

A skimmed line, parsed and restored, must be what the whole line parses to (or fail as it
does); a long string repeating a call's arguments the fold let go is checked by digest and
held a block at a time; and a Responses stream gives the client the same events skimmed or
read whole, for every golden stream.
"""

from __future__ import annotations

import http.client
import io
import json
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from test_responses_stream import CASES, STREAMS, make_fold, read, run_lines
from test_stream_rechunk import FakeSocket, _Raw, chunked

from claudeproxy import skim, upstream
from claudeproxy.apis import growing
from claudeproxy.apis.growing import LiveText
from claudeproxy.apis.responses import stream as responses_stream
from claudeproxy.errors import ProxyError, UpstreamUnavailable
from claudeproxy.skim import LineSkimmer, Repeat, SkimmedLine, restore, text_digest
from claudeproxy.upstream import iter_lines

MAX_LINE = 1 << 20


def whole(line: bytes) -> Tuple[str, Any]:
    """What the fold makes of the line read whole: ``SSEFold.feed_line``'s decode, then JSON."""
    try:
        return "ok", json.loads(line.decode("utf-8", errors="replace"))
    except ValueError:
        return "bad", None


def skimmed(line: bytes, cuts: Sequence[int], known: Sequence[skim.KnownText] = ()) -> Tuple[Tuple[str, Any], SkimmedLine]:
    sk = LineSkimmer(known, "test")
    at = 0
    for size in cuts:
        sk.feed(line[at:at + size])
        at += size
    sk.feed(line[at:])
    short = sk.finish()
    try:
        obj = json.loads(short.decode("utf-8", errors="replace"))
    except ValueError:
        return ("bad", None), short
    return ("ok", restore(obj, short.strings)[0]), short


_ATOMS = ("a", "é", "😀", "\\", '"', "\n", "\t", "\x01", "\ud83d", "\ude00", "/", "x" * 50, "\u2028", "\\u00")


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ATOMS) for _ in range(n))


def test_a_skimmed_line_parses_to_what_the_whole_line_does(monkeypatch: Any) -> None:
    """Any string, cut anywhere (inside escapes, surrogate pairs, UTF-8 sequences), written with
    or without ASCII escapes, sometimes with a byte broken: equal, or invalid both ways."""
    rng = random.Random(20261204)
    bad = 0
    for trial in range(1500):
        monkeypatch.setattr(skim, "LONG", rng.choice([10, 300, 70000]))
        value = _text(rng, rng.randint(1, 2500))
        obj = {"type": "response.output_item.done", "item": {"arguments": value, "n": [1, 2.5, None, value[:9]]}}
        line = json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:
            i = rng.randrange(len(line))
            line = line[:i] + bytes([rng.randrange(256)]) + line[i + 1:]
        cuts = [rng.randint(1, rng.choice([3, 20, 5000])) for _ in range(rng.randint(0, 200))]
        got, short = skimmed(line, cuts)
        assert got == whole(line), (trial, line[:120], short[:120])
        bad += got[0] == "bad"
    assert 100 < bad < 1000  # the corpus has both kinds


def test_only_long_strings_are_replaced_and_the_line_becomes_short() -> None:
    text = "é" * 100_000
    line = json.dumps({"type": "t", "short": "s" * 100, "long": text}).encode()
    (kind, obj), short = skimmed(line, [4096] * 200)
    assert kind == "ok" and obj == {"type": "t", "short": "s" * 100, "long": text}
    assert len(short) < 400 and short.count(b"claudeproxy-skimmed") == 1


def _known(text: str) -> skim.KnownText:
    args = LiveText(text)
    args.let_go()
    return args.known()


ARGS = json.dumps({"content": "line of a file: print(\"hi\")\n" * 40_000})  # about 1.1 MB


@pytest.mark.parametrize("piece", [1000, 65536, 300_000])
def test_a_repeat_of_a_known_text_is_let_go_a_block_at_a_time(piece: int) -> None:
    line = json.dumps({"type": "response.function_call_arguments.done", "arguments": ARGS}).encode()
    sk = LineSkimmer([_known(ARGS)], "test")
    held = 0
    for at in range(0, len(line), piece):
        sk.feed(line[at:at + piece])
        if sk.long is not None:
            held = max(held, sum(map(len, sk.long.kept)))
    short = sk.finish()
    value = restore(json.loads(short), short.strings)[0]["arguments"]
    assert isinstance(value, Repeat)
    assert (value.size, value.matches, value.start, value.rest) == (len(ARGS), {len(ARGS): text_digest(ARGS)}, len(ARGS), "")
    assert held <= skim.MARK_EVERY + piece  # never the whole text


def _closing_line(string: str, kind: str = "response.function_call_arguments.done", key: str = "arguments") -> bytes:
    return json.dumps({"type": kind, "item_id": "fc_1", key: string}).encode()


@pytest.mark.parametrize("string, start, whole, rest", [
    (ARGS + "more", len(ARGS), True, "more"),  # the deltas missed the end: only what follows is kept
    (ARGS[:500_000] + "X" + ARGS[500_001:], 7 * skim.MARK_EVERY, False, ARGS[7 * skim.MARK_EVERY:500_000] + "X" + ARGS[500_001:]),
    (ARGS[:-10], 18 * skim.MARK_EVERY, False, ARGS[18 * skim.MARK_EVERY:-10]),  # shorter: the blocks it shares
], ids=["longer", "differs", "shorter"])
def test_arguments_that_begin_as_a_known_text_keep_the_rest(string: str, start: int, whole: bool, rest: str) -> None:
    assert len(ARGS) // skim.MARK_EVERY == 18
    (_, obj), _ = skimmed(_closing_line(string), [8192] * 400, [_known(ARGS)])
    value = obj["arguments"]
    assert isinstance(value, Repeat) and (value.size, value.start, value.rest) == (len(string), start, rest)
    # Whole: it begins with all of the known text, whose digest it names; else it only shared blocks.
    assert value.matches == ({len(ARGS): text_digest(ARGS)} if whole else {})
    if whole:
        assert value.after(len(ARGS)) == "more"


def test_a_known_text_that_begins_another_keeps_what_follows_the_first() -> None:
    """Two calls, one's arguments the start of the other's: a string equal to the longer matches
    both, and keeps what follows the shorter, which the fold holding that one wants."""
    short, long_ = ARGS[:300_000], ARGS
    (_, obj), _ = skimmed(_closing_line(long_), [8192] * 400, [_known(short), _known(long_)])
    value = obj["arguments"]
    assert value.matches == {300_000: text_digest(short), len(long_): text_digest(long_)}
    assert value.after(300_000) == long_[300_000:] and value.after(len(long_)) == ""


@pytest.mark.parametrize("kind, key", [
    ("response.function_call_arguments.delta", "delta"),  # a delta that happens to begin like a call
    ("response.output_item.added", "arguments"),  # an .added item's: not a closing event
    ("response.output_text.done", "text"),
    ("response.function_call_arguments.done", "argument"),
    ("response.function_call_arguments.done", "arguments_x"),
])
def test_only_closing_events_arguments_are_checked_against_known_texts(kind: str, key: str) -> None:
    (_, obj), _ = skimmed(_closing_line(ARGS, kind, key), [8192] * 400, [_known(ARGS)])
    assert obj[key] == ARGS


def test_a_line_whose_type_comes_after_its_arguments_is_kept_whole() -> None:
    line = json.dumps({"arguments": ARGS, "type": "response.function_call_arguments.done"}).encode()
    (_, obj), _ = skimmed(line, [8192] * 400, [_known(ARGS)])
    assert obj["arguments"] == ARGS


def test_a_string_unlike_any_known_text_is_kept_whole() -> None:
    other = ARGS.replace("hi", "ho")
    (_, obj), _ = skimmed(_closing_line(other), [8192] * 400, [_known(ARGS)])
    assert obj["arguments"] == other


def test_live_text_keeps_digests_of_its_start_once_let_go() -> None:
    text = "ab\ud83dc" * 50_000  # a lone surrogate too
    live = LiveText()
    for at in range(0, len(text), 777):
        live.add(text[at:at + 777])
        if at % 7 == 0:
            live.let_go()
    assert len(live) == len(text) and not live.whole and live.digest() == text_digest(text)
    known = live.known()
    for at in (skim.MARK_EVERY, 2 * skim.MARK_EVERY, len(text)):
        assert known.mark(at) == text_digest(text[:at])
    with pytest.raises(ValueError):
        live.text()
    assert known.size == len(text) and known.digest == text_digest(text)


# --------------------------------------------------------------------------
# iter_lines


class _Reads:
    """A response whose read1 gives the body in the given sizes."""

    def __init__(self, body: bytes, sizes: List[int]) -> None:
        self.body, self.sizes, self.at = body, sizes, 0

    def read1(self, most: int) -> bytes:
        size = min(most, self.sizes[0] if self.sizes else most)
        self.sizes = self.sizes[1:]
        out = self.body[self.at:self.at + size]
        self.at += len(out)
        return out


def test_iter_lines_skims_a_long_line_and_still_holds_it_to_its_cap() -> None:
    long_value = "v" * 400_000
    body = b"event: x\ndata: " + json.dumps({"a": long_value}).encode() + b"\n\ndata: {}\n\n"
    lines = list(iter_lines(_Reads(body, [10_000] * 100), MAX_LINE, 0.0, lambda: LineSkimmer((), "n")))
    skimmed_lines = [line for line in lines if isinstance(line, SkimmedLine)]
    assert len(skimmed_lines) == 1 and skimmed_lines[0].endswith(b"\n") and len(skimmed_lines[0]) < 200
    data = json.loads(skimmed_lines[0][len(b"data: "):])
    assert restore(data, skimmed_lines[0].strings)[0] == {"a": long_value}
    assert b"".join(line for line in lines if not isinstance(line, SkimmedLine)) == b"event: x\n\ndata: {}\n\n"
    # The cap is the line's as sent, not as skimmed.
    with pytest.raises(UpstreamUnavailable, match="longer than"):
        list(iter_lines(_Reads(body, [10_000] * 100), 300_000, 0.0, lambda: LineSkimmer((), "n")))


def test_iter_lines_reads_a_long_line_whole_when_the_fold_skims_none() -> None:
    body = b"data: " + json.dumps({"a": "v" * 400_000}).encode() + b"\n\n"
    lines = list(iter_lines(_Reads(body, [10_000] * 100), MAX_LINE, 0.0, lambda: None))
    assert b"".join(lines) == body and not any(isinstance(line, SkimmedLine) for line in lines)


# --------------------------------------------------------------------------
# The Responses fold, skimming.


def _small_thresholds(monkeypatch: Any) -> None:
    """Everything skimmed that can be: strings of 24 characters on, lines past 64 bytes, calls let
    go past 16 characters, a digest every 8."""
    monkeypatch.setattr(skim, "LONG", 24)
    monkeypatch.setattr(upstream, "SKIM_AFTER", 64)
    monkeypatch.setattr(responses_stream, "KEEP_LIVE_TEXT", 16)
    monkeypatch.setattr(skim, "MARK_EVERY", 8)
    monkeypatch.setattr(growing, "MARK_EVERY", 8)


def _events(body: bytes, seed: int, skimming: bool, **kw: Any) -> List[Dict[str, Any]]:
    """The body in HTTP chunks cut at random, read back as the relay reads it."""
    rng = random.Random(seed)
    resp = http.client.HTTPResponse(FakeSocket(_Raw(chunked(body, rng, terminate=True), rng, None, strict=False)))  # type: ignore[arg-type]
    fold = make_fold(**kw)
    try:
        resp.begin()
        return run_lines(iter_lines(resp, MAX_LINE, fold.line_allowance, fold.line_skimmer if skimming else None), fold)
    except ProxyError as exc:  # before any event: a plain HTTP error
        return [{"raised": type(exc).__name__, "message": exc.message}]
    finally:
        resp.close()


@pytest.mark.parametrize("ends", ["LF", "CR"])
@pytest.mark.parametrize("case", CASES)
def test_every_golden_stream_gives_the_same_events_skimmed(case: str, ends: str, monkeypatch: Any) -> None:
    """Also with CR line ends (SSE allows them), which end a skimmed line as an LF does."""
    body = read(STREAMS, f"{case}.upstream.sse")
    if ends == "CR":
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    expected = _events(body, 1, skimming=False)
    _small_thresholds(monkeypatch)
    for seed in range(6):
        assert _events(body, seed, skimming=True) == expected, seed


def _sse(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps({"type": kind, **fields}).encode() + b"\n\n"


def _call_stream(deltas: List[str], done_args: Optional[str], final_args: Optional[str] = None,
                 unseen_args: Optional[str] = None) -> bytes:
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Write", "arguments": ""}
    out = _sse("response.output_item.added", output_index=0, item=dict(item, status="in_progress"))
    for piece in deltas:
        out += _sse("response.function_call_arguments.delta", item_id="fc_1", output_index=0, delta=piece)
    args = done_args if done_args is not None else "".join(deltas)
    out += _sse("response.function_call_arguments.done", item_id="fc_1", output_index=0, arguments=args)
    out += _sse("response.output_item.done", output_index=0, item=dict(item, arguments=args, status="completed"))
    output = [dict(item, arguments=final_args if final_args is not None else args, status="completed")]
    if unseen_args is not None:
        output.append(dict(item, id="fc_2", call_id="call_2", arguments=unseen_args, status="completed"))
    response = {"id": "resp_1", "object": "response", "status": "completed", "output": output,
                "usage": {"input_tokens": 5, "output_tokens": 9}}
    return out + _sse("response.completed", response=response)


def _input_of(events: List[Dict[str, Any]]) -> List[str]:
    """Each tool block's input as the client assembles it."""
    blocks: Dict[int, List[str]] = {}
    for e in events:
        if e.get("type") == "content_block_start" and e["content_block"]["type"] == "tool_use":
            blocks[e["index"]] = [json.dumps(e["content_block"]["input"])] if e["content_block"]["input"] else []
        elif e.get("type") == "content_block_delta" and e["delta"]["type"] == "input_json_delta":
            blocks[e["index"]].append(e["delta"]["partial_json"])
    return ["".join(parts) for _, parts in sorted(blocks.items())]


WRITE = json.dumps({"file_path": "a.txt", "content": "0123456789 " * 30})


@pytest.mark.parametrize("deltas, done_args", [
    ([WRITE[i:i + 7] for i in range(0, len(WRITE), 7)], None),  # the closing events repeat the deltas
    ([WRITE[i:i + 7] for i in range(0, 200, 7)], WRITE),  # the deltas missed the end: the closing events have it
    ([WRITE[i:i + 7] for i in range(0, len(WRITE), 7)], WRITE[:150] + "Z" + WRITE[151:]),  # they say otherwise: the deltas stand
    ([WRITE[i:i + 7] for i in range(0, len(WRITE), 7)], WRITE[:150] + "Z" + WRITE[151:] + "more"),  # and more: still
], ids=["repeat", "deltas-missed-the-end", "differs", "differs-and-longer"])
def test_a_live_call_let_go_is_completed_from_its_closing_events_as_when_read_whole(
        deltas: List[str], done_args: Optional[str], monkeypatch: Any) -> None:
    body = _call_stream(deltas, done_args)
    expected = _events(body, 1, skimming=False)
    assert _input_of(expected) == [WRITE if done_args in (None, WRITE) else "".join(deltas)]
    _small_thresholds(monkeypatch)
    repeats: List[Any] = []
    take_whole = responses_stream.ResponsesFold._take_whole

    def seen(item: Any, full: Any) -> None:
        repeats.append(isinstance(full, Repeat))
        take_whole(item, full)

    monkeypatch.setattr(responses_stream.ResponsesFold, "_take_whole", staticmethod(seen))
    for seed in range(8):
        assert _events(body, seed, skimming=True) == expected, seed
    assert any(repeats)  # the closing events' arguments were let go, not read whole


def test_an_unseen_call_repeating_a_let_go_call_is_an_error_not_a_wrong_input(monkeypatch: Any) -> None:
    """The final object's extra call began with the streamed call's arguments, which were let go:
    its input cannot be known, and a call with {} or half an input would run the tool wrong."""
    deltas = [WRITE[i:i + 7] for i in range(0, len(WRITE), 7)]
    body = _call_stream(deltas, None, unseen_args=WRITE)
    read_whole = _events(body, 1, skimming=False)
    assert _input_of(read_whole) == [WRITE, WRITE]  # read whole, both calls
    _small_thresholds(monkeypatch)
    events = _events(body, 1, skimming=True)
    assert events[-1]["type"] == "error" and "never streamed" in events[-1]["error"]["message"]
    assert _input_of(events) == [WRITE]


def _mutated(rng: random.Random, body: bytes) -> bytes:
    """The body with a few bytes changed where a skimmer could lose its place: quotes, backslashes,
    brackets, a newline, a broken UTF-8 byte, or a piece dropped or repeated."""
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data))
        op = rng.randrange(4)
        if op == 0:
            data[at:at + 1] = rng.choice([b'"', b"\\", b"{", b"}", b"\n", b"\xff", b"\\u", b"\xe2\x82"])
        elif op == 1:
            data.insert(at, rng.choice(b'"\\{}[],:'))
        elif op == 2:
            del data[at:at + rng.randint(1, 40)]
        else:
            data[at:at] = data[at:at + rng.randint(1, 200)]
    return bytes(data)


def _errors_by_type(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Events with errors compared by type: an ``event: error`` line that is not JSON is quoted in
    the message, and skimmed its long strings are placeholders (the only difference allowed)."""
    out = []
    for e in events:
        if "raised" in e:
            out.append({"raised": e["raised"]})
        elif e.get("type") == "error":
            out.append({"type": "error", "error": e["error"]["type"]})
        else:
            out.append(e)
    return out


def test_mutated_streams_give_the_same_events_skimmed(monkeypatch: Any) -> None:
    """Broken JSON, stray quotes and backslashes, cut and doubled pieces in every golden stream:
    what the client gets skimmed is what it gets with each line read whole."""
    rng = random.Random(4242)
    bodies = [read(STREAMS, f"{case}.upstream.sse") for case in CASES]
    cases = [(_mutated(rng, rng.choice(bodies)), rng.randrange(1000)) for _ in range(400)]
    expected = [_events(body, seed, skimming=False) for body, seed in cases]
    _small_thresholds(monkeypatch)
    skimmed_events = [_events(body, seed, skimming=True) for body, seed in cases]
    differ = [i for i, got in enumerate(skimmed_events) if _errors_by_type(got) != _errors_by_type(expected[i])]
    assert differ == [], differ[:5]
    assert sum(got != expected[i] for i, got in enumerate(skimmed_events)) < 40  # messages: a few


def test_the_fold_lets_go_of_long_strings_no_event_took() -> None:
    """A long comment line or an ``event:`` line is skimmed like any other; no event takes its
    strings, and the fold does not keep them for the rest of the stream."""
    fold = make_fold()
    for line in (b': ' + json.dumps("c" * 100_000).encode() + b"\n", b"event: " + json.dumps("e" * 100_000).encode() + b"\n"):
        sk = LineSkimmer((), fold.nonce)
        sk.feed(line[:-1])
        assert fold.feed_line(sk.finish(b"\n")) == [] and fold.skimmed == {}
    sk = LineSkimmer((), fold.nonce)
    sk.feed(b"data: " + json.dumps({"type": "response.created", "response": {"x": "d" * 100_000}}).encode())
    fold.feed_line(sk.finish(b"\n"))
    assert len(fold.skimmed) == 1  # its event is not over: the blank line is still to come
    fold.feed_line(b"\n")
    assert fold.skimmed == {}


# Found by review: each of these gave other events skimmed than read whole.

def _compare(body: bytes, monkeypatch: Any, seeds: int = 4) -> List[Dict[str, Any]]:
    expected = _events(body, 1, skimming=False)
    _small_thresholds(monkeypatch)
    for seed in range(seeds):
        assert _events(body, seed, skimming=True) == expected, seed
    return expected


def _added(i: int, **item: Any) -> bytes:
    return _sse("response.output_item.added", output_index=i,
                item={"type": "function_call", "id": f"fc_{i}", "name": "Write", "arguments": "", **item})


def _deltas(i: int, text: str, step: int = 9) -> bytes:
    return b"".join(_sse("response.function_call_arguments.delta", item_id=f"fc_{i}", output_index=i,
                         delta=text[at:at + step]) for at in range(0, len(text), step))


def _closing(i: int, args: str, call_id: str) -> bytes:
    item = {"type": "function_call", "id": f"fc_{i}", "call_id": call_id, "name": "Write", "arguments": args,
            "status": "completed"}
    return (_sse("response.function_call_arguments.done", item_id=f"fc_{i}", output_index=i, arguments=args)
            + _sse("response.output_item.done", output_index=i, item=item))


_END = _sse("response.completed", response={"id": "r", "status": "completed", "output": [],
                                             "usage": {"input_tokens": 1, "output_tokens": 1}})


def test_a_call_sent_in_one_delta_like_an_earlier_one_keeps_its_input(monkeypatch: Any) -> None:
    body = (_added(0, call_id="c0") + _deltas(0, WRITE) + _closing(0, WRITE, "c0")
            + _added(1, call_id="c1") + _deltas(1, WRITE, step=len(WRITE)) + _closing(1, WRITE, "c1") + _END)
    assert _input_of(_compare(body, monkeypatch)) == [WRITE, WRITE]


def test_a_call_whose_arguments_begin_like_another_is_completed_from_its_closing_event(monkeypatch: Any) -> None:
    """Y shares X's start; Y is not live (its call_id comes only at the end) and its deltas miss
    its last characters: the closing event has them."""
    x = json.dumps({"file_path": "a.py", "content": "0123456789 " * 30 + "tail of a"})
    y = json.dumps({"file_path": "a.py", "content": "0123456789 " * 30 + "tail of b, longer"})
    body = (_added(0, call_id="c0") + _deltas(0, x) + _closing(0, x, "c0")
            + _added(1) + _deltas(1, y[:-12]) + _closing(1, y, "c1") + _END)
    assert _input_of(_compare(body, monkeypatch)) == [x, y]


def test_a_call_with_no_deltas_repeating_another_gets_its_arguments(monkeypatch: Any) -> None:
    body = (_added(0, call_id="c0") + _deltas(0, WRITE) + _closing(0, WRITE, "c0")
            + _added(1, call_id="c1") + _closing(1, WRITE, "c1") + _END)
    assert _input_of(_compare(body, monkeypatch)) == [WRITE, WRITE]


def test_one_event_over_two_long_data_lines(monkeypatch: Any) -> None:
    """Each skimmed line numbers its markers apart: the second line's must not stand for the first's."""
    event = (b'data: {"type":"response.output_text.delta","output_index":0,"content_index":0,"item_id":"m","delta":"'
             + b"A" * 300 + b'",\ndata: "obfuscation":"' + b"Z" * 300 + b'"}\n\n'
             + b'data: {"type":"response.output_text.delta","output_index":0,"content_index":0,"item_id":"m","delta":"'
             + b"B" * 300 + b'"}\n: "' + b"C" * 300 + b'"\n\n')
    events = _compare(_sse("response.created", response={"id": "r"}) + event + _END, monkeypatch)
    assert "".join(e["delta"]["text"] for e in events if e.get("type") == "content_block_delta") == "A" * 300 + "B" * 300


def test_a_cr_inside_a_long_string_ends_its_line(monkeypatch: Any) -> None:
    """A lone CR ends an SSE line: what follows it is an event of its own, skimmed or not."""
    line = (b'data: {"type":"response.output_text.delta","output_index":0,"content_index":0,"item_id":"m","delta":"'
            + b"L" * 400 + b'\r\rdata: {"type":"response.output_text.delta","output_index":0,"content_index":0,'
            b'"item_id":"m","delta":"after CR"}\n\n')
    events = _compare(_sse("response.created", response={"id": "r"}) + line + _END, monkeypatch)
    assert [e["delta"]["text"] for e in events if e.get("type") == "content_block_delta"] == ["after CR"]


def test_events_held_behind_an_open_call_count_their_long_strings(monkeypatch: Any) -> None:
    """What waits behind an open call is bounded by MAX_HELD_BYTES: skimmed, its long strings still count."""
    monkeypatch.setattr(responses_stream, "MAX_HELD_BYTES", 2000)
    body = _added(0, call_id="c0") + _sse("response.function_call_arguments.delta", item_id="fc_0", output_index=0,
                                          delta='{"file_path":"a","content":"')
    for i in range(8):
        body += _sse("response.output_text.delta", output_index=1, content_index=0, item_id="m", delta=chr(97 + i) * 400)
    events = _compare(body + _END, monkeypatch)
    assert events[-1]["type"] == "error" and "open while" in events[-1]["error"]["message"]


def test_a_long_bare_json_error_body_is_not_taken_for_one(monkeypatch: Any) -> None:
    """A body that is one JSON error longer than MAX_HEAD is no bare error read whole (its head does
    not parse); skimmed, its short line must not make it one."""
    monkeypatch.setattr(responses_stream, "MAX_HEAD", 200)
    body = json.dumps({"error": {"message": "x" * 400, "type": "invalid_request_error"}}).encode() + b"\n"
    assert _compare(body, monkeypatch)[0]["raised"] == "UpstreamUnavailable"


def test_a_call_first_named_by_a_closing_event_repeating_another_is_an_error(monkeypatch: Any) -> None:
    """Its arguments began with a let-go call's, and the skimmer did not know it then: they cannot be
    told, and a call with none would run the tool wrong (read whole, it is placed)."""
    body = _added(0, call_id="c0") + _deltas(0, WRITE) + _closing(0, WRITE, "c0") + _closing(1, WRITE, "c1") + _END
    assert _input_of(_events(body, 1, skimming=False)) == [WRITE, WRITE]
    _small_thresholds(monkeypatch)
    events = _events(body, 1, skimming=True)
    assert events[-1]["type"] == "error" and "cannot be told" in events[-1]["error"]["message"]
    assert _input_of(events) == [WRITE]


def test_an_unseen_item_of_another_kind_repeating_a_call_places_nothing_and_fails_nothing(monkeypatch: Any) -> None:
    """Only a function call of the final object is placed; an mcp_call there repeating a streamed
    call's arguments was never anything to place, skimmed or not."""
    deltas = [WRITE[i:i + 7] for i in range(0, len(WRITE), 7)]
    body = _call_stream(deltas, None).replace(b'"usage"', b'"usage_"')  # keep the shape, end below
    mcp = {"type": "mcp_call", "id": "mcp_1", "name": "x", "server_label": "s", "arguments": WRITE}
    response = {"id": "resp_1", "object": "response", "status": "completed", "usage": {"input_tokens": 5, "output_tokens": 9},
                "output": [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Write", "arguments": WRITE,
                            "status": "completed"}, mcp]}
    body = body[:body.rindex(b"event: response.completed")] + _sse("response.completed", response=response)
    assert _compare(body, monkeypatch)[-1]["type"] == "message_stop"


def test_the_line_cap_is_the_same_skimmed() -> None:
    """A line of exactly the cap is accepted read whole, and skimmed."""
    line = b"data: " + json.dumps({"a": "v" * 399_980}).encode()
    body = line + b"\n\n"
    for skimmer in (None, lambda: LineSkimmer((), "n")):
        lines = list(iter_lines(_Reads(body, [10_000] * 100), len(line), 0.0, skimmer))
        assert sum(map(len, lines)) <= len(body)
    with pytest.raises(UpstreamUnavailable):
        list(iter_lines(_Reads(body, [10_000] * 100), len(line) - 1, 0.0, lambda: LineSkimmer((), "n")))


@pytest.mark.parametrize("end", [b"\r", b"\r\n"])
def test_a_skimmed_line_ended_by_cr_lets_the_events_after_it_go_as_they_come(end: bytes) -> None:
    # A server ending its lines with CR alone: the CR ends the skimmed line too, and the small events
    # after it are lines of their own, not more of that line until the cap failed the stream.
    long = b'data: {"type":"x","arguments":"' + b"a" * 400_000 + b'"}' + end + end
    small = b"".join(b'data: {"i":%d}' % i + end + end for i in range(70_000))  # 1.3 MB: past the line cap
    runs = list(iter_lines(_Reads(long + small, [65_536] * 200), MAX_LINE, 0.0, lambda: LineSkimmer((), "n")))
    assert len(runs[0]) < 1000 and runs[0].endswith(end[:1])  # the skimmed line, with its own line end
    assert b"".join(runs[1:]).replace(b"\n", b"").replace(b"\r", b"") == small.replace(b"\n", b"").replace(b"\r", b"")
    assert len(runs) > 15  # read by read, not held to the end
