"""A tool call's arguments as they stream: what of them may go to the client now. Pure.

The first tool call of a streamed turn goes out live, as ``input_json_delta`` events while
its arguments arrive (PROTOCOL.md 3.4 step 7; the Responses API streams every call so).
The SDKs join those deltas and parse the result at ``content_block_stop``. The TypeScript
SDK's ``MessageStream``, which Claude Code is built on, uses a partial-JSON parser that
throws on anything but JSON, possibly cut short, and then the whole turn is lost. So
``ArgsScan`` passes on only text that is valid JSON so far:

- a call goes live (``started``) only once ``{`` is followed by ``"`` or ``}``.
  ``{bad json}``, ``{'a': 1}`` and ``{a: 1}`` never do; they are repaired whole at the
  end, like any call that is not live;
- nothing after the outermost object closes is passed on: ``{"a": 1}}``, a code fence,
  trailing prose, a second object;
- a key, with the ``,`` before it and the ``:`` after it, is held until its value begins.
  A number or a literal is held until it ends. So the text passed on can always be closed
  into valid JSON with ``"``, ``}`` and ``]`` alone, without inventing a value;
- inside strings, two things are mended as they pass: a raw control character (a literal
  newline in a file's content) is escaped, and an escape JSON does not know (the ``\\d``
  of a regular expression) keeps its backslash as a character. Both keep what the model
  meant; neither ends the object;
- anything else invalid ends the object where it stands: ``True``/``None``, ``'x'``, a
  trailing comma, a missing comma, a wrong closing bracket, ``NaN``. What was passed on
  cannot be taken back, so it is closed with its closing brackets and the rest is
  dropped. The input keeps the members that were whole, the SDK does not throw, and the
  translator logs a warning. This is the least bad of the outcomes open once text has
  been sent.

A call cut short (the output limit, a stream that ends inside it) ends its block with
what was held, as it came (``flush``): the SDK's partial parser makes of that what it
makes of any cut stream, as before this scan.

``streamed_object`` runs the same scan over a whole arguments string, so the JSON answer
(``normalize_arguments``) gives the input a stream of the same arguments gave.

The scan is linear in the text. Strings, which make up most of any large argument, are
crossed with one regular-expression match per fragment, and so is a run of numbers in an
array; any other token is a step of the loop (well under a microsecond). A 5 MB argument
in 1 KB fragments (RELIABILITY.md F10) takes a fraction of a second.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

# Inside a string: a run of characters that need no care, and valid escapes.
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*')
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?")  # what may still become a valid escape
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, no other
_WORD = re.compile(r'[^ \t\n\r,:\[\]{}"]*')  # a number or a literal runs to the next delimiter
_SCALAR_RE = r"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null)"
_SCALAR = re.compile(_SCALAR_RE)
_ELEMENTS = re.compile(r"(?:%s[ \t\n\r]*,[ \t\n\r]*)*" % _SCALAR_RE)  # array elements, each followed by ","
_SCALAR_START = frozenset("-0123456789tfn")
_MAX_WORD = 1000  # a longer number is no tool argument; the cap keeps a held word from growing
# The regular expressions that repeat a group look at most this much text at a time: the
# matcher keeps state per repetition, which for one 10 MB fragment of escapes was 800 MB.
_WINDOW = 8192

# A live call's arguments go to the client as they come; what came is kept as text only up to this
# size, for the checks of what repeats them (a resent call, Responses' closing events). Past it a
# digest stands in: 20 calls each writing a 5 MB file held 100 MB (RELIABILITY.md F10, figure M2).
KEEP_LIVE_TEXT = 64 * 1024
# What the folds log when a live call's arguments turn invalid JSON (``ArgsScan.bad``): name, id.
TURNED_BAD = ("tool call %s (%s): its streamed arguments turned invalid JSON; its input was closed "
              "after the last whole member and the rest dropped")
_STRUCTURAL_RE = re.compile(r'[\\"{}\[\]]')

# Where the scan stands: what may come next.
_BEGIN = 0  # before the outermost "{"
_OBJ_FIRST = 1  # after "{": a key or "}"
_KEY = 2  # after "," in an object: a key
_COLON = 3  # after a key: ":"
_VALUE = 4  # after ":", or after "," in an array: a value
_ARR_FIRST = 5  # after "[": a value or "]"
_AFTER = 6  # after a value: "," or the closing bracket
_IN_KEY = 7  # inside a key
_IN_VALUE = 8  # inside a string value

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _control_escape(ch: str) -> str:
    return _SHORT_ESCAPES.get(ch) or "\\u%04x" % ord(ch)


class ArgsScan:
    """Feed it a call's arguments fragment by fragment; ``take`` what may be sent now.

    ``started``: the arguments began as a JSON object (``{`` then ``"`` or ``}``): the call
    may go live. ``ended``: nothing more will be passed on, because the object closed or
    turned invalid (``bad``). ``closed``: the outermost object closed. After ``bad`` it
    follows only the balance of brackets, as before any validity was checked, because the
    translators use it to tell a complete call from a cut one. ``keep=False``: only the
    state is wanted (a call that can never go live), and no text is collected.
    """

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.started = False
        self.closed = False
        self.bad = False
        self.ended = False
        self.state = _BEGIN
        self.stack: List[str] = []  # the closing brackets of the open containers, innermost last
        self.pending = ""  # an unfinished token the last fragment ended in: a number, a literal, an escape
        self.held: List[str] = []  # valid text not passed on yet: a key and its separators
        self.out: List[str] = []  # text to pass on, for ``take``
        # After ``bad``: the bracket balance alone (``closed``).
        self.depth = 0
        self.in_string = False
        self.escaped = False

    @property
    def left_open(self) -> bool:
        """The object began, is valid so far, and never closed: where a stream stopped, a cut call
        (the arguments themselves may be let go by then: ``cut_short`` reads text)."""
        return bool(self.stack) and not self.bad and not self.closed

    @property
    def undecided(self) -> bool:
        """The object's ``{`` came, and its next character decides whether it goes live."""
        return bool(self.stack) and not self.started and not self.bad

    def feed(self, text: str) -> None:
        if self.state == _IN_VALUE and not self.pending and len(text) <= _WINDOW:
            # Most fragments of a large argument: more of a string value, passed on as it came
            # when nothing in it needs care (nothing is held inside a string value).
            if _STRING_RUN.match(text).end() == len(text):  # type: ignore[union-attr]
                if self.keep and text:
                    self.out.append(text)
                return
        if not text or self.closed:
            return
        if self.bad:
            self._balance(text)
            return
        if self.pending:
            text, self.pending = self.pending + text, ""
        self._scan(text)

    def take(self) -> str:
        """The text that may be sent now, and that was not taken yet."""
        out = self.out
        if not out:
            return ""
        text = out[0] if len(out) == 1 else "".join(out)
        self.out = []
        return text

    def flush(self) -> str:
        """At the end of the call's block: the rest of what came, as it came.

        A call cut short (``max_tokens``, a stream that ends) keeps everything it said, held
        text too. The SDK's partial parser makes of it what it makes of any cut stream. After
        this nothing more is collected.
        """
        text = self.take()
        if not self.ended:
            text += "".join(self.held) + self.pending
        self.held, self.pending, self.keep = [], "", False
        return text

    # ------------------------------------------------------------------

    def _scan(self, buf: str) -> None:
        """One fragment (after what the last one left ``pending``). ``buf[mark:i]`` is scanned
        text not yet held or passed on; ``buf[mark:safe]`` (with what is held) may be passed on:
        it ends where what was passed on can be closed with brackets alone."""
        n = len(buf)
        i = mark = safe = 0
        stack = self.stack
        state = self.state
        while i < n:
            if state >= _IN_KEY:
                limit = n if n - i <= _WINDOW else i + _WINDOW
                j = _STRING_RUN.match(buf, i, limit).end()  # type: ignore[union-attr]  # it matches ""
                if j == n:
                    i = n
                    break
                if limit < n and j > limit - 6:
                    i = j  # the window ended the run, maybe inside an escape: go on from there
                    continue
                ch = buf[j]
                if ch == '"':
                    i = j + 1
                    if state == _IN_KEY:
                        state = _COLON
                    else:
                        state, safe = _AFTER, i
                    continue
                if ch == "\\" and _PARTIAL_ESCAPE.match(buf, j).end() == n:  # type: ignore[union-attr]
                    self.pending = buf[j:]  # it may still become a valid escape
                    i = j
                    break
                mark = i = safe = self._mend(buf, j, state == _IN_VALUE, mark, safe)
                continue
            ch = buf[i]
            if ch in " \t\n\r":
                i = _WHITESPACE.match(buf, i).end()  # type: ignore[union-attr]
                continue
            if ch == '"':
                if state == _OBJ_FIRST or state == _KEY:
                    self.started = self.started or len(stack) == 1
                    state = _IN_KEY
                    i += 1
                    continue
                if state == _VALUE or state == _ARR_FIRST:
                    state = _IN_VALUE
                    i = safe = i + 1
                    continue
            elif ch in _SCALAR_START:
                if state == _VALUE or state == _ARR_FIRST:
                    if stack[-1] == "]":  # a run of numbers and literals: in one match
                        j = _ELEMENTS.match(buf, i, n if n - i <= _WINDOW else i + _WINDOW).end()  # type: ignore[union-attr]
                        if j > i:
                            safe, i, state = buf.rfind(",", i, j), j, _VALUE
                            continue
                    j = _WORD.match(buf, i).end()  # type: ignore[union-attr]
                    if j == n:
                        if n - i <= _MAX_WORD:
                            self.pending = buf[i:]  # it may go on in the next fragment
                            break
                    elif _SCALAR.fullmatch(buf, i, j):
                        i = safe = j
                        state = _AFTER
                        continue
            elif ch == ",":
                if state == _AFTER:
                    state = _KEY if stack[-1] == "}" else _VALUE
                    i += 1
                    continue
            elif ch == ":":
                if state == _COLON:
                    state = _VALUE
                    i += 1
                    continue
            elif ch == "{" or ch == "[":
                if state == _VALUE or state == _ARR_FIRST or (state == _BEGIN and ch == "{"):
                    stack.append("}" if ch == "{" else "]")
                    state = _OBJ_FIRST if ch == "{" else _ARR_FIRST
                    i = safe = i + 1
                    continue
            elif ch == "}" or ch == "]":
                if stack and stack[-1] == ch and (
                    state == _AFTER or state == (_OBJ_FIRST if ch == "}" else _ARR_FIRST)
                ):
                    stack.pop()
                    i = safe = i + 1
                    state = _AFTER
                    if not stack:  # the outermost object closed: what follows is not part of it
                        self._pass(buf, mark, i)
                        self.state = state
                        self.started = self.closed = self.ended = True
                        return
                    continue
            self.state = state
            self._fail(buf, i, mark, safe)
            return
        self.state = state
        # The fragment ended: the inside of a string value goes out, anything else waits.
        if state == _IN_VALUE:
            safe = i
        if safe > mark:
            self._pass(buf, mark, safe)
            mark = safe
        if self.keep and i > mark:
            self.held.append(buf[mark:i])

    def _mend(self, buf: str, j: int, in_value: bool, mark: int, safe: int) -> int:
        """``buf[j]`` inside a string, mended as it passes: an escape JSON does not know keeps its
        backslash as a character, a raw control character is escaped. Returns where scanning goes on."""
        mended = "\\\\" if buf[j] == "\\" else _control_escape(buf[j])
        if in_value:
            self._pass(buf, mark, j)
            if self.keep:
                self.out.append(mended)
        else:
            if safe > mark:
                self._pass(buf, mark, safe)
                mark = safe
            if self.keep:
                self.held += (buf[mark:j], mended)
        return j + 1

    def _pass(self, buf: str, mark: int, end: int) -> None:
        """What is held and ``buf[mark:end]`` may be sent."""
        if self.keep:
            if self.held:
                self.out += self.held
                self.held = []
            if end > mark:
                self.out.append(buf[mark:end])

    def _fail(self, buf: str, i: int, mark: int, safe: int) -> None:
        """Invalid JSON at ``buf[i]``: close what was passed on, drop the rest."""
        if safe > mark:
            self._pass(buf, mark, safe)
        self.bad = self.ended = True
        self.held, self.pending = [], ""
        if self.keep and self.stack:
            self.out.append("".join(reversed(self.stack)))
        self.depth = len(self.stack)
        self._balance(buf[i:])

    def _balance(self, text: str) -> None:
        """``closed`` from the bracket balance alone: what was known of a call before its
        JSON was checked at all."""
        skip = 0 if self.escaped else -1
        self.escaped = False
        for match in _STRUCTURAL_RE.finditer(text):
            i, ch = match.start(), match.group()
            if i == skip:
                continue
            if self.in_string:
                if ch == "\\":
                    skip, self.escaped = i + 1, i + 1 == len(text)
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif self.depth > 0:
                self.depth -= 1
                if self.depth == 0:
                    self.closed = True
                    return


def finite_float(text: str) -> float:
    """A JSON number as a float, the largest finite one for a number past the float range (1e400).

    Python reads 1e400 as inf, which ``json.dumps`` then writes as ``Infinity``: no JSON, and
    the JavaScript SDK (Claude Code's) cannot parse the answer. The stream passes the number on
    as it came, which JavaScript's parser reads as Infinity; the largest float is the nearest
    value JSON can carry.
    """
    value = float(text)
    return value if math.isfinite(value) else math.copysign(sys.float_info.max, value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python reads them, JSON has none


_DECODER = json.JSONDecoder(parse_float=finite_float, parse_constant=_no_constant)


def loads_finite(text: str) -> Any:
    """``json.loads`` with ``finite_float`` and without NaN: what is read can be written back as JSON."""
    return _DECODER.decode(text)


def streamed_object(raw: str) -> Optional[Dict[str, Any]]:
    """The input a live stream of the arguments ``raw`` gives, for arguments that began as a
    JSON object and then closed with more after it, or turned invalid (``ArgsScan``). None for
    any other: arguments that are no object, or that were cut short."""
    scan = ArgsScan()
    scan.feed(raw)
    if not (scan.started and scan.ended):
        return None
    try:
        value = loads_finite(scan.take())
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def said_done_but_cut(said: str, name: str) -> str:
    """The warning for a call cut inside its arguments though the upstream called the answer done
    (``said``: "finish_reason 'stop'", "status 'completed'"), whatever the API."""
    return (f"upstream ended with {said} inside the arguments of tool call {name!r}: answered as max_tokens, "
            "as a call the output limit cut")


def cut_short(raw: Optional[str]) -> bool:
    """Arguments that began as a JSON object and stop inside a string, or where no value could
    end (after a key, a colon, a comma, in a literal), valid so far: an answer cut by an output
    limit, whatever its finish_reason says (older Ollama and llama.cpp builds say "stop" or
    "tool_calls" there). Closing them would invent an end (``"content": "print(1`` made a whole
    file of half of one). Not arguments that only lack their closing brackets after a value
    (``{"command": "ls"``, ``{"limit": 100``: a small model's habit), nor ones that turned
    invalid (``{bad json``)."""
    if not raw:
        return False
    scan = ArgsScan(keep=False)
    scan.feed(raw)
    if not scan.stack or scan.bad or scan.closed:
        return False
    closed = _close_unbalanced(raw)
    return closed[len(raw):].startswith('"') or not _loads(closed)[0]


def whole_members(raw: str) -> Optional[Dict[str, Any]]:
    """For arguments cut short inside their object (the output limit): the members whose values
    ended, as the SDKs make of the same stream; None when no object began.

    A cut string, object or array is left out with its key, and so is a number running to the
    cut ("12" may have been "125"): nothing is completed, so the input never holds a value the
    model did not write whole (``{"path":"a`` is no call for the file "a").
    """
    text = raw.lstrip(" \t\n\r")
    if not text.startswith("{"):
        return None
    out: Dict[str, Any] = {}
    at, end = 1, len(text)
    while True:
        at = _WHITESPACE.match(text, at).end()  # type: ignore[union-attr]
        if at >= end or text[at] != '"':
            return out
        try:
            key, at = json.decoder.scanstring(text, at + 1)  # type: ignore[attr-defined]
        except ValueError:
            return out
        at = _WHITESPACE.match(text, at).end()  # type: ignore[union-attr]
        if at >= end or text[at] != ":":
            return out
        at = _WHITESPACE.match(text, at + 1).end()  # type: ignore[union-attr]
        try:
            value, at = _DECODER.raw_decode(text, at)
        except (ValueError, RecursionError):
            return out  # cut inside it (or invalid from there: the stream ended the object there too)
        after = _WHITESPACE.match(text, at).end()  # type: ignore[union-attr]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if after >= end and not number:
            out[key] = value  # a string, object, array or literal that ended: whole
            return out
        if after >= end or text[after] not in ",}":
            return out  # a number at the cut ("12" of "125"), or one read short of it ("1" of "1.")
        out[key] = value
        if text[after] == "}":
            return out
        at = after + 1


# --------------------------------------------------------------------------
# A whole arguments string, as the JSON answer has it (PROTOCOL.md 2.2 step 3).

_TRAILING_FENCE_RE = re.compile(r"\s*```\s*$")


def _close_unbalanced(text: str) -> str:
    """Close an unterminated string and any open ``{``/``[`` (cut-off generations)."""
    stack: List[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    return text + ('"' if in_string else "") + "".join(reversed(stack))


def _repair(text: str) -> Optional[Dict[str, Any]]:
    """One repair attempt: drop a code fence or trailing prose, close what is open."""
    text = _TRAILING_FENCE_RE.sub("", text)
    if text.startswith("```"):
        text = text.split("\n", 1)[-1]
    candidates = [text]
    if "}" in text:
        candidates.append(text[: text.rindex("}") + 1])
    candidates.append(_close_unbalanced(text))
    for candidate in candidates:
        ok, value = _loads(candidate)
        if ok and isinstance(value, dict):
            return value
    return None


def _loads(text: str) -> Tuple[bool, Any]:
    """(parsed?, value) without raising: deep nesting and bad JSON both read as unparsed. So do
    ``NaN`` and ``Infinity``, which Python's json reads but JSON has not (an answer holding them
    is no JSON for the client; a stream ends the object before them, ``ArgsScan``); a number past
    the float range (1e400) is the largest float (``finite_float``), not ``Infinity``."""
    try:
        return True, loads_finite(text)
    except (ValueError, RecursionError):
        return False, None


def _double_encoded(value: str) -> Optional[Dict[str, Any]]:
    """The object inside a JSON string that holds a JSON object (some models encode twice)."""
    ok, inner = _loads(value)
    return inner if ok and isinstance(inner, dict) else None


def normalize_arguments(raw: Optional[str], cut: bool = False) -> Tuple[Dict[str, Any], Optional[str]]:
    """The tool input object for an arguments string, and a warning if it needed help.

    Arguments that began as a JSON object and then closed with more after it (``}}``, a code
    fence, prose, a second object), or turned invalid, give what a live stream of them gives
    (``toolargs.streamed_object``): the object as it closed, or its members up to the invalid
    one. The stream is the reference, because what it sent cannot be taken back.

    ``cut``: the answer was cut (the output limit, a content filter), so arguments that are not
    whole JSON end mid-value: the members that were whole (``whole_members``), as the SDKs make
    of the same stream, never a repair that closes the string and invents the value.
    """
    if raw is None or not raw.strip():
        return {}, None
    ok, value = _loads(raw)
    if not ok:
        repaired = streamed_object(raw)
        members = whole_members(raw) if repaired is None and cut else None
        if members is not None:
            return members, f"tool arguments cut short; kept the members that were whole: {raw[:200]!r}"
        if repaired is None:  # (and arguments that began as no object: a code fence, prose)
            repaired = _repair(raw.strip())
        if repaired is not None:
            return repaired, f"repaired invalid tool arguments: {raw[:200]!r}"
        return {}, f"unparseable tool arguments replaced by {{}}: {raw[:200]!r}"
    if isinstance(value, dict):
        return value, None
    if value is None:  # JSON null: no arguments, as with an empty string
        return {}, None
    if isinstance(value, str):
        inner = _double_encoded(value)
        if inner is not None:
            return inner, "tool arguments were double-encoded"
    return {"value": value}, "tool arguments were not an object; wrapped as {'value': ...}"
