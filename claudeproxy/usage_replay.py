"""Today's calls read back from the usage log when a server starts.

Each server keeps its totals in memory, so after a restart (and every ``run`` session is a new
server) the usage page, ``/v1/usage`` and ``/metrics`` began the day again at $0 while the
usage log held the day's calls. The server reads the log's tail back once, in a thread after it
listens, up to the size the file had before it served anything (its own calls are not counted
twice), and adds the day's records to its totals (``Metrics.replay``).

I/O: reads the file. A line that is no record (a hand edit, a line cut by a full disk) is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import BinaryIO, Iterator, List, Optional

from .metrics import CallRecord, Metrics, record_from_dict

log = logging.getLogger(__name__)

MOST_BYTES = 64 << 20  # of the log read back: about 130,000 calls, a busy day's
_BLOCK = 1 << 16
# A call is written when it ends, with the time it began: a stream begun before midnight comes after
# some of the day's calls. The reading stops at a call older than this before the day began.
_LATE_WRITE = 6 * 3600.0


def log_size(path: Optional[str]) -> Optional[int]:
    """The usage log's size now (before the server writes to it), None when there is none."""
    if not path:
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def replay_in_background(metrics: Metrics, path: Optional[str], size: Optional[int]) -> None:
    """``replay_today`` in a thread of its own: the server listens at once, whatever the log's size."""
    if path and size:
        threading.Thread(target=replay_today, args=(metrics, path, size), daemon=True,
                         name="claudeproxy-usage-replay").start()


def replay_today(metrics: Metrics, path: str, size: int, now: Optional[float] = None) -> int:
    """Today's records in the first ``size`` bytes of ``path`` into ``metrics``; how many."""
    try:
        records = todays_records(path, size, time.time() if now is None else now)
    except OSError as exc:
        log.warning("could not read the usage log back (%s: %s); today's totals begin now", type(exc).__name__, exc)
        return 0
    count = metrics.replay(records)
    if count:
        log.info("read %d of today's calls back from the usage log", count)
    return count


def todays_records(path: str, size: int, now: float) -> List[CallRecord]:
    """The records of the local day ``now`` falls in, oldest first, read from the end of the file's
    first ``size`` bytes backwards (at most ``MOST_BYTES``)."""
    day_began = _day_start(now)
    found: List[CallRecord] = []  # newest first
    with open(path, "rb") as fh:
        for line in _lines_backwards(fh, size):
            rec = _record(line)
            if rec is None:
                continue
            if rec.time < day_began - _LATE_WRITE:
                break
            if rec.time >= day_began and time.localtime(rec.time)[:3] == time.localtime(now)[:3]:
                found.append(rec)
    found.reverse()
    return found


def _lines_backwards(fh: BinaryIO, size: int) -> Iterator[bytes]:
    """The complete lines of the file's first ``size`` bytes, the last first."""
    end, carry, read = size, b"", 0
    while end > 0 and read < MOST_BYTES:
        start = max(0, end - _BLOCK)
        fh.seek(start)
        block = fh.read(end - start) + carry
        read += end - start
        end = start
        pieces = block.split(b"\n")
        carry = pieces.pop(0) if start > 0 else b""  # maybe the end of a line that began before
        for piece in reversed(pieces):
            if piece.strip():
                yield piece


def _record(line: bytes) -> Optional[CallRecord]:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record_from_dict(data) if isinstance(data, dict) else None


def _day_start(now: float) -> float:
    """Local midnight of the day ``now`` falls in."""
    day = time.localtime(now)
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))
