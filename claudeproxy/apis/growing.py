"""Text that grows one delta at a time, kept as its pieces. Pure.

A streamed answer's text, reasoning and tool arguments arrive in thousands of small deltas.
``item.text += delta`` (or ``d[k] = d.get(k, "") + delta``) copies everything so far at every
delta: CPython grows a string in place only when it is a local variable. A 1 MB answer in
10-character deltas took 15 s of CPU that way. ``Growing`` keeps the pieces and joins them
only when the whole is read (a ``.done`` event, the citations, a call placed whole), once.
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Optional

from ..skim import MARK_EVERY, KnownText, text_digest


class Growing:
    """A string built by ``add``: linear in what is added, whatever the number of pieces."""

    __slots__ = ("_pieces", "_size")

    def __init__(self, text: str = "") -> None:
        self._pieces: List[str] = [text] if text else []
        self._size = len(text)

    def add(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)
            self._size += len(piece)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:  # a debugger's view of a call or an item: not a megabyte of text
        return f"<Growing: {self._size} characters in {len(self._pieces)} pieces>"

    def text(self) -> str:
        """The whole text; joined once, free to read again until the next ``add``."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def since(self, start: int) -> str:
        """The text from character ``start`` on, joining only the last pieces, which it spans."""
        need = self._size - max(start, 0)
        if need <= 0:
            return ""
        got, first = 0, len(self._pieces)
        while got < need:
            first -= 1
            got += len(self._pieces[first])
        return "".join(self._pieces[first:])[got - need:]


class LiveText:
    """A ``Growing`` text that may let go of what it holds once that was sent on (``let_go``):
    its SHA-256 and length, and the digests of its start every ``skim.MARK_EVERY`` characters
    (``skim.KnownText``), then stand for it. A live call's arguments: 20 streamed 5 MB calls
    held 100 MB only to compare them with the closing events that repeat them (RELIABILITY.md M2)."""

    __slots__ = ("_held", "_size", "_gone", "_sha", "_marks")

    def __init__(self, text: str = "") -> None:
        self._held = Growing(text)
        self._size = len(text)
        self._gone = 0  # characters let go
        self._sha: Optional[Any] = None  # of the characters let go
        self._marks: List[bytes] = []  # of the first MARK_EVERY, 2 * MARK_EVERY... characters let go

    def add(self, piece: str) -> None:
        self._held.add(piece)
        self._size += len(piece)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<LiveText: {self._size} characters, {self._gone} let go>"

    @property
    def whole(self) -> bool:
        """Is all of the text held (nothing let go)?"""
        return self._sha is None

    def text(self) -> str:
        """The whole text; only while ``whole``."""
        if self._sha is not None:
            raise ValueError("the text was let go")
        return self._held.text()

    def since(self, start: int) -> str:
        """The text from character ``start`` on (not before what was let go)."""
        if start < self._gone:
            raise ValueError("the text was let go")
        return self._held.since(start - self._gone)

    def let_go(self) -> None:
        """Keep only the digests of what is held so far."""
        if self._sha is None:
            self._sha = hashlib.sha256()
        text, at = self._held.text(), self._gone
        while text:
            piece, text = text[:MARK_EVERY - at % MARK_EVERY], text[MARK_EVERY - at % MARK_EVERY:]
            self._sha.update(piece.encode("utf-8", "surrogatepass"))
            at += len(piece)
            if at % MARK_EVERY == 0:
                self._marks.append(self._sha.digest())
        self._held, self._gone = Growing(), at

    def digest(self) -> bytes:
        """The SHA-256 of the whole text (``skim.text_digest``'s)."""
        if self._sha is None:
            return text_digest(self._held.text())
        sha = self._sha.copy()
        sha.update(self._held.text().encode("utf-8", "surrogatepass"))
        return sha.digest()

    def known(self) -> KnownText:
        """What a ``skim.LineSkimmer`` checks a long string against (once let go)."""
        marks = tuple(m for i, m in enumerate(self._marks) if (i + 1) * MARK_EVERY < self._size)
        return KnownText(self._size, self.digest(), marks)

