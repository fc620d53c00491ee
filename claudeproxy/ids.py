"""Random ids for messages, tool calls and requests. Reads the OS's random source."""

from __future__ import annotations

import os

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_id(length: int = 24) -> str:
    """``length`` random alphanumerics (message and tool-use id suffixes).

    One ``urandom`` call per id: ``secrets.choice`` per character cost 60 us a
    request. The modulo bias (256 % 62) is irrelevant for ids that only need to
    be unique.
    """
    return "".join(_ALPHABET[b % 62] for b in os.urandom(length))


def new_request_id() -> str:
    """The ``request-id`` header value (Anthropic's form: ``req_`` + 24 alphanumerics)."""
    return "req_" + new_id()
