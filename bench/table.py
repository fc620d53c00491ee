"""The bench's figures, their targets, and the markdown table (pure: no I/O).

Every figure is measured once per repeat for each target (``direct``, ``ceiling``,
``claudeproxy``). The table shows each target's median over the repeats, then
claudeproxy's ratio to direct and to the ceiling (each the median of the per-repeat
ratios, so drift between repeats cancels), the ceiling's ratio to direct, the
spread, and the issue's target with PASS or FAIL.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, NamedTuple, Optional

TARGETS = ("direct", "ceiling", "claudeproxy")
Values = Dict[str, List[Optional[float]]]  # target -> one value per repeat (None: not measured)


class Figure(NamedTuple):
    key: str
    label: str
    unit: str
    higher_is_better: bool
    goal: str = ""                                    # the target, as shown in the table
    check: Optional[Callable[["Summary"], bool]] = None
    ratios: bool = True                               # False: the ratio columns make no sense (counts near 0)


class Summary(NamedTuple):
    median: Dict[str, Optional[float]]
    vs_direct: Optional[float]       # claudeproxy / direct, median over repeats
    vs_ceiling: Optional[float]      # claudeproxy / ceiling
    ceiling_vs_direct: Optional[float]
    minus_direct: Optional[float]    # claudeproxy - direct, median over repeats
    spread: Optional[float]          # largest (max - min) / median among the targets


def _median(xs: List[Optional[float]]) -> Optional[float]:
    xs2 = [x for x in xs if x is not None]
    return statistics.median(xs2) if xs2 else None


def _paired(values: Values, a: str, b: str, op: Callable[[float, float], Optional[float]]) -> Optional[float]:
    pairs = zip(values.get(a, []), values.get(b, []))
    return _median([op(x, y) for x, y in pairs if x is not None and y is not None])


def _ratio(x: float, y: float) -> Optional[float]:
    return x / y if y else None


def _spread(xs: List[Optional[float]]) -> Optional[float]:
    xs2 = [x for x in xs if x is not None]
    if len(xs2) < 2 or not statistics.median(xs2):
        return None
    return (max(xs2) - min(xs2)) / abs(statistics.median(xs2))


def summarize(values: Values) -> Summary:
    spreads = [s for s in (_spread(values.get(t, [])) for t in TARGETS) if s is not None]
    return Summary(
        median={t: _median(values.get(t, [])) for t in TARGETS},
        vs_direct=_paired(values, "claudeproxy", "direct", _ratio),
        vs_ceiling=_paired(values, "claudeproxy", "ceiling", _ratio),
        ceiling_vs_direct=_paired(values, "ceiling", "direct", _ratio),
        minus_direct=_paired(values, "claudeproxy", "direct", lambda x, y: x - y),
        spread=max(spreads) if spreads else None,
    )


def verdict(fig: Figure, s: Summary) -> str:
    if fig.check is None:
        return ""
    try:
        return "PASS" if fig.check(s) else "FAIL"
    except TypeError:  # a value the check needs was not measured
        return "n/a"


def _num(x: Optional[float]) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _ratio_cell(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}×"


def markdown(figures: List[Figure], values: Dict[str, Values]) -> str:
    rows = ["| figure | direct | ceiling | claudeproxy | ×direct | ×ceiling | ceiling ×direct | spread "
            "| target | result |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for fig in figures:
        s = summarize(values.get(fig.key, {}))
        spread = "—" if s.spread is None or not fig.ratios else f"{s.spread * 100:.0f}%"
        cells = [f"{fig.label} ({fig.unit})"] + [_num(s.median[t]) for t in TARGETS]
        ratios = (s.vs_direct, s.vs_ceiling, s.ceiling_vs_direct) if fig.ratios else (None, None, None)
        cells += [_ratio_cell(x) for x in ratios] + [spread, fig.goal, verdict(fig, s)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def as_json(figures: List[Figure], values: Dict[str, Values]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for fig in figures:
        v = values.get(fig.key, {})
        s = summarize(v)
        if not fig.ratios:
            s = s._replace(vs_direct=None, vs_ceiling=None, ceiling_vs_direct=None, spread=None)
        out[fig.key] = {"label": fig.label, "unit": fig.unit, "higher_is_better": fig.higher_is_better,
                        "values": v, **s._asdict(), "target": fig.goal, "result": verdict(fig, s)}
    return out
