"""The messages one server's clients sent lately, parsed once per distinct message. No I/O.

A Claude Code turn sends the whole conversation again: the messages of the last request and
one or two new ones. A message's parse depends on nothing but its own JSON (the checks that
look across messages run on the parsed tuple, every time), so a message sent again with the
same value is the same frozen ``Message``; what derives from it once (a tool call's arguments
as JSON, ``ToolUseBlock.input_json``) comes with it. ``MessageMemo`` keeps recent messages
keyed on their exact value (``tool_memo.exact_key``): two requests share a message only when
they sent identical JSON for it. The key costs about a fifth of the parse (a Claude Code turn
of 25 messages: 18 us against 80).

Nothing shared is ever changed: the parsed messages are frozen dataclasses, the translators
build new objects from what they are given, and a ``ToolUseBlock``'s ``input`` (a dict) is
only read (tests/test_message_memo.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, List, Optional, Tuple

from .anthropic_types import Message, parse_message
from .tool_memo import exact_key

# The keys of the messages kept, together. Holding them, their parsed messages and the strings
# these share with the request that sent them first costs about three times this. One long
# conversation's history fits (Claude Code compacts at about 150k tokens, ~600 KiB); a longer
# one is read through in order, so the least recently used message is always the one needed
# next and nothing hits: it costs the keys (a fifth of the parse), no more.
KEPT_BYTES = 2 << 20
# A message larger than this (an image, a PDF, a pasted file) is parsed every time, never kept:
# its key alone would push out dozens of others.
LARGEST_KEPT = 256 << 10


class MessageMemo:
    """Messages kept least recently used out first, by the total size of their keys; thread-safe."""

    def __init__(self, kept_bytes: int = KEPT_BYTES, largest: int = LARGEST_KEPT) -> None:
        self._kept_bytes, self._largest = kept_bytes, largest
        self._by_key: "OrderedDict[bytes, Message]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def parse(self, items: List[Any]) -> Tuple[Message, ...]:
        """``anthropic_types.parse_messages(items)``: each message that a request sent with the same
        value before (and is still kept) is the ``Message`` parsed then."""
        keys = [self._key(item) for item in items]
        with self._lock:
            found = [self._hit(key) for key in keys]
        parsed: List[Message] = []
        fresh: List[Tuple[bytes, Message]] = []
        for i, (item, key, message) in enumerate(zip(items, keys, found)):
            if message is None:
                message = parse_message(item, i)  # a bad message raises: nothing of this request is kept
                if key is not None:
                    fresh.append((key, message))
            parsed.append(message)
        if fresh:
            self._keep(fresh)
        return tuple(parsed)

    def _key(self, item: Any) -> Optional[bytes]:
        key = exact_key(item) if isinstance(item, dict) else None
        return key if key is not None and len(key) <= self._largest else None

    def _hit(self, key: Optional[bytes]) -> Optional[Message]:
        message = self._by_key.get(key) if key is not None else None
        if message is not None:
            self._by_key.move_to_end(key)  # type: ignore[arg-type]
        return message

    def _keep(self, fresh: List[Tuple[bytes, Message]]) -> None:
        with self._lock:
            for key, message in fresh:
                if key not in self._by_key:  # else another thread parsed the same message meanwhile
                    self._by_key[key] = message
                    self._bytes += len(key)
            while self._bytes > self._kept_bytes:
                old_key, _ = self._by_key.popitem(last=False)
                self._bytes -= len(old_key)
