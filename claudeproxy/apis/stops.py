"""Stop sequences the proxy enforces itself (PROTOCOL.md 2.4). Pure.

An upstream may take fewer stop strings than the client sent (OpenAI's 4), none at
all (OpenAI's reasoning models, the Responses API), or refuse the field. Those the
upstream never saw are matched here in the generated text: the answer ends where
the first of them ends, as it would on Anthropic's API.
"""

from __future__ import annotations

import collections
import re
from typing import Dict, Iterable, List, Optional, Tuple


def unsent_stops(requested: Iterable[str], sent: Iterable[str]) -> Tuple[str, ...]:
    """The client's stop strings the upstream will not see, in the client's order."""
    given = set(sent)
    return tuple(s for s in requested if s and s not in given)


def first_stop(text: str, stops: Tuple[str, ...]) -> Optional[Tuple[int, str]]:
    """(start, stop string) of the match that ends first in ``text``, or None.

    A model stops as soon as a stop string is complete, so the earliest end wins;
    at the same end the longest string (so "THE END" rather than "END"), as
    ``match_stop_sequence`` prefers.
    """
    best: Optional[Tuple[int, int, str]] = None  # (end, start, string)
    for seq in stops:
        start = text.find(seq) if seq else -1
        if start < 0:
            continue
        found = (start + len(seq), start, seq)
        if best is None or found[:2] < best[:2]:
            best = found
    return None if best is None else (best[1], best[2])


# Above this many stop strings a whole answer is searched by the automaton, in one pass, not once
# for each string (text.find each, C-fast for a few, 55 s of CPU for 10,000).
FEW_STOPS = 16


class StopFinder:
    """``first_stop`` for one answer's stop strings, in any number of texts (a Response's parts):
    built once, since building the automaton costs as much as reading its strings."""

    def __init__(self, stops: Tuple[str, ...]) -> None:
        self.stops = stops
        self._scan = StopScan(stops, ending=stops) if len(stops) > FEW_STOPS else None

    def first(self, text: str) -> Optional[Tuple[int, str]]:
        return first_stop(text, self.stops) if self._scan is None else self._scan.scan("", text)[0]


class StopScan:
    """The stop strings of one answer as one automaton (Aho-Corasick), for a stream's text as it comes.

    Each piece of text is read once, whatever the number of stop strings: the work per delta was
    each string times each of its prefix lengths, and text held back for a long stop string was
    searched again with every delta (10,000 strings: 55 s of CPU for one answer).
    ``scan`` tells the first of the ``ending`` strings that a piece completes, and how much of
    the text's end begins a stop string (held back: the next delta may complete it). The
    automaton's state after a scan stands for exactly that held end, so the next scan goes on
    from it instead of reading it again.
    """

    def __init__(self, stops: Iterable[str], ending: Iterable[str] = ()) -> None:
        self._next: Dict[Tuple[int, str], int] = {}  # (node, character) -> node: the trie of the strings
        self._children: List[List[Tuple[str, int]]] = [[]]
        self._fail = [0]  # the node of the longest proper suffix that is also in the trie
        self._depth = [0]
        self._ends = [""]  # the longest ending string that ends at this node ("" for none)
        wanted = set(ending)
        strings = tuple(dict.fromkeys(s for s in stops if s))
        # Where nothing is held (the root), the next character that can begin a stop string is
        # found at C speed: most text of a big delta is never walked character by character.
        firsts = "".join(sorted({re.escape(seq[0]) for seq in strings}))
        self._begins = re.compile(f"[{firsts}]" if firsts else "(?!)")  # (none: nothing ever begins one)
        for seq in strings:
            node = 0
            for ch in seq:
                node = self._child(node, ch)
            if seq in wanted:
                self._ends[node] = seq
        self._link()
        self._held, self._state = "", 0

    def _child(self, node: int, ch: str) -> int:
        child = self._next.get((node, ch))
        if child is None:
            child = self._next[(node, ch)] = len(self._depth)
            self._children.append([])
            self._children[node].append((ch, child))
            self._fail.append(0)
            self._depth.append(self._depth[node] + 1)
            self._ends.append("")
        return child

    def _link(self) -> None:
        """Failure links, breadth first (a node's are set from shallower ones), and each node's
        longest ending string among its suffixes."""
        queue = collections.deque(child for _, child in self._children[0])
        while queue:
            node = queue.popleft()
            for ch, child in self._children[node]:
                self._fail[child] = self._step(self._fail[node], ch) if node else 0
                self._ends[child] = self._ends[child] or self._ends[self._fail[child]]
                queue.append(child)
        self._children = []  # only the build needs them

    def _step(self, state: int, ch: str) -> int:
        nxt = self._next
        while True:
            child = nxt.get((state, ch))
            if child is not None:
                return child
            if not state:
                return 0
            state = self._fail[state]

    def scan(self, held: str, text: str) -> Tuple[Optional[Tuple[int, str]], int]:
        """For ``held + text`` (``held``: what the last scan kept, or ""): (start, string) of the
        first ending string it completes -- the earliest end, at one end the longest, as
        ``first_stop`` -- or None; and the length of its end that is, or begins, a stop string."""
        state = self._state if held == self._held else self._walk(held)
        step, ends, begins = self._step, self._ends, self._begins.search
        i, size = 0, len(text)
        while i < size:
            if not state:
                found = begins(text, i)
                if found is None:
                    break
                i = found.start()
            state = step(state, text[i])
            if ends[state]:
                seq = ends[state]
                self._held, self._state = "", 0
                return (len(held) + i + 1 - len(seq), seq), 0
            i += 1
        keep = self._depth[state]
        whole = held + text
        self._held, self._state = whole[len(whole) - keep:], state
        return None, keep

    def _walk(self, text: str) -> int:
        state = 0
        for ch in text:
            state = self._step(state, ch)
        return state
