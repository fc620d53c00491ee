"""What one call spent across its attempts: the token counts and cost its record carries. Pure.

An attempt's counts come from its answer (``usage_fields``, ``stream_usage_fields``); an attempt
that failed and was followed by another keeps what it spent (``carry_spend``), filed under its
own target (``spent_elsewhere``); ``call_spend`` adds it all up for the record. A count nobody
reported is None, never 0: a call whose counts are not all known has no cost.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from .cost import call_cost
from .counts import ONE_HOUR_WRITES, USAGE_KEYS, WEB_SEARCHES, count_or_none, one_hour_writes, usage_counts, web_searches
from .metrics import Spend
from .model_facts import ModelFacts


def call_spend(fields: Dict[str, Any], facts: Optional[ModelFacts]) -> Optional[float]:
    """The call's whole spend, put into its record ``fields``: the token counts of every attempt the
    upstreams billed, and its cost (returned; None where not all of it is known). With earlier
    attempts, ``own_cost_usd`` (what the target that answered spent) and ``spent_elsewhere`` (the
    other targets' spend, filed under them) too. ``facts``: the prices of the target that answered."""
    usage, cost = attempt_spend(fields, facts)
    earlier = fields.get("earlier", ())  # attempts before, which the upstream billed too
    if earlier:
        # Their counts stay whatever this attempt's are: not known, the known part is a part.
        unknown_now = any(v is None for v in usage.values())
        usage = {k: (v or 0) + sum(spent[k] for spent, _, _ in earlier) for k, v in usage.items()}
        answered = (fields.get("provider"), fields.get("upstream_model"))
        costs = [cost] + [spent_cost for _, spent_cost, _ in earlier]
        own = [cost] + [spent_cost for _, spent_cost, target in earlier if target == answered]
        fields["own_cost_usd"] = None if unknown_now or None in own else sum(own)  # type: ignore[arg-type]
        cost = None if unknown_now or None in costs else sum(costs)  # type: ignore[arg-type]
        fields["spent_elsewhere"] = spent_elsewhere(earlier, answered)
    lost = fields.get("lost")
    if lost:
        fields["own_cost_usd"] = None  # which attempt spent what nobody said is not known
    if lost and not any(usage.values()):
        # A refusal's 0s after an attempt that spent what nobody said: not known (the searches
        # stay a count: those said, 0 here; a None there made the usage log's line unreadable).
        usage = {**dict.fromkeys(usage), WEB_SEARCHES: usage.get(WEB_SEARCHES) or 0}
    elif lost:
        cost = None  # what was reported is a part: an attempt the upstream had spent what nobody said
    fields.update(usage)
    return cost


def attempt_spend(fields: Dict[str, Any], facts: Optional[ModelFacts]) -> Tuple[Dict[str, Optional[int]], Optional[float]]:
    """The counts (USAGE_KEYS and the 1-hour writes) and cost of the record's current attempt.

    Set from the answer by usage_fields (None: not known); 0 for a call without one (a 4xx, a
    local answer), unless the upstream had the prompt and the call ended before its answer.
    What the upstream billed, where it says (OpenRouter's usage.cost), is the cost; else the
    tokens at the model's prices. Not when the counts are not known: the bill came with them.
    """
    unknown = None if fields.get("awaiting") or fields.get("lost") else 0
    usage = {k: fields.get(k, unknown) for k in USAGE_KEYS}
    # Of the cache writes, the 1-hour ones (priced apart); not known when the writes are not.
    usage[ONE_HOUR_WRITES] = None if usage["cache_creation_input_tokens"] is None else fields.get(ONE_HOUR_WRITES) or 0
    usage[WEB_SEARCHES] = fields.get(WEB_SEARCHES) or 0
    billed = fields.get("billed_cost") if usage["input_tokens"] is not None else None
    return usage, billed if billed is not None else call_cost(facts, **usage)


def carry_spend(record: Dict[str, Any], facts: Optional[ModelFacts]) -> None:
    """Keep what a failed attempt's answer said it spent before the next attempt starts afresh: a
    200 that is an overload (DeepSeek's insufficient_system_resource) or a failed Response reports
    its usage, and the upstream bills it, whatever the retry costs after it. Priced now, at this
    attempt's target (a fallback's prices differ). A refusal carries nothing (it spent nothing);
    an answer whose counts are not all known (a stream that failed after it began, a body cut
    short, a forwarded stream's output before its message_delta) marks the call ``lost``: what the
    upstream spent is more than was reported, and the call's cost is not known."""
    answered = record.get("awaiting", False)  # the answer began: its usage, or what it lacks, is this attempt's
    record["awaiting"] = False  # settled here: what follows is the next attempt's, or nobody's
    counts = {key: record.pop(key, None) for key in USAGE_KEYS + (ONE_HOUR_WRITES, WEB_SEARCHES)}
    lost = answered and any(counts[key] is None for key in USAGE_KEYS)
    record["lost"] = record.get("lost", False) or lost
    spent = {key: value if isinstance(value, int) else 0 for key, value in counts.items()}
    billed = record.pop("billed_cost", None)
    if not any(spent.values()):
        return
    # The counts known of an attempt that spent more are a part: no cost (its model's row would
    # show a part as the whole).
    cost = None if lost else billed if billed is not None else call_cost(facts, **spent)
    record.setdefault("earlier", []).append((spent, cost, (record.get("provider"), record.get("upstream_model"))))


def spent_elsewhere(earlier: List[Tuple[Dict[str, int], Optional[float], Tuple[Any, Any]]],
                     answered: Tuple[Any, Any]) -> Tuple[Spend, ...]:
    """What the earlier attempts at other targets than ``answered`` (the call's provider and upstream
    model) spent, one ``Spend`` a target: the totals per model file it there, not under the fallback."""
    by_target: Dict[Tuple[Any, Any], Spend] = {}
    for spent, cost, target in earlier:
        if target == answered:
            continue  # a retry of the target the call is recorded under: its own
        was = by_target.get(target) or Spend(str(target[0] or ""), str(target[1] or ""), cost_usd=0.0)
        counts = {k: getattr(was, k) + spent[k] for k in USAGE_KEYS}
        total = None if was.cost_usd is None or cost is None else was.cost_usd + cost
        by_target[target] = dataclasses.replace(was, cost_usd=total, **counts)
    return tuple(by_target.values())


def usage_fields(usage: Any) -> Dict[str, Optional[int]]:
    """The record's token counts from a (translated or forwarded) usage object. A forwarded body is
    not checked on its way to the client, so each count is read by the one rule here (``counts.py``):
    a negative, fractional or string count is 0, never a counter going backwards. All None when the
    usage holds no count at all (a forwarded answer without one): not known, so no cost either.
    Nor is the input or output count of a usage that leaves it out (a forwarded stream whose
    message_start had no input count; one cut before its message_delta, whose output count the
    Messages fold leaves out) or gives no count there (-1000, "1000", 500.5: the stream's fold
    leaves those out too): the call used such tokens, so 0 is no count."""
    counts = usage_counts(usage)
    if counts is None:
        return {**dict.fromkeys(USAGE_KEYS + (ONE_HOUR_WRITES,)), WEB_SEARCHES: web_searches(usage)}
    fields: Dict[str, Optional[int]] = dict(counts)
    for key in ("input_tokens", "output_tokens"):  # translated usage always has both: a forwarded one may not
        if count_or_none(usage.get(key)) is None:
            fields[key] = None
    # Anthropic's split of the cache writes: the 1-hour ones, never more than all of them.
    fields[ONE_HOUR_WRITES] = min(one_hour_writes(usage) or 0, counts["cache_creation_input_tokens"])
    fields[WEB_SEARCHES] = web_searches(usage)
    return fields


def stream_usage_fields(usage: Any, refused: bool) -> Dict[str, Optional[int]]:
    """A stream's token counts: what the fold knows (the upstream's usage as soon as it came).

    A stream the upstream refused at its start (a rate limit or context error as its first event)
    counts 0 tokens, like the same refusal as an HTTP status. Any other stream without usage had
    the upstream at work on the prompt -- generating, or thinking when the client left or a
    timeout ended it -- so its tokens are not known (None), never 0 at $0.
    """
    fields = usage_fields(usage)
    if fields["input_tokens"] is None and refused:
        return dict.fromkeys(USAGE_KEYS + (ONE_HOUR_WRITES, WEB_SEARCHES), 0)
    return fields
