"""Token counts an upstream reports, read by one rule. Pure.

An upstream's usage is not trusted: a count is a non-negative ``int`` (a bool is
no count) up to ``MAX_COUNT``. A negative number, a float, a numeric string, null
or an absurdly large number is not one and counts 0 (or, where a count may be
missing, is ignored). Every place a count comes in from an upstream (Chat
Completions, Responses, a forwarded Anthropic body or stream, count_tokens)
reads it this way, so a bad number can neither be billed nor drive a
``/metrics`` counter backwards (Prometheus counters never decrease).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

# Anthropic's usage keys, as the call records keep them.
USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
# The record's count of those cache_creation_input_tokens written to Anthropic's 1-hour cache, which
# bills them at another rate than 5-minute writes (cost.py). Anthropic reports the split as
# usage.cache_creation {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}.
ONE_HOUR_WRITES = "cache_creation_1h_input_tokens"
# The record's count of the upstream's own web searches (Anthropic's ``server_tool_use.web_search_requests``,
# which the Responses API's searches are translated into): billed per search, not per token (cost.py).
WEB_SEARCHES = "web_search_requests"
# The largest count taken: every integer up to it is exact as a float (the cost, the usage page, a
# JavaScript reader of /v1/usage); 10**400 could not even be made a float, and the page failed.
MAX_COUNT = 2 ** 53 - 1


def count_or_none(value: Any) -> Optional[int]:
    """``value`` if it is a count (a non-negative int, not a bool), else None: not reported."""
    if type(value) is int and 0 <= value <= MAX_COUNT:  # type(), not isinstance: True is an int too
        return value
    return None


def token_count(value: Any) -> int:
    """``value`` if it is a count, else 0."""
    counted = count_or_none(value)
    return 0 if counted is None else counted



def one_hour_writes(usage: Any) -> Optional[int]:
    """The 1-hour cache writes of an Anthropic usage object (``cache_creation.ephemeral_1h_input_tokens``);
    None when it gives no such count (no breakdown: all its cache writes are taken for 5-minute ones)."""
    breakdown = usage.get("cache_creation") if isinstance(usage, dict) else None
    return count_or_none(breakdown.get("ephemeral_1h_input_tokens")) if isinstance(breakdown, dict) else None


def web_searches(usage: Any) -> int:
    """The searches a usage object says the upstream ran (``server_tool_use.web_search_requests``); 0 if none."""
    tools = usage.get("server_tool_use") if isinstance(usage, dict) else None
    return token_count(tools.get("web_search_requests")) if isinstance(tools, dict) else 0


def usage_counts(usage: Any) -> Optional[Dict[str, int]]:
    """The four Anthropic counts of a usage object (one that is no count is 0); None when it holds no
    count at all: nothing is known, which is not the same as a call that used no tokens."""
    if not isinstance(usage, dict):
        return None
    found = {k: count_or_none(usage.get(k)) for k in USAGE_KEYS}
    if all(v is None for v in found.values()):
        return None
    return {k: 0 if v is None else v for k, v in found.items()}


def openai_usage(prompt: int, completion: int, cache_read: int, cache_write: int,
                 reasoning: Optional[int]) -> Dict[str, Any]:
    """Anthropic's usage from what both OpenAI APIs report: their prompt count includes the cached
    part, Anthropic's ``input_tokens`` does not; reasoning (inside the output count on both) as
    ``output_tokens_details.thinking_tokens`` when reported (PROTOCOL.md 2.5)."""
    out: Dict[str, Any] = {
        "input_tokens": max(0, prompt - cache_read - cache_write),
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "output_tokens": completion,
    }
    if reasoning is not None:
        out["output_tokens_details"] = {"thinking_tokens": reasoning}
    return out
