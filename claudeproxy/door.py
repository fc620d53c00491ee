"""The checks every request body passes at the door, before any step reads it. Pure.

``loads_request(raw)`` decodes a request body and refuses, as one 400
``invalid_request_error``, what would otherwise break a later step:

- bytes that are not UTF-8 or not JSON, and a top level nested deeper than
  ``MAX_NESTING`` (deep input must not reach recursive translators,
  RELIABILITY.md S15);
- ``NaN``, ``Infinity`` and numbers too large for a float (``1e999``):
  Python's ``json`` accepts them, but they are not JSON, and re-encoded they
  would reach the upstream as invalid JSON;
- strings holding a lone surrogate (``"\\ud800"``): a valid JSON escape that no
  UTF-8 encoder accepts, so it would fail when the body is re-encoded.

The message names the JSON path of the offending value
(``messages[0].content[1].text``), as the request parser does.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator, List, Optional, Tuple, Union

from .errors import InvalidRequest

MAX_NESTING = 128
# The most JSON objects and arrays a body may hold, and the most values in them (told by the commas
# between them): far past any real request (Claude Code's longest sessions hold tens of thousands),
# and a bound on what decoding a hostile one costs.
MAX_CONTAINERS = 1_000_000
MAX_VALUES = 1_000_000
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # (unrolled: a run at a time)
_SURROGATE = re.compile("[\ud800-\udfff]")
# Only a \uD800-\uDFFF escape can put a surrogate into a decoded string
# (strict UTF-8 decoding refuses encoded ones), so bodies without one skip that walk.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_LOW_ESCAPE = re.compile(rb"\\u[dD][cdefCDEF][0-9a-fA-F]{2}")
_BACKSLASH = 0x5C

Key = Union[str, int]


class _NotANumber:
    """What ``NaN``, ``Infinity`` and out-of-range numbers decode to, so the walk can find them."""

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NotANumber(text)


def json_path(keys: Tuple[Key, ...]) -> str:
    """``("messages", 0, "content")`` -> ``messages[0].content``."""
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out or "body"


def _nodes(value: Any) -> Iterator[Tuple[Tuple[Key, ...], Any, Optional[str]]]:
    """(path, value, key) for every value under ``value``, and every object key; no recursion."""
    stack: List[Tuple[Tuple[Key, ...], Any]] = [((), value)]
    while stack:
        path, node = stack.pop()
        yield path, node, None
        if isinstance(node, dict):
            for key, item in node.items():
                yield path + (key,), None, key
                stack.append((path + (key,), item))
        elif isinstance(node, list):
            stack.extend((path + (i,), item) for i, item in enumerate(node))


def depth_ok(value: Any, limit: int = MAX_NESTING) -> bool:
    """Nesting depth check without recursion, one level at a time.

    Only containers are visited (strings and numbers cannot nest), so a 20 KB
    request costs about what decoding it did.
    """
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 1
    while level:
        if depth > limit:
            return False
        inner: List[Any] = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    inner.append(child)
        level = inner
        depth += 1
    return True


def _first_bad(value: Any, surrogates: bool) -> Optional[Tuple[Tuple[Key, ...], str]]:
    for path, node, key in _nodes(value):
        if isinstance(node, _NotANumber):
            return path, f"{node.text} is not a JSON number; send a finite number"
        text = key if key is not None else node
        if surrogates and isinstance(text, str) and _SURROGATE.search(text):
            what = "a key" if key is not None else "a string"
            return path, f"{what} holding a lone UTF-16 surrogate (\\ud800-\\udfff) is not valid Unicode"
    return None


def _lone_surrogate_escape(raw: bytes) -> bool:
    """Does ``raw`` escape a surrogate that is not half of a pair?

    A pair (``\\ud83d\\ude00``, how ``json.dumps`` and the Python SDKs write an emoji) decodes
    to one character and is fine; only a lone half is refused, and only then is the decoded
    body walked to name where it is (a 60 KB request: 1.5 ms).
    """
    paired_low = -1  # where the low half of the last pair starts
    for match in _SURROGATE_ESCAPE.finditer(raw):
        start = match.start()
        before = start - 1
        while before >= 0 and raw[before] == _BACKSLASH:
            before -= 1
        if (start - 1 - before) % 2:
            continue  # an escaped backslash and text ("\\\\ud800"), no escape
        if start == paired_low:
            continue
        if raw[start + 3] in b"89abAB" and _LOW_ESCAPE.match(raw, start + 6):
            paired_low = start + 6
            continue
        return True
    return False


def loads_request(raw: bytes) -> Any:
    """The decoded JSON body; every way it can be wrong is an ``InvalidRequest``."""
    flags: List[bool] = []

    def constant(text: str) -> _NotANumber:
        flags.append(True)
        return _NotANumber(text)

    def number(text: str) -> Any:
        value = _float(text)
        if isinstance(value, _NotANumber):
            flags.append(True)
        return value

    _check_counts(raw)
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=constant, parse_float=number)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {_json_reason(exc)}") from None
    if not depth_ok(value):
        raise InvalidRequest(f"request body is nested more than {MAX_NESTING} levels deep")
    surrogates = _lone_surrogate_escape(raw)
    if flags or surrogates:
        found = _first_bad(value, surrogates)
        if found is not None:
            raise InvalidRequest(found[1], json_path(found[0]))
    return value


def _check_counts(raw: bytes) -> None:
    """Refuses a body with more objects and arrays than ``MAX_CONTAINERS``, or more values in them
    than ``MAX_VALUES``, before it is decoded (``too_many_values``)."""
    over = too_many_values(raw)
    if over is not None:
        raise InvalidRequest(f"request body holds {over}")


def too_many_values(raw: bytes) -> Optional[str]:
    """What a JSON text holds past ``MAX_CONTAINERS`` objects and arrays or ``MAX_VALUES`` values in
    them ("12,000,000 JSON strings; at most 1,000,000 values are taken"), or None: said before it is
    decoded, for a client's body and an upstream's answer alike.

    Decoded, each container costs about 70 bytes for its 2 (a 32 MiB body of ``{}`` took 888 MB, a
    million tiny text blocks 464 MB), each short string about 60 for its 5 (``"ab",``: 554
    MB), and the cap must come before the decoding to lower that peak. A body's marks are
    counted in C (20 KB: about 10 us, so only past 2 MB); only one with more of them than a cap
    (none that Claude Code sends: a base64 image has none) is looked at again: its strings counted
    by their quotes (in C: an escaped one is none), and, where they are not too many, the marks
    outside them, one string at a time. (``re.sub`` of the strings took 1.2 GB and 2 s for those
    6.7 million strings: more than decoding them.)"""
    if len(raw) <= 2 * min(MAX_CONTAINERS, MAX_VALUES):
        return None  # (each takes two bytes at least: a body under 2 MB is not even scanned)
    containers, values = raw.count(b"{") + raw.count(b"["), raw.count(b",") + 1
    if containers <= MAX_CONTAINERS and values <= MAX_VALUES:
        return None
    strings = (raw.count(b'"') - raw.count(b'\\"')) // 2  # at least as many as there are
    if strings > MAX_VALUES:
        return f"{strings:,} JSON strings; at most {MAX_VALUES:,} values are taken"
    containers, values = _outside_strings(raw)
    if containers > MAX_CONTAINERS:
        return f"{containers:,} JSON objects and arrays; at most {MAX_CONTAINERS:,} are taken"
    if values > MAX_VALUES:
        return f"{values:,} JSON values in its objects and arrays; at most {MAX_VALUES:,} are taken"
    return None


def _outside_strings(raw: bytes) -> Tuple[int, int]:
    """The objects and arrays, and the values in them (told by their commas), outside ``raw``'s
    strings: a string at a time (at most ``MAX_VALUES`` of them), nothing copied."""
    containers = commas = pos = 0
    for match in _JSON_STRING.finditer(raw):
        start = match.start()
        containers += raw.count(b"{", pos, start) + raw.count(b"[", pos, start)
        commas += raw.count(b",", pos, start)
        pos = match.end()
    containers += raw.count(b"{", pos) + raw.count(b"[", pos)
    return containers, commas + raw.count(b",", pos) + 1


def _json_reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "body is not UTF-8"
    return str(exc)[:200]
