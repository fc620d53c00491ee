"""Random ids for messages, tool calls and requests. Reads the OS's random source."""

from __future__ import annotations

import os

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
