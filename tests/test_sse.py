"""sse.py: the upstream SSE decoder (WHATWG rules, PROTOCOL.md 3.2) and our event encoder (3.1)."""

from __future__ import annotations

import json
from typing import List, Optional

import pytest

from claudeproxy.sse import ServerSentEvent, SSEDecoder, SSEFold, encode_event, is_done, iter_events
from sse_checks import events_of, parse_sse


def decode_all(text: str) -> List[ServerSentEvent]:
    """Feed a body through iter_events line by line, as readline() splits it (at LF only)."""
    parts = text.encode("utf-8").split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return list(iter_events(iter(lines)))


def one(decoder: SSEDecoder, *lines: str) -> Optional[ServerSentEvent]:
    out = [decoder.decode(line) for line in lines]
    assert all(e is None for e in out[:-1])
    return out[-1]


# ----------------------------------------------------------------------------
# SSEDecoder.


def test_data_with_and_without_the_space() -> None:
    d = SSEDecoder()
    assert one(d, "data: {\"a\":1}", "") == ServerSentEvent('{"a":1}')
    assert one(d, "data:{\"a\":1}", "") == ServerSentEvent('{"a":1}')


def test_only_one_leading_space_is_removed() -> None:
    assert one(SSEDecoder(), "data:  two", "") == ServerSentEvent(" two")


def test_value_may_contain_colons() -> None:
    assert one(SSEDecoder(), "data: a: b:c", "") == ServerSentEvent("a: b:c")


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert one(SSEDecoder(), "data: {\"a\":", "data: 1}", "") == ServerSentEvent('{"a":\n1}')
    assert json.loads(one(SSEDecoder(), "data: {\"a\":", "data: 1}", "").data) == {"a": 1}


def test_empty_data_lines_count() -> None:
    # WHATWG: "data" with no colon appends an empty line; the last LF is removed at dispatch.
    assert one(SSEDecoder(), "data", "") == ServerSentEvent("")
    assert one(SSEDecoder(), "data:", "data:", "") == ServerSentEvent("\n")


def test_comments_are_ignored() -> None:
    d = SSEDecoder()
    assert one(d, ": OPENROUTER PROCESSING", "") is None  # a comment alone dispatches nothing
    assert one(d, ":", "data: x", ": between", "") == ServerSentEvent("x")


def test_event_name_is_kept_for_its_event_only() -> None:
    d = SSEDecoder()
    assert one(d, "event: error", "data: {}", "") == ServerSentEvent("{}", "error")
    assert one(d, "data: next", "") == ServerSentEvent("next", "")


def test_event_without_data_dispatches_nothing_and_resets_the_name() -> None:
    d = SSEDecoder()
    assert one(d, "event: error", "") is None
    assert one(d, "data: x", "") == ServerSentEvent("x", "")


def test_unknown_fields_id_and_retry_are_ignored() -> None:
    assert one(SSEDecoder(), "id: 7", "retry: 100", "foo: bar", "data: x", "") == ServerSentEvent("x")


def test_blank_lines_alone_dispatch_nothing() -> None:
    d = SSEDecoder()
    assert [d.decode("") for _ in range(3)] == [None, None, None]


def test_flush_returns_a_final_event_without_blank_line() -> None:
    d = SSEDecoder()
    assert d.decode("data: last") is None
    assert d.flush() == ServerSentEvent("last")
    assert d.flush() is None


def test_a_leading_byte_order_mark_is_dropped() -> None:
    # WHATWG decodes the stream as UTF-8, which drops one leading BOM.
    d = SSEDecoder()
    assert one(d, "\ufeffdata: x", "") == ServerSentEvent("x")
    assert one(d, "\ufeffdata: y", "") is None  # only at the very start


# ----------------------------------------------------------------------------
# Line splitting: LF, CRLF and lone CR.


@pytest.mark.parametrize("raw,lines", [
    (b"data: x\n", ["data: x"]),
    (b"data: x\r\n", ["data: x"]),
    (b"\r\n", [""]),
    (b"\n", [""]),
    (b"data: x", ["data: x"]),  # the last line of a body without a terminator
    (b"data: a\rdata: b\r\r", ["data: a", "data: b", ""]),  # CR-only servers: one readline holds it all
    (b"data: a\r\r\n", ["data: a", ""]),
], ids=["lf", "crlf", "blank-crlf", "blank-lf", "eof", "cr-only", "cr-then-crlf"])
def test_lines_of_one_read(raw: bytes, lines: List[str]) -> None:
    assert SSEDecoder().lines(raw.decode("utf-8")) == lines


def test_invalid_utf8_becomes_the_replacement_character() -> None:
    assert list(iter_events(iter([b"data: \xff\n", b"\n"]))) == [ServerSentEvent("\ufffd")]


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_same_events_for_every_line_ending(sep: str) -> None:
    body = sep.join([": c", "event: e", "data: 1", "data: 2", "", "data: 3", "", ""])
    assert decode_all(body) == [ServerSentEvent("1\n2", "e"), ServerSentEvent("3")]


def test_iter_events_flushes_the_last_event() -> None:
    assert list(iter_events(iter([b"data: a\n", b"\n", b"data: b\n"]))) == [ServerSentEvent("a"), ServerSentEvent("b")]


def test_multibyte_text_survives_decoding() -> None:
    # readline() returns whole lines, so a multi-byte character is never cut in two.
    body = "data: {\"t\":\"héllo ✓\"}\n\n".encode("utf-8")
    assert list(iter_events(iter([body]))) == [ServerSentEvent('{"t":"héllo ✓"}')]


@pytest.mark.parametrize("data,done", [("[DONE]", True), ("[DONE] ", True), ("[DONE]x", True),
                                       ("{\"a\":1}", False), ("DONE", False), (" [DONE]", False)])
def test_is_done_matches_by_prefix_like_the_openai_sdk(data: str, done: bool) -> None:
    assert is_done(data) is done


# ----------------------------------------------------------------------------
# encode_event.


def test_encode_event_exact_bytes() -> None:
    out = encode_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    assert isinstance(out, bytes)
    assert out == (b'event: content_block_delta\n'
                   b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}\n\n')


def test_encode_event_is_utf8_not_ascii_escapes() -> None:
    out = encode_event({"type": "x", "text": "é ✓ 日本"})
    assert "é ✓ 日本".encode("utf-8") in out and b"\\u" not in out


def test_encode_event_escapes_a_lone_surrogate() -> None:
    """Half an emoji from the upstream ("\\ud83d") has no UTF-8 form: escaped, the event is still valid JSON.

    Found by the upstream fuzz (tests/reliability, R2): it ended the stream with a bogus
    "upstream connection broke off (UnicodeEncodeError)", or left a 200 with only an error event.
    """
    payload = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "half \ud83d"}}
    raw = encode_event(payload)
    assert raw == b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":' \
                  b'{"type":"text_delta","text":"half \\ud83d"}}\n\n'
    assert events_of(raw) == [payload]


def test_encode_event_keeps_one_data_line_for_newlines_in_text() -> None:
    out = encode_event({"type": "content_block_delta", "delta": {"text": "a\nb\r\nc\u2028d"}})
    lines = out.split(b"\n")
    assert lines[0] == b"event: content_block_delta" and lines[1].startswith(b"data: ")
    assert lines[2:] == [b"", b""]  # exactly one data line, then the blank line
    assert json.loads(lines[1][6:])["delta"]["text"] == "a\nb\r\nc\u2028d"


@pytest.mark.parametrize("payload", [{"type": "ping"}, {"type": "message_stop"},
                                     {"type": "error", "error": {"type": "api_error", "message": "x"}}])
def test_encode_event_name_equals_type_and_round_trips(payload: dict) -> None:
    ((name, decoded),) = parse_sse(encode_event(payload))
    assert name == payload["type"] and decoded == payload
    assert list(iter_events(iter(encode_event(payload).splitlines(keepends=True)))) == [
        ServerSentEvent(json.dumps(payload, separators=(",", ":")), payload["type"])]


def test_one_read_of_several_whole_lines() -> None:
    # A read (upstream.iter_lines) usually holds several lines: every one comes out.
    assert SSEDecoder().lines("data: a\n\ndata: b\r\n\r\n") == ["data: a", "", "data: b", ""]
    assert SSEDecoder().lines("data: a\x0bb\x0cc\u2028d\n") == ["data: a\x0bb\x0cc\u2028d"]  # not line ends in SSE


@pytest.mark.parametrize("text", ["hi", "", "é\n\"quoted\"\t\\", "\u2028\u2029 emoji \U0001f600", "</script>"])
@pytest.mark.parametrize("index", [0, 7, 123])
def test_text_delta_template_writes_what_json_dumps_writes(text: str, index: int) -> None:
    """The template for the most common event is only a shortcut: the bytes are json.dumps's."""
    payload = {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}
    plain = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    assert encode_event(payload) == f"event: content_block_delta\ndata: {plain}\n\n".encode("utf-8")
    assert json.loads(encode_event(payload).decode().split("data: ", 1)[1]) == payload


class _Recorder(SSEFold):
    """A fold that keeps the events it is given."""

    def __init__(self) -> None:
        self.decoder = SSEDecoder()
        self.complete = False
        self.seen: List[ServerSentEvent] = []

    def _on_event(self, event: ServerSentEvent) -> List[dict]:
        self.seen.append(event)
        return []


@pytest.mark.parametrize("reads", [
    [b"data: {\"a\":1}\n\n", b"data: {\"b\":2}\n\n"],                   # the common shape: one event a read
    [b"\xef\xbb\xbfdata: {\"a\":1}\n\n", b"\xef\xbb\xbfdata: x\n\n"],  # a BOM is dropped from the first line only
    [b"data: x\n\n", b"\xef\xbb\xbfdata: y\n\n"],
    [b"event: error\n", b"data: {\"a\":1}\n\n"],                        # the event's name came in the read before
    [b"data: one\n", b"data: two\n\n"],                                 # its first data line too
    [b"data: x\n\n", b"data: {\"a\":\r1}\n\n"],                         # a lone CR ends a line in SSE
    [b"data: x\n\n", b"data:  two spaces\n\n", b"data:none\n\n"],
    [b"data: x\n\n", b"data: a\n\ndata: b\n\n", b": comment\n\n"],
    [b"data: x\n\n", b"data: \xff\n\n"],                                # invalid UTF-8 is replaced alike
])
def test_a_read_of_one_whole_event_decodes_as_its_lines_do(reads: List[bytes]) -> None:
    """The shortcut for a read that is one ``data:`` event gives what the decoder gives line by line."""
    fold = _Recorder()
    for raw in reads:
        fold.feed_line(raw)
    assert fold.seen == list(iter_events(iter(reads)))


def test_a_complete_fold_takes_no_more_events_in_the_shortcut() -> None:
    fold = _Recorder()
    fold.feed_line(b"data: x\n\n")
    fold.complete = True
    fold.feed_line(b"data: y\n\n")
    assert [e.data for e in fold.seen] == ["x"]


def test_loads_data_gives_what_json_loads_gives() -> None:
    # The scanner's fast path must never differ from json.loads: the same value, or an error
    # where json.loads raises one (a chunk that is not JSON counts as a bad event).
    import json
    import random

    from claudeproxy.sse import loads_data

    rng = random.Random(7)
    samples = ['{"a":1}', ' {"a":1}', '{"a":1} ', '{"a":1}\n', '\ufeff{"a":1}', '{"a":1}{"b":2}', '{"a":1} x',
               '[1,2]', '"s"', '3', '3.5e2', 'NaN', '-Infinity', 'true', 'null', '', ' ', '{', '{"a":}', '[DONE]',
               '{"a":"\\ud83d"}', '{"a":"\x01"}', '{"a":1,"a":2}', '1 2', "'a'", '{"a":[' * 5 + ']' * 5 + '}']
    alphabet = '{}[]":,0123456789.eE+- \t\nabtrunlfs\\\ufeff'
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    for text in samples:
        try:
            want: object = ("value", json.loads(text))
        except ValueError as exc:
            want = ("error", type(exc), str(exc))
        try:
            got: object = ("value", loads_data(text))
        except ValueError as exc:
            got = ("error", type(exc), str(exc))
        if want[0] == "value" and want[1] != want[1]:  # NaN is not equal to itself
            assert got[0] == "value" and got[1] != got[1], text
            continue
        assert got == want, text


def test_iter_events_takes_a_crlf_cut_between_two_runs_as_one_line_end() -> None:
    # As the relay's fold does (SSEDecoder.lines): the LF beginning a run ends the CR's line.
    assert list(iter_events(iter([b"data: a\r", b"\ndata: b\r\n\r\n"]))) == [ServerSentEvent("a\nb")]


def test_an_event_is_a_value_equal_and_hashable_by_its_fields() -> None:
    assert ServerSentEvent("a", "x") == ServerSentEvent("a", "x") != ServerSentEvent("a")
    assert len({ServerSentEvent("a"), ServerSentEvent("a"), ServerSentEvent("b")}) == 2


def test_an_event_is_held_to_a_size_whatever_its_lines() -> None:
    """Each line is capped as it is read, but an event's data lines were gathered until a blank line:
    an upstream that sent none grew the proxy by gigabytes (probe AA, F-4)."""
    from claudeproxy.errors import UpstreamUnavailable
    decoder = SSEDecoder(max_event=100)
    for _ in range(4):
        assert decoder.decode("data: " + "x" * 20) is None
    with pytest.raises(UpstreamUnavailable) as refused:
        decoder.decode("data: " + "x" * 20)
    assert refused.value.message == "upstream sent an SSE event of more than 100 characters"
    decoder = SSEDecoder(max_event=100)  # a blank line ends the event: its size starts again
    for _ in range(20):
        assert decoder.decode("data: " + "x" * 40) is None
        assert decoder.decode("") == ServerSentEvent("x" * 40)


def test_an_event_of_empty_data_lines_is_held_to_a_count_of_lines() -> None:
    """Empty data lines count no characters, and 16 million of them held 133 MB (verification of F-4)."""
    from claudeproxy.errors import UpstreamUnavailable
    from claudeproxy.sse import MAX_EVENT_LINES
    decoder = SSEDecoder()
    for _ in range(MAX_EVENT_LINES):
        decoder.decode("data:")
    with pytest.raises(UpstreamUnavailable, match="of more than 65536 lines"):
        decoder.decode("data:")


def test_a_raised_line_cap_is_an_events_too() -> None:
    """max_line_bytes may be raised past 16 MiB for an upstream's long lines: an event that came as such
    a line over several reads was refused at 16 MiB all the same (review AB, F9)."""
    decoder = SSEDecoder(max_event=100)
    decoder.allow(1000)
    assert decoder.decode("data: " + "x" * 500) is None
    assert decoder.decode("") == ServerSentEvent("x" * 500)
