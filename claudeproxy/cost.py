"""What one call cost, from its token counts and the model's prices. Pure: no I/O, no clock.

Token counts are Anthropic's (the proxy translates every upstream's usage into
them): ``input_tokens`` excludes cached input, ``cache_read_input_tokens`` and
``cache_creation_input_tokens`` are counted apart, and of the cache writes
those to Anthropic's 1-hour cache (``cache_creation_1h_input_tokens``) are
priced apart too. Prices are USD per million tokens (``model_facts.ModelFacts``); the upstream's own
web searches (Anthropic's web search tool: $10 per 1,000) are priced per 1,000. A cost is shown only
when every kind of token the call used, and its searches, have a price: a call to a model without a
price has tokens and no cost, never a partial sum that looks like a whole one. A call whose tokens
are not known (None) has no cost either.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

# (kind of token, price field of ModelFacts). "cache_write_5m" is the cache writes that are not
# 1-hour ones: all of them when the upstream gives no breakdown.
PRICED_KINDS: Tuple[Tuple[str, str], ...] = (
    ("input_tokens", "input_price"),
    ("output_tokens", "output_price"),
    ("cache_read_input_tokens", "cache_read_price"),
    ("cache_write_5m", "cache_write_price"),
    ("cache_creation_1h_input_tokens", "cache_write_1h_price"),
)
ONE_HOUR_WRITE_FACTOR = 2.0  # Anthropic: a 1-hour cache write costs twice the input price (5-minute: 1.25x)


def cache_write_1h_price(facts: Any) -> Optional[float]:
    """USD per million 1-hour cache writes: the model's own price, else twice its input price where it
    prices cache writes at all. Only Anthropic's API reports 1-hour writes, and its list prices are
    that multiple; a price given before the split existed (``cache_write_price``) was the 5-minute
    one. A model without a cache-write price has none for these either: no cost, not a guess."""
    own = getattr(facts, "cache_write_1h_price", None)
    if own is not None:
        return own
    input_price = getattr(facts, "input_price", None)
    if input_price is None or getattr(facts, "cache_write_price", None) is None:
        return None
    return input_price * ONE_HOUR_WRITE_FACTOR


def call_cost(facts: Any, input_tokens: Optional[int] = 0, output_tokens: Optional[int] = 0,
              cache_read_input_tokens: Optional[int] = 0, cache_creation_input_tokens: Optional[int] = 0,
              cache_creation_1h_input_tokens: Optional[int] = 0, web_search_requests: Optional[int] = 0
              ) -> Optional[float]:
    """USD for one call; 0.0 when it used no tokens; None when a kind it used has no price, or when
    its tokens are not known (None: a stream cut before the upstream reported its usage).

    ``facts`` is a ``ModelFacts`` (or None: nothing is priced). ``cache_creation_1h_input_tokens``
    is the part of ``cache_creation_input_tokens`` written to the 1-hour cache; ``web_search_requests``
    the searches the upstream ran itself, priced per 1,000 (``web_search_price``).
    """
    one_hour = min(cache_creation_1h_input_tokens or 0, cache_creation_input_tokens or 0)
    counts = {"input_tokens": input_tokens, "output_tokens": output_tokens,
              "cache_read_input_tokens": cache_read_input_tokens,
              "cache_write_5m": None if cache_creation_input_tokens is None else cache_creation_input_tokens - one_hour,
              "cache_creation_1h_input_tokens": one_hour}
    total = 0.0
    for kind, price_field in PRICED_KINDS:
        tokens = counts[kind]
        if tokens is None:
            return None  # not known: no cost rather than one that looks measured
        if not tokens:
            continue  # a kind the call did not use needs no price (OpenAI has no cache-write charge)
        if facts is None:
            return None
        price = cache_write_1h_price(facts) if price_field == "cache_write_1h_price" else getattr(facts, price_field, None)
        if price is None:
            return None
        try:
            total += tokens * price / 1_000_000
        except OverflowError:  # a count too large for a float
            return None
    if web_search_requests:
        price = getattr(facts, "web_search_price", None) if facts is not None else None
        if price is None:
            return None  # searches the model has no price for: the tokens alone would be a part
        total += web_search_requests * price / 1_000
    # Prices and counts are bounded at start and at the door; an infinite cost would still make
    # the usage page fail and /v1/usage write Infinity, which is not JSON: no cost rather than that.
    return total if math.isfinite(total) else None


MAX_BILLED_COST = 1_000_000.0  # USD for one call: above it a reported cost is no cost anyone billed


def billed_cost(usage: Any, field: Optional[str]) -> Optional[float]:
    """What the upstream says it billed for the call (the number in ``usage[field]``), or None: no
    such field (``field`` None: the upstream reports none), or not a finite, non-negative number of
    USD (a string, a bool, NaN, a negative or absurd amount is no bill).

    With the user's own provider key (OpenRouter's BYOK, ``usage.is_byok``) that number is only the
    router's fee, often 0: the provider billed ``cost_details.upstream_inference_cost`` on top, which
    is added; without it the whole is not known (None: the tokens are priced instead)."""
    if field is None or not isinstance(usage, dict):
        return None
    value = _usd(usage.get(field))
    if value is None or usage.get("is_byok") is not True:
        return value
    details = usage.get("cost_details")
    upstream = _usd(details.get("upstream_inference_cost")) if isinstance(details, dict) else None
    return None if upstream is None else value + upstream


def _usd(value: Any) -> Optional[float]:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= MAX_BILLED_COST:
        return None
    return float(value)


def cache_hit_ratio(input_tokens: int, cache_read_input_tokens: int, cache_creation_input_tokens: int) -> Optional[float]:
    """The share of the prompt read from the upstream's cache; None for a call without input."""
    prompt = input_tokens + cache_read_input_tokens + cache_creation_input_tokens
    return cache_read_input_tokens / prompt if prompt > 0 else None
