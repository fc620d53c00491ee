"""Stop sequences the proxy enforces itself (PROTOCOL.md 2.4). Pure.

An upstream may take fewer stop strings than the client sent (OpenAI's 4), none at
all (OpenAI's reasoning models, the Responses API), or refuse the field. Those the
upstream never saw are matched here in the generated text: the answer ends where
the first of them ends, as it would on Anthropic's API.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple


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


def stop_prefix_len(text: str, stops: Tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is, or begins, a stop sequence.

    A stream holds that much back: the next delta may complete the stop string.
    """
    best = 0
    for seq in stops:
        for k in range(min(len(text), len(seq)), best, -1):
            if text.endswith(seq[:k]):
                best = k
                break
    return best
