"""Random ids for messages, tool calls and requests. Reads the OS's random source."""

from __future__ import annotations

import secrets

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_id(length: int = 24) -> str:
    """``length`` random alphanumerics (message and tool-use id suffixes)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_request_id() -> str:
    """The ``request-id`` header value (Anthropic's form: ``req_`` + 24 alphanumerics)."""
    return "req_" + new_id()
