"""The conversation messages one server's clients send, parsed once each. No I/O.

Claude Code sends the whole conversation with every turn, and all of it but the last message
or two is what its previous turn sent, byte for byte (the message that held the cache_control
marker last turn changes too: the marker moves on). Parsed afresh, the history is parsed again
on every turn: the bench's 15 KB of messages cost 55 us of a request's ~150 us of parsing, and a
long session's half megabyte some milliseconds before its first byte goes upstream.

``MessageMemo`` keeps the messages it parsed last, keyed on their exact value, as ``ToolMemo``
keeps tool sets: equal bytes of ``marshal`` format 0 mean identical JSON (the same key order
and number types), so a message is shared only with one its client sent identically. What is
shared never changes: messages and blocks are frozen dataclasses, and the translators read a
tool call's ``input`` without changing it (tests/test_message_memo.py). A message that does not
parse raises every time and is never kept. Its error names its place (``messages[3]``), which a
kept message never needs: it parsed.
"""

from __future__ import annotations

import marshal
import threading
from collections import OrderedDict
from typing import Any, Optional

from .anthropic_types import Message, parse_message

# The keys of every message kept, together: a long Claude Code session's whole history (its
# ~200k-token context is under 1 MB of JSON), with the parsed messages about three times that.
KEPT_BYTES = 2 << 20


def _key(raw: Any) -> Optional[bytes]:
    """The message's exact value as bytes, or None when it is no object (its parse says why)."""
    if type(raw) is not dict:
        return None
    try:
        return marshal.dumps(raw, 0)
    except ValueError:  # not a JSON value (the door lets none through): not kept
        return None


class MessageMemo:
    """The messages parsed last, least recently used out first; thread-safe."""

    def __init__(self, kept_bytes: int = KEPT_BYTES) -> None:
        self._kept_bytes = kept_bytes
        self._kept: "OrderedDict[bytes, Message]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def parse(self, raw: Any, path: str) -> Message:
        """``parse_message(raw, path)``: the same object for every message sent identically, while kept."""
        key = _key(raw)
        if key is None:
            return parse_message(raw, path)
        with self._lock:
            message = self._kept.get(key)
            if message is not None:
                self._kept.move_to_end(key)
                return message
        message = parse_message(raw, path)
        if len(key) <= self._kept_bytes // 8:  # a message with a large image or file is parsed each time
            self._keep(key, message)
        return message

    def _keep(self, key: bytes, message: Message) -> None:
        with self._lock:
            if key in self._kept:
                return  # another thread parsed the same message meanwhile
            self._kept[key] = message
            self._bytes += len(key)
            while self._bytes > self._kept_bytes:
                old, _ = self._kept.popitem(last=False)
                self._bytes -= len(old)
