"""Where upstream keys come from: a value, or a command run to print one.

I/O: ``command_token`` runs a program (never through a shell) the first time a
key is needed and again once ``ttl`` seconds have passed, so keys that rotate
(a vault, a cloud CLI) keep working. A command that fails is a 502 for the
request that needed it; its message names the command and its exit status,
never what it printed.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Optional, Sequence, Tuple

from .config import TokenSource
from .errors import UpstreamUnavailable

DEFAULT_TTL = 300.0
COMMAND_TIMEOUT = 30.0


class CommandToken:
    """A ``TokenSource`` that runs ``argv`` and caches its trimmed stdout for ``ttl`` seconds."""

    def __init__(self, argv: Sequence[str], ttl: float = DEFAULT_TTL, label: str = "") -> None:
        if not argv or not all(isinstance(a, str) and a for a in argv):
            raise ValueError("a key command is a non-empty list of non-empty strings")
        self.argv: Tuple[str, ...] = tuple(argv)
        self.ttl = ttl
        self.label = label or argv[0]
        self._lock = threading.Lock()
        self._key: Optional[str] = None
        self._fetched = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._key is None or time.monotonic() - self._fetched >= self.ttl:
                self._key = self._run()
                self._fetched = time.monotonic()
            return self._key

    def expire(self) -> None:
        """Forget the cached key (the upstream refused it): the next call runs the command again."""
        with self._lock:
            self._key = None

    def _run(self) -> str:
        what = f"the key command {self.argv[0]!r} of {self.label}"
        try:
            done = subprocess.run(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, ValueError) as exc:
            raise UpstreamUnavailable(f"{what} could not be run ({type(exc).__name__})") from None
        except subprocess.TimeoutExpired:
            raise UpstreamUnavailable(f"{what} did not finish within {COMMAND_TIMEOUT:g} s") from None
        if done.returncode != 0:
            raise UpstreamUnavailable(f"{what} failed with exit status {done.returncode}")
        key = done.stdout.decode("utf-8", errors="replace").strip()
        if not key or any(c in key for c in "\r\n\x00"):
            raise UpstreamUnavailable(f"{what} printed no usable key (empty, or several lines)")
        return key


def command_token(argv: Sequence[str], ttl: float = DEFAULT_TTL, label: str = "") -> TokenSource:
    return CommandToken(argv, ttl, label)


def current_secret(source: TokenSource) -> str:
    """The key a source holds now, without running a command for it (for masking logs)."""
    if isinstance(source, CommandToken):
        return source._key or ""  # noqa: SLF001 - the cached value, read under no lock: masking only
    try:
        return source()
    except Exception:  # a caller's refresher that fails: nothing to mask
        return ""
