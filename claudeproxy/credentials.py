"""Where upstream keys come from: a value, a command run to print one, or several used in turn.

I/O: ``command_token`` runs a program (never through a shell) the first time a
key is needed and again once ``ttl`` seconds have passed, so keys that rotate
(a vault, a cloud CLI) keep working; after a 401 it runs again at once. A
command that fails is a 502 for the request that needed it; its message names
the command and its exit status, never what it printed. ``KeyRing`` holds
several keys of one provider and uses them in turn; a key the upstream refused
(401, 429) rests for a while and the next one serves. ``refused`` is what the
pipeline calls after a refusal: True when a retry with another key makes sense.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import StaticToken, TokenSource, check_secret, gives_no_key, static_token
from .errors import UpstreamUnavailable

DEFAULT_TTL = 300.0
COMMAND_TIMEOUT = 30.0
PREVIOUS_KEYS = 8  # a key command's earlier keys still masked
# After the upstream refused a command's key and the command ran again for it, a refusal of its next
# key within this many seconds runs it no more: a key store that hands out a key the upstream keeps
# refusing ran once for every request (each a 401 all the same).
REFUSED_RERUN_SECONDS = 10.0


class CommandToken:
    """A ``TokenSource`` that runs ``argv`` and caches its trimmed stdout for ``ttl`` seconds."""

    def __init__(self, argv: Sequence[str], ttl: float = DEFAULT_TTL, label: str = "") -> None:
        if not argv or not all(isinstance(a, str) and a for a in argv):
            raise ValueError("a key command is a non-empty list of non-empty strings")
        self.argv: Tuple[str, ...] = tuple(argv)
        self.ttl = ttl
        self.label = label  # what the key is for (a provider's name), where a message says so
        self._lock = threading.Lock()
        self._key: Optional[str] = None
        self._fetched = 0.0
        self._expired_at = -REFUSED_RERUN_SECONDS  # when a refusal last made the command run again
        self._failure: Optional[Tuple[float, str]] = None  # when the last run failed, and its message
        # Keys the command printed before the current one: an upstream may still echo one (a
        # late 401 for a request sent with it), so they stay masked. Bounded: a key rotated
        # every few minutes for weeks must not grow the list, nor every redaction. A tuple replaced
        # whole: masking reads it without the lock, which a running command holds.
        self.previous: Tuple[str, ...] = ()

    def __call__(self) -> str:
        asked = time.monotonic()
        with self._lock:
            failure = self._failure
            if failure is not None and failure[0] >= asked:
                # The run this call waited for failed: the same answer, not another run each (a
                # command that hangs would hold every waiting request its own 30 s in turn). A new
                # error each: one raised again would gather every waiter's frames in its traceback.
                raise UpstreamUnavailable(failure[1])
            if self._key is None or time.monotonic() - self._fetched >= self.ttl:
                try:
                    key = self._run()
                except UpstreamUnavailable as exc:
                    self._failure = (time.monotonic(), exc.message)
                    raise
                self._retire(key)
                self._key = key
                self._fetched = time.monotonic()
            return self._key

    def _retire(self, new: Optional[str]) -> None:
        """Keep the cached key among the previous ones, unless it stays (under the lock)."""
        if self._key and self._key != new and self._key not in self.previous:
            self.previous = (self.previous + (self._key,))[-PREVIOUS_KEYS:]

    def expire(self, key: Optional[str] = None) -> bool:
        """Forget the cached key (the upstream refused it): the next call runs the command again.

        With ``key``, only if that is still the cached one: another request may have renewed
        it already, and then the new one is worth a try all the same (True). False when the cached
        key was refused within ``REFUSED_RERUN_SECONDS`` of an earlier refusal's run.
        """
        with self._lock:
            if key is not None and key == self._key:
                now = time.monotonic()
                if now - self._expired_at < REFUSED_RERUN_SECONDS:
                    return False
                self._expired_at = now
            if key is None or key == self._key:
                self._retire(None)
                self._key = None
        return True

    def _run(self) -> str:
        what = f"the key command {self.argv[0]!r}" + (f" of {self.label}" if self.label else "")
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
        try:
            check_secret(key, "key")
        except ValueError:
            key = ""  # several lines, control characters, or nothing an HTTP header can carry
        if not key:
            raise UpstreamUnavailable(f"{what} printed no usable key (empty, several lines, or not Latin-1)")
        return key


def _shell_syntax(command: str) -> bool:
    """Does ``command`` hold, outside quotes, what only a shell gives a meaning: a pipe, ``;``,
    ``&``, a redirection, a backtick, a ``$`` that expands? Quoted text is an argument, as in
    ``sh -c '$HOME/bin/key | tr -d x'``, where the inner shell reads it."""
    quote, escaped = "", False
    for i, ch in enumerate(command):
        if escaped:
            escaped = False
        elif quote == "'":  # nothing is special inside single quotes, a backslash neither
            quote = "" if ch == "'" else quote
        elif ch == "\\":
            escaped = True
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "|&;<>`" or ch == "$" and _expands(command, i):
            return True
    return False


def _expands(command: str, at: int) -> bool:
    """A ``$`` a shell would expand: before a name, ``{`` or ``(``."""
    after = command[at + 1:at + 2]
    return bool(after) and (after.isalpha() or after in "_{(")


def command_argv(command: Any, setting: str) -> List[str]:
    """A key command's argv, checked at start: a string is split as a shell would (no shell runs it).

    ValueError naming ``setting`` for an unclosed quote, nothing to run, or a program that is not
    there: found now, the mistake stops the start instead of failing every request with a 502.
    """
    if isinstance(command, (bytes, bytearray)):
        raise ValueError(f"{setting}: expected the command as text or a list of words, got {type(command).__name__}")
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:  # "No closing quotation", "No escaped character"
            # Not quoted back: a command line may carry a token.
            raise ValueError(f"{setting}: cannot split the command into words ({exc})") from None
    else:
        argv = list(command)
    if not argv:
        raise ValueError(f"{setting}: the command is empty")
    if isinstance(command, str) and _shell_syntax(command):
        # Run as it is, 'echo sk-abc | tr a b' printed its words, and the key went as "sk-abc | tr a b"
        # (a $VAR as "$VAR"): every request a 401. Nothing quoted back: a word may hold a key.
        raise ValueError(f"{setting}: the command has shell syntax (a pipe, a redirection, ';', '&&', a $variable "
                         "or `...`), and it runs without a shell; give sh -c '...' for that")
    if not _runnable(argv[0]):
        raise ValueError(f"{setting}: {argv[0]}: command not found (or not executable)")
    return argv


def _runnable(program: str) -> bool:
    """What ``subprocess.run`` would find. On Windows it adds ``.exe`` to a path with a folder in
    it, which ``shutil.which`` does only from Python 3.12."""
    if shutil.which(program) is not None:
        return True
    return os.name == "nt" and bool(os.path.dirname(program)) and os.path.isfile(program + ".exe")


def command_token(argv: Sequence[str], ttl: float = DEFAULT_TTL, label: str = "") -> TokenSource:
    """A token source that runs ``argv`` when a request first needs the key, then every ``ttl``
    seconds. A string is split as ``--api-key-command``'s is (it was run as a list of its letters:
    the program "e" for "echo key"); a program that is not there is a ValueError now, not a 502 for
    every request."""
    return CommandToken(command_argv(argv, "command_token"), ttl, label)


def key_of(source: TokenSource, provider: str) -> str:
    """The key ``source`` gives now; a 502 that names ``provider`` when it fails or gives a key no
    header can carry. A library caller's own ``token=`` may raise anything (and its text may hold
    the key), or return a line break: it was a 500 and a traceback, or "could not reach the upstream".
    """
    try:
        key = source()
    except UpstreamUnavailable:
        raise  # a key command's own account, already worded for the client
    except Exception as exc:  # the type only: the text is the caller's, and may hold the key
        raise UpstreamUnavailable(f"the key source of provider {provider} failed ({type(exc).__name__})") from None
    if key is None:
        return ""  # no key, as an empty one (what None meant before this check)
    if not isinstance(key, str):
        raise UpstreamUnavailable(f"the key source of provider {provider} gave a {type(key).__name__}, not a string")
    if key:
        try:
            check_secret(key, "key")
        except ValueError:
            raise UpstreamUnavailable(f"the key source of provider {provider} gave a key no HTTP header can "
                                      "carry (several lines, control characters, or not Latin-1)") from None
    return key


def current_secrets(source: TokenSource, run: bool = False) -> Tuple[str, ...]:
    """The keys a source holds now, without running a command or turning a ring (for masking).

    A program's own function is run only when ``run`` says so (a body about to be logged, which may
    quote a key no request has used yet): run for every request, it ran twice a request and every
    provider's (a slow vault behind a fallback provider held every call). The keys it gave are
    masked by the server that asked for them (pipeline.Proxy.secrets), a ring's by the ring."""
    if isinstance(source, KeyRing):
        return tuple(k for s in source.sources for k in current_secrets(s, run)) + source.given()
    if isinstance(source, CommandToken):
        cached = source._key  # noqa: SLF001 - the cached value, read under no lock: masking only
        return ((cached,) if cached else ()) + source.previous
    if isinstance(source, StaticToken):
        return (source.key,) if source.key else ()
    if not run:
        return ()
    try:
        key = source()
    except Exception:  # a caller's refresher that fails: nothing to mask
        return ()
    return (key,) if isinstance(key, str) and key else ()  # (one that gives no string is refused: key_of)


class KeyRing:
    """Several keys of one provider, used in turn; a key the upstream refused rests for a while."""

    def __init__(self, sources: Sequence[TokenSource], rest_seconds: float = 60.0,
                 labels: Sequence[str] = ()) -> None:
        if not sources:
            raise ValueError("a key ring needs at least one key")
        self.sources = tuple(sources)
        # What each key is called where a message names it (its variable, "$OPENAI_KEY_2"); else its place.
        self.labels = tuple(labels) if len(labels) == len(self.sources) else \
            tuple(f"{i + 1} of {len(self.sources)}" for i in range(len(self.sources)))
        self.rest_seconds = rest_seconds
        self._lock = threading.Lock()
        self._next = 0
        self._resting: Dict[int, float] = {}  # source index -> when it may serve again
        self._given: Dict[str, int] = {}  # key -> the source that gave it (for refused)

    def __call__(self) -> str:
        index = self._pick()
        key = self.sources[index]()
        with self._lock:
            if len(self._given) > 64:
                self._given.clear()  # command keys change over time: keep the map small
            self._given[key] = index
        return key

    def given(self) -> Tuple[str, ...]:
        """The keys the ring's sources gave lately (at most 65), for masking."""
        with self._lock:
            return tuple(self._given)

    def _pick(self) -> int:
        with self._lock:
            now = time.monotonic()
            count = len(self.sources)
            for step in range(count):
                index = (self._next + step) % count
                if self._resting.get(index, 0.0) <= now:
                    self._next = (index + 1) % count
                    return index
            # Every key rests: the one that has rested longest is the best bet.
            return min(self._resting, key=lambda i: self._resting[i])

    def label_of(self, key: str) -> Optional[str]:
        """The label of the source that gave ``key`` (None: not one of its keys lately)."""
        with self._lock:
            index = self._given.get(key)
        return None if index is None else self.labels[index]

    def refused(self, key: str) -> bool:
        """Rest the key that was refused; True when another key can serve now."""
        with self._lock:
            index = self._given.get(key)
            if index is None:
                return False
            self._resting[index] = time.monotonic() + self.rest_seconds
            now = time.monotonic()
            return any(self._resting.get(i, 0.0) <= now for i in range(len(self.sources)))


def alternatives(source: TokenSource) -> int:
    """How many other keys a request may try after refusals: the ring's other keys, or one fresh key
    from a command or a program's own function."""
    if isinstance(source, KeyRing):
        return len(source.sources) - 1 + sum(_renews(s) for s in source.sources)
    return 1 if _renews(source) else 0


def ring_label(source: TokenSource, key: str) -> Optional[str]:
    """Where a ring's ``key`` came from ("$OPENAI_KEY_2"): a refusal of one of several keys is a bad key
    among good ones, worth naming. None for any other source (a command's or a function's renewal)."""
    return source.label_of(key) if isinstance(source, KeyRing) else None


def _renews(source: TokenSource) -> bool:
    """Asked again, may it give another key? A key command (run again) and a program's own function
    (``start(token=...)``, for keys that rotate); a fixed key never."""
    return isinstance(source, CommandToken) or not (isinstance(source, (StaticToken, KeyRing)) or gives_no_key(source))


def refused(source: TokenSource, key: str, status: int) -> bool:
    """The upstream answered ``status`` (401 or 429) to ``key``: is a retry with another key worth it?

    A key ring rests the key and offers the next; a key command runs again after a 401
    (the key may have rotated under us), and a program's own function is called again; a fixed
    key has nothing else to offer.
    """
    if isinstance(source, KeyRing):
        return source.refused(key) or (status == 401 and any(
            isinstance(s, CommandToken) and s.expire(key) for s in source.sources))
    if isinstance(source, CommandToken):
        return status == 401 and source.expire(key)
    return status == 401 and _renews(source)


def key_source(keys: Sequence[str], labels: Sequence[str] = ()) -> TokenSource:
    """One key as it is, several as a ring used in turn (``labels``: the keys' variables, for messages)."""
    if len(keys) == 1:
        return static_token(keys[0])
    return KeyRing([static_token(k) for k in keys], labels=labels)
