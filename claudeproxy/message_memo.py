"""The conversation messages one server's clients send, parsed once each. No I/O.

Claude Code sends the whole conversation with every turn, and all of it but the last message
or two is what its previous turn sent, byte for byte (the message that held the cache_control
marker last turn changes too: the marker moves on). ``MessageMemo`` keeps the messages it parsed
last, keyed on their exact value, as ``ToolMemo`` keeps tool sets: equal bytes of ``marshal``
format 0 mean identical JSON (the same key order and number types), so a message is shared only
with one its client sent identically.

The parse itself saves little: making the key costs about what parsing does (marshal copies the
message's bytes). What a shared message saves is what is kept on it: its token count
(``tokens``), its Chat translation (``apis.chat.request``), its tool calls' arguments as JSON, and
the garbage collector's walks over a fresh copy of the history every turn. On the bench's request
that is a tenth of a request's CPU; on a 600 KB session 5-9 % (tests/test_message_memo.py, the
notes of the round that added it).

What is shared never changes: messages and blocks are frozen dataclasses, what is kept on one is
a pure function of it, and the translators read a tool call's ``input`` without changing it. A
message that does not parse raises every time and is never kept; its error names its place
(``messages[3]``), which a kept message never needs: it parsed.

Not kept, because the memo would cost more than it saves: a message whose content is a string
or whose key is short (its parse is a few objects), and one carrying an image or a PDF (its base64 data would be copied
into the key each turn: 17 ms for 10 MB, against 0.2 ms to parse it). The memory is bounded by
an estimate of what an entry holds (its key, its objects at about three times the key, and a
fixed part a small message is mostly made of), not by the keys alone: 3,000 distinct one-line
messages a request once held 47 MiB under a 2 MiB bound of keys.
"""

from __future__ import annotations

import marshal
import threading
from collections import OrderedDict
from typing import Any, Optional

from .anthropic_types import Message, parse_message

# What the kept messages may hold together, estimated (``_cost``): the whole history of two or
# three long Claude Code sessions (a ~200k-token context is under 1 MB of JSON). Past that,
# sessions taking turns evict each other's (least recently used), and the memo costs its keys.
KEPT_BYTES = 8 << 20
SMALLEST = 256  # bytes of key: a smaller message parses in about the time its lookup takes
ENTRY_BYTES = 1024  # an entry's fixed part: its table slot, the Message, its tuple, a block or two
OBJECTS_PER_KEY_BYTE = 4  # the key, and the parsed objects at about three times its size
_MEDIA = ("image", "document")


def _key(raw: Any) -> Optional[bytes]:
    """The message's exact value as bytes, or None for a message not worth keeping."""
    if type(raw) is not dict or type(raw.get("content")) is not list or _has_media(raw["content"]):
        return None
    try:
        return marshal.dumps(raw, 0)
    except ValueError:  # not a JSON value (the door lets none through): not kept
        return None


def _has_media(blocks: Any) -> bool:
    """An image or document among the blocks, or in a tool result's content."""
    for block in blocks:
        if type(block) is dict:
            kind = block.get("type")
            if kind in _MEDIA or kind == "tool_result" and type(block.get("content")) is list \
                    and _has_media(block["content"]):
                return True
    return False


def _cost(key: bytes) -> int:
    return ENTRY_BYTES + OBJECTS_PER_KEY_BYTE * len(key)


class MessageMemo:
    """The messages parsed last, least recently used out first; thread-safe."""

    def __init__(self, kept_bytes: int = KEPT_BYTES) -> None:
        self._kept_bytes = kept_bytes
        self._kept: "OrderedDict[bytes, Message]" = OrderedDict()
        self._bytes = 0  # the estimate of what is kept (``_cost`` of every key)
        self._lock = threading.Lock()

    def parse(self, raw: Any, path: str) -> Message:
        """``parse_message(raw, path)``: the same object for every message sent identically, while kept."""
        key = _key(raw)
        if key is None or not SMALLEST <= len(key) <= self._kept_bytes // (8 * OBJECTS_PER_KEY_BYTE):
            return parse_message(raw, path)  # (a large one is not even hashed)
        with self._lock:
            message = self._kept.get(key)
            if message is not None:
                self._kept.move_to_end(key)
                return message
        message = parse_message(raw, path)
        self._keep(key, message)
        return message

    def _keep(self, key: bytes, message: Message) -> None:
        with self._lock:
            if key in self._kept:
                return  # another thread parsed the same message meanwhile
            self._kept[key] = message
            self._bytes += _cost(key)
            while self._bytes > self._kept_bytes:
                old, _ = self._kept.popitem(last=False)
                self._bytes -= _cost(old)
