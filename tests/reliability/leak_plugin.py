"""A pytest plugin for the leak check (L1): threads and file descriptors at the start and end of a session.

Loaded with ``-p leak_plugin`` by ``test_leaks.py`` in a child pytest. At the
end of the session it waits up to 3 s for both counts to come back, then writes
them as JSON to ``$CLAUDEPROXY_LEAKCHECK``. No I/O at import time.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from typing import Any, Dict

_START: Dict[str, int] = {}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def pytest_sessionstart(session: Any) -> None:
    _START.update(threads=threading.active_count(), fds=_fds())


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        gc.collect()
        if threading.active_count() <= _START["threads"] and _fds() <= _START["fds"]:
            break
        time.sleep(0.05)
    out = {"threads_start": _START["threads"], "threads_end": threading.active_count(),
           "fds_start": _START["fds"], "fds_end": _fds(), "exitstatus": int(exitstatus),
           "left": [t.name for t in threading.enumerate() if t is not threading.main_thread()]}
    path = os.environ.get("CLAUDEPROXY_LEAKCHECK")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(out, fh)
