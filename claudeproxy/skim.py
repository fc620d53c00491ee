"""Long SSE lines read in pieces, their long strings kept out of memory where they repeat. Pure.

The Responses API closes a function call with three events that each repeat its whole
arguments on one line (``.arguments.done``, ``output_item.done``, ``response.completed``).
Read whole, a 5 MB call's line was 5 MB of bytes, its decoded text, the event's data and the
parsed object: 20 such streams at once took 500 MB (RELIABILITY.md M2). ``LineSkimmer``
takes such a line as it arrives instead: the JSON around the strings passes through, a string
under ``LONG`` stays as it is written, and a longer one is decoded piece by piece and replaced
in the line by a marker. A closing event's ``arguments`` are checked as they come against the
arguments of the live calls, of which the fold keeps only digests (``known``: SHA-256, and one
every ``MARK_EVERY`` characters): the blocks equal to a call's start are let go, and all of a
call's text the string begins with, whole; what follows is kept. The fold parses the short line
and puts each marker's string back (``restore``): a ``str`` for a string it did not know, a
``Repeat`` for one that began with a text it has.

Decoding a long string in pieces gives exactly what decoding the line whole does: its bytes
as UTF-8 with errors replaced (as ``SSEFold.feed_line`` decodes a line), and JSON's escapes
decoded by ``json.loads`` on pieces cut between escapes (and never inside a surrogate pair).
A string that is not valid JSON leaves an invalid escape in its place, so the line fails to
parse as the whole line would have. What differs: an error message that quotes a line that is
not JSON (``event: error`` with such data) shows the placeholders, not the long strings; and
a call whose arguments repeat a live call's but that the fold did not have open when the line
was read (one only the final object has, one first named by its closing event) cannot be
placed: an error instead of a call with the wrong input (``ResponsesFold._take_whole``,
``_place_whole``, ``line_skimmer``).
"""

from __future__ import annotations

import codecs
import hashlib
import json
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

LONG = 64 * 1024  # a string this long (bytes as written) is skimmed; shorter ones pass as they are
SKIM_AFTER = 256 * 1024  # an unfinished line is skimmed from this length on (``iter_lines``)
MARKER = "\x00claudeproxy-skimmed:"  # the start of the text standing in for a skimmed string
# The events whose ``arguments`` repeat what a call's deltas sent: only there is a long string
# checked against the known texts (``LineSkimmer``), as only there does the fold compare them.
CLOSING = frozenset({b"response.function_call_arguments.done", b"response.output_item.done",
                     b"response.completed", b"response.incomplete"})
_QUOTE, _BACKSLASH = b'"', b"\\"[0]

MARK_EVERY = 64 * 1024  # characters between the digests a let-go text keeps of its start (``KnownText``)


class KnownText(NamedTuple):
    """A text the fold let go: its length, its SHA-256 (``text_digest``'s), and the digest of its
    first ``MARK_EVERY``, ``2 * MARK_EVERY``... characters (those shorter than it): a long string
    that repeats it can be checked, and let go, a block at a time."""

    size: int
    digest: bytes
    marks: Tuple[bytes, ...]

    def mark(self, at: int) -> Optional[bytes]:
        """The digest of its first ``at`` characters, where it kept one."""
        if at == self.size:
            return self.digest
        if at > 0 and at % MARK_EVERY == 0 and at // MARK_EVERY <= len(self.marks):
            return self.marks[at // MARK_EVERY - 1]
        return None


def text_digest(text: str) -> bytes:
    """How ``known`` and ``Repeat`` name a text: SHA-256 of its UTF-8 (surrogatepass: a lone
    surrogate from the upstream's JSON has no UTF-8 form of its own)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Repeat:
    """A skimmed ``arguments`` string whose start was let go, as the start of a text the fold
    has: its first ``start`` characters; ``rest`` is all that follows them. ``matches``: each
    known text it begins with whole, its length and digest. ``size`` counts all the characters."""

    __slots__ = ("size", "matches", "start", "rest")

    def __init__(self, size: int, matches: Dict[int, bytes], start: int, rest: str) -> None:
        self.size, self.matches, self.start, self.rest = size, matches, start, rest

    def after(self, known: int) -> str:
        """The characters after the first ``known`` (one of ``matches``)."""
        return self.rest[known - self.start:]

    def __repr__(self) -> str:
        return f"<Repeat of {self.size} characters, {len(self.rest)} kept>"


class SkimmedLine(bytes):
    """A line ``LineSkimmer`` shortened; ``strings``: what its markers stand for (``restore``),
    each with the characters it had in the line beyond its marker's."""

    strings: Dict[str, Tuple[Union[str, Repeat], int]]


class _LongString:
    """One long string's content, decoded as it comes, checked against the known texts on the way.

    While it is the start of some known text (each block's digest equals that text's mark) what
    came is let go. Where it is one whole (its digest at that text's end) that is recorded in
    ``matches``, and from the first such place on all that follows is kept (a known text may be
    the start of another, and the fold wants what follows the one it holds). What it let go is
    its ``start``; one that let go of nothing is kept whole, a ``str``.
    """

    def __init__(self, known: Sequence[KnownText]) -> None:
        self.alive = list(known)  # the texts this string has matched so far
        self.next_check = self._next_check(0)
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.carry = ""  # decoded text not yet unescaped: an escape (or a surrogate pair) cut in two
        self.written = 0  # characters as written in the line (escapes not decoded)
        self.sha = hashlib.sha256()
        self.size = 0
        self.kept: List[str] = []  # what came since the last position it let go of
        self.matches: Dict[int, bytes] = {}  # the known texts it begins with whole: length -> digest
        self.start = 0  # the characters let go: a known text's start (or all of one)
        self.broken = False  # not valid JSON string content (a control character, a bad escape)

    def feed(self, raw: bytes) -> None:
        if self.broken:
            return
        decoded = self.utf8.decode(raw)
        self.written += len(decoded)
        text = self.carry + decoded
        cut = _escape_boundary(text)
        self.carry = text[cut:]
        if cut:
            try:
                self._add(json.loads('"' + text[:cut] + '"'))
            except ValueError:
                self.broken, self.kept = True, []

    def finish(self) -> Union[str, Repeat]:
        """The string (``ValueError`` if it is not valid JSON string content)."""
        if self.broken:
            raise ValueError("not a JSON string")
        rest = self.utf8.decode(b"", final=True)
        self.written += len(rest)
        rest = self.carry + rest
        if rest:
            self._add(json.loads('"' + rest + '"'))
        rest = "".join(self.kept)
        return Repeat(self.size, self.matches, self.start, rest) if self.start else rest

    def _next_check(self, after: int) -> Optional[int]:
        """The next position past ``after`` where a digest is compared: a block's end, a text's end."""
        ends = [k.size for k in self.alive if k.size > after]
        if not ends:
            return None
        block = (after // MARK_EVERY + 1) * MARK_EVERY
        return min(block, *ends)

    def _add(self, text: str) -> None:
        while self.next_check is not None and self.next_check <= self.size + len(text):
            at = self.next_check
            head, text = text[:at - self.size], text[at - self.size:]
            self._take(head)
            self._check(at)
            self.next_check = self._next_check(at)
        self._take(text)

    def _check(self, at: int) -> None:
        digest = self.sha.digest()
        matched_before = bool(self.matches)
        whole = any(k.size == at and k.digest == digest for k in self.alive)
        if whole:
            self.matches[at] = digest
        marks = [(k, k.mark(at)) for k in self.alive if k.size > at]
        # Still alive: the longer texts it equals here, and those that keep no digest here (at
        # another text's end).
        self.alive = [k for k, mark in marks if mark is None or mark == digest]
        # What came is let go where it equals a known text's start, up to the first whole match:
        # what follows that is kept.
        if not matched_before and (whole or any(mark == digest for _, mark in marks)):
            self.start, self.kept = at, []

    def _take(self, text: str) -> None:
        if text:
            self.sha.update(text.encode("utf-8", "surrogatepass"))
            self.size += len(text)
            self.kept.append(text)


def _escape_boundary(text: str) -> int:
    """The length of ``text``'s longest start that ends between JSON escapes and not between the
    halves of a surrogate pair (``\\ud83d\\ude00`` is one character). ``text`` begins at one."""
    cut = _unfinished_escape(text, len(text))
    if cut >= 6 and text[cut - 6:cut - 4] == "\\u" and text[cut - 4:cut - 2].lower() in ("d8", "d9", "da", "db") \
            and _starts_escape(text, cut - 6):
        return cut - 6  # a pair's high half: its low half may be next
    return cut


def _unfinished_escape(text: str, end: int) -> int:
    """Where an escape that ``end`` cuts short begins (``\\``, ``\\u0`` ...), else ``end``."""
    last = text.rfind("\\", max(0, end - 5), end)  # an unfinished escape is 5 characters at most
    if last < 0 or not _starts_escape(text, last):
        return end
    if last + 1 == end or (text[last + 1] == "u" and last + 6 > end):
        return last
    return end


def _starts_escape(text: str, at: int) -> bool:
    """Is the backslash at ``at`` an escape's first (an even number of backslashes before it)?"""
    first = at
    while first > 0 and text[first - 1] == "\\":
        first -= 1
    return (at - first) % 2 == 0


class LineSkimmer:
    """One long SSE line in pieces (``feed``), then the line with its long strings replaced by
    markers (``finish``) and what each marker stands for (``strings``).

    Only the value of an ``arguments`` member in a closing event (``CLOSING``, the line's first
    ``type``) is checked against the known texts: the fold compares those with what the deltas
    sent. Any other long string (a delta, an ``.added`` item's arguments) is kept whole, as is one
    in a line whose ``type`` comes after it. A lone CR ends an SSE line, so it
    also ends a string in progress (which then will not parse, as the line read whole would not).
    ``nonce`` makes the markers of one stream's lines unlike each other and any upstream text.
    """

    def __init__(self, known: Sequence[KnownText], nonce: str) -> None:
        self.known = known
        self.nonce = nonce
        self.out: List[bytes] = []  # the short line
        self.strings: Dict[str, Tuple[Union[str, Repeat], int]] = {}
        self.in_string = False
        self.raw: List[bytes] = []  # the current string as written, while it is short
        self.raw_size = 0
        self.backslashes = 0  # the current string's trailing backslashes so far
        self.long: Optional[_LongString] = None
        self.checked = False  # the current string is a closing event's arguments: checked
        self.last = b""  # the last string, when short: a member's name if ":" follows
        self.gap = b""  # what stands between it and the current position, blanks left out
        self.member = b""  # the member the current string is the value of
        self.kind: Optional[bytes] = None  # the line's first "type" value

    def feed(self, piece: bytes) -> None:
        at = 0
        while at < len(piece):
            if not self.in_string:
                quote = piece.find(_QUOTE, at)
                outside = piece[at:] if quote < 0 else piece[at:quote]
                self.out.append(outside)
                self.gap = (self.gap + outside.strip())[:8]
                if quote < 0:
                    return
                self.out.append(_QUOTE)
                self.in_string, self.raw, self.raw_size, self.backslashes = True, [], 0, 0
                self.member = self.last if self.gap == b":" else b""
                self.checked = self.member == b"arguments" and self.kind in CLOSING
                at = quote + 1
                continue
            quote = self._closing_quote(piece, at)
            end = len(piece) if quote < 0 else quote
            cr = piece.find(b"\r", at, end)
            self._content(piece[at:end if cr < 0 else cr])
            if cr >= 0:
                self._end_string(closed=False)
                self.out.append(b"\r")
                self.last = self.gap = b""
                at = cr + 1
            elif quote >= 0:
                self._end_string()
                at = quote + 1
            else:
                return

    def finish(self, ending: bytes = b"") -> SkimmedLine:
        """The short line, then ``ending`` (its newline). A line that ends inside a string ends so
        here too (it will not parse)."""
        if self.in_string:
            self._end_string(closed=False)
        line = SkimmedLine(b"".join(self.out) + ending)
        line.strings = self.strings
        return line

    def _closing_quote(self, piece: bytes, at: int) -> int:
        """The first quote from ``at`` that no backslash escapes, or -1."""
        quote = piece.find(_QUOTE, at)
        while quote >= 0:
            run = quote
            while run > at and piece[run - 1] == _BACKSLASH:
                run -= 1
            escapes = quote - run + (self.backslashes if run == at else 0)
            if escapes % 2 == 0:
                return quote
            quote = piece.find(_QUOTE, quote + 1)
        return -1

    def _content(self, chunk: bytes) -> None:
        if not chunk:
            return
        stripped = len(chunk.rstrip(b"\\"))
        self.backslashes = len(chunk) - stripped + (self.backslashes if stripped == 0 else 0)
        if self.long is not None:
            self.long.feed(chunk)
            return
        self.raw.append(chunk)
        self.raw_size += len(chunk)
        if self.raw_size >= LONG:
            self.long = _LongString(self.known if self.checked else ())
            self.long.feed(b"".join(self.raw))
            self.raw = []

    def _end_string(self, closed: bool = True) -> None:
        self.in_string, self.gap = False, b""
        quote = b'"' if closed else b""
        if self.long is None:
            self.last = b"".join(self.raw)
            self.out.append(self.last + quote)
            if self.kind is None and self.member == b"type" and closed:
                self.kind = self.last
            return
        self.last = b""
        try:
            value = self.long.finish()
        except ValueError:  # not valid JSON string content: the line must not parse, as whole it would not
            self.out.append(b"\\x" + quote)
        else:
            if self.kind is None and self.member == b"type" and closed and isinstance(value, str):
                self.kind = value.encode("utf-8", "surrogatepass")  # a type this long is no closing event's
            marker = f"{MARKER}{self.nonce}:{len(self.strings)}"
            written = json.dumps(marker).encode()
            self.strings[marker] = (value, self.long.written - (len(written) - 2))
            self.out.append(written[1:] if closed else written[1:-1])
        self.long, self.raw = None, []


def holds_repeat(value: Any) -> bool:
    """Is there a ``Repeat`` anywhere in ``value`` (a parsed event, restored)?"""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, Repeat):
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def restore(value: Any, strings: Dict[str, Tuple[Union[str, Repeat], int]]) -> Tuple[Any, int]:
    """``value`` (a parsed short line) with each marker string replaced by what it stands for,
    taken out of ``strings`` (a line may hold several events: the others' stay), and how many
    characters more the line had with those strings in it. Object keys stay as they are: no
    event names a key that long."""
    more = 0

    def put(marker: str) -> Union[str, Repeat]:
        nonlocal more
        found, extra = strings.pop(marker)
        more += extra
        return found

    if isinstance(value, str):
        return (put(value) if value in strings else value), more
    stack = [value]
    while stack:
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, item in pairs:
            if isinstance(item, str):
                if item.startswith(MARKER) and item in strings:
                    node[key] = put(item)
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return value, more
