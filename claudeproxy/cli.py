"""Command line: flags and environment -> ``Config``, logging, signals, serve.

I/O. The only module that reads ``os.environ``. ``main(argv)`` returns the
exit status: 0 after a clean shutdown, 2 for a bad flag or URL (one line on
stderr saying what is wrong).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import threading
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence, TextIO, Tuple
from urllib.parse import urlsplit

from . import __version__
from .config import DEFAULT_UPSTREAM, Config, static_token
from .dialects import DIALECTS, detect_provider
from .metrics import CallRecord
from .redact import redact_text, redact_url
from .server import ProxyServer, drain_and_close

log = logging.getLogger("claudeproxy")

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}


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
        raise UsageError(message)

    def print_help(self, file: Optional[TextIO] = None) -> None:
        super().print_help(file or self.out)

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            print(message.rstrip("\n"), file=sys.stderr)
        raise _Exit(status)


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"claudeproxy {__version__}", file=getattr(parser, "out", None) or sys.stdout)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="claudeproxy",
        description="Serve the Anthropic Messages API (for Claude Code and the anthropic SDKs) "
        "on top of an OpenAI-compatible Chat Completions backend, or pass requests through "
        "to an Anthropic-compatible one.",
        epilog="Then: ANTHROPIC_BASE_URL=http://127.0.0.1:8082 claude",
    )
    _upstream_flags(p.add_argument_group("upstream"))
    _network_flags(p.add_argument_group("network"))
    _server_flags(p.add_argument_group("server"))
    out = p.add_argument_group("logging")
    out.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                     help="default: %(default)s")
    out.add_argument("--log-bodies", action="store_true", help="log request bodies at debug level (redacted)")
    out.add_argument("--metrics-file", metavar="PATH", help="append one JSON line per call to this file")
    p.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    return p


def _upstream_flags(up: Any) -> None:
    up.add_argument("--upstream", metavar="URL", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 "
                    f"(default: $OPENAI_BASE_URL, else {DEFAULT_UPSTREAM})")
    up.add_argument("--api-key", metavar="KEY", help="upstream API key (default: $OPENAI_API_KEY; none: no auth header)")
    up.add_argument("--model", metavar="NAME", help="upstream model for every request (default: the client's model)")
    up.add_argument("--model-map", metavar="PATTERN=NAME", action="append", default=[],
                    help="map client models matching a glob to an upstream model, e.g. 'claude-haiku*=gpt-4o-mini' "
                    "(repeatable, first match wins, before --model)")
    up.add_argument("--provider", choices=["auto", *sorted(DIALECTS)], default="auto",
                    help="upstream dialect (default: guessed from the URL, else generic)")
    up.add_argument("--header", metavar="'NAME: VALUE'", action="append", default=[],
                    help="extra header on every upstream request (repeatable)")
    up.add_argument("--max-output-tokens", metavar="N", type=int,
                    help="cap max_tokens sent upstream (Claude Code asks for up to 128000)")
    up.add_argument("--passthrough", action="store_true",
                    help="forward requests unchanged to an Anthropic-compatible upstream (logs and metrics only)")
    up.add_argument("--azure-api-version", metavar="VERSION", default=Config.azure_api_version,
                    help="api-version for --provider azure (default: %(default)s)")


def _network_flags(net: Any) -> None:
    net.add_argument("--proxy", metavar="URL", help="outbound HTTP proxy; without it no proxy is used, "
                     "even if HTTPS_PROXY is set")
    net.add_argument("--use-env-proxy", action="store_true", help="use HTTP(S)_PROXY/NO_PROXY from the environment")
    net.add_argument("--ca-bundle", metavar="PATH", help="CA certificates for the upstream's TLS (default: system)")
    net.add_argument("--connect-timeout", type=float, default=Config.connect_timeout, metavar="S",
                     help="upstream connect timeout (default: %(default)s)")
    net.add_argument("--idle-timeout", type=float, default=Config.idle_timeout, metavar="S",
                     help="upstream silence before giving up, also while waiting for the first byte "
                     "(default: %(default)s)")
    net.add_argument("--request-timeout", type=float, default=Config.request_timeout, metavar="S",
                     help="total time for a non-streaming upstream call (default: %(default)s)")
    net.add_argument("--ping-interval", type=float, default=Config.ping_interval, metavar="S",
                     help="send an SSE ping after this much silence (default: %(default)s)")


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
                     help="requests in flight before answering 529 (default: %(default)s)")
    srv.add_argument("--max-body-bytes", type=int, default=Config.max_body_bytes, metavar="N",
                     help="largest request body (default: %(default)s)")
    srv.add_argument("--shutdown-grace", type=float, default=Config.shutdown_grace, metavar="S",
                     help="on SIGTERM/Ctrl-C, let requests in flight finish this long (default: %(default)s)")


# --------------------------------------------------------------------------
# Validation (RELIABILITY.md S6, S9).


def check_url(value: str, flag: str) -> str:
    url = value.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError(f"{flag}: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag}: expected an http:// or https:// URL with a host, got {redact_url(url)!r}")
    if "@" in parts.netloc and flag == "--upstream":
        raise UsageError(f"{flag}: credentials in the URL are not allowed; use --api-key")
    if parts.fragment:
        raise UsageError(f"{flag}: a URL fragment (#...) is not allowed")
    return url


def parse_header(value: str) -> Tuple[str, str]:
    name, sep, val = value.partition(":")
    name, val = name.strip(), val.strip()
    if not sep or not _TOKEN_RE.match(name):
        raise UsageError(f"--header: expected 'Name: value', got {value!r}")
    if name.lower() in _FORBIDDEN_HEADERS:
        raise UsageError(f"--header: {name} is set by the proxy and cannot be overridden")
    if re.search(r"[\r\n\x00]", val) or re.search(r"[\x00-\x08\x0a-\x1f\x7f]", val):
        raise UsageError(f"--header: the value of {name} contains control characters")
    return name, val


def parse_model_map(values: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    pairs = []
    for value in values:
        pattern, sep, target = value.partition("=")
        if not sep or not pattern.strip() or not target.strip():
            raise UsageError(f"--model-map: expected PATTERN=NAME, got {value!r}")
        pairs.append((pattern.strip(), target.strip()))
    return tuple(pairs)


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive(ns: argparse.Namespace) -> None:
    for name in ("connect_timeout", "idle_timeout", "request_timeout", "ping_interval"):
        if getattr(ns, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be greater than 0")
    for name in ("max_concurrency", "max_body_bytes", "max_output_tokens"):
        value = getattr(ns, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if ns.shutdown_grace < 0:
        raise UsageError("--shutdown-grace must not be negative")
    if not 0 <= ns.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")


def config_from_args(ns: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """The ``Config`` for parsed flags, with environment fallbacks; raises ``UsageError``."""
    _positive(ns)
    upstream = check_url(ns.upstream or environ.get("OPENAI_BASE_URL") or DEFAULT_UPSTREAM, "--upstream")
    auth_key = ns.auth_key or environ.get("CLAUDEPROXY_AUTH_KEY") or None
    if not _is_loopback(ns.host) and not auth_key:
        raise UsageError(f"refusing to listen on {ns.host} without --auth-key (anyone could use your upstream key)")
    key = ns.api_key if ns.api_key is not None else environ.get("OPENAI_API_KEY", "")
    return Config(
        upstream=upstream,
        token=static_token(key.strip()),
        host=ns.host,
        port=ns.port,
        model=ns.model,
        model_map=parse_model_map(ns.model_map),
        provider=None if ns.provider == "auto" else ns.provider,
        headers=tuple(parse_header(h) for h in ns.header),
        proxy=check_url(ns.proxy, "--proxy") if ns.proxy else None,
        use_env_proxy=ns.use_env_proxy,
        ca_bundle=ns.ca_bundle,
        passthrough=ns.passthrough,
        max_output_tokens=ns.max_output_tokens,
        azure_api_version=ns.azure_api_version,
        auth_key=auth_key,
        allowed_hosts=tuple(h.lower() for h in ns.allowed_host),
        allowed_origins=tuple(ns.allowed_origin),
        connect_timeout=ns.connect_timeout,
        idle_timeout=ns.idle_timeout,
        request_timeout=ns.request_timeout,
        ping_interval=ns.ping_interval,
        max_body_bytes=ns.max_body_bytes,
        max_concurrency=ns.max_concurrency,
        shutdown_grace=ns.shutdown_grace,
        log_bodies=ns.log_bodies,
    )


# --------------------------------------------------------------------------
# Logging and metrics output.


class _RedactingFilter(logging.Filter):
    """Masks secrets in every record, whatever logger produced it."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact_text(message, self._secrets), None
        if record.exc_info:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info), self._secrets)
            record.exc_info = None
        return True


def setup_logging(level: str, secrets: Sequence[str], stream: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter(secrets))
    root = logging.getLogger("claudeproxy")
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler


def _metrics_writer(path: str) -> Any:
    lock = threading.Lock()

    def write(rec: CallRecord) -> None:
        line = json.dumps(rec.to_dict(), sort_keys=True)
        with lock, open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    return write


# --------------------------------------------------------------------------
# main.


def _describe(config: Config, address: Tuple[Any, ...]) -> str:
    host = str(address[0])
    shown = f"[{host}]" if ":" in host else host
    mode = " (passthrough)" if config.passthrough else ""
    return f"claudeproxy listening on http://{shown}:{address[1]} -> {redact_url(config.upstream)}{mode}"


def _warn_about(config: Config) -> None:
    parts = urlsplit(config.upstream)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        log.warning("the upstream uses plain http: the API key travels unencrypted")
    if not config.passthrough:
        provider = config.provider or detect_provider(config.upstream)
        log.info("upstream dialect: %s", provider)


def _install_signals(stop: threading.Event) -> Dict[int, Any]:
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous


def serve(config: Config, stdout: TextIO, metrics_path: Optional[str] = None) -> int:
    sink = _metrics_writer(metrics_path) if metrics_path else None
    server = ProxyServer(config, sink)
    stop = threading.Event()
    # Signals first: a script that reads the line below may send SIGTERM at once.
    previous = _install_signals(stop) if threading.current_thread() is threading.main_thread() else {}
    print(_describe(config, server.server_address), file=stdout, flush=True)
    _warn_about(config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        log.info("shutting down")
        drain_and_close(server, config.shutdown_grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None,
         stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    environ = os.environ if environ is None else environ
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    parser.out = stdout  # type: ignore[attr-defined]
    try:
        ns = parser.parse_args(argv)
        config = config_from_args(ns, environ)
    except _Exit as done:
        return done.status
    except UsageError as exc:
        secrets = [v for v in (environ.get("OPENAI_API_KEY"), environ.get("CLAUDEPROXY_AUTH_KEY")) if v]
        print(f"claudeproxy: error: {redact_text(' '.join(str(exc).split()), secrets)}", file=stderr)
        return 2
    logger = logging.getLogger("claudeproxy")
    saved = (logger.level, logger.propagate)
    handler = setup_logging(ns.log_level, [config.token(), config.auth_key or ""], stderr)
    try:
        return serve(config, stdout, ns.metrics_file)
    except OSError as exc:  # e.g. the port is taken
        print(f"claudeproxy: error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=stderr)
        return 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
