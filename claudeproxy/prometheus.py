"""``GET /metrics``: the Prometheus text exposition format, version 0.0.4. Pure: no I/O, no clock.

``render(view, prices_checked)`` writes what ``Metrics.prometheus_view()``
copied: counters (``_total``) of calls by endpoint, provider, upstream model
and status, errors by type, tokens by model and kind, cost by model;
histograms (``_bucket{le=...}``, ``_sum``, ``_count``) of call duration and
time to first token; gauges for streams in flight, the start time and the date
the built-in prices were checked. Label values are escaped as the format
requires (backslash, double quote, newline), so a client's model name cannot
forge a line.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence, Tuple

from .metrics import HISTOGRAM_BOUNDS, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "claudeproxy_"
_TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_input_tokens"),
    ("cache_write", "cache_creation_input_tokens"),
)


def escape_label(value: str) -> str:
    text = str(value)
    if "\\" in text or not text.isprintable():
        # A client's model name may hold a CR, a NUL or U+2028: the format escapes only \\, " and \n,
        # and a scraper reading lines would split the sample there. They are written as escapes
        # (\x0d, \u2028) after each backslash is doubled, so no two names share a label: "a?b" and
        # "a\rb" were one series twice, and Prometheus drops a duplicate's samples.
        text = "".join(_label_char(c) for c in text)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_char(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if c.isprintable() or c == "\n":
        return c
    code = ord(c)
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code if code < 0x10000 else "\\U%08x" % code


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs: Sequence[Tuple[str, Any]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _family(name: str, kind: str, text: str, samples: Iterable[Tuple[str, Sequence[Tuple[str, Any]], float]]) -> List[str]:
    """HELP, TYPE, then one line per (suffix, labels, value)."""
    lines = [f"# HELP {_PREFIX}{name} {_help(text)}", f"# TYPE {_PREFIX}{name} {kind}"]
    lines += [f"{_PREFIX}{name}{suffix}{_labels(labels)} {_number(value)}" for suffix, labels, value in samples]
    return lines


def _histogram_samples(histograms: Dict[Tuple[str, str], Histogram]) -> List[Tuple[str, Sequence[Tuple[str, Any]], float]]:
    samples: List[Tuple[str, Sequence[Tuple[str, Any]], float]] = []
    for (provider, model), h in sorted(histograms.items()):
        base = [("provider", provider), ("model", model)]
        running = 0
        for bound, count in zip(HISTOGRAM_BOUNDS, h.counts):
            running += count
            samples.append(("_bucket", base + [("le", _number(bound))], running))
        samples.append(("_bucket", base + [("le", "+Inf")], h.count))
        samples.append(("_sum", base, round(h.sum, 6)))
        samples.append(("_count", base, h.count))
    return samples


def render(view: Dict[str, Any], prices_checked: str) -> str:
    """The whole exposition, ending in a newline."""
    models: Dict[Tuple[str, str], Dict[str, Any]] = view["models"]
    lines: List[str] = []
    lines += _family("requests_total", "counter", "Calls answered, by endpoint, provider, upstream model and HTTP "
                     "status (provider \"(local)\": answered by the proxy itself).",
                     [("", [("endpoint", e), ("provider", p), ("model", m), ("status", s)], n)
                      for (e, p, m, s), n in sorted(view["requests"].items())])
    lines += _family("upstream_failed_attempts_total", "counter", "Upstream attempts that failed, by provider, "
                     "upstream model and HTTP status (the upstream's, or the one the client would get): each was "
                     "followed by a retry, the next target of the route, or the call's error (a stream's "
                     "error event too).",
                     [("", [("provider", p), ("model", m), ("status", s)], n)
                      for (p, m, s), n in sorted(view["failed_attempts"].items())])
    lines += _family("errors_total", "counter", "Calls that ended in an error (also after a stream began), by "
                     "Anthropic error type.", [("", [("type", t)], n) for t, n in sorted(view["errors"].items())])
    lines += _family("tokens_total", "counter", "Tokens by provider, upstream model and kind, as the upstream "
                     "reported them (input excludes cached input).",
                     [("", [("provider", p), ("model", m), ("kind", kind)], row[field])
                      for (p, m), row in sorted(models.items()) for kind, field in _TOKEN_KINDS])
    lines += _family("cost_usd_total", "counter", "US dollars spent, by provider and upstream model, from the "
                     "model's prices; calls without a known cost are not in it.",
                     [("", [("provider", p), ("model", m)], row["cost_usd"] or 0.0)
                      for (p, m), row in sorted(models.items())])
    lines += _family("unpriced_requests_total", "counter", "Calls without a known cost (none counted): they "
                     "used tokens of a kind their model has no price for, or their usage is not known (a stream "
                     "cut before the upstream reported it).",
                     [("", [("provider", p), ("model", m)], row["unpriced_requests"])
                      for (p, m), row in sorted(models.items())])
    lines += _family("request_duration_seconds", "histogram", "Time from the request to the end of the answer, "
                     "for calls that reached an upstream.", _histogram_samples(view["durations"]))
    lines += _family("time_to_first_token_seconds", "histogram", "Time from the request to the first content "
                     "event of a stream.", _histogram_samples(view["ttfts"]))
    lines += _family("streams_in_flight", "gauge", "Streams being relayed now.", [("", [], view["streams_in_flight"])])
    lines += _family("start_time_seconds", "gauge", "When this server started, seconds since the epoch.",
                     [("", [], round(view["started_at"], 3))])
    lines += _family("prices_info", "gauge", "The date the built-in model prices were checked.",
                     [("", [("checked", prices_checked)], 1)])
    return "\n".join(lines) + "\n"
