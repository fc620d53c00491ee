"""The frozen settings every part of the proxy is given: providers, routes, server knobs.

No I/O and no environment reads here: ``cli.py`` resolves flags, the config
file and environment variables into a ``Config``; library callers build one
directly. ``routing.build_router`` turns the providers and routes (and the
single-upstream shorthand fields below) into the router a server uses.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional, Tuple
from urllib.parse import urlsplit

from .model_facts import ModelFacts
from .redact import redact_url

# A token source returns the upstream credential each time it is called, so a
# caller can plug in a refresher (a key command, OAuth, a vault) instead of a static key.
TokenSource = Callable[[], str]

DEFAULT_UPSTREAM = "https://api.openai.com/v1"
DEFAULT_MESSAGES_UPSTREAM = "https://api.anthropic.com"
# The upstream APIs a provider can speak (apis/): OpenAI Chat Completions,
# Anthropic Messages (forwarded), OpenAI Responses.
UPSTREAM_APIS = ("chat", "messages", "responses")
AUTH_STYLES = ("bearer", "x-api-key", "api-key")
BETA_POLICIES = ("auto", "forward", "drop")
SHORTHAND_PROVIDER = "upstream"  # the provider the single-upstream flags describe


def static_token(key: str) -> TokenSource:
    """A token source that always returns ``key`` (may be empty: no auth header)."""

    def token() -> str:
        return key

    return token


def _no_token() -> str:
    return ""


@dataclasses.dataclass(frozen=True)
class Provider:
    """One upstream: where it is, which API it speaks, how to authenticate, what its models can do."""

    name: str
    url: str
    api: str = "chat"
    # Chat Completions dialect (dialects.DIALECTS); None = detected from the URL.
    dialect: Optional[str] = None
    token: TokenSource = _no_token
    # Where the key comes from, for --print-config ("--api-key", "env OPENAI_API_KEY", "command", "").
    key_source: str = ""
    headers: Tuple[Tuple[str, str], ...] = ()
    # Model facts that override the built-in table: (exact name or glob, facts), first match wins.
    models: Tuple[Tuple[str, ModelFacts], ...] = ()
    # How the key is sent; None = the API's and host's usual way (dialects.auth_style).
    auth: Optional[str] = None
    # Messages API: forward the client's anthropic-beta header, drop it, or "auto"
    # (forward to Anthropic itself, drop elsewhere: several native endpoints reject unknown betas).
    anthropic_beta: str = "auto"
    # Betas forwarded even when the policy drops the rest.
    allowed_betas: Tuple[str, ...] = ()
    azure_api_version: str = "2024-10-21"
    # Cap for max_tokens on every model of this provider (a model's own cap may be lower).
    max_output_tokens: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class RouteTarget:
    """Where a route (or one of its fallbacks) sends a request."""

    provider: str
    # The upstream model; None sends the client's model name unchanged.
    model: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Route:
    """Client models matching ``match`` go to ``target``; ``fallbacks`` are tried in order on failure.

    ``match`` is ``*`` (everything), a Claude family (``opus``, ``sonnet``,
    ``haiku``: every generation and the alias), a glob, or an exact name.
    """

    match: str
    target: RouteTarget
    fallbacks: Tuple[RouteTarget, ...] = ()
    # What made this route, for --print-config ("--opus-model", "config routes[2]", ...).
    origin: str = ""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a running proxy needs to know. Defaults are the documented ones."""

    # Named providers and ordered routes (the config file's model of the program).
    providers: Tuple[Provider, ...] = ()
    routes: Tuple[Route, ...] = ()
    # The single-upstream shorthand: when ``upstream`` is set, or no provider is
    # configured, these describe one more provider named "upstream" and routes to it.
    upstream: Optional[str] = None
    upstream_api: str = "chat"
    # Short form of upstream_api="messages" (kept for the command line and library callers).
    passthrough: bool = False
    token: TokenSource = _no_token
    key_source: str = ""
    # Provider dialect name (see dialects.py); None = detect from the upstream URL.
    provider: Optional[str] = None
    headers: Tuple[Tuple[str, str], ...] = ()
    azure_api_version: str = "2024-10-21"
    upstream_auth: Optional[str] = None
    # Upstream model for every request; None passes the client's model through.
    model: Optional[str] = None
    # Upstream models for Claude Code's model families (any generation, and the aliases).
    opus_model: Optional[str] = None
    sonnet_model: Optional[str] = None
    haiku_model: Optional[str] = None
    # (fnmatch pattern, upstream model) pairs, first match wins, before the family and default routes.
    model_map: Tuple[Tuple[str, str], ...] = ()
    # Cap for the upstream max_tokens on every route (Claude Code asks for 32k-128k).
    max_output_tokens: Optional[int] = None
    # Network.
    host: str = "127.0.0.1"
    port: int = 0
    proxy: Optional[str] = None
    use_env_proxy: bool = False
    ca_bundle: Optional[str] = None
    # Clients must present this key (x-api-key or Bearer) when set.
    auth_key: Optional[str] = None
    allowed_hosts: Tuple[str, ...] = ()
    allowed_origins: Tuple[str, ...] = ()
    # Timeouts in seconds.
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    request_timeout: float = 600.0
    client_timeout: float = 30.0
    client_request_deadline: float = 60.0
    # A request body must arrive within this long after its headers (and within the request deadline).
    body_timeout: float = 30.0
    ping_interval: float = 10.0
    # Finalize a stream this long after finish_reason when nothing else arrives.
    finish_grace: float = 5.0
    shutdown_grace: float = 5.0
    # Limits.
    max_body_bytes: int = 32 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    max_concurrency: int = 256
    # Connections reading a request body at once; a newcomer beyond it ends the longest-waiting one.
    max_body_readers: int = 256
    # Idle keep-alive connections kept per upstream (scheme, host, port, proxy); 0 = a new connection each call.
    max_idle_per_host: int = 8
    # Log every request and response body (redacted) at DEBUG.
    log_bodies: bool = False

    def replace(self, **changes: object) -> "Config":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def shorthand_api(self) -> str:
        """The API of the single-upstream provider (``--passthrough`` is ``messages``)."""
        return "messages" if self.passthrough else self.upstream_api


# --------------------------------------------------------------------------
# Checks shared by the command line, the config file and start() (RELIABILITY.md S6, S9).
# Each raises ValueError with one line that names the setting.

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"})
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_url(value: str, setting: str) -> str:
    """An http(s) URL with a host, no credentials, no fragment; returned stripped."""
    url = value.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"{setting}: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting}: expected an http:// or https:// URL with a host, got {redact_url(url)!r}")
    if "@" in parts.netloc:
        raise ValueError(f"{setting}: credentials in the URL are not allowed; give the key separately")
    if parts.fragment:
        raise ValueError(f"{setting}: a URL fragment (#...) is not allowed")
    return url


def check_header(name: str, value: str, setting: str) -> Tuple[str, str]:
    """A header the proxy may add upstream: a token name, not one it sets itself, no control characters."""
    name, value = name.strip(), value.strip()
    if not _TOKEN_RE.match(name):
        raise ValueError(f"{setting}: {name!r} is not a valid header name")
    if name.lower() in _FORBIDDEN_HEADERS:
        raise ValueError(f"{setting}: {name} is set by the proxy and cannot be overridden")
    if _CONTROL_RE.search(value):
        raise ValueError(f"{setting}: the value of {name} contains control characters")
    return name, value
