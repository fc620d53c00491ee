"""Text that grows one delta at a time, kept as its pieces. Pure.

A streamed answer's text, reasoning and tool arguments arrive in thousands of small deltas.
``item.text += delta`` (or ``d[k] = d.get(k, "") + delta``) copies everything so far at every
delta: CPython grows a string in place only when it is a local variable. A 1 MB answer in
10-character deltas took 15 s of CPU that way. ``Growing`` keeps the pieces and joins them
only when the whole is read (a ``.done`` event, the citations, a call placed whole), once.
"""

from __future__ import annotations

from typing import List


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
