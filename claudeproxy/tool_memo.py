"""The tool definitions one server's clients send, parsed once per distinct set. No I/O.

Claude Code sends the same definitions with every turn: a dozen to a few dozen tools,
5-60 KB of JSON Schema. Parsed, counted and translated afresh, they cost a Claude Code
turn about a tenth of its CPU, and every request in flight held its own copy (~40 KiB
while it waits for the upstream). ``ToolMemo`` keeps the sets it saw last, keyed on
their exact JSON, so two requests share a set only when they sent equal definitions.
A request that sends one of them gets that set's parsed tools, and what was derived
from them once (the token count, each upstream API's translation of them).

Nothing shared is ever changed: the parsed tools are frozen dataclasses, and the
translators build new objects from what they are given (tests/test_tool_memo.py).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple, TypeVar

from .anthropic_types import Tool, parse_tools

T = TypeVar("T")
SETS = 8  # distinct sets kept: a few clients, each with a few agents
KEPT_CHARS = 1 << 20  # the JSON of every set kept, together (a few MiB as objects)
_MISSING = object()


class _Entry:
    __slots__ = ("definitions", "tools", "derived")

    def __init__(self, definitions: List[Any], tools: Tuple[Tool, ...]) -> None:
        self.definitions = definitions  # the JSON list as the first client sent it
        self.tools = tools
        self.derived: Dict[Hashable, Any] = {}


class ToolMemo:
    """The last ``SETS`` tool sets seen, least recently used out first; thread-safe."""

    def __init__(self, sets: int = SETS, kept_chars: int = KEPT_CHARS) -> None:
        self._sets, self._kept_chars = sets, kept_chars
        self._by_json: "OrderedDict[str, _Entry]" = OrderedDict()
        # The same entries by their parsed tuple. An entry holds its tuple, so while it
        # is here no other object can have the tuple's id.
        self._by_tools: Dict[int, _Entry] = {}
        self._chars = 0
        self._lock = threading.Lock()

    def parse(self, definitions: Any) -> Tuple[Tool, ...]:
        """``parse_tools(definitions)``: the same tuple for every request that sent equal JSON."""
        if not isinstance(definitions, list) or not definitions:
            return parse_tools(definitions)
        key = json.dumps(definitions, ensure_ascii=False)
        with self._lock:
            entry = self._by_json.get(key)
            if entry is not None:
                self._by_json.move_to_end(key)
                return entry.tools
        tools = parse_tools(definitions)  # a set that does not parse raises, and is not kept
        if len(key) <= self._kept_chars // 4:
            self._keep(key, _Entry(definitions, tools))
        return tools

    def definitions(self, tools: Tuple[Tool, ...]) -> Optional[List[Any]]:
        """The JSON list ``tools`` was parsed from, if it is a kept set's: a request can drop its
        own equal copy and hold this one."""
        entry = self._entry(tools)
        return entry.definitions if entry is not None else None

    def derived(self, tools: Tuple[Tool, ...], name: Hashable, make: Callable[[], T]) -> T:
        """``make()``, a pure function of ``tools`` (``name`` tells it apart from the others):
        computed once for a kept set, afresh for any other."""
        entry = self._entry(tools)
        if entry is None:
            return make()
        value = entry.derived.get(name, _MISSING)
        if value is _MISSING:
            # Two threads may both compute it; they compute equal values, and one is kept.
            value = entry.derived.setdefault(name, make())
        return value  # type: ignore[no-any-return]

    def _entry(self, tools: Tuple[Tool, ...]) -> Optional[_Entry]:
        with self._lock:
            entry = self._by_tools.get(id(tools))
        return entry if entry is not None and entry.tools is tools else None

    def _keep(self, key: str, entry: _Entry) -> None:
        with self._lock:
            if key in self._by_json:
                return  # another thread parsed the same set meanwhile
            self._by_json[key] = entry
            self._by_tools[id(entry.tools)] = entry
            self._chars += len(key)
            while len(self._by_json) > self._sets or self._chars > self._kept_chars:
                old_key, old = self._by_json.popitem(last=False)
                del self._by_tools[id(old.tools)]
                self._chars -= len(old_key)
