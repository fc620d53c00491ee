"""Bodies a gateway compressed although the proxy asked for ``identity``: gzip and deflate. Pure.

A ``ContentDecoder`` takes the body's bytes as they come and gives what they decode to, never
more than asked at a time (a compressed megabyte may hold a gigabyte). It reads gzip as a series
of members, as RFC 1952 2.2 defines it (a gateway that compresses each event on its own sends one
member per event: one zlib decoder stopped after the first and the rest of the answer was lost),
and deflate with or without its zlib wrapper (IIS and some Java servers send it raw, which curl
and browsers take). A body that does not decode is refused with no retry: the same upstream
compresses the same way again, and each try is a paid generation.
"""

from __future__ import annotations

import zlib
from typing import Any, List, Optional

from .errors import NO_RETRY, UpstreamUnavailable
from .redact import quoted

_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW = -zlib.MAX_WBITS
_GZIP_MAGIC = b"\x1f\x8b"  # how a gzip member begins


def decoder_for(coding: str) -> Optional["ContentDecoder"]:
    """A decoder for a ``Content-Encoding`` (lower case, trimmed); None for none at all or ``identity``;
    ``UpstreamUnavailable`` (no retry) for a coding the proxy cannot read."""
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return ContentDecoder(gzip=True)
    if coding == "deflate":
        return ContentDecoder(gzip=False)
    raise UpstreamUnavailable(f"upstream answered with Content-Encoding {quoted(coding)}, which the proxy cannot "
                              "read (it asks for identity; gzip and deflate are decoded)", headers=(NO_RETRY,))


def _undecodable() -> UpstreamUnavailable:
    return UpstreamUnavailable("upstream sent a compressed body that does not decode", headers=(NO_RETRY,))


def _zlib_wrapped(head: bytes) -> bool:
    """The first two bytes are a zlib header (RFC 1950: method 8, a check that divides by 31)."""
    return head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


class ContentDecoder:
    """The decoded body, in pieces of at most ``most`` bytes (``decompress``), then ``finish``."""

    def __init__(self, gzip: bool) -> None:
        self.gzip = gzip
        # deflate: made once its first two bytes tell the zlib wrapper from raw deflate
        self._z: Any = zlib.decompressobj(_GZIP) if gzip else None
        self._head = b""  # deflate: a first byte alone, until the second comes
        self._carry = b""  # input not decoded yet because a piece reached ``most``
        self._next = b""  # a gzip member's end was followed by one byte that may begin another
        self._fed = False

    @property
    def has_more(self) -> bool:
        """Input is left over from the last piece (which reached its ``most``): ask again with b""."""
        return bool(self._carry)

    def decompress(self, data: bytes, most: int) -> bytes:
        """What the input left from before and ``data`` decode to, at most ``most`` (> 0) bytes."""
        data = self._carry + self._next + data if self._carry or self._next else data
        self._carry = self._next = b""
        self._fed = self._fed or bool(data)
        if self._z is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            self._head = b""
            self._z = zlib.decompressobj(_ZLIB if _zlib_wrapped(data) else _RAW)
        out: List[bytes] = []
        size = 0
        while data:
            if size >= most:
                self._carry = data
                break
            if self._z.eof:
                if not self.gzip or not _GZIP_MAGIC.startswith(data[:2]):
                    break  # after the stream: a framework's newline, padding; ignored, as GNU gzip does
                if len(data) < 2:
                    self._next = data  # one byte of what may begin the next member: wait for the second
                    break
                self._z = zlib.decompressobj(_GZIP)  # the next member (RFC 1952 2.2)
            try:
                piece = self._z.decompress(data, most - size)
            except zlib.error:
                raise _undecodable() from None
            out.append(piece)
            size += len(piece)
            data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the input: what is still held, or an error for a body cut inside its coding.
        (A lone byte after the last member began nothing: ignored, as any other trailing byte.)"""
        if not self._fed:
            return b""  # an empty body, compressed or not
        if self._z is None:
            raise _undecodable()  # one byte
        try:
            out = self._z.flush()
        except zlib.error:
            raise _undecodable() from None
        if not self._z.eof:
            raise UpstreamUnavailable("upstream's compressed body was cut short")
        return out
