"""Print the reliability figures of the last run as a Markdown table (the README's "Reliability" table).

Usage, from the repository root:

    python -m pytest tests/reliability -q -p no:randomly
    python tests/reliability/report.py [FIGURES.json]

The tests write ``tests/reliability/last-figures.json`` (or ``$CLAUDEPROXY_FIGURES``);
this script only reads it. Exit status 1 if a figure is missing or failed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

ORDER = ["R1", "R2-folds", "R2-server", "R2-matrix", "R3", "R4", "R5", "M1", "M2", "M2-responses", "M2-passthrough",
         "C1", "C2", "G1", "S1", "S2", "S3", "S4", "L1"]
HERE = os.path.dirname(os.path.abspath(__file__))


def load(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return dict(json.load(fh).get("figures", {}))


def machine_line(entries: List[Dict[str, Any]]) -> str:
    machines = {json.dumps(e["machine"], sort_keys=True) for e in entries}
    lines = []
    for text in sorted(machines):
        m = json.loads(text)
        lines.append(f"{m['implementation']} {m['python']}, {m['os']}, {m['cores']} cores, ulimit -n {m['ulimit_n']}")
    return "; ".join(lines)


def table(figures: Dict[str, Any]) -> str:
    rows = ["| id | test | figure | target | pass |", "|---|---|---|---|---|"]
    for fid in ORDER + sorted(set(figures) - set(ORDER)):
        entry = figures.get(fid)
        if entry is None:
            rows.append(f"| {fid} | (not run) | | | no |")
            continue
        cells = [fid, entry["test"], entry["figure"], entry["target"], "yes" if entry["pass"] else "**NO**"]
        rows.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(rows)


def main(argv: List[str]) -> int:
    path = argv[1] if len(argv) > 1 else os.environ.get("CLAUDEPROXY_FIGURES") or os.path.join(HERE, "last-figures.json")
    if not os.path.exists(path):
        print(f"no figures at {path}: run python -m pytest tests/reliability first", file=sys.stderr)
        return 1
    figures = load(path)
    entries = list(figures.values())
    print(table(figures))
    print()
    print(f"Measured on {machine_line(entries)}, {min(e['at'] for e in entries)} to {max(e['at'] for e in entries)}.")
    missing = [fid for fid in ORDER if fid not in figures]
    failed = [fid for fid, e in figures.items() if not e["pass"]]
    return 1 if missing or failed else 0


def quietly_piped(argv: List[str]) -> int:
    """``main``, but a reader that stopped early (``report.py | head``) ends it without a traceback.

    Python's own recipe (the signal module's docs, "Note on SIGPIPE"): stdout goes to devnull, or
    the flush at exit would fail once more."""
    try:
        status = main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(quietly_piped(sys.argv))
