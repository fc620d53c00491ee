"""Child processes for the bench: pinning, start-up timing, CPU time and memory from /proc (does I/O).

CPU time is ``utime + stime`` from ``/proc/PID/stat`` (all threads, living and
exited), in clock ticks (10 ms on most kernels): workloads are sized to take
hundreds of ticks. Memory is ``VmHWM`` (peak resident set since the process began)
and ``VmRSS`` from ``/proc/PID/status``. Where /proc or ``sched_setaffinity`` is
missing (macOS), the figures are ``None`` and processes run unpinned.
"""

from __future__ import annotations

import os
import resource
import select
import subprocess
import time
from typing import Dict, List, NamedTuple, Optional, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


class Cores(NamedTuple):
    """Which CPUs each party runs on (``None``: not pinned)."""

    target: Optional[Set[int]]    # claudeproxy and the ceiling, the same single core
    upstream: Optional[Set[int]]
    client: Optional[Set[int]]


def plan_cores() -> Cores:
    """The targets on the last CPU alone; the upstream and the client on the others.

    With two CPUs the upstream and the client share the other one; with three or
    more they get one (upstream) and the rest (client).
    """
    if not hasattr(os, "sched_getaffinity"):
        return Cores(None, None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Cores(None, None, None)
    target, rest = {cpus[-1]}, cpus[:-1]
    if len(rest) >= 2:
        return Cores(target, {rest[0]}, set(rest[1:]))
    return Cores(target, set(rest), set(rest))


def pin_self(cpus: Optional[Set[int]]) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def popen(cmd: List[str], cpus: Optional[Set[int]], stderr_path: str,
          stdout: int = subprocess.PIPE, cwd: str = ROOT) -> "subprocess.Popen[str]":
    """Start ``cmd`` in the project root (or ``cwd``), pinned to ``cpus`` from its first instruction."""
    err = open(stderr_path, "ab")
    try:
        return subprocess.Popen(cmd, cwd=cwd, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                preexec_fn=(lambda: pin_self(cpus)) if cpus else None)
    finally:
        err.close()


class Server(NamedTuple):
    proc: "subprocess.Popen[str]"
    port: int
    start_seconds: float   # from spawning to the "listening on" line


def start_server(cmd: List[str], cpus: Optional[Set[int]], stderr_path: str, timeout: float = 30,
                 cwd: str = ROOT) -> Server:
    """Spawn a server (in ``cwd``) and wait for its first stdout line, ``... listening on http(s)://HOST:PORT ...``."""
    began = time.perf_counter()
    proc = popen(cmd, cpus, stderr_path, cwd=cwd)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    took = time.perf_counter() - began
    if "listening on " not in line:
        stop(proc)
        with open(stderr_path, encoding="utf-8", errors="replace") as fh:
            tail = fh.read()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} did not start: {line!r}\n{tail}")
    address = line.split("listening on ", 1)[1].split()[0]
    return Server(proc, int(address.rsplit(":", 1)[1].split("/")[0]), took)


def stop(proc: "subprocess.Popen[str]") -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def cpu_seconds(pid: int) -> Optional[float]:
    """User plus system CPU time the process has used so far, all its threads together."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> Dict[str, int]:
    """``VmRSS`` and ``VmHWM`` in KiB (empty without /proc)."""
    out: Dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def run_sampling_rss(cmd: List[str], cpus: Optional[Set[int]], stderr_path: str,
                     pid: Optional[int], interval: float = 0.02) -> Tuple[str, int]:
    """Run ``cmd`` to its end while sampling ``pid``'s VmRSS; (its stdout, the largest sample in KiB)."""
    proc = popen(cmd, cpus, stderr_path)
    peak = 0
    while proc.poll() is None:
        if pid is not None:
            peak = max(peak, memory_kib(pid).get("VmRSS", 0))
        time.sleep(interval)
    out = proc.stdout.read() if proc.stdout else ""
    stop(proc)
    return out, peak


def run_to_end(cmd: List[str], cpus: Optional[Set[int]], stderr_path: str, timeout: float = 900) -> str:
    proc = popen(cmd, cpus, stderr_path)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode} (see {stderr_path})")
    return out


def busy_seconds() -> Optional[float]:
    """CPU time all processes on the machine have used since boot (``/proc/stat``, idle and iowait excluded)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU time of this process and every child it has waited for (and theirs)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total
