"""Two runs of bench/run.py side by side: claudeproxy's figures before and after a change (reads two JSON files).

    python bench/run.py --json before.json      # on the old code
    python bench/run.py --json after.json       # on the new code
    python bench/compare.py before.json after.json

For every figure: claudeproxy's median and its ratio to the ceiling in each run, and
the change of that ratio. The ratio to the ceiling is the figure to compare across
runs: the ceiling ran interleaved with claudeproxy in each run, so a machine that is
busier or quieter on the second day moves both and the ratio less. Also useful to
see how far two runs of the same code disagree (the run-to-run spread).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Optional


def _fmt(x: Optional[float], suffix: str = "") -> str:
    if x is None:
        return "—"
    return (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}") + suffix


def _change(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or not a:
        return "—"
    return f"{(b - a) / abs(a) * 100:+.0f}%"


def compare(before: Dict[str, Any], after: Dict[str, Any]) -> str:
    rows = ["| figure | claudeproxy before | after | change | ×ceiling before | after | change |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for key, fig in after["figures"].items():
        old = before["figures"].get(key)
        if old is None:
            continue
        a, b = old["median"]["claudeproxy"], fig["median"]["claudeproxy"]
        ra, rb = old["vs_ceiling"], fig["vs_ceiling"]
        rows.append(f"| {fig['label']} ({fig['unit']}) | {_fmt(a)} | {_fmt(b)} | {_change(a, b)} "
                    f"| {_fmt(ra, '×')} | {_fmt(rb, '×')} | {_change(ra, rb)} |")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    runs = []
    for path in sys.argv[1:3]:
        try:
            with open(path, encoding="utf-8") as fh:
                runs.append(json.load(fh))
        except (OSError, ValueError) as exc:  # a missing or broken file: one line, not a traceback
            sys.exit(f"compare.py: {path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        print(compare(*runs))
    except (KeyError, TypeError, AttributeError):  # JSON of another shape than bench/run.py --json writes
        sys.exit(f"compare.py: {' or '.join(sys.argv[1:3])}: not a bench/run.py --json file")


if __name__ == "__main__":
    main()
