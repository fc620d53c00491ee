"""Random ids for messages, tool calls and requests. Reads the OS's random source."""

from __future__ import annotations

import os
import re
from typing import Callable, Collection

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# Each byte value to the character of its value modulo 62, for bytes.translate.
_BYTE_TO_CHAR = bytes(ord(_ALPHABET[b % 62]) for b in range(256))


def new_id(length: int = 24) -> str:
    """``length`` random alphanumerics (message and tool-use id suffixes).

    One ``urandom`` call per id, mapped in one ``translate``: ``secrets.choice`` per character
    cost 60 us a request, a join over the bytes 3 us an id. The modulo bias (256 % 62) is
    irrelevant for ids that only need to be unique.
    """
    return os.urandom(length).translate(_BYTE_TO_CHAR).decode("ascii")


def new_request_id() -> str:
    """The ``request-id`` header value (Anthropic's form: ``req_`` + 24 alphanumerics)."""
    return "req_" + new_id()


# Claude Code's id for the n-th call of a batch tool's call X is X_n (its batch_tools: it finds the
# batch again by taking "_<digits>" off): a call named so beside a call X was taken for a piece of
# X, and its result left out of the next request ("[Tool result missing due to internal error]").
_PIECE_OF = re.compile(r"_[0-9]+$")


def first_free(base: str, taken: Callable[[str], bool], among: Collection[str] = ()) -> str:
    """``base``, else ``base-2``, ``base-3``...: the first that ``taken`` does not claim, and that is
    no piece of another in Claude Code's eyes: not ``X_<digits>`` for an ``X`` that ``taken`` claims,
    nor an ``X`` that an id in ``among`` (the ids there are so far) is ``X_<digits>`` of. Tool ids are
    made unique so (within an answer and its conversation): two calls with one id would pair two
    results with one call."""
    def clashes(candidate: str) -> bool:
        piece = _PIECE_OF.search(candidate)
        if taken(candidate) or (piece is not None and taken(candidate[:piece.start()])):
            return True
        prefix = candidate + "_"
        return any(other.startswith(prefix) and other[len(prefix):].isdigit() for other in among)

    candidate, n = base, 1
    while clashes(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate
