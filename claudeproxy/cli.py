"""Command line: flags, the config file and environment -> ``Config``, logging, signals, serve.

I/O. Settings come from ``os.environ``, or the mapping ``main`` is given; the outbound proxy
variables (``HTTPS_PROXY``...) are always the process's own, the ones its upstream calls see
(``upstream.py`` reads them there too; ``malloc.py`` reads one for the allocator). ``main(argv)`` returns the
exit status: 0 after a clean shutdown (or ``--help``, ``--version``,
``--print-config``), 2 for a bad flag, file or URL, or an address and port that
cannot be bound (one line on stderr saying what is wrong).

Precedence: flags given on the command line, then the config file, then the
environment (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``CLAUDEPROXY_AUTH_KEY``),
then the defaults.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import logging
import os
import signal
import stat
import ssl
import sys
import threading
import time
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Set,
    TextIO,
    Tuple,
)
from urllib.parse import urlsplit

try:
    import fcntl
except ImportError:  # Windows: the usage log's writes go unlocked
    fcntl = None  # type: ignore[assignment]

from . import reachability, usage_replay
from .claude_code import help_footer, invocation, port_given
from .config import (
    DEFAULT_MESSAGES_UPSTREAM,
    DEFAULT_UPSTREAM,
    SHORTHAND_PROVIDER,
    UPSTREAM_APIS,
    Config,
    check_config,
    check_count,
    check_header,
    check_host,
    check_port,
    check_proxy_url,
    check_retries,
    check_seconds,
    check_url,
    env_proxies,
    is_loopback_host,
    named_once,
    origin_as_sent,
    setting_name,
    static_token,
    unset_variable,
    unused_proxy_hint,
    unused_proxy_variables,
)
from .config_file import ConfigError, FileConfig, FlagSpec, file_setting, parse_config
from .credentials import DEFAULT_TTL, command_argv, command_token, current_secrets, key_source
from .dialects import DIALECTS, PROVIDER_URLS, default_key_variables, detect_provider, key_variables
from .keyless import check_keys, keyless, on_the_internet, shared_client_keys
from .metrics import CallRecord
from .observe import BODIES_LOGGER, PACKAGE_LOGGER
from .redact import SecretForms, configured_secrets, redact_text, redact_url, secret_forms, with_halves
from .routing import (CLAUDE_CODE_NAMES, FAMILIES, Router, build_router, covers, header_the_key_replaces,
                      provider_dialect, unmatched_route)
from .server import ProxyServer, drain_and_close
from .settings_view import describe_config
from .upstream import proxy_urls, tls_context
from .version import __version__

log = logging.getLogger(PACKAGE_LOGGER)

_UNSET = object()  # marks flags not given on the command line (the file may set them)


class UsageError(Exception):
    """A bad flag value; main() prints it on one line and exits 2."""


class _Exit(Exception):
    """--help or --version is done; main() returns ``status`` instead of exiting the process."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    # Where --help and --version write: main()'s stdout, so a caller or test can capture it.
    out: Optional[TextIO] = None

    def error(self, message: str) -> NoReturn:  # one clear line, not the usage block
        raise UsageError(message + self._nearest_flag(message))

    def _nearest_flag(self, message: str) -> str:
        """" (did you mean --upstream?)" for an unrecognised flag near one of ours (--upstrem)."""
        if not message.startswith("unrecognized arguments: "):
            return ""
        flags = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        words = message[len("unrecognized arguments: "):].split()
        for word in words:
            flag = word.split("=", 1)[0]
            if flag in ("--log-file", "--trust") and flag not in flags:  # RUN_ONLY's, given to the server
                return f" ({flag} is claudeproxy run's" + ("; the server itself logs to stderr)" if flag == "--log-file" else ")")
            if word == "--" and self.prog == "claudeproxy":
                return f" (to run a command with the proxy: {program()} run [OPTIONS] -- COMMAND)"
            near = difflib.get_close_matches(flag, flags, n=1, cutoff=0.75)
            if word.startswith("--") and near:
                return f" (did you mean {near[0]}?)"
        return ""

    def print_help(self, file: Optional[TextIO] = None) -> None:
        super().print_help(file or self.out)

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            print(message.rstrip("\n"), file=sys.stderr)
        raise _Exit(status)


class _Once(argparse.Action):
    """A flag that may be given once: a second ``--config`` reads as layered files, which it is not."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        if getattr(namespace, self.dest, None) not in (None, _UNSET):  # _UNSET: parse_flags' second parse
            parser.error(f"{option} given twice: one file is read, and its flags are overridden by the command line's")
        setattr(namespace, self.dest, values)


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"claudeproxy {__version__}", file=getattr(parser, "out", None) or sys.stdout)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="claudeproxy",
        # argparse's own line lists every option (twenty lines) and cannot show the run command.
        usage="%(prog)s [OPTIONS]\n       %(prog)s run [OPTIONS] -- COMMAND [ARGS...]   (see: %(prog)s run --help)",
        description="Serve the Anthropic Messages API (for Claude Code and the anthropic SDKs) on top of "
        "OpenAI-compatible Chat Completions backends or OpenAI's Responses API, or forward it to "
        "Anthropic-compatible ones, routing each model to a provider.",
        epilog=help_footer(8082),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # A typo that is the start of a flag (--upstream-a, --log-fil) is said, not taken for the flag.
        allow_abbrev=False,
    )
    _upstream_flags(p.add_argument_group("upstream (the single-provider shorthand)"))
    _model_flags(p.add_argument_group("models and routes"))
    _config_flags(p.add_argument_group("config file"))
    _network_flags(p.add_argument_group("network"))
    _server_flags(p.add_argument_group("server"))
    _logging_flags(p.add_argument_group("logging and usage"))
    p.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    return p


def _logging_flags(out: Any) -> None:
    # Upper case too (DEBUG, as Python's logging spells the levels), on the command line and in a file.
    out.add_argument("--log-level", default="info", type=str.lower, choices=["debug", "info", "warning", "error"],
                     help="info: one access-log line per call; debug: also raw requests and responses in both "
                     "directions, redacted (default: %(default)s)")
    out.add_argument("--log-format", default="text", type=str.lower, choices=["text", "json"],
                     help="json: one JSON object per line, the access log's fields under \"call\" "
                     "(default: %(default)s)")
    out.add_argument("--log-bodies", action="store_true", help="log the raw bodies (redacted) even when "
                     "--log-level is above debug")
    out.add_argument("--usage-log", metavar="FILE", help="append one JSON line per call (tokens, cost, "
                     "timings) to this file; today's lines are read back at start for the usage totals")
    out.add_argument("--metrics-file", metavar="FILE", help="the former name of --usage-log")


def _upstream_flags(up: Any) -> None:
    up.add_argument("--upstream", metavar="URL", help="base URL, e.g. https://api.openai.com/v1 "
                    f"(default: $OPENAI_BASE_URL, else the URL of the --provider named, else {DEFAULT_UPSTREAM}; "
                    f"with --upstream-api messages {DEFAULT_MESSAGES_UPSTREAM})")
    up.add_argument("--upstream-api", choices=list(UPSTREAM_APIS), default="chat",
                    help="what the upstream speaks: chat (OpenAI Chat Completions, translated), messages "
                    "(Anthropic Messages, forwarded), responses (OpenAI Responses) (default: %(default)s)")
    up.add_argument("--passthrough", action="store_true", help="short for --upstream-api messages")
    up.add_argument("--api-key", metavar="KEY", help="upstream API key (default for chat and responses: the "
                    "provider's own variable, $GROQ_API_KEY, $GOOGLE_API_KEY or $GEMINI_API_KEY..., else "
                    "$OPENAI_API_KEY; none: no auth header, and a messages upstream gets the client's own key)")
    up.add_argument("--api-key-env", metavar="VAR", action="append", default=[],
                    help="read the upstream key from this environment variable; repeat it for several keys, "
                    "used in turn (a key refused with 401/429 rests and the next serves)")
    up.add_argument("--api-key-command", metavar="CMD", help="run CMD (no shell) for the upstream key, "
                    "its stdout trimmed; run again after --api-key-ttl seconds")
    up.add_argument("--api-key-ttl", metavar="S", type=float, default=DEFAULT_TTL,
                    help="how long a key from --api-key-command is used (default: %(default)s)")
    up.add_argument("--provider", choices=["auto", *sorted(DIALECTS)], default="auto",
                    help="Chat Completions dialect (default: guessed from the URL, else generic)")
    up.add_argument("--upstream-auth", choices=["bearer", "x-api-key", "api-key"],
                    help="how the key is sent (default: Authorization: Bearer; x-api-key for Anthropic itself; "
                    "api-key for Azure)")
    up.add_argument("--header", metavar="'NAME: VALUE'", action="append", default=[],
                    help="extra header on every upstream request (repeatable)")
    up.add_argument("--azure-api-version", metavar="VERSION", default=Config.azure_api_version,
                    help="api-version for --provider azure (default: %(default)s; o-series and gpt-5 "
                         "deployments get 2025-04-01-preview unless another is given)")


def _model_flags(models: Any) -> None:
    models.add_argument("--model", metavar="NAME", help="upstream model for every request not routed otherwise "
                        "(default: the client's model name)")
    for family in ("opus", "sonnet", "haiku"):
        models.add_argument(f"--{family}-model", metavar="NAME",
                            help=f"upstream model for Claude {family.capitalize()} requests (any generation)")
    models.add_argument("--model-map", metavar="PATTERN=NAME", action="append", default=[],
                        help="route client models matching a name or glob to an upstream model, e.g. "
                        "'claude-haiku*=gpt-4o-mini' (repeatable, first match wins, before the flags above)")
    models.add_argument("--max-output-tokens", metavar="N", type=int,
                        help="cap max_tokens sent upstream, at most 1000000000 (Claude Code asks for up to "
                        "128000); known models are capped at their own limit anyway")


def _config_flags(group: Any) -> None:
    group.add_argument("--config", metavar="FILE", action=_Once, help="JSON file with providers, routes, model facts "
                       "and any flag (flags given here win)")
    group.add_argument("--print-config", action="store_true", help="print the effective configuration "
                       "(keys masked, routes resolved) as JSON and exit")


def _network_flags(net: Any) -> None:
    net.add_argument("--proxy", metavar="URL", help="outbound HTTP proxy, http://[USER:PASSWORD@]HOST:PORT "
                     "(also for HTTPS upstreams); without it no proxy is used, even if HTTPS_PROXY is set")
    net.add_argument("--use-env-proxy", action="store_true", help="use HTTP(S)_PROXY/NO_PROXY from the environment "
                     "(--proxy wins)")
    net.add_argument("--ca-bundle", metavar="PATH", help="CA certificates for the upstream's TLS (default: system)")
    net.add_argument("--connect-timeout", type=float, default=Config.connect_timeout, metavar="S",
                     help="upstream connect timeout (default: %(default)s)")
    net.add_argument("--idle-timeout", type=float, default=Config.idle_timeout, metavar="S",
                     help="upstream silence in a stream before giving up, also while waiting for its first "
                     "byte (default: %(default)s)")
    net.add_argument("--request-timeout", type=float, default=Config.request_timeout, metavar="S",
                     help="total time for a non-streaming upstream call, whose answer is waited for this "
                     "long; also the longest a stream's upstream may send nothing but keep-alives, or "
                     "--idle-timeout where that is longer (default: %(default)s)")
    net.add_argument("--ping-interval", type=float, default=Config.ping_interval, metavar="S",
                     help="send an SSE ping after this much silence (default: %(default)s)")
    net.add_argument("--retries", type=int, default=Config.retries, metavar="N",
                     help="retry an upstream that answers 429/500/502/503/504/529 or cannot be reached, before "
                     "anything reached the client; a route's fallbacks are tried after (default: %(default)s)")
    net.add_argument("--retry-max-wait", type=float, default=Config.retry_max_wait, metavar="S",
                     help="longest Retry-After honoured; an upstream asking for more is not retried "
                     "(default: %(default)s)")
    net.add_argument("--max-idle-per-host", type=int, default=Config.max_idle_per_host, metavar="N",
                     help="idle keep-alive connections kept per upstream host (and proxy), at most 1000000; "
                     "0 = a new connection for every call (default: %(default)s)")


def _server_flags(srv: Any) -> None:
    srv.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    srv.add_argument("--port", type=int, default=8082, help="listen port, 0 = any free port (default: %(default)s)")
    srv.add_argument("--auth-key", metavar="KEY", help="require this key from clients (x-api-key or Bearer); "
                     "needed to listen beyond loopback (default: $CLAUDEPROXY_AUTH_KEY)")
    srv.add_argument("--allowed-host", metavar="HOST", action="append", default=[],
                     help="also accept this Host header (default: loopback names only)")
    srv.add_argument("--allowed-origin", metavar="ORIGIN", action="append", default=[],
                     help="accept browser requests from this Origin (default: none)")
    srv.add_argument("--max-concurrency", type=int, default=Config.max_concurrency, metavar="N",
                     help="requests in flight before answering 529, at most 1000000 (default: %(default)s)")
    srv.add_argument("--max-body-bytes", type=int, default=Config.max_body_bytes, metavar="N",
                     help="largest request body in bytes, at most 1073741824 (1 GiB) (default: %(default)s)")
    srv.add_argument("--body-timeout", type=float, default=Config.body_timeout, metavar="S",
                     help="a request body must arrive within this long after its headers (default: %(default)s)")
    srv.add_argument("--max-body-readers", type=int, default=Config.max_body_readers, metavar="N",
                     help="connections reading a request body at once, at most 1000000; one more ends the "
                     "longest-waiting (default: %(default)s)")
    srv.add_argument("--max-connections", type=int, default=Config.max_connections, metavar="N",
                     help="client connections open at once, at most 1000000; one more ends the one waiting "
                     "longest for a request, or gets 529 (default: %(default)s)")
    srv.add_argument("--shutdown-grace", type=float, default=Config.shutdown_grace, metavar="S",
                     help="on SIGINT (Ctrl-C), SIGTERM or SIGHUP, let requests in flight finish this long "
                     "(default: %(default)s)")


# --------------------------------------------------------------------------
# Flags, file and environment.

# Flags that make no sense in a file: they act at once, or they name the file.
_NOT_IN_FILE = {"help", "version", "config", "print_config", "api_key", "auth_key"}
# File-only names for what the command line takes as a secret value.
_FILE_ONLY = {"auth_key_env": FlagSpec("str")}
# Settings that are paths: in a file, a relative one is taken from the file's folder (the file
# travels with what it names); on the command line, from the current folder, as a shell would.
_PATHS = {"ca_bundle", "usage_log", "metrics_file", "log_file"}


def flag_specs(parser: argparse.ArgumentParser) -> Dict[str, FlagSpec]:
    """What each flag accepts, by dest: the config file's keys."""
    specs = dict(_FILE_ONLY)
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        if action.dest in _NOT_IN_FILE or not action.option_strings:
            continue
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            kind = "bool"
        elif isinstance(action, argparse._AppendAction):  # noqa: SLF001
            kind = "list"
        elif action.dest in _PATHS:
            kind = "path"
        else:
            kind = "int" if action.type is int else "float" if action.type is float else "str"
        specs[action.dest] = FlagSpec(kind, tuple(action.choices or ()), action.type is str.lower)
    return specs


def parse_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, Set[str]]:
    """The parsed flags with defaults, and the dests given on the command line."""
    ns = parser.parse_args(argv)
    # Parse again into a namespace pre-filled with markers: argparse then keeps a default
    # out, so whatever is not a marker (or an empty list) was given explicitly.
    marked = argparse.Namespace(**{a.dest: ([] if isinstance(a, argparse._AppendAction) else _UNSET)  # noqa: SLF001
                                   for a in parser._actions if a.dest != "help"})  # noqa: SLF001
    parser.parse_args(argv, namespace=marked)
    given = {k for k, v in vars(marked).items() if v is not _UNSET and v != []}
    _no_empty_values(parser, ns, given)
    if {"passthrough", "upstream_api"} <= given and ns.upstream_api != "messages":
        # config_from_args cannot tell an explicit --upstream-api chat from the default
        raise UsageError(f"--passthrough is short for --upstream-api messages: it cannot go with "
                         f"--upstream-api {ns.upstream_api}")
    ns.setting_names = {}  # what merge_file sets is named after the file's key: see name_of()
    ns.given_flags = given  # a setting may be given with its default value (--api-key-ttl 300)
    return ns, given


def name_of(ns: argparse.Namespace, dest: str) -> str:
    """How a message names the setting ``dest``: ``--retries`` when the command line or the default
    gave it, ``--config f.json: retries`` when the file did (the user never typed the flag)."""
    return setting_name(getattr(ns, "setting_names", {}), dest)


# An empty value is a mistake (``--upstream "$URL"`` with URL unset would otherwise send the key to
# the default upstream), but for these: --api-key '' sends no key although $OPENAI_API_KEY is set,
# and --proxy '' or --usage-log '' turn off a config file's.
_MAY_BE_EMPTY = {"api_key", "proxy", "usage_log", "metrics_file"}


def _no_empty_values(parser: argparse.ArgumentParser, ns: argparse.Namespace, given: Set[str]) -> None:
    for action in parser._actions:  # noqa: SLF001
        if action.dest not in given or action.dest in _MAY_BE_EMPTY or not action.option_strings:
            continue
        value = getattr(ns, action.dest)
        if any(isinstance(item, str) and not item.strip() for item in (value if isinstance(value, list) else [value])):
            raise UsageError(f"{action.option_strings[0]}: the value is empty")


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """json.loads keeps the last of two equal keys; in a config file that hides a mistake."""
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _Pairs(list):  # type: ignore[type-arg]
    """An object's (key, value) pairs as they came, duplicates kept (``_duplicate_at``)."""


def _duplicate_at(text: str) -> Optional[Tuple[str, str]]:
    """Where an object holds a key twice (``providers.corp``; "" for the top level), and the key:
    read again only for the message, the pairs kept as they came."""
    stack: List[Tuple[str, Any]] = [("", json.loads(text, object_pairs_hook=_Pairs))]
    while stack:
        where, node = stack.pop()
        if isinstance(node, _Pairs):
            seen: Set[str] = set()
            for key, _ in node:
                if key in seen:
                    return where, key
                seen.add(key)
            stack += [(f"{where}.{key}" if where else key, value) for key, value in node]
        elif isinstance(node, list):
            stack += [(f"{where}[{i}]", item) for i, item in enumerate(node)]
    return None


def load_config_file(path: str, environ: Mapping[str, str], specs: Mapping[str, FlagSpec]) -> FileConfig:
    obj = _decode_config_file(path, _read_config_file(path))
    try:
        return parse_config(obj, environ, specs, source=path, folder=os.path.dirname(os.path.abspath(path)))
    except ConfigError as exc:
        raise UsageError(f"--config {path}: {exc}") from None


def _read_config_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(4 * 1024 * 1024 + 1)
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > 4 * 1024 * 1024:
        raise UsageError(f"--config {path}: larger than 4 MiB")
    return raw


def _decode_config_file(path: str, raw: bytes) -> Any:
    try:
        # utf-8-sig: Windows editors (Notepad, PowerShell's Out-File) start a UTF-8 file with a BOM.
        return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise _duplicate_key_error(path, raw, exc) from None
    except (ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UsageError(f"--config {path}: not valid JSON{where}: {getattr(exc, 'msg', 'cannot decode')}") from None


def _duplicate_key_error(path: str, raw: bytes, exc: _DuplicateKey) -> UsageError:
    try:
        where, key = _duplicate_at(raw.decode("utf-8-sig")) or ("", exc.args[0])
    except RecursionError:  # nested deeper than the decoder goes, after the duplicate
        raise UsageError(f"--config {path}: not valid JSON: nested too deeply") from None
    return UsageError(f"--config {path}: {where + ': ' if where else ''}the key {key!r} appears twice "
                      "in one object")


# Two flags for one setting: either one on the command line sets the file's other one aside too.
# The same for the single upstream's key: a source on the command line sets the file's others
# aside (and its api_key_ttl, which only a key command has).
_TWINS = {"usage_log": ("metrics_file",), "metrics_file": ("usage_log",),
          "passthrough": ("upstream_api",), "upstream_api": ("passthrough",),
          "api_key_env": ("api_key", "api_key_command"), "api_key_command": ("api_key", "api_key_env"),
          "api_key_ttl": ("api_key", "api_key_env")}
# run's own options: a config file may hold them for run; the server has no use for them.
RUN_ONLY = {"log_file": FlagSpec("path"), "trust": FlagSpec("bool")}


def merge_file(ns: argparse.Namespace, given: Set[str], file: Optional[FileConfig], skip: Set[str]) -> None:
    """The file's settings, where the command line gave neither the flag nor its twin (``skip``: none of these),
    each recorded as the file's, so that the checks after this name it as written there."""
    if file is None:
        return
    names = vars(ns).setdefault("setting_names", {})
    for dest, value in file.settings.items():
        if dest not in given and not given.intersection(_TWINS.get(dest, ())) and dest not in skip:
            setattr(ns, dest, value)
            names[dest] = file.names.get(dest, dest)


# The settings whose value is checked on its own (``check_overridden``).
_CHECKED_ALONE = frozenset({"connect_timeout", "idle_timeout", "request_timeout", "client_timeout",
                            "client_request_deadline", "body_timeout", "ping_interval", "finish_grace",
                            "shutdown_grace", "max_body_bytes", "max_concurrency", "max_body_readers", "max_connections",
                            "max_idle_per_host", "retries", "retry_max_wait", "port", "proxy", "max_output_tokens",
                            "api_key_ttl", "upstream", "allowed_host", "allowed_origin", "model_map", "header"})


def check_overridden(ns: argparse.Namespace, given: Set[str], file: Optional[FileConfig],
                     environ: Mapping[str, str], skip: Set[str]) -> None:
    """The file's values the command line overrode, checked as if it had not: they go unchecked
    otherwise, and the file that started with its flags stops, named, once started without them
    ("retries": 99 beside --retries 1). ``skip``: the file's settings this mode never takes."""
    if file is None:
        return
    # Only a value good or bad on its own (a range, a URL's form): a file's host, key variable or key
    # command is checked with the key and environment of the machine it runs on, which the flag
    # that overrides it here may be there for (a LAN host, a team's key variable).
    overridden = {dest for dest in file.settings if dest in given and dest not in skip and dest in _CHECKED_ALONE}
    if not overridden:
        return
    shadow = argparse.Namespace(**vars(ns))
    shadow.setting_names = dict(getattr(ns, "setting_names", {}))
    for dest in overridden:
        setattr(shadow, dest, file.settings[dest])
        shadow.setting_names[dest] = file.names.get(dest, dest)
    check_config(config_from_args(shadow, environ, file))


def parse_model_map(values: Sequence[str], setting: str = "--model-map") -> Tuple[Tuple[str, str], ...]:
    pairs = []
    for value in values:
        pattern, sep, target = value.partition("=")
        if not sep or not pattern.strip() or not target.strip():
            raise UsageError(f"{setting}: expected PATTERN=NAME, got {value!r}")
        pairs.append((pattern.strip(), target.strip()))
    return tuple(pairs)


def parse_header(value: str, setting: str = "--header") -> Tuple[str, str]:
    header, sep, val = value.partition(":")
    if not sep:
        # Not echoed: "X-Token VALUE" (a forgotten colon) holds a credential.
        raise UsageError(f"{setting}: expected 'Name: value', got {len(value)} characters without a colon")
    try:
        return check_header(header, val, setting)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _positive(ns: argparse.Namespace) -> None:
    """The command line's numbers, checked before anything is built from them, by start()'s own
    checks of the same settings: one wording on either way in ("NAME: must be ..., got V")."""
    try:
        for dest in ("connect_timeout", "idle_timeout", "request_timeout", "ping_interval", "api_key_ttl"):
            check_seconds(getattr(ns, dest), name_of(ns, dest))
        check_seconds(ns.shutdown_grace, name_of(ns, "shutdown_grace"), zero_ok=True)
        for dest in ("max_concurrency", "max_body_bytes", "max_output_tokens"):
            if getattr(ns, dest) is not None:
                check_count(getattr(ns, dest), name_of(ns, dest), 1)
        check_retries(ns.retries, ns.retry_max_wait, lambda dest: name_of(ns, dest))
        check_port(ns.port, name_of(ns, "port"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _shorthand_key(ns: argparse.Namespace, environ: Mapping[str, str], api: str,
                   upstream: Optional[str], from_openai_env: bool) -> Tuple[Any, str]:
    """The token source of the single-upstream provider, and where it comes from."""
    if ns.api_key is not None:
        key = ns.api_key.strip()
        return static_token(key), "--api-key"
    if ns.api_key_env:
        keys = []
        for var in ns.api_key_env:
            if not environ.get(var, "").strip():
                raise UsageError(f"{name_of(ns, 'api_key_env')}: {unset_variable(environ, var)}")
            keys.append(environ[var].strip())
        # Named with its setting: a variable the user chose is not one picked from the provider's
        # own (``passed_over_keys`` second-guesses only those).
        labels = [f"${var}" for var in ns.api_key_env]
        return key_source(keys, labels), f"{name_of(ns, 'api_key_env')} " + ", ".join(labels)
    if ns.api_key_command:
        try:
            argv = command_argv(ns.api_key_command, name_of(ns, "api_key_command"))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return command_token(argv, ns.api_key_ttl, "--api-key-command"), f"command {argv[0]}"
    if api == "messages" or upstream is None:
        return static_token(""), ""  # a Messages API upstream gets the client's own key
    for var in default_key_variables(_shorthand_dialect(ns, upstream), from_openai_env):
        key = environ.get(var, "").strip()
        if key:
            return static_token(key), f"${var}"
    return static_token(""), ""


def _shorthand_dialect(ns: argparse.Namespace, upstream: str) -> str:
    if ns.provider not in (None, "auto"):
        return str(ns.provider)
    try:
        return detect_provider(upstream)
    except ValueError:
        return "generic"  # a URL urlsplit refuses: check_url says so next, naming the setting


def _auth_key(ns: argparse.Namespace, environ: Mapping[str, str]) -> Tuple[Optional[str], Optional[str]]:
    """The client key, and how a message names where it came from when not --auth-key."""
    if ns.auth_key:
        return str(ns.auth_key), None
    var = getattr(ns, "auth_key_env", None)
    if var:
        if not environ.get(var):
            raise UsageError(f"{name_of(ns, 'auth_key_env')}: {unset_variable(environ, var)}")
        return environ[var], f"{name_of(ns, 'auth_key_env')} (${var})"
    key = environ.get("CLAUDEPROXY_AUTH_KEY")
    if key is not None and not key.strip():
        # export CLAUDEPROXY_AUTH_KEY=$KEY with KEY unset: the proxy would take any client, without a word.
        raise UsageError("CLAUDEPROXY_AUTH_KEY: the variable is set but empty; unset it for a proxy that takes "
                         "any local client, or give the key")
    return key or None, "CLAUDEPROXY_AUTH_KEY" if key else None


def _checked(check: Callable[[str, str], str], value: str, setting: str) -> str:
    try:
        return check(value, setting)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _env_proxy(ns: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """--use-env-proxy, its variables checked now: a bad one would fail every call, or send
    proxy credentials in clear text (https://), instead of stopping the start."""
    if ns.use_env_proxy and not ns.proxy:
        try:
            env_proxies(environ)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return bool(ns.use_env_proxy)


_KEY_SOURCES = ("api_key", "api_key_env", "api_key_command")


def _one_key_source(ns: argparse.Namespace) -> None:
    """The single upstream's key comes from one place, and --api-key-ttl only with a command:
    otherwise one setting was silently ignored (the first in _shorthand_key's order won)."""
    sources = [dest for dest in _KEY_SOURCES if getattr(ns, dest) not in (None, [])]
    if len(sources) > 1:
        first = name_of(ns, sources[0])
        raise UsageError(f"{first} and {named_once(name_of(ns, sources[1]), first)} both give the upstream key: "
                         "give one of them")
    given = "api_key_ttl" in getattr(ns, "given_flags", ()) or "api_key_ttl" in getattr(ns, "setting_names", {})
    if given and not ns.api_key_command:
        raise UsageError(f"{name_of(ns, 'api_key_ttl')} is how long a key from --api-key-command is used, and "
                         "there is no --api-key-command")


def _no_header_the_key_replaces(ns: argparse.Namespace, router: Router) -> None:
    """--header 'Authorization: ...' (or x-api-key, api-key: the auth style's header) with a key
    from --api-key*: the key goes in that header, and the user's was dropped without a word.
    With no key flag the header is the credential: it is sent, and a key in the provider's variable
    ($OPENAI_API_KEY) is not (routing._shorthand_provider)."""
    shorthand = router.providers.get(SHORTHAND_PROVIDER)
    sources = [dest for dest in _KEY_SOURCES if getattr(ns, dest) and str(getattr(ns, dest)).strip()]
    header = header_the_key_replaces(shorthand) if shorthand is not None and sources else None
    if header:
        first = f"{name_of(ns, 'header')} '{header}: ...'"
        raise ValueError(f"{first} and {named_once(name_of(ns, sources[0]), first)}: the key is sent in {header} "
                         "and would replace that header: give one of them")


# The flags that describe the single upstream (--upstream), each with its value when not given.
_SHORTHAND_UNSET = (("upstream_api", "chat"), ("passthrough", False), ("api_key", None), ("api_key_env", []),
                    ("api_key_command", None), ("api_key_ttl", DEFAULT_TTL), ("provider", "auto"),
                    ("upstream_auth", None), ("header", []), ("azure_api_version", Config.azure_api_version))


def _no_shorthand_flags(ns: argparse.Namespace) -> None:
    """With only the file's providers there is no single upstream: its flags would go nowhere."""
    for dest, unset in _SHORTHAND_UNSET:
        if getattr(ns, dest) != unset:
            raise UsageError(f"{name_of(ns, dest)} describes the single upstream, and there is none "
                             "(no --upstream): set it on a provider in the --config file instead")


def _provider_url(ns: argparse.Namespace, api: str) -> Optional[str]:
    """The URL ``--provider NAME`` means where no URL is given: that provider's own. Its key went to
    api.openai.com, the default, before (or, with --passthrough, to api.anthropic.com): a provider
    whose URL is the user's own, or an Anthropic-compatible one, must be given its URL."""
    if ns.provider in ("auto", "generic") or (ns.provider == "openai" and api != "messages"):
        return None
    flag = name_of(ns, "provider")
    if api == "messages":
        raise UsageError(f"{flag} {ns.provider} with {name_of(ns, 'passthrough')} names no URL: give --upstream "
                         "(the provider's Anthropic-compatible URL); without it the requests, and the key, "
                         f"would go to {DEFAULT_MESSAGES_UPSTREAM}")
    url = PROVIDER_URLS.get(ns.provider)
    if url is None:
        raise UsageError(f"{flag} {ns.provider} names no URL: give --upstream (your resource's URL); without it "
                         f"the requests, and the key, would go to {DEFAULT_UPSTREAM}")
    return url


def config_from_args(ns: argparse.Namespace, environ: Mapping[str, str], file: Optional[FileConfig] = None) -> Config:
    """The ``Config`` for parsed flags (file settings merged in), with environment fallbacks."""
    _positive(ns)
    names = dict(getattr(ns, "setting_names", {}))  # and the variables read below, for later checks
    api = _upstream_api_of(ns, names)
    upstream = _shorthand_upstream(ns, environ, file, api, names)
    if file is not None:
        names["routes"] = file_setting(ns.config, "routes")  # not a flag: a message about none names the file
    auth_key, auth_from = _auth_key(ns, environ)
    if auth_from:
        names["auth_key"] = auth_from
    _checked(check_host, ns.host, name_of(ns, "host"))
    _listens_safely(ns, auth_key)
    _one_key_source(ns)
    token, key_source = _shorthand_key(ns, environ, api, upstream, names.get("upstream") == "OPENAI_BASE_URL")
    # The groups' values are worked out in this order, so the first wrong flag is the one named.
    return Config(
        providers=file.providers if file else (),
        routes=file.routes if file else (),
        upstream=_checked(check_url, upstream, setting_name(names, "upstream")) if upstream else None,
        upstream_api=api,
        token=token,
        key_source=key_source,
        **_shorthand_settings(ns),
        **_model_settings(ns),
        **_network_settings(ns, environ, auth_key),
        **{dest: getattr(ns, dest) for dest in _LIMITS},
        log_bodies=ns.log_bodies or str(ns.log_level).lower() == "debug",  # --log-level debug shows the bodies too
        setting_names=tuple(sorted(names.items())),
    )


def _upstream_api_of(ns: argparse.Namespace, names: Mapping[str, str]) -> str:
    """The upstream API the flags choose: --passthrough is short for --upstream-api messages."""
    # An explicit "chat" is known only when a file gave it (parse_flags refuses the two flags).
    said_chat = ns.upstream_api == "chat" and "upstream_api" in names
    if ns.passthrough and (ns.upstream_api not in ("chat", "messages") or said_chat):
        # Twins: both from the command line or both from the file (merge_file), which is named once.
        short = name_of(ns, "passthrough")
        full = named_once(name_of(ns, "upstream_api"), short)
        raise UsageError(f"{short} is short for {full} messages: it cannot go with {full} {ns.upstream_api}")
    return "messages" if ns.passthrough else ns.upstream_api


def _shorthand_upstream(ns: argparse.Namespace, environ: Mapping[str, str], file: Optional[FileConfig], api: str,
                        names: Dict[str, str]) -> Optional[str]:
    """The single upstream's URL: --upstream, else $OPENAI_BASE_URL, else the provider's own or the
    default; None where the file's providers are all there is."""
    if ns.upstream is not None:
        return ns.upstream
    if file and file.providers:
        _no_shorthand_flags(ns)
        return None
    upstream = _upstream_variable(environ, api, names)
    return upstream or _provider_url(ns, api) or (DEFAULT_MESSAGES_UPSTREAM if api == "messages" else DEFAULT_UPSTREAM)


def _upstream_variable(environ: Mapping[str, str], api: str, names: Dict[str, str]) -> Optional[str]:
    """$OPENAI_BASE_URL (not for Messages), noted in ``names`` when it is set."""
    upstream = environ.get("OPENAI_BASE_URL") if api != "messages" else None
    if upstream == "":  # (blanks are said by check_url)
        # export OPENAI_BASE_URL=$GATEWAY with GATEWAY unset: its key would go to api.openai.com.
        raise UsageError("OPENAI_BASE_URL: the variable is set but empty; unset it for the default upstream "
                         f"({DEFAULT_UPSTREAM}), or give --upstream")
    if upstream:
        names["upstream"] = "OPENAI_BASE_URL"
    return upstream


def _shorthand_settings(ns: argparse.Namespace) -> Dict[str, Any]:
    """The single upstream's flags besides its URL and key."""
    return dict(
        provider=None if ns.provider == "auto" else ns.provider,
        upstream_auth=ns.upstream_auth,
        headers=tuple(parse_header(h, name_of(ns, "header")) for h in ns.header),
        azure_api_version=ns.azure_api_version,
    )


def _model_settings(ns: argparse.Namespace) -> Dict[str, Any]:
    return dict(
        model=ns.model,
        opus_model=ns.opus_model,
        sonnet_model=ns.sonnet_model,
        haiku_model=ns.haiku_model,
        model_map=parse_model_map(ns.model_map, name_of(ns, "model_map")),
        max_output_tokens=ns.max_output_tokens,
    )


def _network_settings(ns: argparse.Namespace, environ: Mapping[str, str], auth_key: Optional[str]) -> Dict[str, Any]:
    """Where the proxy listens and whom it lets in; the outbound proxy and CA bundle."""
    return dict(
        host=ns.host,
        port=ns.port,
        proxy=_checked(check_proxy_url, ns.proxy, name_of(ns, "proxy")) if ns.proxy else None,
        use_env_proxy=_env_proxy(ns, environ),
        ca_bundle=ns.ca_bundle,
        auth_key=auth_key,
        allowed_hosts=tuple(h.lower() for h in ns.allowed_host),
        allowed_origins=tuple(_checked(origin_as_sent, o, name_of(ns, "allowed_origin")) for o in ns.allowed_origin),
    )


# The timeouts and limits: each flag's value as it is.
_LIMITS = ("connect_timeout", "idle_timeout", "request_timeout", "ping_interval", "max_body_bytes", "max_concurrency",
           "max_idle_per_host", "body_timeout", "max_body_readers", "max_connections", "shutdown_grace", "retries", "retry_max_wait")


def _listens_safely(ns: argparse.Namespace, auth_key: Optional[str]) -> None:
    """Beyond loopback, clients must present a key: anyone could use the upstream key otherwise."""
    if is_loopback_host(ns.host) or auth_key:
        return
    # The command line's message as it was; a host from the file is named as the file's key.
    where = "" if "host" not in getattr(ns, "setting_names", {}) else f"{name_of(ns, 'host')}: "
    raise UsageError(f"{where}refusing to listen on {ns.host} without --auth-key "
                     "(anyone could use your upstream key)")


# --------------------------------------------------------------------------
# Logging and the usage log.


def config_secrets(config: Config) -> Tuple[str, ...]:
    """The client key, every provider key known so far (a key command is not run for this) and the
    credentials written into the configuration (URL query keys, credential headers)."""
    return fixed_secrets(config) + key_secrets(config)


def secrets_source(config: Config) -> Callable[[], Tuple[str, ...]]:
    """``config_secrets`` for the log filter, which asks per record: the fixed part is found once."""
    fixed = fixed_secrets(config)
    return lambda: fixed + key_secrets(config)


def key_secrets(config: Config) -> Tuple[str, ...]:
    """The client key and every provider key known so far: these change while the proxy runs."""
    sources = [p.token for p in config.providers] + [config.token]
    keys = with_halves(k for t in sources for k in current_secrets(t) if k)
    return ((config.auth_key,) if config.auth_key else ()) + keys


def fixed_secrets(config: Config) -> Tuple[str, ...]:
    """Credentials written into the configuration: the upstream URLs' query keys and userinfo
    passwords, the values of credential headers (``--header``, providers' headers), the outbound
    proxy's password (``--proxy``, or the environment's with ``--use-env-proxy``)."""
    places = [(p.url, p.headers) for p in config.providers] + [(config.upstream or "", config.headers)]
    try:
        proxies = proxy_urls(config, os.environ)  # the environment the server's calls see
    except ValueError:
        proxies = [config.proxy or ""]  # a bad environment proxy: the start stops on it anyway
    return configured_secrets(places + [(url, ()) for url in proxies])


class _JsonFormatter(logging.Formatter):
    """One JSON object per record, for log collectors; the whole line redacted once more."""

    def __init__(self, secrets: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + ".%03dZ" % record.msecs
        out: Dict[str, Any] = {"time": stamp, "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        call = getattr(record, "call", None)
        if isinstance(call, CallRecord):
            out["call"] = call.to_dict()  # the access log's fields
        if record.exc_text:
            out["exception"] = record.exc_text
        return redact_text(json.dumps(out, ensure_ascii=False), tuple(s for s in self._secrets() if s))


class _OneLineFormatter(logging.Formatter):
    """The text format: one record, one line, whatever an upstream put in its message.

    An upstream's error text goes into WARNING lines; a line break in it would start a
    line of the upstream's making (a forged ``ERROR``), and a binary body would write
    control bytes to the terminal. They are escaped as Python writes them (``\\n``).
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._escapes = {c: "\\x%02x" % c for c in (*range(32), 127)}
        self._escapes.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(self._escapes)
        return super().formatMessage(record)


class RedactingFilter(logging.Filter):
    """Masks secrets in every record, whatever logger produced it."""

    def __init__(self, secrets: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self._secrets = secrets
        # The forms of the secrets last seen (a key, its other cases, its base64): worked out
        # again only when a key changes, not for every line.
        self._forms: Tuple[Tuple[str, ...], SecretForms] = ((), secret_forms(()))

    def filter(self, record: logging.LogRecord) -> bool:
        keys = tuple(s for s in self._secrets() if s)
        known, secrets = self._forms  # one read: another thread may replace it meanwhile
        if keys != known:
            secrets = secret_forms(keys)
            self._forms = (keys, secrets)
        message = record.getMessage()
        record.msg, record.args = redact_text(message, secrets), None
        if record.exc_info:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info), secrets)
            record.exc_info = None
        return True


def setup_logging(level: str, secrets: Callable[[], Sequence[str]], stream: TextIO, fmt: str = "text",
                  bodies: bool = False) -> logging.Handler:
    """One handler on the ``claudeproxy`` logger; every record redacted. ``bodies``: the raw bodies
    (``claudeproxy.bodies``, DEBUG) even when ``level`` is higher."""
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(secrets))
    else:
        handler.setFormatter(_OneLineFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger(PACKAGE_LOGGER)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger(BODIES_LOGGER).setLevel(logging.DEBUG if bodies else logging.NOTSET)
    return handler


def usage_writer(path: str) -> Any:
    """The usage log's sink: one JSON line per record, whole or not at all."""
    lock = threading.Lock()
    # Seconds the next record may wait for the file's lock: none after a wait that did not get it
    # (another program holds it: the records behind it would each wait too), until one gets it again.
    patience = [_LOCK_WAIT]
    nofollow = no_follow(path)

    def write(rec: CallRecord) -> None:
        data = (json.dumps(rec.to_dict(), sort_keys=True) + "\n").encode("utf-8")
        with lock:
            fd = _open_log(path, nofollow)
            try:
                locked = _lock(fd, patience[0])
                patience[0] = _LOCK_WAIT if locked else 0.0
                _append_whole(fd, data, locked)
            finally:
                os.close(fd)

    return write


def no_follow(path: str) -> int:
    """``O_NOFOLLOW`` for a log opened by its name again and again, unless the name is a symbolic
    link already that the user (or root) made, the user's own choice: a link put there by another
    user who may write to the folder, before the start or after it, would have had the records
    appended to any file the proxy's user may write (a shell's rc file: a model name is in its
    record). (Without ``O_NOFOLLOW``, Windows', a link put there is followed.)"""
    return 0 if _own_link(path) else getattr(os, "O_NOFOLLOW", 0)


def _own_link(path: str) -> bool:
    """Is ``path`` a symbolic link that this user or root made?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    uid = getattr(os, "getuid", lambda: st.st_uid)()
    return stat.S_ISLNK(st.st_mode) and st.st_uid in (uid, 0)


def _foreign_link(path: str) -> bool:
    return os.path.islink(path) and not _own_link(path)


def _open_log(path: str, nofollow: int = 0) -> int:
    """The log opened to append, and to read its last byte where the file allows it (a log another
    user collects may be writable and not readable: it was written before, and must be still)."""
    # Made for the owner alone: the records name models, costs and the upstream's ids.
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | nofollow, 0o600)
        except PermissionError:
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | nofollow, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP and nofollow:
            raise OSError(exc.errno, "it became a symbolic link after the start: not followed", path) from None
        raise


# How long a record waits for another writer's lock of the log: claudeproxy's own writers hold it
# for one write; longer is someone else (a rotation script under flock(1)), whom the call's thread,
# and the next request on its connection, must not wait for. Then the record goes unlocked.
_LOCK_WAIT = 0.5


def _append_whole(fd: int, data: bytes, locked: bool) -> None:
    """One write of ``data`` on a line of its own; a part written (a full disk) is cut off again:
    the next record would otherwise continue the half line, and both be lost to a reader of JSON
    lines. ``locked``: under the file's advisory lock (``_lock``), which ``run`` sessions and servers
    sharing one log take: a cut must not take another's record with it (so without the lock
    nothing is cut: the next record starts a line of its own). The lock is let go here."""
    try:
        start = os.fstat(fd).st_size
        if start and not _ends_a_line(fd, start):
            # A line cut short before (a crash, a kill during a write): glued to it, this record
            # would be lost with it.
            data = b"\n" + data
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "the usage log took only part of a record")
        except OSError:
            if locked:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass
            raise
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _lock(fd: int, wait: float) -> bool:
    """Take the log's advisory lock within ``wait`` seconds; False where there is none (Windows, a
    file system without locks) or another holds it longer."""
    if fcntl is None:
        return False
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        except OSError:  # ENOLCK: no locks on this file system
            return False


def _ends_a_line(fd: int, size: int) -> bool:
    """Does the file's last byte end a line? Taken for yes where the file cannot be read."""
    try:
        os.lseek(fd, size - 1, os.SEEK_SET)
        return os.read(fd, 1) == b"\n"
    except OSError:  # opened write-only (EBADF)
        return True


# --------------------------------------------------------------------------
# main.


def _describe(server: ProxyServer) -> str:
    host, port = str(server.server_address[0]), server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    providers = list(server.proxy.router.providers.values())
    where = redact_url(providers[0].url) if len(providers) == 1 else f"{len(providers)} providers"
    mode = " (passthrough)" if len(providers) == 1 and providers[0].api == "messages" else ""
    return f"claudeproxy listening on http://{shown}:{port} -> {where}{mode}"


def _warn_about(server: ProxyServer, environ: Mapping[str, str], for_claude_code: bool = False) -> None:
    for provider in server.proxy.router.providers.values():
        parts = urlsplit(provider.url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            who = "the upstream" if provider.name == "upstream" else f"the upstream {provider.name}"
            log.warning("%s uses plain http: the API key travels unencrypted", who)
    for line in start_warnings(server, environ, for_claude_code):
        log.warning("%s", line)
    for route in server.proxy.router.routes:
        log.info("route %s -> %s/%s", route.match, route.target.provider, route.target.model or "(client's model)")


def start_warnings(server: ProxyServer, environ: Mapping[str, str], for_claude_code: bool = False) -> List[str]:
    """The settings that add up to something the operator did not mean: logged at start, and
    ``run`` prints them on the terminal too (``for_claude_code``: its command is Claude Code)."""
    return (unmatched_routes(server) + shadowed_routes(server) + unreached_families(server)
            + unserved_families(server, for_claude_code) + main_loop_on_the_small_model(server)
            + lowered_connection_cap(server)
            + unused_providers(server)
            + repeated_targets(server) + keyless_upstreams(server)
            + shared_client_keys(server.proxy.router, forwarded=not server.config.auth_key)
            + passed_over_keys(server, environ) + unused_proxies(server, environ)
            + missing_cert_file(server, os.environ))  # the process's own: its TLS reads it, not the command's


def lowered_connection_cap(server: ProxyServer) -> List[str]:
    """A line where the open-file limit holds the connections under --max-connections (open_files.py)."""
    if not server.connections_lowered:
        return []
    return [f"{server.config.setting_name('max_connections')} {server.config.max_connections} is more than the "
            f"open-file limit leaves (ulimit -n {server.open_files}): at most {server.max_connections} client "
            "connections are held at once; raise the limit (ulimit -n) for more"]


def main_loop_on_the_small_model(server: ProxyServer) -> List[str]:
    """A line when the haiku model is lent to opus or sonnet (``--haiku-model`` alone, no ``--model``):
    Claude Code's main loop then runs on the small model, which nothing but an INFO line said (probe AN 2)."""
    routes = server.proxy.router.routes
    haiku = next((r for r in routes if r.match == "haiku"), None)
    lent = [r for r in routes if haiku is not None and r.match in ("opus", "sonnet") and " (no " in r.origin
            and r.origin.startswith(haiku.origin)]
    if haiku is None or not lent:
        return []
    families = " and ".join(r.match for r in lent)
    flags = " or ".join(server.config.setting_name(f"{r.match}_model") for r in lent)  # a file's key, or the flag
    return [f"{haiku.origin} {haiku.target.model} serves Claude Code's {families} models too (no {flags}): its "
            f"main loop runs on that model; give --model, or {flags}, for them"]


def unserved_families(server: ProxyServer, for_claude_code: bool = False) -> List[str]:
    """A line when routes serve some of Claude Code's model families and no route takes another (a
    config file routing opus and sonnet only): Claude Code's background calls go to its haiku model,
    and each got a 404 that nothing at start had said. Routes serving none of them say nothing,
    such a proxy not being for Claude Code, unless it is (``for_claude_code``: ``run``'s command is
    Claude Code, whose every call then went up under its Claude name)."""
    router = server.proxy.router
    routed = {family: [router.resolve(name) for name in names] for family, names in CLAUDE_CODE_NAMES.items()}
    missing = [(family, CLAUDE_CODE_NAMES[family][0]) for family, found in routed.items() if not any(found)]
    # A family that only the catch-all passing the client's name on takes (--model-map opus=... and
    # nothing for sonnet), on an API that is not Anthropic's: Claude's name goes upstream as it is.
    passed = [(family, CLAUDE_CODE_NAMES[family][0]) for family, found in routed.items()
              if found and all(r is not None and _passes_the_name(r) for r in found)]
    if len(missing) + len(passed) == 0 or (len(missing) + len(passed) == len(CLAUDE_CODE_NAMES) and not for_claude_code):
        return []  # all served, or none: such a proxy is not for Claude Code
    lines = []
    if missing:
        lines.append(f"no route serves Claude Code's {_listed(missing)} models (such as {missing[0][1]}): their "
                     "requests get a 404; add a route for them, or one matching '*'")
    if passed:
        fix = f"--{passed[0][0]}-model or a route" if passed[0][0] in FAMILIES else "a route"
        fix = "--model, or routes" if len(passed) == len(CLAUDE_CODE_NAMES) else fix
        lines.append(f"no route names a model for Claude Code's {_listed(passed)} models (such as {passed[0][1]}): "
                     "they go upstream under their Claude names, which an OpenAI-compatible server answers with a "
                     f"404 unless it knows them; give {fix} for them")
    return lines


def _passes_the_name(routed: Any) -> bool:
    return routed.route.match == "*" and routed.route.target.model is None and routed.target.api != "messages"


def _listed(families: List[Tuple[str, str]]) -> str:
    names = [family for family, _ in families]
    return " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]


def unused_providers(server: ProxyServer) -> List[str]:
    """A line for each provider no route or fallback names: it is never called. Above all
    ``--upstream`` beside a config file whose routes take every model (its '*' route): the upstream
    the command line names got no request, and nothing said so."""
    router = server.proxy.router
    named = {t.provider for r in router.routes for t in (r.target,) + r.fallbacks}
    lines = []
    for name in router.providers:
        if name in named:
            continue
        if name == SHORTHAND_PROVIDER and server.config.upstream is not None:
            lines.append(f"{server.config.setting_name('upstream')}: no route goes to it, as the config file's routes "
                         "take every model (its '*' route): give a model flag (--model) to send requests there, "
                         "or leave it out")
        else:
            lines.append(f"providers.{name}: no route or fallback names it, so it is never called")
    return lines


def repeated_targets(server: ProxyServer) -> List[str]:
    """A line for each fallback that is its route's target, or an earlier fallback, again: the same
    call once more (each with its --retries), which --retries already does; a failing upstream
    got nine identical calls a request from a route whose two fallbacks repeated its target."""
    lines = []
    for i, route in enumerate(server.proxy.router.routes):
        seen = [route.target]
        for n, fallback in enumerate(route.fallbacks, 1):
            if fallback in seen:
                where = f"{fallback.provider}/{fallback.model or '(the client model)'}"
                lines.append(f"{route.origin or f'routes[{i}]'} ({route.match!r}): fallback {n} ({where}) repeats "
                             "a target tried before it: the same call again, which --retries already makes")
            seen.append(fallback)
    return lines


def unmatched_routes(server: ProxyServer) -> List[str]:
    """A line for each route meant for Claude Code that none of its names can reach (``Opus``... is
    a family now, but ``claude-sonet*`` or ``Claude-Opus-4-1`` is not): those requests went to the
    default route, or a 404, without a word."""
    lines = []
    for i, route in enumerate(server.proxy.router.routes):
        why = unmatched_route(route.match)
        if why:
            lines.append(f"{route.origin or f'routes[{i}]'}: {why}")
    return lines


def unreached_families(server: ProxyServer) -> List[str]:
    """A line for each family route (``--haiku-model``, a file's ``"match": "haiku"``) that none of
    Claude Code's names for the family reach, an earlier route taking them all (``--model-map
    'claude-*=a'``): the flag did nothing, and the start said nothing."""
    router = server.proxy.router
    lines = []
    for i, route in enumerate(router.routes):
        names = CLAUDE_CODE_NAMES.get(route.match)
        if names is None:
            continue
        reached = [router.resolve(name) for name in names]
        if any(r is not None and r.route is route for r in reached):
            continue
        taker = next((r.route for r in reached if r is not None), None)
        if taker is not None:
            lines.append(f"{route.origin or f'routes[{i}]'} ({route.match!r}) gets none of Claude Code's "
                         f"{route.match} names: {names[0]} goes to {taker.origin or 'the route'} ({taker.match!r}), "
                         "tried before it")
    return lines


def shadowed_routes(server: ProxyServer) -> List[str]:
    """A line for each config file route that a model flag tried before it leaves nothing to match
    (``--sonnet-model`` and the file's ``claude-sonnet-4-5*``): the flag wins, as flags do, but the
    file's route is dead while the flag is given, which a user editing the file would not guess.
    Routes of one source that shadow each other stop the start (``_check_routes``)."""
    routes, given = server.proxy.router.routes, server.config.routes
    file_routes = set(given)
    lines, flags = [], []  # the flags' routes seen so far: only they can shadow a file's (thousands of them)
    for later in routes:
        if later not in file_routes:
            flags.append(later)
            continue
        lines += [f"{later.origin or f'routes[{given.index(later)}]'} ({later.match!r}) is never used while "
                  f"{earlier.origin} ({earlier.match!r}) is given: the flag takes every name the route would"
                  for earlier in flags if covers(earlier.match, later.match)]
    return lines


def keyless_upstreams(server: ProxyServer) -> List[str]:
    """A line for each provider on the internet that gets no key and is not known to need one (a
    gateway may let callers in by address): its 401s would come one per request, and Claude Code
    reads a 401 as its own login gone. One known to need a key stops the start (check_keys)."""
    forwarded = not server.config.auth_key  # else a Messages API upstream gets no client key either
    return [line for needed, line in keyless(server.proxy.router.providers.values(), forwarded=forwarded) if not needed]


def passed_over_keys(server: ProxyServer, environ: Mapping[str, str]) -> List[str]:
    """A line when the single upstream's key came from one of its provider's variables while a later
    one holds another key (Gemini: GOOGLE_API_KEY over GEMINI_API_KEY, google-genai's order): a
    user who exported GEMINI_API_KEY for Gemini and GOOGLE_API_KEY for another Google API would
    otherwise see 401s or 403s and look at the wrong key."""
    provider = server.proxy.router.providers.get(SHORTHAND_PROVIDER)
    from_file = any(p.name == SHORTHAND_PROVIDER for p in server.config.providers)
    if provider is None or provider.api == "messages" or from_file:
        return []  # a config file's provider of that name takes its key from variables it names
    own = default_key_variables(provider_dialect(provider), False)
    used = next((var for var in own if environ.get(var, "").strip()), None)
    if used is None or provider.key_source != f"${used}":  # a key setting (--api-key-env too), or another variable
        return []
    key = environ[used].strip()
    others = [var for var in own[own.index(used) + 1:] if environ.get(var, "").strip() not in ("", key)]
    return [f"${used} and ${var} hold different keys: the upstream gets ${used}'s, as the provider's own "
            f"SDK would (unset one, or choose with --api-key-env)" for var in others]


def unused_proxies(server: ProxyServer, environ: Mapping[str, str]) -> List[str]:
    """One line when the environment names a proxy that no setting lets the proxy use (HTTPS_PROXY
    without --use-env-proxy): its upstream calls would fail as if the network were down. Nothing
    when no upstream is on the internet (this machine, a LAN address or name), which no proxy is needed for."""
    names = unused_proxy_variables(server.config, environ)
    hosts = [urlsplit(p.url).hostname or "" for p in server.proxy.router.providers.values()]
    return [unused_proxy_hint(names)] if names and any(map(on_the_internet, hosts)) else []


def _warn_unreachable(server: ProxyServer, config: Config) -> None:
    urls = [p.url for p in server.proxy.router.providers.values()]
    for line in reachability.unreachable_upstreams(urls, config, config_secrets(config)):
        log.warning("%s", line)


def _install_signals(stopping: List[int]) -> Dict[int, Any]:
    """SIGINT, SIGTERM and SIGHUP only append to ``stopping``. A handler runs in the main thread
    between two bytecodes: one that set a ``threading.Event`` while the main thread was inside that
    event's ``wait`` (holding its lock) deadlocked, and the server ignored SIGTERM (seen in CI on 3.8).

    SIGHUP (the terminal closed, an ssh session dropped) stops the proxy like SIGTERM: its default
    killed it on the spot, streams cut without an error event and their call records lost. There is
    no configuration to reload."""
    previous: Dict[int, Any] = {}
    names = ("SIGINT", "SIGTERM", "SIGHUP")  # no SIGHUP on Windows
    for sig in (getattr(signal, name) for name in names if hasattr(signal, name)):
        previous[sig] = signal.signal(sig, lambda signum, _: stopping.append(signum))
    return previous


def serve(config: Config, stdout: TextIO, metrics_path: Optional[str] = None) -> int:
    sink = usage_writer(metrics_path) if metrics_path else None
    logged = usage_replay.log_size(metrics_path)  # before this server writes a line of its own
    server = ProxyServer(config, sink)
    stopping: List[int] = []
    # Signals first: a script that reads the line below may send SIGTERM at once.
    previous = _install_signals(stopping) if threading.current_thread() is threading.main_thread() else {}
    print(_describe(server), file=stdout, flush=True)
    _warn_about(server, os.environ)  # the environment the server's upstream calls see
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    usage_replay.replay_in_background(server.metrics, metrics_path, logged)  # today's totals so far
    # After listening, not before: the probe may take its whole bound and must not delay the start.
    threading.Thread(target=_warn_unreachable, args=(server, config), daemon=True).start()
    try:
        while not stopping:
            time.sleep(0.2)  # a signal cuts the sleep short; its handler only appends
    finally:
        log.info("shutting down")
        drain_and_close(server, config.shutdown_grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def program() -> str:
    """How this process was started, for the recipes of ``--help`` (``claude_code.invocation``)."""
    return invocation(sys.argv[0] if sys.argv else "", __package__ or "claudeproxy")


def _settings(argv: Optional[List[str]], environ: Mapping[str, str], stdout: TextIO) -> Tuple[argparse.Namespace, Config]:
    parser = build_parser()
    parser.out = stdout  # type: ignore[attr-defined]
    parser.epilog = help_footer(port_given(sys.argv[1:] if argv is None else argv, 8082), program())
    ns, given = parse_flags(parser, argv)
    file = load_config_file(ns.config, environ, {**flag_specs(parser), **RUN_ONLY}) if ns.config else None
    merge_file(ns, given, file, skip=set(RUN_ONLY))
    config = config_from_args(ns, environ, file)
    try:
        check_settings(ns, config)
        check_overridden(ns, given, file, environ, skip=set(RUN_ONLY))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return ns, config


def check_settings(ns: argparse.Namespace, config: Config) -> None:
    """What both modes check before anything listens; ValueError names the setting."""
    router = build_router(config)  # every provider and route
    if config.upstream is not None:  # the single upstream (a file's provider of that name is checked there)
        _no_header_the_key_replaces(ns, router)
    if config.ca_bundle is not None:
        _no_special_file(config.ca_bundle, config.setting_name("ca_bundle"))
        tls_context(config.ca_bundle, config.setting_name("ca_bundle"))
    check_usage_log(ns)


def missing_cert_file(server: ProxyServer, environ: Mapping[str, str]) -> List[str]:
    """A line when SSL_CERT_FILE names no file, where an upstream is https and no --ca-bundle is
    given: Python's TLS reads the CA file there, so a CA the user meant to trust is not (every call
    to an upstream it signs failed, with a hint at --ca-bundle alone). Not a refusal to start: the
    system's CA folder is still read, and may hold what the upstream needs."""
    path = environ.get("SSL_CERT_FILE", "")
    https = any(p.url.lower().startswith("https:") for p in server.proxy.router.providers.values())
    if not path or not https or server.config.ca_bundle is not None:
        return []
    if not os.path.isfile(path):
        return [f"SSL_CERT_FILE {path} names no file: the CA certificates meant to be read there are not "
                "(Python's TLS reads them there for https upstreams); correct or unset it, or give --ca-bundle"]
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:  # junk, a DER file, no certificate in it, unreadable
        return [f"SSL_CERT_FILE {path} holds no CA certificates Python's TLS can read "
                f"({' '.join(str(exc).split())[:120]}): every https call will refuse its certificate; "
                "correct or unset it, or give --ca-bundle"]
    return []


def _no_special_file(path: str, setting: str) -> None:
    """A CA bundle that exists but is neither a file nor a folder (/dev/null, a FIFO): tls_context
    would call it "no such file"."""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise ValueError(f"{setting} {path}: not a regular file; give a PEM file of CA certificates")


def usage_log_path(ns: argparse.Namespace) -> Optional[str]:
    """The usage log's file: --usage-log, or --metrics-file (its former name)."""
    return ns.usage_log or ns.metrics_file  # type: ignore[no-any-return]


def check_usage_log(ns: argparse.Namespace) -> None:
    """ValueError naming the setting when the usage log could not be appended to: found at start, not per call."""
    if ns.usage_log and ns.metrics_file:
        # Twins: both from the command line or both from the file (merge_file), which is named once.
        old, new = name_of(ns, "metrics_file"), name_of(ns, "usage_log")
        raise ValueError(f"{old} is the former name of {named_once(new, old)}: give one of them")
    for dest in ("usage_log", "metrics_file"):
        if getattr(ns, dest):
            check_appendable(getattr(ns, dest), name_of(ns, dest), try_it=not ns.print_config)


def check_appendable(path: str, setting: str, try_it: bool = True) -> None:
    """A file the proxy can append to, or create. ``try_it``: really open it for appending (see
    ``_append_nothing``); without it (--print-config) nothing is opened or created, and the
    permission bits are all that is asked."""
    if os.path.isdir(path):
        raise ValueError(f"{setting} {path}: is a directory")
    if _foreign_link(path):
        raise ValueError(f"{setting} {path}: is a symbolic link another user made; it is not followed (remove it)")
    target = path if os.path.exists(path) else (os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(target) and not os.path.exists(path):
        raise ValueError(f"{setting} {path}: the directory {target} does not exist")
    if not try_it:
        if not os.access(target, os.W_OK):
            raise ValueError(f"{setting} {path}: cannot be opened for writing (permission denied)")
        return
    try:
        _append_nothing(path)
    except OSError as exc:
        raise ValueError(f"{setting} {path}: cannot be opened for appending ({exc.strerror or exc})") from None


def _append_nothing(path: str) -> None:
    """Open ``path`` for appending and write no bytes: what ``os.access`` cannot tell root (who may
    open /proc/version, whose every write fails with EIO, or find /proc read-only). A file made
    for the check is removed again; non-blocking, so that a FIFO without a reader cannot hang it."""
    flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NONBLOCK", 0)
    created = False
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
    try:
        os.write(fd, b"")
    finally:
        os.close(fd)
        if created:
            os.unlink(path)


def cannot_listen(ns: argparse.Namespace, config: Config, exc: OSError) -> str:
    """The line for a bind that failed: the port is taken, the address is not this machine's, the
    name does not resolve. A bad setting like any other (exit 2), so it names the two as given."""
    host = name_of(ns, "host")
    hint = ""
    if exc.errno == errno.EADDRINUSE:
        hint = (f"; another program (a claudeproxy already running?) has the port: stop it, or give another "
                f"{name_of(ns, 'port')} (0: any free one)")
    return (f"cannot listen on {config.host}:{config.port} ({host}, {named_once(name_of(ns, 'port'), host)}): "
            f"{exc.strerror or exc}{hint}")


def main(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None,
         stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    environ = os.environ if environ is None else environ
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        ns, config = _settings(argv, environ, stdout)
    except _Exit as done:
        return done.status
    except UsageError as exc:
        secrets = [v for v in (*map(environ.get, key_variables()), environ.get("CLAUDEPROXY_AUTH_KEY")) if v]
        print(f"claudeproxy: error: {redact_text(' '.join(str(exc).split()), secrets)}", file=stderr)
        return 2
    if ns.print_config:
        try:
            print(json.dumps(describe_config(config, ns.config), indent=2), file=stdout)
        except BrokenPipeError:  # piped into head: the reader has what it wanted
            pass
        return 0
    logger, bodies = logging.getLogger(PACKAGE_LOGGER), logging.getLogger(BODIES_LOGGER)
    saved = (logger.level, logger.propagate, bodies.level)
    handler = setup_logging(ns.log_level, secrets_source(config), stderr, ns.log_format, ns.log_bodies)
    try:
        check_keys(config)
        return serve(config, stdout, usage_log_path(ns))
    except ValueError as exc:  # a setting only the server could check (start() raises the same)
        print(f"claudeproxy: error: {' '.join(str(exc).split())}", file=stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"claudeproxy: error: {cannot_listen(ns, config, exc)}", file=stderr)
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        bodies.setLevel(saved[2])
