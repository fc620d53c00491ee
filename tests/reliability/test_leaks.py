"""L1: a leak check under ``python -X dev -W error::ResourceWarning`` (RELIABILITY.md S19, section 6).

A child pytest runs a representative part of this suite -- the fault matrix,
the upstream fuzz (both tiers), the request fuzz and the disconnect timing, at
reduced counts -- in development mode with ResourceWarning as an error, both
for Python (``-W``) and for pytest. The ``leak_plugin`` records the child's
threads and file descriptors at the start and end of its session. Passing
means: every test passed (no ResourceWarning, no unraisable exception), and
threads and fds are back to where they started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from rkit import HAVE_PROC, HERE, ROOT, record

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_PROC, reason="fd counts need /proc (Linux)")]

SUBSET = ["test_fault_matrix.py", "test_fuzz_upstream.py", "test_fuzz_requests.py", "test_disconnect_timing.py"]


def test_subset_under_dev_mode_leaks_nothing(tmp_path) -> None:
    leak = tmp_path / "leak.json"
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([HERE, ROOT]),
        "CLAUDEPROXY_LEAKCHECK": str(leak),
        "CLAUDEPROXY_FIGURES": str(tmp_path / "figures.json"),  # not the figures of this run
        "CLAUDEPROXY_FUZZ_STREAMS": "200", "CLAUDEPROXY_FUZZ_SERVER": "60", "CLAUDEPROXY_FUZZ_MUTANTS": "100",
        "CLAUDEPROXY_FUZZ_SWEEP_EVERY": "10",
    })
    argv = [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-m", "pytest", "-q", "-p", "leak_plugin",
            "-W", "error::ResourceWarning", "-p", "no:randomly", *[os.path.join(HERE, f) for f in SUBSET]]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    took = time.monotonic() - started
    out = done.stdout.decode("utf-8", "replace")
    counts = json.loads(leak.read_text()) if leak.exists() else {}
    summary = out.strip().splitlines()[-1] if out.strip() else "(no output)"
    warnings = out.count("ResourceWarning")
    ok = (done.returncode == 0 and counts.get("threads_end", 1 << 30) <= counts.get("threads_start", 0)
          and counts.get("fds_end", 1 << 30) <= counts.get("fds_start", 0) and warnings == 0)
    record("L1", "leak check: fault matrix, both fuzzers and disconnect timing under -X dev -W error::ResourceWarning",
           f"{summary}; threads {counts.get('threads_start')}->{counts.get('threads_end')}, "
           f"fds {counts.get('fds_start')}->{counts.get('fds_end')}; {warnings} ResourceWarnings; {took:.0f} s",
           "threads = baseline, fds = baseline, 0 ResourceWarnings", ok, counts=counts)
    assert done.returncode == 0, out[-5000:]
    assert warnings == 0, out[-5000:]
    assert counts["threads_end"] <= counts["threads_start"], counts
    assert counts["fds_end"] <= counts["fds_start"], counts
