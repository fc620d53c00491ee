"""The frozen settings every part of the proxy is given: providers, routes, server knobs.

No I/O and no environment reads here: ``cli.py`` resolves flags, the config
file and environment variables into a ``Config``; library callers build one
directly. ``routing.build_router`` turns the providers and routes (and the
single-upstream shorthand fields below) into the router a server uses.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .dialects import DEFAULT_AZURE_API_VERSION
from .http_head import CONTROL_RE, TOKEN_RE
from .model_facts import MAX_TOKENS, ModelFacts
from .redact import MASK, redact_url

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


class StaticToken:
    """A token source that always returns the same key; the start-up checks can read it."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self) -> str:
        return self.key

    def __repr__(self) -> str:
        return "StaticToken(***)"  # never the key itself


def static_token(key: str) -> TokenSource:
    """A token source that always returns ``key`` (may be empty: no auth header)."""
    if not isinstance(key, str):
        raise ValueError(f"static_token: expected the key as text, got {type(key).__name__}")
    return StaticToken(key)


def _no_token() -> str:
    return ""


def gives_no_key(token: TokenSource) -> bool:
    """Is ``token`` known, without running anything, to give no key?"""
    return token is _no_token or isinstance(token, StaticToken) and not token.key


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
    azure_api_version: str = DEFAULT_AZURE_API_VERSION
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
    azure_api_version: str = DEFAULT_AZURE_API_VERSION
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
    # As long as Claude Code waits itself (its API timeout, 600 s): a reasoning backend may hold its
    # answer's head that long, and the client would give up first anyway (FIELD-NOTES 15).
    idle_timeout: float = 600.0
    request_timeout: float = 600.0
    client_timeout: float = 30.0
    client_request_deadline: float = 60.0
    # A request body must arrive within this long after its headers (and within the request deadline).
    body_timeout: float = 30.0
    ping_interval: float = 10.0
    # Finalize a stream this long after finish_reason when nothing else arrives.
    finish_grace: float = 5.0
    shutdown_grace: float = 5.0
    # Retries of the same target on 429/5xx/connect failures, before the first byte reached
    # the client; Retry-After is honoured up to retry_max_wait (longer: the next target).
    retries: int = 0
    retry_max_wait: float = 20.0
    # Limits.
    max_body_bytes: int = 32 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    max_concurrency: int = 256
    # Connections reading a request body at once; a newcomer beyond it ends the longest-waiting one.
    max_body_readers: int = 256
    # Client connections open at once: a newcomer beyond it ends the one that has waited longest
    # for a request's head, or gets 529 where every one has a request in flight.
    max_connections: int = 1024
    # Idle keep-alive connections kept per upstream (scheme, host, port, proxy); 0 = a new connection each call.
    max_idle_per_host: int = 8
    # Log every request and response body (redacted) at DEBUG.
    log_bodies: bool = False
    # (flag dest, name) for settings that did not come from their flag, so that a message names
    # what the user wrote: a config file's key ("--config f.json: retries") or an environment
    # variable ("OPENAI_BASE_URL"). Empty for library callers: their settings go by the flags' names.
    setting_names: Tuple[Tuple[str, str], ...] = ()

    def replace(self, **changes: object) -> "Config":
        """These settings with ``changes``; ValueError naming a keyword that is no setting (and the
        nearest one), not a TypeError (start(usage_log=...), a flag's name that is no field)."""
        fields = [f.name for f in dataclasses.fields(self)]
        for name in changes:
            if name not in fields:
                near = difflib.get_close_matches(name, fields, n=1)
                hint = f" (did you mean {near[0]}=?)" if near else ""
                raise ValueError(f"{name}=: no such setting{hint}; the settings are the fields of claudeproxy.Config")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def setting_name(self, dest: str) -> str:
        """How a message names the setting ``dest``: its flag, unless a file or a variable gave it."""
        return setting_name(dict(self.setting_names), dest)

    @property
    def shorthand_api(self) -> str:
        """The API of the single-upstream provider (``--passthrough`` is ``messages``)."""
        return "messages" if self.passthrough else self.upstream_api


# --------------------------------------------------------------------------
# Naming a setting in a message.


def flag_name(dest: str) -> str:
    """``--idle-timeout`` for ``idle_timeout``."""
    return "--" + dest.replace("_", "-")


def setting_name(names: Mapping[str, str], dest: str) -> str:
    """The setting ``dest`` as the user gave it: ``names`` holds those not given as their flag."""
    return names.get(dest) or flag_name(dest)


def named_once(name: str, after: str) -> str:
    """``name`` in a message that named ``after`` already: the config file both come from is not
    named twice (``--config f.json: routes[1]: ... routes[0]``, not the file again)."""
    head, sep, tail = name.rpartition(": ")
    return tail if sep and after.startswith(head + sep) else name


# --------------------------------------------------------------------------
# Checks shared by the command line, the config file and start() (RELIABILITY.md S6, S9).
# Each raises ValueError with one line that names the setting.

_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"})
_URL_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")


def check_url(value: str, setting: str, credentials: bool = False) -> str:
    """An http(s) URL with a host, no fragment, nothing to escape; returned stripped.

    Credentials (``user:pass@``) only where ``credentials`` allows them (a library caller's proxy).
    """
    url = value.strip()
    if not url:  # said so: "got ''" (the value stripped) hid the blanks of OPENAI_BASE_URL=' '
        raise ValueError(f"{setting}: the value is only blanks; expected an http:// or https:// URL")
    if _URL_CONTROL_RE.search(url):
        # urllib would send these as they are, and the upstream would see another request line.
        raise ValueError(f"{setting}: the URL contains spaces or control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        # The error quotes the "port": with an "@" further on, a password that an unencoded "/", "?"
        # or "#" cut short (http://user:pa/ss@host reads "pa" as the port).
        why = exc if "@" not in url else "a port that is no number, or a user or password to percent-encode"
        raise ValueError(f"{setting}: not a valid URL ({why})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting}: expected an http:// or https:// URL with a host, got {shown_url(url)!r}")
    if not is_host(parts.hostname):  # every call would fail (a 502) on a name no resolver takes
        raise ValueError(f"{setting}: {parts.hostname!r} is not an IP address or a host name (ASCII letters, "
                         "digits, '-' and '.'; an international name in its xn-- form)")
    if parts.port == 0:
        raise ValueError(f"{setting}: port 0 is no port to connect to")
    if "@" in parts.netloc and not credentials:
        raise ValueError(f"{setting}: credentials in the URL are not allowed; give the key separately")
    if parts.fragment:
        raise ValueError(f"{setting}: a URL fragment (#...) is not allowed")
    if not (parts.path + parts.query).isascii():
        raise ValueError(f"{setting}: the URL path or query has non-ASCII characters; percent-encode them")
    return url


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def shown_url(url: str) -> str:
    """A URL that failed a check, fit for the message: ``redact_url``, and everything before its last
    "@" masked, also where it does not parse as user info (``user:pass@host`` without a scheme,
    ``http:///user:pass@host``, a password with an unencoded "/")."""
    scheme = _SCHEME_RE.match(url)
    head = scheme.group(0) if scheme else ""
    if "@" in url[len(head):]:
        url = head + MASK + "@" + url.rpartition("@")[2]
    return redact_url(url)


def check_proxy_url(value: str, setting: str, port_needed: bool = True) -> str:
    """An outbound proxy's URL: http:// only; ``user:password@`` allowed, the only way to give them.

    urllib cannot speak TLS to a proxy: with https:// the CONNECT, credentials and all, would go
    in clear text; and it has no SOCKS. HTTPS upstreams go through an http:// proxy all the same
    (tunnelled with CONNECT, TLS end to end). No message shows the user or password.
    """
    url = value.strip()
    scheme = _SCHEME_RE.match(url)
    if not scheme:
        raise ValueError(f"{setting}: the proxy URL has no scheme (got {shown_url(url)!r}): write http:// before it")
    if scheme.group(1).lower() != "http":
        raise ValueError(f"{setting}: only http:// proxies are supported (HTTPS upstreams still go through "
                         f"one, tunnelled with CONNECT), got {shown_url(url)!r}")
    try:
        hostless = not urlsplit(url).hostname
    except ValueError:
        hostless = False  # check_url says what is wrong
    if hostless:
        raise ValueError(f"{setting}: the proxy URL has no host (got {shown_url(url)!r}); "
                         "it is written as http://proxy.corp.example:3128")
    checked = check_url(url, setting, credentials=True)
    rest = urlsplit(checked)
    if "@" in rest.path + rest.query + rest.fragment:
        # http://user:12/pass@host parses as the host "user" on port 12, the password in the path.
        raise ValueError(f"{setting}: an \"@\" after the proxy's host (got {shown_url(url)!r}): percent-encode "
                         "\"/\", \"?\", \"#\" and \"@\" in the user and password")
    if rest.port is None and port_needed:
        # urllib would take the upstream's default port: the CONNECT for an https upstream, password
        # and all, in clear text to the proxy host's port 443 (an http one's to port 80, as intended).
        raise ValueError(f"{setting}: the proxy URL has no port (got {shown_url(url)!r}); "
                         "give the proxy's, as in http://proxy.corp.example:3128 (3128 and 8080 are common)")
    return checked


def _env_var(environ: Mapping[str, str], key: str) -> Tuple[str, str]:
    """(name, value) of the variable urllib reads for ``key`` (``https_proxy``): the lower-case
    one when it is set, even empty, else another spelling; ``HTTP_PROXY`` not under CGI."""
    if key in environ:
        return key, environ[key].strip()
    if key == "http_proxy" and "REQUEST_METHOD" in environ:
        return key, ""  # CVE-2016-1000110: a client's Proxy: header becomes HTTP_PROXY under CGI
    for name, value in environ.items():
        if name.lower() == key and value.strip():
            return name, value.strip()
    return key, ""


def unset_variable(environ: Mapping[str, str], var: str) -> str:
    """What is wrong with a setting's environment variable that gave no value; a name that is no
    variable's (a key pasted in its place, ``$OPENAI_API_KEY`` as the shell left it quoted) is told so."""
    if var.startswith("$") and _VARIABLE_NAME.match(var[1:]):
        return f"give the variable's name without the $ ({var[1:]}), not {var}"
    if not _VARIABLE_NAME.match(var) or _LOOKS_LIKE_A_KEY.match(var) and var not in environ:
        # Not echoed: a key pasted where the name belongs is a secret nothing else knows to mask.
        return "takes the name of the environment variable that holds the key, not the key itself"
    return f"the environment variable {var} is " + ("empty" if var in environ else "not set")


_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A name no one would give a variable: 20 characters or more with digits and without the underscores
# a variable's words have (a Mistral key, a hex one, Google's AIza...).
_LOOKS_LIKE_A_KEY = re.compile(r"(?=.*[0-9])[A-Za-z0-9]{20,}\Z")


def env_proxies(environ: Mapping[str, str]) -> Tuple[Dict[str, str], str]:
    """``--use-env-proxy``: the proxy URL per upstream scheme (``http_proxy``, ``https_proxy``) and
    the ``no_proxy`` list; a value that is not an http:// proxy is a ValueError naming its variable.

    ``host:port`` without a scheme is an http:// proxy, as curl and urllib read it.
    """
    proxies = {}
    for scheme in ("http", "https"):
        name, value = _env_var(environ, f"{scheme}_proxy")
        if value:
            # HTTP_PROXY serves http upstreams alone: without a port it is port 80, as urllib reads it.
            proxies[scheme] = check_proxy_url(value if "://" in value else "http://" + value, name,
                                              port_needed=scheme == "https")
    return proxies, _env_var(environ, "no_proxy")[1]


# The variables that name an outbound proxy (any case). ALL_PROXY is never read, even with
# --use-env-proxy, but a laptop that sets it wants the same hint as one that sets HTTPS_PROXY.
_PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")


def unused_proxy_variables(config: Config, environ: Mapping[str, str]) -> List[str]:
    """The proxy variables set in ``environ`` that nothing will read: without --proxy or
    --use-env-proxy the environment's proxy is not used (RELIABILITY.md S8), and on a corporate
    laptop that looks like a network that is down."""
    if config.proxy or config.use_env_proxy:
        return []
    return sorted(name for name, value in environ.items() if name.lower() in _PROXY_VARIABLES and value.strip())


def unused_proxy_hint(names: List[str]) -> str:
    """What to say about ``unused_proxy_variables``: that they are not used, and how to use them."""
    verb = "is" if len(names) == 1 else "are"
    return (f"{', '.join(names)} {verb} set in the environment but not used: pass --use-env-proxy to go through "
            "the proxy named there, or --proxy URL")


# scheme://host[:port]: a name or an [IPv6] literal, no wildcard, userinfo, path or query.
_ORIGIN_RE = re.compile(r"^([a-z][a-z0-9+.\-]*)://(\[[0-9a-f:.]+\]|[^/?#@\s*:\[\]]+)(?::(\d{1,5}))?/?$", re.IGNORECASE)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def origin_as_sent(value: str, setting: str) -> str:
    """An allowed origin the way browsers send the Origin header: scheme://host[:port], lower case,
    without the scheme's default port.

    The handler compares the header with it exactly, so anything else could never match.
    """
    match = _ORIGIN_RE.match(value.strip())
    port = match.group(3) if match else None
    if not match or (port is not None and not 0 < int(port) < 65536):
        raise ValueError(f"{setting}: expected scheme://host[:port] as a browser sends it "
                         f"(no path, no wildcard), got {value!r}")
    scheme, host = match.group(1).lower(), match.group(2).lower()
    if port is None or _DEFAULT_PORTS.get(scheme) == port.lstrip("0"):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def check_header(name: str, value: str, setting: str) -> Tuple[str, str]:
    """A header the proxy may add upstream: a token name, not one it sets itself, no control characters."""
    name, value = name.strip(), value.strip()
    if not TOKEN_RE.match(name):
        raise ValueError(f"{setting}: {name!r} is not a valid header name")
    if name.lower() in _FORBIDDEN_HEADERS:
        raise ValueError(f"{setting}: {name} is set by the proxy and cannot be overridden")
    if CONTROL_RE.search(value):
        raise ValueError(f"{setting}: the value of {name} contains control characters")
    if not _latin1(value):
        raise ValueError(f"{setting}: the value of {name} has characters outside Latin-1 "
                         "(HTTP headers cannot carry them)")
    return name, value


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def check_secret(value: str, setting: str) -> None:
    """A key sent in an HTTP header: no CR, LF, NUL or other control character, Latin-1 only.

    The message never quotes the key.
    """
    if CONTROL_RE.search(value) or "\t" in value:
        raise ValueError(f"{setting}: the key contains CR, LF, NUL or another control character")
    if not _latin1(value):
        raise ValueError(f"{setting}: the key has characters outside Latin-1 (HTTP headers cannot carry them)")


# The shortest client key a server listening beyond loopback takes (on loopback any key will do).
MIN_LAN_KEY = 16


def check_client_key(value: str, setting: str) -> None:
    """The key clients must send: a header value (``check_secret``) that every client can send
    as it is. A header loses its leading and trailing blanks on the way, and a client writes a
    non-ASCII value in bytes of its choice (curl in a UTF-8 terminal sends UTF-8, the server reads
    Latin-1): such a key could never match."""
    check_secret(value, setting)
    if value != value.strip(" \t"):
        raise ValueError(f"{setting}: the key starts or ends with a blank, which a header cannot carry")
    if not value.isascii():
        raise ValueError(f"{setting}: the key has characters outside ASCII, which clients send in different bytes")


def check_token(token: TokenSource, setting: str) -> None:
    """A static key is checked now (each key of a ring too); a key command's output when it runs."""
    if isinstance(token, StaticToken):
        check_secret(token.key, setting)
    for source in getattr(token, "sources", ()):  # credentials.KeyRing
        check_token(source, setting)


# Settings in seconds: (name, may be zero).
_SECONDS = (("connect_timeout", False), ("idle_timeout", False), ("request_timeout", False),
            ("client_timeout", False), ("client_request_deadline", False), ("body_timeout", False),
            ("ping_interval", False), ("finish_grace", True), ("shutdown_grace", True))
# Counts: (name, smallest allowed, largest allowed). The largest are far beyond any real use (each
# connection is a thread, each body held whole in memory) and keep a typo's extra zeros from
# passing for a setting: 99999999999999999999 slots would never refuse anything.
MAX_BODY_BYTES = 1024 ** 3  # 1 GiB
MAX_CONNECTIONS = 1_000_000
_COUNTS = (("max_body_bytes", 1, MAX_BODY_BYTES), ("max_line_bytes", 1, MAX_BODY_BYTES),
           ("max_concurrency", 1, MAX_CONNECTIONS), ("max_body_readers", 1, MAX_CONNECTIONS),
           ("max_connections", 1, MAX_CONNECTIONS),
           ("max_idle_per_host", 0, MAX_CONNECTIONS))
# Longer waits cannot be given to sockets and locks (OverflowError), and nobody means them.
MAX_SECONDS = 10_000_000.0


def check_seconds(value: object, setting: str, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{setting}: expected a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok) or value > MAX_SECONDS:
        low = "from 0 and" if zero_ok else "greater than 0 and"
        raise ValueError(f"{setting}: must be a finite number of seconds {low} at most {MAX_SECONDS:.0f}, "
                         f"got {value!r}")


def check_count(value: object, setting: str, low: int, high: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{setting}: expected a whole number, got {value!r}")
    if value < low:
        raise ValueError(f"{setting}: must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{setting}: must be at most {high}, got {value}")


def check_retries(retries: object, max_wait: object, name: Callable[[str], str]) -> None:
    """--retries and --retry-max-wait (``name`` names a setting as the user gave it)."""
    _check_range(retries, name("retries"), 10)
    if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)):
        check_seconds(max_wait, name("retry_max_wait"))  # which says what it got instead
    if not 0 <= max_wait <= 600:  # NaN and infinity too
        raise ValueError(f"{name('retry_max_wait')}: must be from 0 to 600 seconds, got {max_wait!r}")


def check_port(port: object, setting: str) -> None:
    _check_range(port, setting, 65535)


def _check_range(value: object, setting: str, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{setting}: expected a whole number, got {value!r}")
    if not 0 <= value <= high:
        raise ValueError(f"{setting}: must be from 0 to {high}, got {value}")


# One label of a host name (RFC 1123): letters, digits and '-', not at either end; '_' too, as
# Docker's and Compose's service names have it and their DNS answers them.
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def is_host(host: str) -> bool:
    """An IP address (an IPv6 one in brackets or not) or a host name as DNS writes it; not resolved.

    A name whose last label is all digits (``999.1.1.1``) is an address out of range, not a name.
    """
    bracketed = host.startswith("[") and host.endswith("]")
    literal = host[1:-1] if bracketed else host
    if ":" in literal:
        literal = literal.split("%", 1)[0]  # an IPv6 zone (fe80::1%eth0), which Python 3.8 cannot parse
    try:
        ipaddress.ip_address(literal)
        return True
    except ValueError:
        if bracketed:
            return False
    labels = (host[:-1] if host.endswith(".") else host).split(".")  # "example.com." is a full name
    return (len(host) <= 253 and all(_LABEL_RE.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def check_host(value: object, setting: str) -> str:
    """A listen address or an upstream's host: ``is_host``, or a ValueError naming ``setting``.

    Checked before anything listens: ``'127.0.0.1 '`` or ``'not a host'`` would otherwise be told
    they need --auth-key, or fail at the bind with the resolver's words.
    """
    if not isinstance(value, str) or not is_host(value):
        raise ValueError(f"{setting}: expected an IP address or a host name (ASCII letters, digits, '-' and '.', "
                         f"no blanks), got {value!r}")
    return value


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":  # host names are case-insensitive (LOCALHOST was "not loopback")
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# A Host header's name, with a port or not: letters, digits, dots, dashes, an IPv6 address in brackets.
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$")


def check_allowed_host(host: object, setting: str) -> None:
    """A Host header value to accept: a name or [IPv6] address, and a port from 1 to 65535 if any."""
    match = _HOST_RE.match(host) if isinstance(host, str) else None
    if not match:
        raise ValueError(f"{setting}: expected a host name or host:port, got {host!r}")
    if match.group(2) and not 0 < int(match.group(2)[1:]) < 65536:
        raise ValueError(f"{setting}: the port must be from 1 to 65535, got {host!r}")


# --------------------------------------------------------------------------
# What a program gives start(). The command line and config files make each setting of its type; a
# program may give a list where a tuple belongs (which it may), or a value of another type, which
# started a server that then failed every request (headers=[...]: a 500 each; token="sk-...": a 502
# each) or raised an AttributeError naming no setting.

_PAIRS = "Tuple[Tuple[str, str], ...]"
_FACTS = "Tuple[Tuple[str, ModelFacts], ...]"
# The flag a field's dest is named after, where the two differ.
_FLAG_OF = {"headers": "header", "allowed_hosts": "allowed_host", "allowed_origins": "allowed_origin"}
# Fields no flag sets: named as start()'s keywords.
_KEYWORD_ONLY = ("providers", "routes", "token", "key_source", "setting_names")


def with_tuples(config: Config) -> Config:
    """``config`` with the lists (and sets) a program gave made tuples: ``headers=[("X-A", "1")]``,
    ``[["X-A", "1"]]`` or ``(["X-A", "1"],)`` (as JSON has them), and those of its providers and
    routes. Anything else is left for ``check_types`` to name."""
    config = _tupled(config)
    changes = {name: tuple(_tupled(item) if isinstance(item, kind) else item for item in getattr(config, name))
               for name, kind in (("providers", Provider), ("routes", Route))
               if isinstance(getattr(config, name), tuple)}
    return dataclasses.replace(config, **changes)


def _tupled(obj: object) -> object:
    changes: Dict[str, object] = {}
    for field in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, field.name)
        if str(field.type).startswith("Tuple[") and isinstance(value, (list, tuple, set, frozenset)):
            pairs = field.type in (_PAIRS, _FACTS)
            items = sorted(value) if isinstance(value, (set, frozenset)) else value
            tupled = tuple(tuple(v) if pairs and isinstance(v, list) else v for v in items)
            if tupled != value or type(value) is not tuple:
                changes[field.name] = tupled
    return dataclasses.replace(obj, **changes) if changes else obj  # type: ignore[type-var]


def check_types(config: Config) -> None:
    """Each setting of its type; ValueError naming the first that is not."""
    def named(dest: str) -> str:
        return f"{dest}=" if dest in _KEYWORD_ONLY else config.setting_name(_FLAG_OF.get(dest, dest))

    _check_fields(config, named)
    for i, provider in enumerate(config.providers):
        label = f"providers[{i}]"
        _check_instance(provider, Provider, label)
        label = f"providers.{provider.name}" if isinstance(provider.name, str) else label
        _check_fields(provider, lambda dest, label=label: f"{label}.{dest}")  # type: ignore[misc]
    for i, route in enumerate(config.routes):
        _check_instance(route, Route, f"routes[{i}]")
        _check_fields(route, lambda dest, i=i: f"routes[{i}].{dest}")  # type: ignore[misc]
        for j, target in enumerate((route.target, *route.fallbacks)):
            where = f"routes[{i}].target" if j == 0 else f"routes[{i}].fallbacks[{j - 1}]"
            _check_instance(target, RouteTarget, where)
            _check_fields(target, lambda dest, where=where: f"{where}.{dest}")  # type: ignore[misc]


def _check_instance(value: object, kind: type, name: str) -> None:
    if not isinstance(value, kind):
        raise ValueError(f"{name}: expected a claudeproxy.config.{kind.__name__}, got {type(value).__name__}")


def _check_fields(obj: object, named: Callable[[str], str]) -> None:
    for field in dataclasses.fields(obj):  # type: ignore[arg-type]
        wrong = _type_error(getattr(obj, field.name), str(field.type))
        if wrong:
            raise ValueError(f"{named(field.name)}: {wrong}")


def _type_error(value: object, kind: str) -> str:
    """What is wrong with ``value`` for a field of type ``kind``; "" if nothing (or not checked
    here: numbers have checks of their own, which name the range too). No value is quoted back
    but a flag's: a string given as a token is a key."""
    if kind in ("str", "Optional[str]"):
        return _text_error(value, kind)
    if kind == "Optional[int]":
        return _whole_number_error(value)
    if kind == "bool":
        return _bool_error(value)
    if kind == "TokenSource":
        return _token_source_error(value)
    if kind.startswith("Tuple["):
        return _list_error(value, kind)
    return ""


def _text_error(value: object, kind: str) -> str:
    text = (str,) if kind == "str" else (str, type(None))
    return "" if isinstance(value, text) else f"expected text, got {type(value).__name__}"


def _whole_number_error(value: object) -> str:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        return f"expected a whole number, got {type(value).__name__} {value!r}"
    return ""


def _bool_error(value: object) -> str:
    if not isinstance(value, bool) and value not in (0, 1):  # 0 and 1 mean what they say
        # log_bodies="false" logged every prompt: a non-empty string is true.
        return (f"expected True or False, got {type(value).__name__}"
                + (f" {value!r}" if isinstance(value, (str, int)) else ""))
    return ""


def _token_source_error(value: object) -> str:
    if not callable(value):
        return (f"expected a function that returns the key, got {type(value).__name__} (claudeproxy.static_token(key) "
                "for a fixed one, claudeproxy.command_token([...]) for a command's)")
    return ""


def _list_error(value: object, kind: str) -> str:
    if not isinstance(value, tuple):
        return f"expected a list, got {type(value).__name__}"
    for item_kind, is_item, wrong in _LIST_ITEMS:
        if kind == item_kind and not all(is_item(v) for v in value):
            return wrong
    return ""


def _is_text_pair(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)


def _is_facts_pair(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], ModelFacts)


# What each item of a list field must be, and what is said when one is not.
_LIST_ITEMS: Tuple[Tuple[str, Callable[[object], bool], str], ...] = (
    ("Tuple[str, ...]", lambda item: isinstance(item, str), "expected a list of strings"),
    (_PAIRS, _is_text_pair, "expected (name, value) pairs of strings"),
    (_FACTS, _is_facts_pair, "expected (model name or pattern, ModelFacts) pairs"),
)


# The settings a blank value of is a mistake, whoever gave it (``start(model="")`` started and
# then routed nothing by it; ``auth_key=""`` let every client in).
_NOT_EMPTY = ("upstream", "provider", "upstream_auth", "model", "opus_model", "sonnet_model", "haiku_model",
              "ca_bundle", "auth_key", "azure_api_version")


def check_config(config: Config) -> None:
    """The server-wide settings (timeouts, limits, proxy, client key); providers are checked by routing.

    The command line checks its numbers first with the same checks (``cli._positive``); this is
    what ``start()`` gets.
    """
    name = config.setting_name
    _check_no_string_lists(config)
    check_types(config)
    _check_passthrough(config, name)
    _check_not_empty(config, name)
    _check_numbers(config, name)
    _check_listening(config, name)
    for host in config.allowed_hosts:
        check_allowed_host(host, name("allowed_host"))  # the flag's dest: a config file's key is named by it
    _check_model_map(config, name)
    if config.max_output_tokens is not None:
        check_count(config.max_output_tokens, name("max_output_tokens"), 1, MAX_TOKENS)
    check_port(config.port, name("port"))
    if config.proxy is not None:
        check_proxy_url(config.proxy, name("proxy"))
    if config.auth_key:
        check_client_key(config.auth_key, name("auth_key"))
    _check_allowed_origins(config, name)


def _check_no_string_lists(config: Config) -> None:
    for field in dataclasses.fields(config):
        # A list's setting given one string (start(allowed_hosts="x.example")) would be read a
        # character at a time: "x" and "." allowed as Host names, the one meant refused. Only a
        # program's start() can do that (the command line and config files make lists): named as its
        # keyword.
        if str(field.type).startswith("Tuple") and isinstance(getattr(config, field.name), (str, bytes)):
            raise ValueError(f"{field.name}=: expected a list, got the string {getattr(config, field.name)!r}")


def _check_passthrough(config: Config, name: Callable[[str], str]) -> None:
    if config.passthrough and config.upstream_api not in ("chat", "messages"):
        # (the command line says so first: --upstream-api chat is its default, which it tells apart)
        raise ValueError(f"{name('passthrough')} is short for {name('upstream_api')} messages: it cannot go with "
                         f"{name('upstream_api')} {config.upstream_api}")


def _check_not_empty(config: Config, name: Callable[[str], str]) -> None:
    for dest in _NOT_EMPTY:  # as the command line refuses --model '' (None is "not given")
        value = getattr(config, dest)
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"{name(dest)}: the value is empty")


def _check_numbers(config: Config, name: Callable[[str], str]) -> None:
    for dest, zero_ok in _SECONDS:
        check_seconds(getattr(config, dest), name(dest), zero_ok)
    for dest, low, high in _COUNTS:
        check_count(getattr(config, dest), name(dest), low, high)
    check_retries(config.retries, config.retry_max_wait, name)


def _check_listening(config: Config, name: Callable[[str], str]) -> None:
    """The address to listen on, and the client key it needs when that is not loopback."""
    check_host(config.host, name("host"))
    if not is_loopback_host(config.host) and not config.auth_key:
        raise ValueError(f"{name('host')}: refusing to listen on {config.host!r} without --auth-key (anyone could "
                         "use your upstream key)")
    if not is_loopback_host(config.host) and len(config.auth_key or "") < MIN_LAN_KEY:
        # Anyone on the network can try keys there, as fast as the proxy answers 401s.
        raise ValueError(f"{name('auth_key')}: a key guarding {config.host} (not loopback) must be at least "
                         f"{MIN_LAN_KEY} characters, got {len(config.auth_key or '')}")


def _check_model_map(config: Config, name: Callable[[str], str]) -> None:
    for pair in config.model_map:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)):
            raise ValueError(f"{name('model_map')}: expected (pattern, name) pairs of strings, got {pair!r}")


def _check_allowed_origins(config: Config, name: Callable[[str], str]) -> None:
    for origin in config.allowed_origins:
        if origin_as_sent(origin, name("allowed_origin")) != origin:
            raise ValueError(f"{name('allowed_origin')}: write {origin_as_sent(origin, '')!r} as browsers send it, "
                             f"not {origin!r}")
