"""``GET /``: the usage page, one HTML string drawn from the ``/v1/usage`` JSON. Pure: no I/O, no clock.

Everything is inline: CSS (light and dark, after the browser's setting), SVG
charts drawn here, and one small script that fetches the page again every few
seconds and swaps in the new ``#app``. No font, script, style or image comes
from anywhere else, and ``page_headers()`` sends a Content-Security-Policy that
forbids it. Every text that came from a client or an upstream (model names,
error types) is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REFRESH_MS = 5000
RECENT_ROWS = 30
PALETTE = ("#6366f1", "#10b981", "#f59e0b", "#ef4444", "#06b6d4", "#a855f7", "#84cc16", "#ec4899")
OTHER_COLOR = "#94a3b8"
_W, _H = 640, 230  # chart viewBox
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 58, 12, 14, 30

_SCRIPT = (
    "(function(){function r(){fetch(location.pathname+location.search,{cache:'no-store'})"
    ".then(function(x){return x.ok?x.text():null}).then(function(h){if(!h)return;"
    "var n=new DOMParser().parseFromString(h,'text/html').getElementById('app');"
    "var o=document.getElementById('app');if(n&&o)o.replaceWith(n)})"
    ".catch(function(){}).then(function(){setTimeout(r," + str(REFRESH_MS) + ")})}"
    "setTimeout(r," + str(REFRESH_MS) + ")})();"
)

_CSS = """
:root{--bg:#f6f7fb;--card:#fff;--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--grid:#eef2f7;--ok:#059669;
--warn:#d97706;--bad:#dc2626;--accent:#4f46e5;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#0b1020;--card:#131a2e;--ink:#e2e8f0;--muted:#94a3b8;
--line:#243049;--grid:#1c2540;--ok:#34d399;--warn:#fbbf24;--bad:#f87171;--accent:#818cf8}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
"DejaVu Sans","Liberation Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:22px 24px 40px}
header{display:flex;align-items:baseline;justify-content:space-between;flex-wrap:wrap;gap:8px;margin-bottom:16px}
h1{font-size:20px;margin:0;letter-spacing:-.01em}h1 span{color:var(--accent)}
h2{font-size:13px;font-weight:600;margin:0 0 10px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.meta{color:var(--muted);font-size:12.5px}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin-bottom:14px}
.card,.panel{background:var(--card);border:1px solid var(--line);border-radius:12px}
.card{padding:12px 14px}.card .k{color:var(--muted);font-size:12px}
.card .v{font-size:24px;font-weight:650;margin:2px 0;font-variant-numeric:tabular-nums;white-space:nowrap}
.card .s{color:var(--muted);font-size:12px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:14px;margin-bottom:14px}
.panel{padding:14px 16px;min-width:0;overflow-x:auto}
svg{display:block;width:100%;height:auto}
svg text{fill:var(--muted);font-size:11px;font-family:inherit}
svg .gl{stroke:var(--grid);stroke-width:1}svg .ax{stroke:var(--line);stroke-width:1}
svg .empty{font-size:13px}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin-top:8px;font-size:12px;color:var(--muted)}
.dot{display:inline-block;width:9px;height:9px;border-radius:3px;margin-right:5px;vertical-align:-1px}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:6px 8px;text-align:right;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--muted);font-weight:600;font-size:12px}
th:first-child,td:first-child,.l{text-align:left}
tr:last-child td{border-bottom:0}
td.name{max-width:330px;overflow:hidden;text-overflow:ellipsis}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600}
.b2{background:rgba(16,185,129,.14);color:var(--ok)}.b4{background:rgba(245,158,11,.16);color:var(--warn)}
.b5{background:rgba(239,68,68,.14);color:var(--bad)}
.muted{color:var(--muted)}.wide{margin-bottom:14px}
footer{color:var(--muted);font-size:12px;margin-top:18px}
@media (max-width:900px){.cards{grid-template-columns:repeat(2,1fr)}.grid{grid-template-columns:1fr}}
"""


def page_headers() -> List[Tuple[str, str]]:
    """Response headers: HTML, never cached, and a policy that allows nothing from elsewhere."""
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    policy = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; connect-src 'self'; "
              "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
            ("Content-Security-Policy", policy), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY")]


def render(usage: Dict[str, Any]) -> str:
    """The whole page for one ``/v1/usage`` answer."""
    colors = model_colors(usage.get("models", []))
    body = "".join([
        _header(usage), _cards(usage), _charts(usage, colors), _models_table(usage, colors),
        _errors_and_days(usage), _recent_table(usage), _footer(usage),
    ])
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            "<title>claudeproxy usage</title><style>" + _CSS + "</style></head>"
            "<body><main id=\"app\">" + body + "</main><script>" + _SCRIPT + "</script></body></html>")


# --------------------------------------------------------------------------
# Formatting.


# Control characters a client's model name may carry: no text a page shows (a NUL went into the
# HTML raw; browsers each do their own thing with them), shown as the replacement character.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def esc(value: Any) -> str:
    return html.escape(_CONTROL_RE.sub("\ufffd", str(value)), quote=True)


def fmt_tokens(n: Optional[float]) -> str:
    if n is None:
        return "–"
    n = float(n)
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{n:.0f}"


def fmt_cost(usd: Optional[float]) -> str:
    if usd is None:
        return "–"
    if usd == 0:
        return "$0.00"
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.4f}"


def fmt_axis_cost(usd: float) -> str:
    """An axis label: as few decimals as the value needs ($0.05, $0.125, $2)."""
    text = f"{usd:.6f}".rstrip("0").rstrip(".")
    return "$" + (text if "." not in text or len(text.split(".")[1]) >= 2 else text + "0")


def fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{int(ms // 60_000)}m {int(ms % 60_000 // 1000)}s"


def fmt_ratio(ratio: Optional[float]) -> str:
    return "–" if ratio is None else f"{ratio * 100:.0f}%"


def model_label(row: Dict[str, Any]) -> str:
    return f"{row['provider']}/{row['model']}"


def _tokens_of(row: Dict[str, Any]) -> float:
    return float(row["input_tokens"] + row["output_tokens"] + row["cache_read_input_tokens"] + row["cache_creation_input_tokens"])


def model_colors(models: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """The busiest models (the rows come sorted by cost, then tokens) get the palette; the rest are grey."""
    colors: Dict[str, str] = {}
    for row in models:
        if row["provider"] in ("(local)", "(none)") or not _tokens_of(row) or len(colors) >= len(PALETTE):
            continue
        colors[model_label(row)] = PALETTE[len(colors)]
    return colors


# --------------------------------------------------------------------------
# Header, cards, footer.


def _header(usage: Dict[str, Any]) -> str:
    return (f"<header><h1><span>claudeproxy</span> usage</h1><div class=\"meta\">"
            f"{esc(usage.get('today', ''))} · time zone {esc(usage.get('time_zone', ''))} · refreshes every "
            f"{REFRESH_MS // 1000} s</div></header>")


def _card(title: str, value: str, sub: str) -> str:
    return f"<div class=\"card\"><div class=\"k\">{title}</div><div class=\"v\">{value}</div><div class=\"s\">{sub}</div></div>"


def _cards(usage: Dict[str, Any]) -> str:
    today = usage.get("today_totals", {})
    unpriced = today.get("unpriced_requests", 0)
    # Without a known cost: no price for a kind of token used, or usage not known (a stream cut short).
    cost_note = f"{unpriced} call{'s' if unpriced != 1 else ''} without a known cost" if unpriced else "every call priced"
    prompt = today.get("input_tokens", 0) + today.get("cache_read_input_tokens", 0) + today.get("cache_creation_input_tokens", 0)
    latency, ttft = usage.get("latency_ms", {}), usage.get("ttft_ms", {})
    return "<section class=\"cards\">" + "".join([
        _card("Cost today", esc(fmt_cost(today.get("cost_usd"))), esc(cost_note)),
        _card("Tokens today", esc(fmt_tokens(prompt + today.get("output_tokens", 0))),
              f"{esc(fmt_tokens(prompt))} in · {esc(fmt_tokens(today.get('output_tokens', 0)))} out"),
        _card("Cache hit ratio", esc(fmt_ratio(today.get("cache_hit_ratio"))),
              f"{esc(fmt_tokens(today.get('cache_read_input_tokens', 0)))} prompt tokens from cache"),
        _card("Requests today", esc(today.get("requests", 0)),
              f"{esc(today.get('errors', 0))} errors · {esc(today.get('local', 0))} answered locally"),
        _card("Latency p50", esc(fmt_ms(latency.get("p50"))),
              f"p90 {esc(fmt_ms(latency.get('p90')))} · TTFT p50 {esc(fmt_ms(ttft.get('p50')))}"),
        _card("Streams now", esc(usage.get("streams_in_flight", 0)), _calls_counted(usage)),
    ]) + "</section>"


def _footer(usage: Dict[str, Any]) -> str:
    return (f"<footer>Costs use each model's prices per million tokens: the provider's <code>models</code> in the "
            f"config, else the built-in table (prices checked {esc(usage.get('prices_checked', '?'))}). A call to a "
            "model without a price shows its tokens and no cost; a stream cut before the upstream reported its usage "
            "shows neither. Input tokens exclude cached ones. "
            "JSON: <code>/v1/usage</code> · Prometheus: <code>/metrics</code></footer>")


# --------------------------------------------------------------------------
# Charts (inline SVG).


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^n at or above ``value`` (a round top for an axis)."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * base >= value * 0.999999:
            return step * base
    return 10 * base


def _divisions(top: float) -> int:
    """Grid lines at round values: 1 and 5 split in fives, 2 in fours, 2.5 in fives (0.5 each)."""
    mantissa = top / 10 ** math.floor(math.log10(top))
    return 4 if abs(mantissa - 2) < 1e-9 else 5


def _frame(points: Sequence[Dict[str, Any]], top: float, fmt: Callable[[float], str]) -> str:
    """Grid lines with y labels, and x labels thinned to fit."""
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    parts = []
    divisions = _divisions(top)
    for i in range(divisions + 1):
        y = _PAD_T + plot_h - plot_h * i / divisions
        parts.append(f"<line class=\"gl\" x1=\"{_PAD_L}\" x2=\"{_W - _PAD_R}\" y1=\"{y:.1f}\" y2=\"{y:.1f}\"/>"
                     f"<text x=\"{_PAD_L - 8}\" y=\"{y + 4:.1f}\" text-anchor=\"end\">{esc(fmt(top * i / divisions))}</text>")
    every = max(1, math.ceil(len(points) / 8))
    for i, point in enumerate(points):
        if i % every == 0:
            x = _PAD_L + plot_w * (i + 0.5) / len(points)
            parts.append(f"<text x=\"{x:.1f}\" y=\"{_H - 10}\" text-anchor=\"middle\">{esc(point.get('label', ''))}</text>")
    parts.append(f"<line class=\"ax\" x1=\"{_PAD_L}\" x2=\"{_W - _PAD_R}\" y1=\"{_PAD_T + plot_h}\" y2=\"{_PAD_T + plot_h}\"/>")
    return "".join(parts)


def _svg(inner: str, label: str) -> str:
    return f"<svg viewBox=\"0 0 {_W} {_H}\" role=\"img\" aria-label=\"{esc(label)}\">{inner}</svg>"


def _empty(label: str) -> str:
    return _svg(f"<text class=\"empty\" x=\"{_W / 2}\" y=\"{_H / 2}\" text-anchor=\"middle\">No calls yet</text>", label)


def stacked_bars(points: Sequence[Dict[str, Any]], stacks: Sequence[List[Tuple[str, str, float]]],
                 fmt: Callable[[float], str], label: str) -> str:
    """One bar per point, stacked from (name, color, value) pieces; a <title> per piece for hovering."""
    if not points:
        return _empty(label)
    top = nice_max(max((sum(v for _, _, v in stack) for stack in stacks), default=0))
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    slot = plot_w / len(points)
    width = min(34.0, max(1.0, slot * 0.72))
    parts = [_frame(points, top, fmt)]
    for i, (point, stack) in enumerate(zip(points, stacks)):
        x, y = _PAD_L + slot * i + (slot - width) / 2, float(_PAD_T + plot_h)
        for name, color, value in stack:
            if value <= 0:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(f"<rect x=\"{x:.1f}\" y=\"{y:.1f}\" width=\"{width:.1f}\" height=\"{h:.1f}\" rx=\"1.5\" "
                         f"fill=\"{color}\"><title>{esc(point.get('label', ''))} · {esc(name)}: {esc(fmt(value))}"
                         "</title></rect>")
    return _svg("".join(parts), label)


def lines(points: Sequence[Dict[str, Any]], series: Sequence[Tuple[str, str, Sequence[Optional[float]]]],
          fmt: Callable[[float], str], label: str, top: Optional[float] = None) -> str:
    """A line per (name, color, values); None leaves a gap, a lone value is a dot."""
    if not points:
        return _empty(label)
    seen = [v for _, _, values in series for v in values if v is not None]
    top = top or nice_max(max(seen, default=0))
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    parts = [_frame(points, top, fmt)]
    for name, color, values in series:
        run: List[str] = []
        for i, value in enumerate(list(values) + [None]):
            if value is not None:
                x = _PAD_L + plot_w * (i + 0.5) / len(points)
                y = _PAD_T + plot_h - plot_h * min(value, top) / top
                run.append(f"{x:.1f},{y:.1f}")
                parts.append(f"<circle cx=\"{x:.1f}\" cy=\"{y:.1f}\" r=\"2.6\" fill=\"{color}\"><title>"
                             f"{esc(points[i].get('label', ''))} · {esc(name)}: {esc(fmt(value))}</title></circle>")
                continue
            if len(run) > 1:
                parts.append(f"<polyline points=\"{' '.join(run)}\" fill=\"none\" stroke=\"{color}\" "
                             "stroke-width=\"2\" stroke-linejoin=\"round\" stroke-linecap=\"round\"/>")
            run = []
    return _svg("".join(parts), label)


def _legend(items: Sequence[Tuple[str, str]]) -> str:
    return "<div class=\"legend\">" + "".join(
        f"<span><i class=\"dot\" style=\"background:{color}\"></i>{esc(name)}</span>" for name, color in items) + "</div>"


def _model_stacks(points: Sequence[Dict[str, Any]], colors: Dict[str, str],
                  value: Callable[[Dict[str, Any]], float]) -> Tuple[List[List[Tuple[str, str, float]]], List[Tuple[str, str]]]:
    stacks, used = [], {}
    for point in points:
        pieces: Dict[str, Tuple[str, float]] = {}
        for name, row in point.get("models", {}).items():
            if name.startswith("(local)/"):
                continue
            key = name if name in colors else "other models"
            color = colors.get(name, OTHER_COLOR)
            pieces[key] = (color, pieces.get(key, (color, 0.0))[1] + value(row))
        stack = [(name, color, v) for name, (color, v) in pieces.items() if v > 0]
        stacks.append(stack)
        used.update({name: color for name, color, _ in stack})
    order = [(n, c) for n, c in colors.items() if n in used] + ([("other models", OTHER_COLOR)] if "other models" in used else [])
    return stacks, order


def step_label(seconds: int) -> str:
    """What one bar covers: "per second", "per 5 s", "per minute", "per 15 min", "per hour", "per 4 h"."""
    for size, one, unit in ((3600, "per hour", "h"), (60, "per minute", "min"), (1, "per second", "s")):
        if seconds >= size:
            count = seconds // size
            return one if count == 1 else f"per {count} {unit}"
    return "per second"


def _charts(usage: Dict[str, Any], colors: Dict[str, str]) -> str:
    series = usage.get("series", {})
    points = series.get("points", [])
    step = step_label(series.get("step_seconds", 60))
    tokens, token_legend = _model_stacks(points, colors, _tokens_of)
    costs, cost_legend = _model_stacks(points, colors, lambda r: r["cost_usd"] or 0.0)
    hit = [p.get("cache_hit_ratio") for p in points]
    # The highest percentile first, so the lower ones are drawn over it where they meet.
    lat = [("p99", "#ef4444", [p["latency_ms"]["p99"] for p in points]),
           ("p90", "#f59e0b", [p["latency_ms"]["p90"] for p in points]),
           ("p50", "#6366f1", [p["latency_ms"]["p50"] for p in points]),
           ("TTFT p50", "#10b981", [p["ttft_ms"]["p50"] for p in points])]
    ok = [[("ok", "#10b981", float(p["requests"] - p["errors"])), ("errors", "#ef4444", float(p["errors"]))] for p in points]
    panels = [
        (f"Tokens by model ({step})", stacked_bars(points, tokens, fmt_tokens, "tokens by model") + _legend(token_legend)),
        (f"Cost by model ({step})", stacked_bars(points, costs, fmt_axis_cost, "cost by model") + _legend(cost_legend)),
        ("Cache hit ratio", lines(points, [("cache hit ratio", "#06b6d4", hit)], fmt_ratio, "cache hit ratio", top=1.0)
         + _legend([("share of prompt tokens read from the upstream's cache", "#06b6d4")])),
        ("Latency and time to first token", lines(points, lat, fmt_ms, "latency percentiles")
         + _legend([(name, color) for name, color, _ in lat])),
        (f"Requests and errors ({step})", stacked_bars(points, ok, lambda v: f"{v:.0f}", "requests and errors")
         + _legend([("ok", "#10b981"), ("errors", "#ef4444")])),
    ]
    cells = "".join(f"<div class=\"panel\"><h2>{esc(title)}</h2>{inner}</div>" for title, inner in panels)
    return f"<section class=\"grid\">{cells}{_error_types(usage)}</section>"


# --------------------------------------------------------------------------
# Tables.


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], empty: str, left: int = 1) -> str:
    """Cells are HTML already (escaped by the caller); the first ``left`` columns are text, the rest numbers."""
    if not rows:
        return f"<p class=\"muted\">{esc(empty)}</p>"
    th = "".join(("<th class=\"l\">" if i < left else "<th>") + h + "</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(("<td class=\"l name\">" if i < left else "<td>") + c + "</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _swatch(label: str, colors: Dict[str, str]) -> str:
    return f"<i class=\"dot\" style=\"background:{colors.get(label, OTHER_COLOR)}\"></i>{esc(label)}"


_SIDE_ROWS = (("(local)", "answered by the proxy"), ("(none)", "refused before any upstream"))


def _today_rows(usage: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, totals) for today: each upstream model, then one row for the local answers and one for refusals."""
    days = usage.get("days", [])
    models = days[0]["models"] if days and days[0]["date"] == usage.get("today") else []
    rows = [(model_label(r), r) for r in models if r["provider"] not in dict(_SIDE_ROWS)]
    for provider, label in _SIDE_ROWS:
        side = [r for r in models if r["provider"] == provider]
        if side:
            rows.append((label, {"requests": sum(r["requests"] for r in side), "errors": sum(r["errors"] for r in side)}))
    return rows


def _models_table(usage: Dict[str, Any], colors: Dict[str, str]) -> str:
    since_start = {model_label(r): r for r in usage.get("models", [])}
    rows = []
    for label, row in _today_rows(usage):
        if "input_tokens" not in row:  # a side row: calls and errors only
            rows.append([f"<span class=\"muted\">{esc(label)}</span>", esc(row["requests"]), esc(row["errors"])]
                        + ["" for _ in range(8)])
            continue
        since = since_start.get(label, {})
        cost = esc(fmt_cost(row["cost_usd"])) + (f" <span class=\"muted\">+{esc(row['unpriced_requests'])} unpriced</span>"
                                                 if row["unpriced_requests"] and row["cost_usd"] is not None else "")
        rows.append([_swatch(label, colors), esc(row["requests"]), esc(row["errors"]),
                     esc(fmt_tokens(row["input_tokens"])), esc(fmt_tokens(row["cache_read_input_tokens"])),
                     esc(fmt_tokens(row["cache_creation_input_tokens"])), esc(fmt_tokens(row["output_tokens"])),
                     esc(fmt_ratio(row["cache_hit_ratio"])), cost,
                     esc(fmt_ms(since.get("latency_ms", {}).get("p50"))), esc(fmt_ms(since.get("ttft_ms", {}).get("p50")))])
    head = ["Provider / model", "Calls", "Errors", "Input", "Cache read", "Cache write", "Output", "Hit ratio", "Cost",
            "p50 latency", "p50 TTFT"]
    return ("<section class=\"panel wide\"><h2>Today by model</h2>"
            + _table(head, rows, "No calls today.") + "</section>")


def _calls_counted(usage: Dict[str, Any]) -> str:
    """The calls the totals hold: this server's since its start, and those read back from the usage log."""
    calls, read_back = usage.get("totals", {}).get("requests", 0), usage.get("read_back", 0)
    if not read_back:
        return f"{esc(calls)} calls since start"
    return f"{esc(calls - read_back)} calls since start, {esc(read_back)} read back from the usage log"


def _error_types(usage: Dict[str, Any]) -> str:
    by_type = usage.get("totals", {}).get("by_error_type", {})
    by_status = usage.get("totals", {}).get("by_status", {})
    rows = [[esc(t), esc(n)] for t, n in sorted(by_type.items(), key=lambda kv: -kv[1])]
    statuses = " · ".join(f"{esc(s)}: {esc(n)}" for s, n in sorted(by_status.items()))
    title = "Errors since start" if not usage.get("read_back") else "Errors (with the usage log's of today)"
    return (f"<div class=\"panel\"><h2>{title}</h2>" + _table(["Type", "Calls"], rows, "No errors.")
            + f"<p class=\"meta\">By status: {statuses or '–'}</p></div>")


def _errors_and_days(usage: Dict[str, Any]) -> str:
    rows = [[esc(d["date"]), esc(d["requests"]), esc(d["errors"]),
             esc(fmt_tokens(d["input_tokens"] + d["cache_read_input_tokens"] + d["cache_creation_input_tokens"])),
             esc(fmt_tokens(d["output_tokens"])), esc(fmt_ratio(d["cache_hit_ratio"])), esc(fmt_cost(d["cost_usd"]))]
            for d in usage.get("days", [])[:7]]
    head = ["Day", "Calls", "Errors", "Prompt tokens", "Output", "Hit ratio", "Cost"]
    return "<section class=\"panel wide\"><h2>By day</h2>" + _table(head, rows, "No calls yet.") + "</section>"


def _status(row: Dict[str, Any]) -> str:
    status = int(row.get("status") or 0)
    kind = "b2" if 200 <= status < 300 and not row.get("error_type") else "b4" if 400 <= status < 500 else "b5"
    title = f" title=\"{esc(row['error_type'])}\"" if row.get("error_type") else ""
    return f"<span class=\"badge {kind}\"{title}>{esc(status or '–')}</span>"


def _recent_table(usage: Dict[str, Any]) -> str:
    rows = []
    for r in usage.get("recent", [])[:RECENT_ROWS]:
        target = ("local" if r.get("local") else f"{r.get('provider')}/{r.get('upstream_model')}"
                  if r.get("upstream_model") else "refused")
        endpoint = " <span class=\"muted\">count</span>" if r.get("endpoint", "").endswith("count_tokens") else ""
        rows.append([esc(r.get("time_label", "")), f"{esc(r.get('model') or '–')}{endpoint}", esc(target), _status(r),
                     "stream" if r.get("stream") else "json", esc(fmt_tokens(r.get("input_tokens"))),
                     esc(fmt_tokens(r.get("cache_read_input_tokens"))), esc(fmt_tokens(r.get("output_tokens"))),
                     esc(fmt_cost(r.get("cost_usd"))), esc(fmt_ms(r.get("ttft_ms"))), esc(fmt_ms(r.get("duration_ms")))])
    head = ["Time", "Client model", "Served by", "Status", "Mode", "Input", "Cached", "Output", "Cost", "TTFT", "Duration"]
    return "<section class=\"panel wide\"><h2>Last calls</h2>" + _table(head, rows, "No calls yet.", left=3) + "</section>"
