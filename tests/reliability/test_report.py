"""``report.py``, the script that prints the README's table: it ends quietly when piped into ``head``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

REPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.py")


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Any) -> None:
    """``python tests/reliability/report.py | head`` ended with a BrokenPipeError traceback."""
    machine = {"implementation": "CPython", "python": "3.x", "os": "Linux", "cores": 2, "ulimit_n": 1024}
    entry = {"test": "t", "figure": "f", "target": "x", "pass": True, "machine": machine, "at": "2026-01-01 00:00:00"}
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"figures": {"R1": entry}}))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write meets a broken pipe
    try:
        done = subprocess.run([sys.executable, REPORT, str(figures)], stdout=write, stderr=subprocess.PIPE,
                              timeout=60)
    finally:
        os.close(write)
    assert done.stderr.decode() == ""
    assert done.returncode == 1
