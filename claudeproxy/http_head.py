"""The header lines of an HTTP head (a client's request, an upstream's answer), parsed as the
standard library parses them, faster. Pure but for the reads from the connection's buffered reader.

``http.client.parse_headers`` hands every head to the ``email`` package's feed parser, built for
mail with continuation lines and MIME parts: about 45 µs for the 20 header lines Claude Code
sends, and every ``headers.get`` then walks the list lowering each name (a Claude Code request
is asked about 20 of them). ``read_headers`` takes the lines the same way (the same limits, the same
errors), and when each is a plain ``Name: value`` line builds the same ``HTTPMessage`` the
feed parser would, in a few microseconds; a head with anything else in it (a line without a
colon, a folded line, a stray CR, a control character in a value) goes to the feed parser as
before, so odd input gets exactly the stdlib's reading, defects included, which the handler
then refuses.

Two things the stdlib does not do, since a head is read before any key is checked: the header
lines together are capped (``MAX_HEAD``; the stdlib holds up to 100 lines of 64 KiB, 6.4 MB per
connection), and a head the connection's end cut short is refused (``HeadCutShort``), never
parsed: the feed parser would make a message of whatever had arrived, at a cost of many times
its size.
"""

from __future__ import annotations

import email.parser
import http.client
import re
from typing import Any, Dict, List, Optional

# The stdlib's own limits (http.client._MAXLINE, _MAXHEADERS): a longer line is a 431 "Line too
# long", more lines a 431 "Too many headers" (the blank line ending the head counts, as there).
MAX_LINE = 65536
MAX_HEADERS = 100
# All header lines of a request head together, the blank line included: past it a 431, the head
# read no further than the line that crossed it. Claude Code sends about 1.5 KiB; Envoy's cap is
# 60 KiB, nginx's default 32 KiB.
MAX_HEAD = 64 * 1024
# An upstream's answer head (upstream.py): far above what providers send (a few KiB, more with
# cookies and tracing headers), so only a broken or hostile upstream meets it.
MAX_RESPONSE_HEAD = 256 * 1024

# What the feed parser reads as a header line (email.feedparser.headerRE: any printable but ":"
# and space before the colon), without its line break; the value as compat32 stores it: the
# blanks after the colon dropped, any others kept. A CR inside the line is no header line, nor is
# one whose value holds a control character (RFC 9110 5.5: none but HTAB): such a head takes the
# feed parser's path, which notes it (``HeaderFields.has_controls``); a plain one cannot hold any.
_FIELD_LINE = re.compile(r"([\x21-\x39\x3b-\x7e]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)\r?\n")
# A control character a field value may not hold (RFC 9110 5.5: none but HTAB), and a field
# name's or option's syntax (RFC 9110 5.6.2 token); for the proxy's own checks of headers too.
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_END_OF_HEAD = (b"\r\n", b"\n")


class HeadTooLarge(http.client.HTTPException):
    """The header lines together are longer than the cap given to ``read_headers``."""


class HeadCutShort(http.client.HTTPException):
    """The connection ended before the blank line that ends the head: there is no head to read."""


class HeaderFields(http.client.HTTPMessage):
    """An ``HTTPMessage`` whose lookups go through a name index, built at the first lookup.

    Every change to the header list (``__setitem__``, ``__delitem__``, ``set_raw``,
    ``replace_header``, ``add_header``: the ways ``email.message.Message`` has to change it)
    drops the index, which the next lookup builds again.
    """

    _index: Optional[Dict[str, List[str]]] = None
    # A value holds a control character other than HTAB (a folded line's CR LF included). Only a
    # head read by the feed parser can: the plain path's pattern admits none, so the check costs
    # a request nothing unless its head was odd already.
    has_controls = False

    def _names(self) -> Dict[str, List[str]]:
        index = self._index
        if index is None:
            index = {}
            for name, value in self._headers:  # type: ignore[attr-defined]
                # compat32 gives a str value back as stored (header_fetch_parse); this one is one
                # decoded as Latin-1, which holds no surrogates for it to mend.
                index.setdefault(name.lower(), []).append(value)
            self._index = index
        return index

    def get(self, name: str, failobj: Any = None) -> Any:
        values = self._names().get(name.lower())
        return values[0] if values else failobj

    def get_all(self, name: str, failobj: Any = None) -> Any:
        values = self._names().get(name.lower())
        return list(values) if values else failobj

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._names()

    def __setitem__(self, name: str, value: Any) -> None:
        self._index = None
        super().__setitem__(name, value)

    def __delitem__(self, name: str) -> None:
        self._index = None
        super().__delitem__(name)

    def set_raw(self, name: str, value: Any) -> None:
        self._index = None
        super().set_raw(name, value)

    def replace_header(self, _name: str, _value: Any) -> None:
        self._index = None
        super().replace_header(_name, _value)

    def add_header(self, _name: str, _value: Any, **_params: Any) -> None:
        self._index = None
        super().add_header(_name, _value, **_params)


def read_headers(rfile: Any, max_head: int = MAX_HEAD) -> HeaderFields:
    """The header lines up to the blank line, as ``http.client.parse_headers(rfile, HeaderFields)``
    reads them: the same limits and errors (``LineTooLong``, ``HTTPException``) and the same message;
    and ``HeadTooLarge`` past ``max_head`` bytes of lines, ``HeadCutShort`` at the end of input."""
    lines: List[bytes] = []
    size = 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        size += len(line)  # at most one line (64 KiB) past the cap is ever held
        if size > max_head:
            raise HeadTooLarge(f"header lines longer than {max_head} bytes together")
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    return parse_lines(lines)


def parse_lines(lines: List[bytes]) -> HeaderFields:
    """The message of a head's lines, the blank line last; ``HeadCutShort`` if the last is b"" (the
    end of input): a head cut short is not guessed at."""
    if lines[-1] not in _END_OF_HEAD:
        raise HeadCutShort("the connection closed inside the head")
    message = HeaderFields()
    for raw in lines[:-1]:
        match = _FIELD_LINE.fullmatch(raw.decode("iso-8859-1"))
        if match is None:
            break
        message.set_raw(match.group(1), match.group(2))
    else:
        message.set_payload("")  # the feed parser's empty body
        return message
    # Not plain: the feed parser's reading, line for line what http.client.parse_headers does.
    text = b"".join(lines).decode("iso-8859-1")
    message = email.parser.Parser(_class=HeaderFields).parsestr(text)  # type: ignore[assignment]
    message.has_controls = any(CONTROL_RE.search(value) for value in message.values()) or any(map(_inner_cr, lines))
    return message


def _inner_cr(raw: bytes) -> bool:
    """A CR inside a line, before its end: a line break to the feed parser, so "X-Note: a\\rx-api-key: K"
    would be two fields, the second hidden from whoever reads the line as one."""
    end = 2 if raw.endswith(b"\r\n") else 1 if raw.endswith(b"\n") else 0
    return b"\r" in raw[:len(raw) - end]
