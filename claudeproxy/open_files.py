"""How many files (sockets) the process may have open, and how many client connections that leaves.

Each client connection is a socket, and so is each upstream call, each idle pooled connection and
each refused connection waiting to close. A shell's usual soft limit is 1,024 (macOS: 256): at the
default ``--max-connections`` of 1,024, ``accept`` failed for want of descriptors long before the
cap was reached, so the cap never ended a stalled head, and a slow-loris client locked everyone
out again (review AO 14).

``more_open_files`` raises the soft limit towards the hard one for a process that is the proxy's own
(``commands.process_main``, as ``malloc.py``); ``connection_cap`` keeps the cap within the limit the
process has, in any process. POSIX only: elsewhere (Windows) both leave things as they are.
"""

from __future__ import annotations

from typing import Optional, Tuple

# Asked for at most: the kernel's own ceiling may be far higher (infinity), and nothing here needs more.
# macOS refuses a soft limit over its OPEN_MAX (10240) even where the hard one says unlimited: that
# is asked for next.
_WANTED = 65536
_MACOS_MOST = 10240
# Descriptors the proxy needs beside its client connections, beyond one an upstream call: the
# listening socket, the log files, the refused connections waiting to close, the pool, the rest. At
# a small limit (macOS's 256) each of the two takes at most a quarter of it.
RESERVED = 512
LEAST_CONNECTIONS = 16


def more_open_files() -> Optional[int]:
    """Raise this process's soft limit of open files towards its hard one (at most ``_WANTED``);
    the soft limit now, or None where there is no such limit (Windows)."""
    try:
        import resource  # POSIX only: here, not at the top
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for most in (_WANTED, _MACOS_MOST):
        wanted = most if hard == resource.RLIM_INFINITY else min(hard, most)
        if soft == resource.RLIM_INFINITY or soft >= wanted:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
            break
        except (ValueError, OSError):
            pass  # macOS over OPEN_MAX, or a container that forbids it: the next, or the limit as it is
    return None if soft == resource.RLIM_INFINITY else soft


def open_files_limit() -> Optional[int]:
    """This process's soft limit of open files; None where there is none (Windows, unlimited)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(wanted: int, upstream_calls: int, limit: Optional[int]) -> Tuple[int, bool]:
    """The client connections the server may hold: ``wanted`` (--max-connections), or fewer where
    ``limit`` (open files) leaves less beside ``upstream_calls`` (--max-concurrency) and
    ``RESERVED``; and whether it was lowered."""
    if limit is None:
        return wanted, False
    room = max(LEAST_CONNECTIONS, limit - min(upstream_calls, limit // 4) - min(RESERVED, limit // 4))
    return (room, True) if room < wanted else (wanted, False)
