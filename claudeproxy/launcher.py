"""``claudeproxy run [proxy options] -- COMMAND [ARGS...]``: the proxy for the lifetime of one command.

I/O: it starts the server, opens the log file, adds first-run state to Claude
Code's state file, runs the command and passes signals on. The environment
comes from ``cli.main`` (this module never reads ``os.environ``); what the
command is given is decided in ``claude_code.py``.

The steps, in the order the bad-input contract needs: the options are checked
(exit 2, one line), the command is looked up before anything listens (exit
127, one line naming it), the port is bound (exit 2, one line, when it cannot
be), then the command runs in the foreground with inherited stdio, and ``run``
returns its status (128+N when signal N ended it) after the proxy has stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, TextIO, Tuple

from . import cli, reachability, usage_replay
from .claude_code import (
    CLAUDE_CODE_WAIT,
    add_first_run_state,
    child_env,
    config_file,
    default_model,
    looks_like_claude,
    run_description,
    run_epilog,
    saved_model,
    settings_files,
    settings_flag,
    small_window,
)
from .config import Config, check_host, is_loopback_host
from .config_file import FileConfig
from .dialects import key_variables
from .observe import PACKAGE_LOGGER
from .redact import MASK, redact_text
from .server import RunningServer, start
from .settings_view import describe_config

log = logging.getLogger(PACKAGE_LOGGER)

NOT_FOUND = 127  # the shell's statuses for a command that is missing / cannot be executed
CANNOT_RUN = 126
# The default logs in the temp folder (open_log), and how long one nobody writes to is kept.
_TEMP_LOG_NAME = re.compile(r"claudeproxy-([0-9]{1,9})(-[A-Za-z0-9_]+)?\.log")
TEMP_LOG_DAYS = 7
# Flags that are complete without a command.
_ALONE = ("-h", "--help", "--version", "--print-config")
_USAGE = "claudeproxy run [proxy options] -- COMMAND [ARGS...]"


# --------------------------------------------------------------------------
# Options.


def run_parser(stdout: Optional[TextIO] = None) -> argparse.ArgumentParser:
    """The proxy's own parser, with ``run``'s defaults, help and two options of its own."""
    parser = cli.build_parser()
    parser.prog = "claudeproxy run"
    parser.usage = _USAGE
    parser.description = run_description()
    parser.epilog = run_epilog(cli.program())
    parser.out = stdout  # type: ignore[attr-defined]
    parser.set_defaults(port=0)
    group = parser.add_argument_group("run")
    if "--log-file" not in parser._option_string_actions:  # noqa: SLF001 - the proxy may have its own one day
        group.add_argument("--log-file", metavar="PATH", help="where the proxy logs (default: "
                           "claudeproxy-<pid>.log in the temp folder, deleted by a later start once its session ended and "
                           "it is a week old); its name is printed on stderr at the start")
    group.add_argument("--trust", action="store_true", help="also mark the current folder as trusted in Claude "
                       "Code's state (skips its \"trust this folder?\" question); never done without this flag")
    return parser


def split_argv(argv: List[str]) -> Tuple[List[str], Optional[List[str]]]:
    """(proxy options, command); the command is None when there is no ``--`` and a help flag is given."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    if any(arg in _ALONE for arg in argv):
        return argv, None
    raise cli.UsageError(f"run: put -- before the command: {_USAGE}")


def parse_run(argv: List[str], environ: Mapping[str, str],
              stdout: TextIO) -> Tuple[argparse.Namespace, Config, List[str]]:
    """The parsed options, the proxy's settings and the command; ``cli.UsageError`` for bad input."""
    options, command = split_argv(argv)
    parser = run_parser(stdout)
    ns, given = cli.parse_flags(parser, options)
    if command is not None and not command:
        raise cli.UsageError(f"run: no command after --: {_USAGE}")
    file = cli.load_config_file(ns.config, environ, cli.flag_specs(parser)) if ns.config else None
    # A file's port and host are for the standing server (a LAN one's 0.0.0.0 was refused here): run
    # takes a free port on loopback unless told on the command line.
    cli.merge_file(ns, given, file, skip={"port", "host"})
    _check_run_host(ns)
    config = cli.config_from_args(ns, environ, file)
    _check_run_settings(ns, given, file, environ, config)
    return ns, config, command or []


def _check_run_host(ns: argparse.Namespace) -> None:
    try:  # a typo ('127.0.0.1 ') is said as such, not as an address that is not loopback
        check_host(ns.host, cli.name_of(ns, "host"))
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None
    if not is_loopback_host(ns.host):  # the same rule as the server's
        raise cli.UsageError(f"run: {cli.name_of(ns, 'host')} must be a loopback address (the proxy serves only "
                             f"COMMAND), got {ns.host}")


def _check_run_settings(ns: argparse.Namespace, given: Set[str], file: Optional[FileConfig],
                        environ: Mapping[str, str], config: Config) -> None:
    try:
        cli.check_settings(ns, config)  # what the server checks, before anything listens or is written
        cli.check_overridden(ns, given, file, environ, skip={"port", "host"})
        if ns.log_file:
            cli.check_appendable(ns.log_file, cli.name_of(ns, "log_file"), try_it=not ns.print_config)
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None


def client_key(config: Config, environ: Mapping[str, str]) -> str:
    """The key the proxy requires and the command presents: --auth-key, the user's token, or a new one."""
    return config.auth_key or environ.get("ANTHROPIC_AUTH_TOKEN", "").strip() or "cp-" + secrets.token_urlsafe(24)


def page_address(url: str, key: Optional[str]) -> str:
    """The usage page's address a browser can open: with the session's client key, which a browser
    cannot send as a header; with a key of the user's own (never printed), where it goes."""
    return f"{url}/?key={urllib.parse.quote(key, safe='')}" if key else f"{url}/?key=YOUR-KEY"


# --------------------------------------------------------------------------
# The command.


def find_command(name: str, path: Optional[str], windows: bool,
                 which: Callable[..., Optional[str]] = shutil.which) -> Optional[str]:
    """The executable for ``name``, as a shell would find it; None when there is none.

    On Windows ``which`` finds npm's ``claude.cmd`` shim (through PATHEXT); the real
    ``claude.exe`` it starts is preferred, so arguments never pass through cmd.exe's quoting.
    """
    found = which(name, path=path)
    if found is None and os.path.dirname(name) and os.path.isfile(name):
        found = name  # a path to a file that is not executable: running it says why (exit 126)
    if found and windows:
        return npm_shim_target(found) or found
    return found


def npm_shim_target(shim: str) -> Optional[str]:
    """``<prefix>/node_modules/@anthropic-ai/claude-code/bin/claude.exe`` for npm's ``<prefix>/claude.cmd``.

    The package's only bin entry is ``claude -> bin/claude.exe`` on every platform, and npm
    puts its shims in the prefix folder beside ``node_modules``.
    """
    folder, base = os.path.split(shim)
    stem, ext = os.path.splitext(base)
    if stem.lower() != "claude" or ext.lower() not in (".cmd", ".bat", ".ps1"):
        return None
    exe = os.path.join(folder, "node_modules", "@anthropic-ai", "claude-code", "bin", "claude.exe")
    return exe if os.path.isfile(exe) else None


@dataclasses.dataclass(frozen=True)
class SignalPlan:
    """What the launcher does with signals while the command runs (names: some exist on one OS only)."""

    # Sent to the launcher alone (kill, a service manager, a closing terminal's shell): passed on.
    forward: Tuple[str, ...]
    # Sent by the terminal to the whole foreground group, the command included: the launcher
    # only outlives them, so that it can stop the proxy and return the command's status.
    outlive: Tuple[str, ...]


def signal_plan(windows: bool) -> SignalPlan:
    if windows:
        # No SIGTERM/SIGHUP delivery on Windows; Ctrl-C and Ctrl-Break reach every process on the
        # console. A KeyboardInterrupt that still gets through is swallowed by wait_for().
        return SignalPlan((), ("SIGINT", "SIGBREAK"))
    return SignalPlan(("SIGTERM", "SIGHUP"), ("SIGINT", "SIGQUIT"))


def on_windows() -> bool:
    """Which platform paths run takes (a function, so tests can choose)."""
    return os.name == "nt"


def _outlive(signum: int, frame: Any) -> None:
    # A Python handler, not SIG_IGN: handlers fall back to the default in a new program,
    # an ignored signal would stay ignored in the command.
    pass


class SignalRelay:
    """Installs a ``SignalPlan`` around the command (main thread only) and restores what was there."""

    def __init__(self, plan: SignalPlan) -> None:
        self.plan = plan
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.pending: List[int] = []  # arrived before the command started
        self.previous: Dict[int, Any] = {}

    def __enter__(self) -> "SignalRelay":
        if threading.current_thread() is threading.main_thread():
            for names, handler in ((self.plan.forward, self._forward), (self.plan.outlive, _outlive)):
                for sig in filter(None, (getattr(signal, name, None) for name in names)):
                    self.previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def attach(self, proc: "subprocess.Popen[bytes]") -> None:
        self.proc = proc
        for sig in self.pending:
            self._forward(sig, None)

    def _forward(self, signum: int, frame: Any) -> None:
        if self.proc is None:
            self.pending.append(signum)
            return
        try:
            self.proc.send_signal(signum)
        except OSError:  # it has just exited
            pass


def stop_outliving_signals(running: Any, windows: bool) -> None:
    """Stop the proxy with SIGTERM and SIGHUP outlived until it has: its calls in flight drain first
    (up to the shutdown grace), and a second one meanwhile killed run, the streams cut with no error
    event and no call record. Ctrl-C still ends the wait (KeyboardInterrupt): a user's way out."""
    with SignalRelay(SignalPlan((), signal_plan(windows).forward)):
        running.shutdown()


def wait_for(proc: Any) -> int:
    """The command's return code; a KeyboardInterrupt meanwhile was meant for the command too."""
    while True:
        try:
            return int(proc.wait())
        except KeyboardInterrupt:
            continue


def exit_status(returncode: int) -> int:
    """A shell's status: 128+N for a command that signal N ended (Popen reports -N)."""
    return 128 - returncode if returncode < 0 else returncode


def run_command(argv: List[str], env: Dict[str, str], windows: bool, stderr: TextIO) -> int:
    with SignalRelay(signal_plan(windows)) as relay:
        try:
            proc = subprocess.Popen(argv, env=env)
        except OSError as exc:  # vanished since the lookup, not executable, bad format
            print(f"claudeproxy: error: cannot run {argv[0]}: {exc.strerror or exc}", file=stderr)
            return NOT_FOUND if isinstance(exc, FileNotFoundError) else CANNOT_RUN
        relay.attach(proc)
        return exit_status(wait_for(proc))


# --------------------------------------------------------------------------
# Claude Code's state file.


def update_state_file(path: str, change: Callable[[Dict[str, Any]], List[str]]) -> List[str]:
    """Apply ``change`` to the JSON object in ``path`` (absent: ``{}``); the keys it added.

    Rewritten only when something was added: atomically (a temp file renamed over it),
    with the file's mode, through a symlink to its target. ``ValueError`` when the file
    is not a JSON object; it is then left as it is.
    """
    path = os.path.realpath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        state: Any = {}
        mode = 0o600
    else:
        state = json.loads(text)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    added = change(state)
    if added:
        _write_atomically(path, json.dumps(state, indent=2, ensure_ascii=False) + "\n", mode)
    return added


def _write_atomically(path: str, text: str, mode: int) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".claude.json.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def seed_first_run_state(env: Mapping[str, str], trust: bool, windows: bool, stderr: TextIO) -> None:
    """Add what a fresh host lacks to Claude Code's state file; one line on stderr if anything changed."""
    path = config_file(env, windows)
    if path is None:
        return
    trust_dir = os.path.realpath(os.getcwd()) if trust else None
    try:
        added = update_state_file(path, lambda state: add_first_run_state(state, trust_dir))
    except ValueError:
        print(f"claudeproxy: warning: {path} is not a JSON object; left as it is (first-run state not added)",
              file=stderr)
        return
    except OSError as exc:
        print(f"claudeproxy: warning: cannot update {path}: {exc.strerror or exc}", file=stderr)
        return
    if added:
        print(f"claudeproxy: added {', '.join(added)} to {path}", file=stderr)


# --------------------------------------------------------------------------
# The session.


def open_log(path: Optional[str], pid: int) -> Tuple[TextIO, str]:
    """The proxy's log file (appended to, private to the user) and its absolute name."""
    if path:
        path = os.path.abspath(path)
        return FollowedLog(path), path
    fd, path = _new_temp_log(pid)
    prune_temp_logs(tempfile.gettempdir(), time.time())
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1), path


def prune_temp_logs(folder: str, now: float, keep_seconds: float = TEMP_LOG_DAYS * 86400) -> int:
    """Delete this user's default logs (``claudeproxy-<pid>[-x].log``) of sessions that have ended
    and that nothing wrote to for ``keep_seconds``: one a session, for a user who starts several a
    day, would otherwise pile up where nobody clears them (Windows never does, macOS after days).
    Only regular files of the user's own, never a link, are touched. Returns how many went."""
    gone = 0
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        found = _TEMP_LOG_NAME.fullmatch(name)
        if not found or _running(int(found.group(1))):
            continue  # another name, or the log of a session still running (idle for a week)
        path = os.path.join(folder, name)
        try:
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and (uid is None or info.st_uid == uid) \
                    and now - info.st_mtime > keep_seconds:
                os.unlink(path)
                gone += 1
        except OSError:
            continue  # gone already, or not ours to delete
    return gone


class FollowedLog(io.TextIOBase):
    """A ``--log-file`` that follows its name: once logrotate (or the user) moved or deleted the
    file, the next line goes to a new one under the name, as logging's WatchedFileHandler does,
    but private to the user (0600) like the first. A session runs for days behind Claude Code;
    without this its log went on into the rotated file, and the named one stayed empty.

    The default log in the shared temp folder is not followed: opening a name there again could
    open a file or link another user put in its place.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._lock = threading.Lock()
        self._nofollow = cli.no_follow(path)  # a link put under the name later is not followed
        self._stream, self._id = self._open()

    def _open(self) -> Tuple[TextIO, Tuple[int, int]]:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | self._nofollow, 0o600)
        st = os.fstat(fd)
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1), (st.st_dev, st.st_ino)

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._id

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            if self._moved():
                try:
                    stream, self._id = self._open()
                except OSError:
                    pass  # the folder is gone or not writable now: the old file still takes the line
                else:
                    self._stream.close()
                    self._stream = stream
            return self._stream.write(text)

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def close(self) -> None:
        try:
            super().close()  # flushes first
        finally:
            with self._lock:
                self._stream.close()


def _new_temp_log(pid: int) -> Tuple[int, str]:
    """A file of the user's own, new, in the shared temp folder: never one already there (another
    user's, with its own mode, or a link planted to make the proxy write somewhere else)."""
    path = os.path.join(tempfile.gettempdir(), f"claudeproxy-{pid}.log")
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600), path
    except FileExistsError:
        return tempfile.mkstemp(prefix=f"claudeproxy-{pid}-", suffix=".log")  # O_EXCL and 0600 too


def _running(pid: int) -> bool:
    """Is process ``pid`` alive (a reused pid too: its log is then kept, the safe way)?"""
    if os.name == "nt" or pid == os.getpid():
        # Windows: os.kill would end it, and a file a process holds open cannot be deleted there.
        # This process: its own log is new; an old one of the same pid is an earlier process's
        # (pids repeat in containers), which the age test alone decides.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, another user's
    return True


def command_env(running: RunningServer, config: Config, environ: Mapping[str, str], routed: Any) -> Dict[str, str]:
    """``claude_code.child_env`` for the model Claude Code's main loop will ask for (``routed``: its
    route, ``main_loops_route``)."""
    window = routed.target.facts.context_window if routed else None
    cap = routed.target.output_cap if routed else None
    # Only an --idle-timeout over Claude Code's 600 s says anything (the 10 s to connect come with any).
    wait = config.idle_timeout + config.connect_timeout if config.idle_timeout > CLAUDE_CODE_WAIT else 0.0
    return child_env(environ, running.url, config.auth_key or "", window, cap, wait)


def main_loops_route(running: RunningServer, environ: Mapping[str, str], claude_args: Sequence[str]) -> Any:
    """The route of the model Claude Code's main loop asks for first (None: no route takes it);
    ``claude_args``: Claude Code's own command line, whose --model wins (none for another COMMAND,
    which may be a script that runs Claude Code: its settings files are read all the same)."""
    flag = settings_flag(claude_args)  # JSON text or a file: it wins over the settings files
    given = [flag if flag.lstrip().startswith("{") else _settings_text(flag)] if flag else []
    files = [_settings_text(path) for path in settings_files(environ, on_windows(), os.getcwd())]
    return running.server.proxy.router.resolve(default_model(environ, claude_args, saved_model(given + files)))


_MOST_SETTINGS = 16 << 20  # a settings file larger than this is not read (Claude Code's are kilobytes)


def _settings_text(path: str) -> Optional[str]:
    """A settings file's text, or None where it is no regular file (a FIFO would block the start),
    cannot be read, or is larger than ``_MOST_SETTINGS``."""
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | getattr(os, "O_NONBLOCK", 0))) as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MOST_SETTINGS:
                return None
            return f.read(_MOST_SETTINGS).decode("utf-8", errors="replace")
    except OSError:
        return None


def window_warnings(routed: Any) -> List[str]:
    """What the window of the model Claude Code's main loop asks for (``routed``: its route) makes
    of a session: a line where it is too small for Claude Code itself."""
    window = routed.target.facts.context_window if routed else None
    said = small_window(routed.target.label, window) if routed and window else None
    return [said] if said else []


def unreachable_upstreams(running: RunningServer, config: Config,
                          connect: Callable[..., Any] = socket.create_connection) -> List[str]:
    """``reachability.unreachable_upstreams`` for the running server's providers."""
    urls = [p.url for p in running.server.proxy.router.providers.values()]
    return reachability.unreachable_upstreams(urls, config, cli.config_secrets(config), connect)


def _start_proxy(ns: argparse.Namespace, config: Config) -> RunningServer:
    path = cli.usage_log_path(ns)
    sink = cli.usage_writer(path) if path else None
    logged = usage_replay.log_size(path)  # before this server writes a line of its own
    try:
        running = start(config, sink)
    except OSError as exc:  # the port is taken, or the address cannot be had: a bad setting
        raise _NotStarted(cli.cannot_listen(ns, config, exc)) from None
    except ValueError as exc:  # a setting the server itself refuses
        raise _NotStarted(" ".join(str(exc).split())) from None
    usage_replay.replay_in_background(running.metrics, path, logged)  # today's totals so far
    return running


def _session(running: RunningServer, ns: argparse.Namespace, config: Config, typed: str, argv: List[str],
             environ: Mapping[str, str], log_path: str, stderr: TextIO, page_key: Optional[str] = None) -> int:
    windows = on_windows()
    try:
        log.info("%s", cli._describe(running.server))  # noqa: SLF001
        claude = looks_like_claude(typed) or looks_like_claude(argv[0])
        cli._warn_about(running.server, environ, claude)  # noqa: SLF001
        routed = main_loops_route(running, environ, argv[1:] if claude else ())
        env = command_env(running, config, environ, routed)
        print(f"claudeproxy: proxy on {running.url} (usage page {page_address(running.url, page_key)}), "
              f"log in {log_path}", file=stderr, flush=True)
        for line in unreachable_upstreams(running, config) + (window_warnings(routed) if claude else []):
            log.warning("%s", line)
            print(f"claudeproxy: warning: {line}", file=stderr, flush=True)
        # Logged already (_warn_about): the terminal too.
        for line in cli.start_warnings(running.server, environ, claude):
            print(f"claudeproxy: warning: {line}", file=stderr, flush=True)
        if claude:
            seed_first_run_state(env, ns.trust, windows, stderr)
        elif ns.trust:
            # Claude Code's state is touched only for Claude Code itself (a wrapper script may run
            # anything): said, not silently skipped.
            print(f"claudeproxy: --trust left alone: {os.path.basename(argv[0])!r} is not Claude Code's "
                  "`claude` (nothing was marked trusted)", file=stderr, flush=True)
        stderr.flush()
        warnings = _SessionWarnings(cli.secrets_source(config))
        logging.getLogger(PACKAGE_LOGGER).addHandler(warnings)
        try:
            status = run_command(argv, env, windows, stderr)
        finally:
            logging.getLogger(PACKAGE_LOGGER).removeHandler(warnings)
        log.info("%s exited with status %d; stopping", os.path.basename(argv[0]), status)
        if status != 0:
            warnings.say(os.path.basename(argv[0]), status, log_path, stderr)
        return status
    finally:
        stop_outliving_signals(running, windows)


class _SessionWarnings(logging.Handler):
    """The first few distinct warnings the proxy logged while COMMAND ran, said on the terminal when
    COMMAND fails: Claude Code shows an upstream's 404 (a base URL without its /v1, a model name
    the upstream lacks) only as "an issue with the selected model", and the reason is in a log file
    nobody was told to read."""

    MOST = 5
    COUNTED = 1000  # distinct warnings past the first five counted as "more", at most

    def __init__(self, secrets: Callable[[], Any]) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(cli.RedactingFilter(secrets))  # as every handler of the log's
        self.lines: Dict[str, None] = {}
        self.others: Set[str] = set()  # the distinct ones past MOST, for their count

    @property
    def more(self) -> int:
        return len(self.others)

    def emit(self, record: logging.LogRecord) -> None:
        line = " ".join(record.getMessage().split())[:500]
        if line in self.lines:
            return
        if len(self.lines) < self.MOST:
            self.lines[line] = None
        elif len(self.others) < self.COUNTED:
            self.others.add(line)

    def say(self, name: str, status: int, log_path: str, stderr: TextIO) -> None:
        if not self.lines:
            return
        more = f", {self.more} more" if self.more else ""
        print(f"claudeproxy: {name} exited with status {status}; the proxy's warnings while it ran{more} "
              f"(all in {log_path}):", file=stderr)
        for line in self.lines:
            print(f"claudeproxy: warning: {line}", file=stderr)
        stderr.flush()


class _NotStarted(Exception):
    """The proxy could not start (a bad setting found only then): one line, exit 2."""


def _unwritten(stream: TextIO, path: str) -> bool:
    """Is the default log this run opened still empty, and still the regular file at that name (a
    temp folder without the sticky bit lets another user swap the name)?"""
    try:
        stream.flush()
        mine, there = os.fstat(stream.fileno()), os.lstat(path)
    except (OSError, ValueError):
        return False
    return mine.st_size == 0 and stat.S_ISREG(there.st_mode) and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


def _fail(message: str, environ: Mapping[str, str], stderr: TextIO, status: int) -> int:
    secrets_ = [v for v in (*map(environ.get, key_variables()), environ.get("CLAUDEPROXY_AUTH_KEY"),
                            environ.get("ANTHROPIC_AUTH_TOKEN")) if v]
    print(f"claudeproxy: error: {redact_text(' '.join(message.split()), secrets_)}", file=stderr)
    return status


def _print_config(config: Config, path: Optional[str], environ: Mapping[str, str], stdout: TextIO) -> int:
    """``run --print-config``: the proxy's settings, and the key the session's client would get."""
    described = describe_config(config, path)
    if not config.auth_key:  # the session's key (client_key): "none" would say any client gets in
        users_own = environ.get("ANTHROPIC_AUTH_TOKEN", "").strip()
        described["client_key"] = (f"{MASK} (from ANTHROPIC_AUTH_TOKEN)" if users_own
                                   else "a new random key each run, given to COMMAND as ANTHROPIC_AUTH_TOKEN")
    try:
        print(json.dumps(described, indent=2), file=stdout)
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        pass
    return 0


def run_main(argv: List[str], environ: Mapping[str, str], stdout: TextIO, stderr: TextIO) -> int:
    """``claudeproxy run ...``: the command's exit status, or 2/127 for bad input (one line on stderr).

    1 only when the log file, checked already, cannot be opened after all."""
    environ = _without_blank_auth_key(environ)
    try:
        ns, config, command = parse_run(argv, environ, stdout)
    except cli._Exit as done:  # noqa: SLF001 - --help, --version
        return done.status
    except cli.UsageError as exc:
        return _fail(str(exc), environ, stderr, 2)
    if ns.print_config:
        return _print_config(config, ns.config, environ, stdout)
    try:
        cli.check_keys(config, forwarded=False)  # its client key is the session's: never passed on
    except ValueError as exc:
        return _fail(str(exc), environ, stderr, 2)
    exe = _command_path(command[0], environ, stderr)
    if exe is None:
        return NOT_FOUND
    config, page_key = _with_session_key(config, environ)
    return _run_logged(ns, config, command[0], [exe] + command[1:], environ, stderr, page_key)


def _without_blank_auth_key(environ: Mapping[str, str]) -> Mapping[str, str]:
    if "CLAUDEPROXY_AUTH_KEY" in environ and not environ["CLAUDEPROXY_AUTH_KEY"].strip():
        # Set but empty (a template's .env): the server refuses it, as it would take any client; run
        # makes a key of the session's own without one, so here it is as good as unset.
        environ = {k: v for k, v in environ.items() if k != "CLAUDEPROXY_AUTH_KEY"}
    return environ


def _command_path(typed: str, environ: Mapping[str, str], stderr: TextIO) -> Optional[str]:
    """The command's executable; None once "command not found" is said."""
    exe = find_command(typed, environ.get("PATH"), on_windows())
    if exe is None:
        hint = (" (Claude Code installs with: npm install -g @anthropic-ai/claude-code)"
                if looks_like_claude(typed) else "")
        print(f"claudeproxy: error: {typed}: command not found{hint}", file=stderr)
    return exe


def _with_session_key(config: Config, environ: Mapping[str, str]) -> Tuple[Config, Optional[str]]:
    """``config`` with the key the command presents, and that key where it may be shown."""
    users_own = bool(config.auth_key or environ.get("ANTHROPIC_AUTH_TOKEN", "").strip())
    config = config.replace(auth_key=client_key(config, environ))
    # A key of the session's own may be shown (the usage page's address); the user's own never is.
    page_key = None if users_own else config.auth_key
    return config, page_key


def _run_logged(ns: argparse.Namespace, config: Config, typed: str, argv: List[str], environ: Mapping[str, str],
                stderr: TextIO, page_key: Optional[str]) -> int:
    """Opens the proxy's log, starts the proxy logging there and runs the session; the package
    logger is left as it was."""
    try:
        stream, log_path = open_log(ns.log_file, os.getpid())
    except OSError as exc:
        return _fail(f"cannot open the log file {ns.log_file or ''}: {exc.strerror or exc}", environ, stderr, 1)
    logger = logging.getLogger(PACKAGE_LOGGER)
    saved = (logger.level, logger.propagate)
    handler = cli.setup_logging(ns.log_level, cli.secrets_source(config), stream, ns.log_format, ns.log_bodies)
    started = False
    try:
        running = _start_proxy(ns, config)
        started = True
        return _session(running, ns, config, typed, argv, environ, log_path, stderr, page_key)
    except _NotStarted as exc:
        return _fail(str(exc), environ, stderr, 2)
    except KeyboardInterrupt:  # Ctrl-C before the command started (or after it ended): the proxy has stopped
        return 128 + int(signal.SIGINT)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        _close_log(stream, log_path, unused=not started and not ns.log_file)


def _close_log(stream: TextIO, log_path: str, unused: bool) -> None:
    # The default log of a proxy that never started (a bad setting, Ctrl-C, a failure), empty:
    # not left behind for the cleanup of old logs, which waits a week; nothing named it yet.
    # Removed once closed (Windows keeps an open file).
    drop = unused and _unwritten(stream, log_path)
    stream.close()
    if drop:
        try:
            os.unlink(log_path)
        except OSError:
            pass
