"""Token counts an upstream reports, read by one rule. Pure.

An upstream's usage is not trusted: a count is a non-negative ``int`` (a bool is
no count). A negative number, a float, a numeric string or null is not one and
counts 0 (or, where a count may be missing, is ignored). Every place a count
comes in from an upstream (Chat Completions, Responses, a forwarded Anthropic
body or stream, count_tokens) reads it this way, so a bad number can neither be
billed nor drive a ``/metrics`` counter backwards (Prometheus counters never
decrease).
"""

from __future__ import annotations

from typing import Any, Optional


def count_or_none(value: Any) -> Optional[int]:
    """``value`` if it is a count (a non-negative int, not a bool), else None: not reported."""
    if type(value) is int and value >= 0:  # type(), not isinstance: True is an int too
        return value
    return None


def token_count(value: Any) -> int:
    """``value`` if it is a count, else 0."""
    counted = count_or_none(value)
    return 0 if counted is None else counted

