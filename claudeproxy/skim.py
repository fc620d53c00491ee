"""Long SSE lines read in pieces, their long strings kept out of memory where they repeat. Pure.

The Responses API closes a function call with three events that each repeat its whole
arguments on one line (``.arguments.done``, ``output_item.done``, ``response.completed``).
Read whole, a 5 MB call's line was 5 MB of bytes, its decoded text, the event's data and the
parsed object: 20 such streams at once took 500 MB (RELIABILITY.md M2). ``LineSkimmer``
takes such a line as it arrives instead: the JSON around the strings passes through, a string
under ``LONG`` stays as it is written, and a longer one is decoded piece by piece and replaced
in the line by a marker. Where the fold already has the string's start (a live call's
arguments, of which it keeps only the SHA-256: ``known``), that start is checked by digest
and let go; what follows it is kept. The fold parses the short line and puts each marker's
string back (``restore``): a ``str`` for a string it did not know, a ``Repeat`` for one that
begins with a text it has.

Decoding a long string in pieces gives exactly what decoding the line whole does: its bytes
as UTF-8 with errors replaced (as ``SSEFold.feed_line`` decodes a line), and JSON's escapes
decoded by ``json.loads`` on pieces cut between escapes (and never inside a surrogate pair).
A string that is not valid JSON leaves an invalid escape in its place, so the line fails to
parse as the whole line would have. What differs: an error message that quotes a line that is
not JSON (``event: error`` with such data) shows the placeholders, not the long strings.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

LONG = 64 * 1024  # a string this long (bytes as written) is skimmed; shorter ones pass as they are
SKIM_AFTER = 256 * 1024  # an unfinished line is skimmed from this length on (``iter_lines``)
MARKER = "\x00claudeproxy-skimmed:"  # the start of the text standing in for a skimmed string
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
    """A skimmed string that begins with a text the fold has: its first ``known`` characters
    (of SHA-256 ``digest``) were let go, ``tail`` is the rest; ``size`` counts them all."""

    __slots__ = ("size", "known", "digest", "tail")

    def __init__(self, size: int, known: int, digest: bytes, tail: str) -> None:
        self.size, self.known, self.digest, self.tail = size, known, digest, tail

    def __repr__(self) -> str:
        return f"<Repeat of {self.known} known characters and {len(self.tail)} more>"


class SkimmedLine(bytes):
    """A line ``LineSkimmer`` shortened; ``strings``: what its markers stand for (``restore``)."""

    strings: Dict[str, Union[str, Repeat]]


class _LongString:
    """One long string's content, decoded as it comes, checked against the known texts on the way.

    While it is the start of some known text (each block's digest equals that text's mark) what
    came is let go; where it is one whole (its digest at that text's end) it is a ``Repeat`` of
    it, and what follows is kept. A string that began as a known text and then went its own way
    keeps the position and digest of the last block they shared (a ``Repeat`` the fold finds
    begins as no text of its, or not whole); one that never matched is kept whole, a ``str``.
    """

    def __init__(self, known: Sequence[KnownText]) -> None:
        self.alive = list(known)  # the texts this string has matched so far
        self.next_check = self._next_check(0)
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.carry = ""  # decoded text not yet unescaped: an escape (or a surrogate pair) cut in two
        self.sha = hashlib.sha256()
        self.size = 0
        self.kept: List[str] = []  # what came since the last position it let go of
        self.match: Optional[Repeat] = None  # a whole known text it begins with
        self.shared: Optional[Repeat] = None  # the last block it shares with a known text
        self.broken = False  # not valid JSON string content (a control character, a bad escape)

    def feed(self, raw: bytes) -> None:
        if self.broken:
            return
        text = self.carry + self.utf8.decode(raw)
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
        rest = self.carry + self.utf8.decode(b"", final=True)
        if rest:
            self._add(json.loads('"' + rest + '"'))
        tail = "".join(self.kept)
        found = self.match or self.shared
        if found is None:
            return tail
        return Repeat(self.size, found.known, found.digest, tail)

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
        if any(k.size == at and k.digest == digest for k in self.alive):
            self.match, self.kept = Repeat(at, at, digest, ""), []
        marks = [(k, k.mark(at)) for k in self.alive if k.size > at]
        # Still alive: the longer texts it equals here, and those that keep no digest here (at
        # another text's end); only an equal digest lets what came go.
        self.alive = [k for k, mark in marks if mark is None or mark == digest]
        if self.match is None and any(mark == digest for _, mark in marks):
            # The start of a known text so far: let go (after a whole one, what follows it is kept).
            self.shared, self.kept = Repeat(at, at, digest, ""), []

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
    markers (``finish``) and what each marker stands for (``strings``)."""

    def __init__(self, known: Sequence[KnownText], nonce: str) -> None:
        self.known = known
        self.nonce = nonce
        self.out: List[bytes] = []  # the short line
        self.strings: Dict[str, Union[str, Repeat]] = {}
        self.in_string = False
        self.raw: List[bytes] = []  # the current string as written, while it is short
        self.raw_size = 0
        self.backslashes = 0  # the current string's trailing backslashes so far
        self.long: Optional[_LongString] = None

    def feed(self, piece: bytes) -> None:
        at = 0
        while at < len(piece):
            if not self.in_string:
                quote = piece.find(_QUOTE, at)
                if quote < 0:
                    self.out.append(piece[at:])
                    return
                self.out.append(piece[at:quote + 1])
                self.in_string, self.raw, self.raw_size, self.backslashes = True, [], 0, 0
                at = quote + 1
                continue
            quote = self._closing_quote(piece, at)
            if quote < 0:
                self._content(piece[at:])
                return
            self._content(piece[at:quote])
            self._end_string()
            at = quote + 1

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
            self.long = _LongString(self.known)
            self.long.feed(b"".join(self.raw))
            self.raw = []

    def _end_string(self, closed: bool = True) -> None:
        self.in_string = False
        quote = b'"' if closed else b""
        if self.long is None:
            self.out.append(b"".join(self.raw) + quote)
            return
        try:
            value = self.long.finish()
        except ValueError:  # not valid JSON string content: the line must not parse, as whole it would not
            self.out.append(b"\\x" + quote)
        else:
            marker = f"{MARKER}{self.nonce}:{len(self.strings)}"
            self.strings[marker] = value
            self.out.append(json.dumps(marker).encode()[1:] if closed else json.dumps(marker).encode()[1:-1])
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


def restore(value: Any, strings: Dict[str, Union[str, Repeat]]) -> Any:
    """``value`` (a parsed short line) with each marker string replaced by what it stands for,
    taken out of ``strings`` (a line may hold several events: the others' stay). Object keys
    stay as they are: no event names a key that long."""
    if isinstance(value, str):
        return strings.pop(value, value)
    stack = [value]
    while stack:
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, item in pairs:
            if isinstance(item, str):
                if item.startswith(MARKER) and item in strings:
                    node[key] = strings.pop(item)
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return value
