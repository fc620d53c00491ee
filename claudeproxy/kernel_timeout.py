"""Socket timeouts kept by the kernel instead of by Python, for sockets that read or write often.

A socket with a Python timeout polls before every ``send`` and ``recv``: a stream of small
pieces pays a poll, and one more release of the GIL, per piece (two of the four system calls a
relayed chunk made, with the upstream read and the client write). A blocking socket whose
receives (``SO_RCVTIMEO``) or sends (``SO_SNDTIMEO``) the kernel bounds waits no longer and
calls at once; a wait past the bound fails with ``EAGAIN``, which Python raises as
``BlockingIOError``: the caller takes it for the timeout it replaces.

Linux only: the option's layout (a ``struct timeval``) is the platform's, so elsewhere, or where
the kernel does not read the value back as set, the socket keeps its Python timeout.
"""

from __future__ import annotations

import socket
import struct
import sys

_TIMEVAL = "@ll"  # struct timeval on Linux: two C longs


def bound_by_kernel(sock: socket.socket, option: int, seconds: float) -> bool:
    """Make ``sock`` blocking with ``option`` (``SO_SNDTIMEO`` or ``SO_RCVTIMEO``) set to
    ``seconds``; False, the socket untouched, where that cannot be done."""
    if not sys.platform.startswith("linux") or type(sock) is not socket.socket or not 0.001 <= seconds < 2**31:
        # (A TLS socket reads a whole record before it polls; below a millisecond the kernel's is 0, no bound.)
        return False
    whole = int(seconds)
    value = struct.pack(_TIMEVAL, whole, int((seconds - whole) * 1_000_000))
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, value)
        got_s, got_us = struct.unpack(_TIMEVAL, sock.getsockopt(socket.SOL_SOCKET, option, len(value)))
    except (OSError, struct.error):
        return False
    if abs(got_s + got_us / 1_000_000 - seconds) > 0.05:  # kept in clock ticks: close, not equal
        return False
    sock.settimeout(None)
    return True
