"""What Claude Code needs from ``claudeproxy run``: its environment, its first-run state, its help text.

Pure: no I/O, no clock; the environment is always a mapping handed in. The
facts come from running the real Claude Code 2.1.331 on a fresh, offline host
(a temp HOME, no route to Anthropic) against a local fake, screen by screen:

- ``ANTHROPIC_AUTH_TOKEN`` (sent as ``Authorization: Bearer``) is the one
  credential that brings no prompt: no "use this API key?" question and, on an
  empty HOME, no connectivity check of api.anthropic.com (which is fatal offline).
  ``ANTHROPIC_API_KEY`` brings both, and the key question's default answer
  (No) rejects the key for good: every prompt then says "Not logged in".
- ``hasCompletedOnboarding`` in ``.claude.json`` skips the theme picker and the
  security notes. Folder trust is a security answer and stays the user's.

``VARIABLES`` is the one table of what ``run`` sets; ``child_env`` applies it,
the run help and the README describe it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import textwrap
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

# The model Claude Code 2.1.331 asks for when ANTHROPIC_MODEL is not set.
DEFAULT_MODEL = "claude-opus-5-5"
# Claude Code raises a smaller CLAUDE_CODE_AUTO_COMPACT_WINDOW to this, and it compacts at the
# window minus a 33k buffer: a smaller context value would make it compact on every turn.
MIN_CONTEXT = 100_000
# How Claude Code 2.1.331 places its compaction threshold (read from its code): the window less
# the output it reserves (its max output, at most 20,000), less a 13,000-token buffer for the
# summary; CLAUDE_AUTOCOMPACT_PCT_OVERRIDE lowers it to that percentage of the window less the output.
_RESERVED_OUTPUT = 20_000
_SUMMARY_BUFFER = 13_000
# Claude Code's own prompt (system prompt and tool definitions) is about 14,000 tokens. A threshold
# under 24,000 leaves too little beside it: at 32k, with 13k-token reads, a threshold of 23k made
# Claude Code stop with "Autocompact is thrashing" (probe AK); such windows keep the reactive path.
CLAUDE_CODE_OWN_PROMPT = 14_000
_LEAST_THRESHOLD = 24_000
# The names a Claude Code executable has: npm's bin link and the native build (claude),
# the Windows binary (claude.exe) and npm's Windows shims (claude.cmd, claude.bat).
_CLAUDE_NAMES = ("claude", "claude.exe", "claude.cmd", "claude.bat")

# Removed from the command's environment, with the reason: each would make Claude Code use another
# credential or another backend than the proxy.
DROPPED: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (("ANTHROPIC_API_KEY",), "an API key brings the \"use this API key?\" prompt (its default rejects the key "
     "for good) and, on a fresh host, the fatal connectivity check; the token replaces it, and a real Anthropic "
     "key never reaches the proxy"),
    (("CLAUDE_CODE_OAUTH_TOKEN",), "a claude.ai login would be used instead of the proxy's token"),
    (("ANTHROPIC_UNIX_SOCKET",), "would send requests past the proxy"),
    (("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY", "CLAUDE_CODE_USE_GATEWAY",
      "CLAUDE_CODE_USE_MANTLE", "CLAUDE_CODE_USE_ANTHROPIC_AWS", "CLAUDE_CODE_USE_ANTHROPIC_GOOGLE_CLOUD"),
     "each switches Claude Code to another provider"),
)

# (name, value, why). The first two always point the command at this proxy; NO_PROXY keeps the
# user's entries and gains the loopback ones; the rest are defaults that the user's own
# environment overrides.
VARIABLES: Tuple[Tuple[str, str, str], ...] = (
    ("ANTHROPIC_BASE_URL", "http://127.0.0.1:PORT", "every request goes to this proxy"),
    ("ANTHROPIC_AUTH_TOKEN", "the proxy's client key: --auth-key, else your ANTHROPIC_AUTH_TOKEN, else a random "
     "key made for this session", "the one credential Claude Code accepts with no login, no key prompt and no "
     "connectivity check; the proxy requires it, so nothing else on this machine can use the session"),
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1", "no telemetry, error reports, update checks or MCP registry "
     "lookups at Anthropic (a headless run then talks to nothing but the proxy)"),
    ("CLAUDE_CODE_AUTO_MODE_SERVER", "0", "auto mode checks risky actions locally, through the proxy; otherwise a "
     "notice about the gateway (or \"auto mode can't check actions\") blocks the first such action"),
    ("DISABLE_AUTOUPDATER", "1", "the background updater would install a newer Claude Code during the session"),
    ("CLAUDE_CODE_AUTO_COMPACT_WINDOW", "the routed model's context window, at least 100000", "when to compact: "
     "Claude Code otherwise assumes its own model's window (200k or 1M)"),
    ("CLAUDE_AUTOCOMPACT_PCT_OVERRIDE", "where the window is under 100000: the percentage that puts Claude Code's "
     "compaction where it would be for the window itself (not under 24,000 tokens)", "Claude Code compacts on its "
     "own before the prompt outgrows the window; otherwise every compaction started from a refused, over-full prompt "
     "(at 65k: 17 of 50 requests refused, and none with it)"),
    ("CLAUDE_CODE_MAX_CONTEXT_TOKENS", "the same", "the window Claude Code shows and uses for a model id it does "
     "not know (ANTHROPIC_MODEL=<upstream model>)"),
    ("CLAUDE_CODE_MAX_OUTPUT_TOKENS", "the routed model's output cap", "max_tokens of every request, so none "
     "asks for more than the model can give"),
    ("API_TIMEOUT_MS", "where --idle-timeout is over 600 s: what the proxy waits for an answer's start, and 30 s",
     "Claude Code gives up on a request after 600 s, and sent again a long prompt a CPU model had been reading "
     "for ten minutes"),
    ("NO_PROXY", "your NO_PROXY (or no_proxy) plus 127.0.0.1,localhost and the proxy's own address; no_proxy "
     "the same", "with HTTP(S)_PROXY set, the calls to this proxy would go to that proxy instead: in clear "
     "text, session token and prompts included, and mostly refused"),
)
# The loopback names every command must reach directly (the proxy's own address is added to them).
LOOPBACK_NO_PROXY = ("127.0.0.1", "localhost")


def context_value(window: int) -> int:
    """The context window as Claude Code should be told it (see ``MIN_CONTEXT``)."""
    return max(window, MIN_CONTEXT)


def compact_percent(window: int, max_output: Optional[int]) -> Optional[int]:
    """``CLAUDE_AUTOCOMPACT_PCT_OVERRIDE`` for a window under ``MIN_CONTEXT``: the percentage of the
    window Claude Code is told less its reserved output that is, at most, where it would compact in
    ``window`` itself. ``max_output``: Claude Code's max output tokens (None: its own default, over
    20,000). None where the window needs none, or where that threshold would be under
    ``_LEAST_THRESHOLD``."""
    if window >= MIN_CONTEXT:
        return None
    reserved = min(max_output or _RESERVED_OUTPUT, _RESERVED_OUTPUT)
    threshold = window - reserved - _SUMMARY_BUFFER
    if threshold < _LEAST_THRESHOLD:
        return None
    return threshold * 100 // (MIN_CONTEXT - reserved)


# Claude Code's own wait for an answer (API_TIMEOUT_MS's default), and what it is given beyond the
# proxy's, so that the proxy's timeout error, not Claude Code's retry, ends a wait.
CLAUDE_CODE_WAIT = 600.0
_WAIT_MARGIN = 30.0


def child_env(parent: Mapping[str, str], base_url: str, token: str, context_window: Optional[int] = None,
              output_cap: Optional[int] = None, proxy_wait: float = 0.0) -> Dict[str, str]:
    """The command's environment: ``parent`` without ``DROPPED``, with ``VARIABLES``.

    ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_AUTH_TOKEN`` are always set (they are what
    ``run`` is for); every other variable keeps a value the user already gave. ``proxy_wait``: the
    longest the proxy waits for an answer's start (seconds).
    """
    dropped = {name for names, _ in DROPPED for name in names}
    env = {k: v for k, v in parent.items() if k not in dropped}
    env["ANTHROPIC_BASE_URL"] = base_url
    env["ANTHROPIC_AUTH_TOKEN"] = token
    env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    env.setdefault("CLAUDE_CODE_AUTO_MODE_SERVER", "0")
    env.setdefault("DISABLE_AUTOUPDATER", "1")
    if output_cap:
        env.setdefault("CLAUDE_CODE_MAX_OUTPUT_TOKENS", str(output_cap))
    if context_window:
        _set_window(env, context_window)
    if proxy_wait > CLAUDE_CODE_WAIT:
        env.setdefault("API_TIMEOUT_MS", str(int((proxy_wait + _WAIT_MARGIN) * 1000)))
    # Both spellings: tools differ in which one they read first (curl and Node's proxy-from-env:
    # no_proxy), so each keeps the user's entries, from the other spelling when it is unset.
    direct = LOOPBACK_NO_PROXY + ((urlsplit(base_url).hostname or "127.0.0.1"),)
    for name, other in (("NO_PROXY", "no_proxy"), ("no_proxy", "NO_PROXY")):
        env[name] = with_entries(parent.get(name, parent.get(other, "")), direct)
    return env


def small_window(label: str, window: int) -> Optional[str]:
    """A line for a routed model whose window leaves little beside Claude Code's own prompt: its
    sessions ended "Prompt is too long" after a turn or two, with nothing said (probe AK, 16k)."""
    if window >= _LEAST_THRESHOLD:
        return None
    return (f"{label}'s context window ({window:,} tokens) leaves little beside Claude Code's own system "
            f"prompt and tools (about {CLAUDE_CODE_OWN_PROMPT:,} tokens): expect \"Prompt is too long\" after a "
            "turn or two; serve the model with a window of 32k or more (64k or more works well)")


def _whole(text: Optional[str]) -> Optional[int]:
    """A positive whole number from an environment variable, else None."""
    try:
        value = int((text or "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _set_window(env: Dict[str, str], window: int) -> None:
    """The window's variables in ``env``, each only where the user gave none; the compaction point
    only beside the window set here: a window of the user's own is compacted as they chose."""
    percent = compact_percent(window, _whole(env.get("CLAUDE_CODE_MAX_OUTPUT_TOKENS")))
    if percent and "CLAUDE_CODE_AUTO_COMPACT_WINDOW" not in env:
        env.setdefault("CLAUDE_AUTOCOMPACT_PCT_OVERRIDE", str(percent))
    env.setdefault("CLAUDE_CODE_AUTO_COMPACT_WINDOW", str(context_value(window)))
    env.setdefault("CLAUDE_CODE_MAX_CONTEXT_TOKENS", str(context_value(window)))


def with_entries(no_proxy: str, entries: Tuple[str, ...]) -> str:
    """``no_proxy`` with each of ``entries`` it lacks added at its end; the user's text stays as it is.
    Entries are separated by commas and/or blanks (as curl reads them) and compared without case."""
    present = {e.lower() for e in re.split(r"[,\s]+", no_proxy) if e}
    missing = [e for e in dict.fromkeys(entries) if e.lower() not in present]
    kept = no_proxy.strip().rstrip(",").strip()
    return ",".join(([kept] if kept else []) + missing)


def default_model(env: Mapping[str, str], args: Sequence[str] = (), saved: Optional[str] = None) -> str:
    """The model Claude Code's main loop asks for: its ``--model`` among ``args`` (its command line;
    the last one given, as its option parser takes it), else ``ANTHROPIC_MODEL``, else the model its
    settings keep (``saved``: what ``/model`` saves, ``saved_model``), else its built-in default.

    A ``[1m]`` suffix is Claude Code's own marker and never goes on the wire.
    """
    name = env.get("ANTHROPIC_MODEL", "").strip() or (saved or "").strip()
    for i, arg in enumerate(args):
        if arg == "--":
            break
        given = args[i + 1] if arg == "--model" and i + 1 < len(args) else \
            arg[len("--model="):] if arg.startswith("--model=") else ""
        name = given.strip() or name  # an empty one leaves Claude Code on the model it had
    name = re.sub(r"\[[^\]]*\]$", "", name)
    return DEFAULT_MODEL if name.lower() in ("", "default") else name  # "default": Claude Code's own alias


def settings_flag(args: Sequence[str]) -> Optional[str]:
    """Claude Code's ``--settings`` among ``args`` (the last one, before any ``--``): JSON text or a
    file's path, which wins over its settings files; None without one."""
    found = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--settings" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--settings="):
            found = arg[len("--settings="):]
    return found


def settings_files(env: Mapping[str, str], windows: bool, folder: str) -> List[str]:
    """Claude Code's settings files that may keep a model, the one that wins first: the project's
    local and shared ones in ``folder`` (where it starts), then the user's (``$CLAUDE_CONFIG_DIR``,
    else ``.claude`` in the home folder)."""
    files = [os.path.join(folder, ".claude", "settings.local.json"), os.path.join(folder, ".claude", "settings.json")]
    user = config_file(env, windows)  # .claude.json beside the user's folder, or in CLAUDE_CONFIG_DIR
    if user is not None:
        home = os.path.dirname(user)
        files.append(os.path.join(home, "settings.json") if env.get("CLAUDE_CONFIG_DIR", "").strip()
                     else os.path.join(home, ".claude", "settings.json"))
    return files


def saved_model(texts: Sequence[Optional[str]]) -> Optional[str]:
    """The model Claude Code's settings (``texts``, in ``settings_files``' order, the winner first;
    None for one that could not be read) name: an ``env`` block's ``ANTHROPIC_MODEL`` in any of them
    (Claude Code sets it as its environment, which wins over ``model``), else the first ``model``. A
    file that is no JSON object is passed over, as Claude Code passes it over."""
    found = [_settings(text) for text in texts]
    envs = [s["env"].get("ANTHROPIC_MODEL") for s in found if isinstance(s.get("env"), dict)]
    for model in envs + [s.get("model") for s in found]:
        if isinstance(model, str) and model.strip():
            return model.strip()
    return None


def _settings(text: Optional[str]) -> Dict[str, Any]:
    """A settings file's object; {} for none, or for one that is no JSON object."""
    try:
        settings = json.loads(text) if text else None
    except (ValueError, RecursionError):  # nested too deep: no settings file of Claude Code's
        return {}
    return settings if isinstance(settings, dict) else {}


def looks_like_claude(path: str) -> bool:
    """Whether ``path`` names a Claude Code executable (only then does ``run`` touch its state)."""
    return os.path.basename(path.replace("\\", "/")).lower() in _CLAUDE_NAMES


def config_file(env: Mapping[str, str], windows: bool) -> Optional[str]:
    """Claude Code's state file: ``$CLAUDE_CONFIG_DIR/.claude.json``, else ``.claude.json`` in the home folder.

    The home folder is Node's ``os.homedir()``: ``HOME`` on POSIX, ``USERPROFILE`` on Windows.
    None when the environment names neither.
    """
    folder = env.get("CLAUDE_CONFIG_DIR", "").strip()
    home = env.get("USERPROFILE" if windows else "HOME", "").strip()
    if folder:
        if folder.startswith("~") and home:
            folder = home + folder[1:]
        return os.path.join(folder, ".claude.json")
    return os.path.join(home, ".claude.json") if home else None


def add_first_run_state(state: Dict[str, object], trust_dir: Optional[str] = None) -> List[str]:
    """Add what a fresh host lacks to Claude Code's state, in place; the keys added.

    ``hasCompletedOnboarding`` when absent; with ``trust_dir`` (an absolute, resolved
    path) its ``hasTrustDialogAccepted``. A value that is present, even ``false``, stays.
    """
    added = []
    if "hasCompletedOnboarding" not in state:
        state["hasCompletedOnboarding"] = True
        added.append("hasCompletedOnboarding")
    if trust_dir is not None:
        projects = state.setdefault("projects", {})
        entry = projects.setdefault(trust_dir, {}) if isinstance(projects, dict) else None
        if isinstance(entry, dict) and "hasTrustDialogAccepted" not in entry:
            entry["hasTrustDialogAccepted"] = True
            added.append(f"projects[{trust_dir}].hasTrustDialogAccepted")
    return added


# --------------------------------------------------------------------------
# Help texts.


def port_given(argv: List[str], default: int) -> int:
    """The ``--port`` on a command line (for the help footer, printed before the flags are parsed)."""
    for i, arg in enumerate(argv):
        value = arg[len("--port="):] if arg.startswith("--port=") else argv[i + 1] if arg == "--port" and i + 1 < len(argv) else ""
        if value.isdigit() and 0 < int(value) < 65536:
            return int(value)
    return default


def invocation(argv0: str, package: str) -> str:
    """How this copy was started, for the recipes ``--help`` gives: ``python3 claudeproxy.pyz`` (the one
    file), ``claudeproxy`` (the installed command) or ``python3 -m PACKAGE`` (a checkout, or a copy
    vendored under another name: ``python3 -m claudeproxy`` is no module there)."""
    name = os.path.basename(argv0)
    if name.endswith(".pyz"):
        return f"python3 {shlex.quote(argv0)}"  # a path with blanks, as a shell takes it
    if name in ("claudeproxy", "claudeproxy.exe"):
        return "claudeproxy"
    return f"python3 -m {package}"


def help_footer(port: int, program: str = "python3 -m claudeproxy") -> str:
    """The recipe that ends ``claudeproxy --help``: in one step, and by hand; ``program`` as this copy
    was started (``invocation``)."""
    return ("Run Claude Code through it in one step:  "
            f"{program} run --upstream URL --model NAME -- claude\n"
            f"Or by hand:  ANTHROPIC_BASE_URL=http://127.0.0.1:{port} ANTHROPIC_AUTH_TOKEN=<--auth-key or any> "
            "CLAUDE_CODE_AUTO_MODE_SERVER=0 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 claude\n"
            "With HTTP(S)_PROXY set, also add 127.0.0.1,localhost to NO_PROXY and no_proxy (run does), or Claude "
            "Code sends its calls to that proxy")


def _wrap(text: str, indent: str = "", more: str = "") -> str:
    return textwrap.fill(text, 100, initial_indent=indent, subsequent_indent=indent + more, break_on_hyphens=False)


def run_description() -> str:
    return _wrap("Start the proxy on a free loopback port, run COMMAND with Claude Code's variables pointing at it, "
                 "and stop the proxy when COMMAND exits; the exit status is COMMAND's (128+N when signal N ended "
                 "it). Ctrl-C goes to COMMAND; SIGTERM and SIGHUP are passed on to it. The proxy's log goes to a "
                 "file, named on stderr at the start. The proxy options are those of `claudeproxy --help`; --port "
                 "defaults to 0 (a free port) and --host must be loopback.")


def run_epilog(program: str = "python3 -m claudeproxy") -> str:
    """What ``run`` sets and removes, and the state it adds (``claudeproxy run --help``)."""
    lines = ["Set in COMMAND's environment (your own value wins, except for the first two):"]
    for name, value, why in VARIABLES:
        lines += [_wrap(f"{name}: {value}", "  ", "  "), _wrap(why, " " * 6)]
    lines.append("Removed from COMMAND's environment:")
    for names, why in DROPPED:
        lines += [_wrap(", ".join(names), "  "), _wrap(why, " " * 6)]
    lines += [_wrap(text) for text in (
        "The model whose window and cap are used is the one Claude Code asks for first: its --model in COMMAND, "
        "else $ANTHROPIC_MODEL, else "
        f"{DEFAULT_MODEL}, routed like any request; nothing is set when the model facts do not know them.",
        "When COMMAND is Claude Code (claude, claude.exe, claude.cmd), run adds hasCompletedOnboarding: true to "
        "$CLAUDE_CONFIG_DIR/.claude.json (else ~/.claude.json) when it is absent, so a fresh host skips the theme "
        "picker and the security notes; nothing present is changed. --trust also marks the current folder "
        "trusted.",
    )]
    lines += ["Example:", f"  {program} run --upstream https://api.openai.com/v1 "
              "--api-key-env OPENAI_API_KEY --model gpt-4.1 -- claude"]
    return "\n".join(lines)
