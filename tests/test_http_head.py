"""Request heads read by claudeproxy/http_head.py: the same message as the stdlib's
``http.client.parse_headers``, for every head (checked against it on thousands of seeded ones), and
without the email feed parser for the plain heads real clients send."""

from __future__ import annotations

import email.parser
import http.client
import io
import random
from typing import Any, List

import pytest

from claudeproxy import http_head
from claudeproxy.http_head import HeadCutShort, HeaderFields, HeadTooLarge, parse_lines, read_headers

CLAUDE_CODE_HEAD = (
    b"Host: 127.0.0.1:8082\r\nAccept: application/json\r\nX-Stainless-Retry-Count: 0\r\n"
    b"X-Stainless-Timeout: 600\r\nX-Stainless-Lang: js\r\nX-Stainless-Package-Version: 0.60.0\r\n"
    b"X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: node\r\n"
    b"X-Stainless-Runtime-Version: v22.0.0\r\nanthropic-dangerous-direct-browser-access: true\r\n"
    b"anthropic-version: 2023-06-01\r\nx-api-key: sk-ant-secret\r\nx-app: cli\r\n"
    b"User-Agent: claude-cli/2.0.0 (external, cli)\r\ncontent-type: application/json\r\n"
    b"anthropic-beta: claude-code-20250219,interleaved-thinking-2025-05-14\r\naccept-language: *\r\n"
    b"sec-fetch-mode: cors\r\naccept-encoding: gzip, deflate\r\ncontent-length: 20816\r\n"
    b"Connection: keep-alive\r\n\r\n"
)


def _lines(head: bytes) -> List[bytes]:
    return io.BytesIO(head).readlines() or [b""]


def _stdlib(head: bytes) -> Any:
    return http.client.parse_headers(io.BufferedReader(io.BytesIO(head)), _class=http.client.HTTPMessage)


def _cut_short(head: bytes) -> bool:
    """No blank line ends the head: the stdlib would read it up to the end of input."""
    return not any(line in (b"\r\n", b"\n") for line in io.BytesIO(head).readlines())


def _same(head: bytes) -> None:
    """The stdlib's message, for every head that ends; for one cut short, none at all."""
    if _cut_short(head):
        with pytest.raises(HeadCutShort):
            read_headers(io.BufferedReader(io.BytesIO(head)))
        return
    ours = read_headers(io.BufferedReader(io.BytesIO(head)))
    theirs = _stdlib(head)
    assert ours.items() == theirs.items(), head
    assert [type(d) for d in ours.defects] == [type(d) for d in theirs.defects], head
    assert ours.get_payload() == theirs.get_payload(), head
    for name in {k for k, _ in theirs.items()} | {"Content-Length", "host", "X-MISSING"}:
        for variant in (name, name.lower(), name.upper()):
            assert ours.get(variant) == theirs.get(variant), (head, variant)
            assert ours.get_all(variant) == theirs.get_all(variant), (head, variant)
            assert (variant in ours) == (variant in theirs), (head, variant)
            assert ours[variant] == theirs[variant], (head, variant)


def test_a_claude_code_head_reads_as_the_stdlib_reads_it():
    _same(CLAUDE_CODE_HEAD)
    headers = read_headers(io.BufferedReader(io.BytesIO(CLAUDE_CODE_HEAD + b"body")))
    assert headers["X-API-KEY"] == "sk-ant-secret" and headers.get_all("content-length") == ["20816"]
    assert isinstance(headers, http.client.HTTPMessage)


def test_a_plain_head_never_reaches_the_email_feed_parser(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the feed parser was used")

    monkeypatch.setattr(email.parser.Parser, "parsestr", refuse)
    assert read_headers(io.BufferedReader(io.BytesIO(CLAUDE_CODE_HEAD))).get("x-app") == "cli"
    with pytest.raises(AssertionError, match="feed parser"):  # an odd head still goes there
        read_headers(io.BufferedReader(io.BytesIO(b"Host: a\r\n folded\r\n\r\n")))


@pytest.mark.parametrize("head", [
    b"\r\n",
    b"Host: a\r\nX-Empty:\r\nX-Blank:   \r\nX-Tabs:\t v \t\r\n\r\n",  # blanks after the value stay, as in compat32
    b"Host: a\nX-A: b\n\n",  # bare LF line ends
    b"Host: a\r\nbroken line\r\nContent-Length: 5\r\n\r\n",  # no colon: a defect, the rest body
    b" folded-first: x\r\nHost: a\r\n\r\n",
    b"Host: a\r\nX-A: b\r\n  continued\r\n\r\n",  # obs-fold
    b"Host: a\r\nX-A: b\rX-B: c\r\n\r\n",  # a bare CR inside a line
    b"Host : a\r\n\r\n",  # a blank before the colon
    b":empty-name\r\nHost: a\r\n\r\n",
    b"From someone\r\nHost: a\r\n\r\n",
    b"X-A: one\r\nx-a: two\r\nX-A: three\r\n\r\n",  # repeated, in order
    b"X-Latin: caf\xe9 \xff\r\n\r\n",  # obs-text: Latin-1, as the stdlib decodes it
    b"X-Nul: a\x00b\r\n\r\n",
    b"X-Esc: a\x1b[0m\r\nX-Del: \x7f\r\n\r\n",
    b"X-(odd)@name: v\r\n\r\n",  # not an RFC token, still a header line to the feed parser
    b"X-A: v\r\n\r\nX-After: body\r\n",  # what follows the blank line is not read
])
def test_odd_heads_read_as_the_stdlib_reads_them(head):
    _same(head)


def test_thousands_of_seeded_heads_read_as_the_stdlib_reads_them():
    rng = random.Random(20261204)
    names = ["Host", "Content-Length", "content-length", "X-A", "x-a", "Transfer-Encoding", "Connection",
             "X-(odd)", "", "From", "A B", "X\x7f", "X\x80y", "Ex:pect"]
    values = ["", " ", "v", "  v  ", "\tv", "a:b", "caf\xe9", "x\ry", "\x00", "chunked", "close", "5", "a b c"]
    breaks = ["\r\n", "\n", "\r", ""]
    for _ in range(3000):
        lines = []
        for _ in range(rng.randint(0, 8)):
            kind = rng.random()
            if kind < 0.75:
                line = f"{rng.choice(names)}{rng.choice(['', ' '])}:{rng.choice(['', ' ', '  '])}{rng.choice(values)}"
            elif kind < 0.85:
                line = rng.choice([" ", "\t"]) + rng.choice(values)  # a continuation
            else:
                line = rng.choice(values + ["no colon here", "From x"])
            lines.append(line + rng.choice(breaks if rng.random() < 0.2 else ["\r\n"]))
        end = rng.choice(["\r\n", "\r\n", "\n", ""])
        _same("".join(lines + [end]).encode("iso-8859-1"))


def test_the_stdlib_limits_hold():
    with pytest.raises(http.client.LineTooLong):
        read_headers(io.BufferedReader(io.BytesIO(b"X-A: " + b"a" * http_head.MAX_LINE + b"\r\n\r\n")))
    many = b"".join(b"X-%d: v\r\n" % i for i in range(http_head.MAX_HEADERS)) + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        read_headers(io.BufferedReader(io.BytesIO(many)))
    assert len(read_headers(io.BufferedReader(io.BytesIO(many[8:]))).items()) == http_head.MAX_HEADERS - 1
    assert (http_head.MAX_LINE, http_head.MAX_HEADERS) == (http.client._MAXLINE, http.client._MAXHEADERS)


@pytest.mark.parametrize("head", [
    b"",  # the end of input before any line
    b"Host: a\r\nX-A: b\r\n",  # ... inside the head
    b"Host: a\r\nX-A: b",  # ... inside a line
    b"Host: a\r\nbroken line\r\n",  # an odd head cut short: not even that one goes to the feed parser
])
def test_a_head_cut_short_is_refused_and_never_parsed(monkeypatch, head):
    """A connection that closed inside the head has sent no request: the feed parser, which made
    a message of whatever had come (at many times its size in memory), never sees it."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the feed parser was used")

    monkeypatch.setattr(email.parser.Parser, "parsestr", refuse)
    with pytest.raises(HeadCutShort):
        read_headers(io.BufferedReader(io.BytesIO(head)))


class _EndlessHead(io.RawIOBase):
    """A head that never ends, in lines of ``size`` bytes, counting what was read of it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.line = b"X-Pad: " + b"a" * (size - 9) + b"\r\n"
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        offset = self.served % len(self.line)
        piece = (self.line[offset:] + self.line)[:len(buffer)]
        buffer[:len(piece)] = piece
        self.served += len(piece)
        return len(piece)


@pytest.mark.parametrize("size", [60000, 2000, 700])
def test_the_whole_head_is_capped_and_read_no_further(size):
    """Lines each under the line limit and fewer than the stdlib's 100 add up to 6 MB a connection,
    held before any key is checked: past MAX_HEAD together the head is refused, read no further
    than the line that crossed it."""
    raw = _EndlessHead(size)
    with pytest.raises(HeadTooLarge, match=f"longer than {http_head.MAX_HEAD} bytes"):
        read_headers(io.BufferedReader(raw))
    assert raw.served <= http_head.MAX_HEAD + size + io.DEFAULT_BUFFER_SIZE


def test_a_head_of_exactly_the_cap_is_read():
    pad = http_head.MAX_HEAD - len(b"Host: a\r\nX-Pad: \r\n\r\n")
    head = b"Host: a\r\nX-Pad: " + b"a" * pad + b"\r\n\r\n"
    assert len(read_headers(io.BufferedReader(io.BytesIO(head)))["x-pad"]) == pad
    with pytest.raises(HeadTooLarge):
        read_headers(io.BufferedReader(io.BytesIO(head.replace(b"X-Pad: ", b"X-Pad: a"))))
    # A caller's own cap (an upstream's answer gets 256 KiB).
    big = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(40)) + b"\r\n"
    assert len(read_headers(io.BufferedReader(io.BytesIO(big)), http_head.MAX_RESPONSE_HEAD).items()) == 40


@pytest.mark.parametrize("value,controls", [
    (b"a\x00b", True), (b"a\x01", True), (b"\x1b[31m", True), (b"a\x7f", True), (b"x\x0bx", True),
    (b"a\tb", False), (b"caf\xe9", False), (b"a b", False), (b"", False),
])
def test_control_characters_in_a_value_are_noted(value, controls):
    """RFC 9110 5.5: a value holds no control character but HTAB. A plain head cannot hold one (its
    pattern sends such a line to the feed parser), and the feed parser's reading is checked."""
    head = b"Host: a\r\nX-V: " + value + b"\r\n\r\n"
    headers = read_headers(io.BufferedReader(io.BytesIO(head)))
    assert headers.has_controls is controls
    assert headers["x-v"] == _stdlib(head)["x-v"]  # the value itself still read as the stdlib reads it
    folded = read_headers(io.BufferedReader(io.BytesIO(b"Host: a\r\nX-A: b\r\n c\r\n\r\n")))
    assert folded.has_controls  # a folded line's CR LF is one too
    assert not read_headers(io.BufferedReader(io.BytesIO(CLAUDE_CODE_HEAD))).has_controls


def test_changes_to_the_headers_are_seen_by_the_next_lookup():
    headers = parse_lines(_lines(b"Host: a\r\nX-A: one\r\nX-A: two\r\n\r\n"))
    assert headers.get_all("x-a") == ["one", "two"]
    headers["X-New"] = "1"
    assert headers["x-new"] == "1" and "X-NEW" in headers
    del headers["x-a"]
    assert "X-A" not in headers and headers.get_all("X-A") is None
    headers.replace_header("host", "b")
    assert headers["Host"] == "b"
    headers.add_header("X-Param", "v", q="1")
    assert headers.get("x-param") == 'v; q="1"'
    headers.set_raw("X-Raw", "r")
    assert headers.get_all("x-raw") == ["r"]
    assert isinstance(headers, HeaderFields)
