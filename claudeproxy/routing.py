"""Providers and routes -> where one client model goes. Pure: no I/O, no clock, no environment.

``build_router(config)`` checks the providers and routes once at start (a bad
setting raises ``ValueError`` naming it) and returns a ``Router``.
``Router.resolve(client_model)`` walks the ordered routes, first match wins,
and returns the route's target and fallbacks as ``Target`` values: provider,
upstream API, upstream model, its dialect and its model facts.

A route's ``match`` is ``*`` (everything), a Claude family (``opus``,
``sonnet``, ``haiku``, in any case: every generation, dated or not, and the
aliases), a glob, or an exact name (globs and names compared as written).
``unmatched_route`` says at start when a pattern meant for Claude Code can
match none of its names. The single-upstream flags are shorthand for a
provider named ``upstream`` and routes to it (``_shorthand_provider``, ``_shorthand_routes``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from .config import (
    AUTH_STYLES,
    BETA_POLICIES,
    DEFAULT_MESSAGES_UPSTREAM,
    DEFAULT_UPSTREAM,
    SHORTHAND_PROVIDER,
    UPSTREAM_APIS,
    Config,
    Provider,
    Route,
    RouteTarget,
    check_config,
    check_header,
    check_token,
    check_url,
    flag_name,
    gives_no_key,
    is_loopback_host,
    named_once,
    static_token,
)
from .dialects import (
    DEFAULT_AZURE_API_VERSION,
    DIALECTS,
    KEY_HEADERS,
    Dialect,
    auth_style,
    detect_provider,
    dialect_for,
    is_anthropic_host,
    missing_api_path,
    tools_only_on_responses,
)
from .model_facts import MAX_TOKENS, ModelFacts, builtin_facts, facts_from_dict, is_claude_name, without_prices
from .redact import redact_url

FAMILIES = ("opus", "sonnet", "haiku")  # each with its flag (--opus-model ...)
# Families Claude Code 2.1.331 names beyond those, without a flag of their own: its /model offers
# Fable ("most capable for your hardest and longest-running tasks", claude-fable-5-2), and its
# tables hold Mythos. Where nothing routes them they take Opus's route (``_with_later_families``).
LATER_FAMILIES = ("fable", "mythos")
ALL_FAMILIES = FAMILIES + LATER_FAMILIES
# Names Claude Code sends (CLAUDE-CODE.md), across generations: --print-config shows where each goes,
# and a route meant for Claude Code that matches none of them is warned about (unmatched_route).
SAMPLE_MODELS = ("claude-opus-4-1", "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-3-5-haiku-latest",
                 "claude-opus-5-5", "claude-haiku-5-5", "claude-fable-5-2")
# Each family's names as Claude Code sends them: 2.1.331's (CLAUDE-CODE.md), then the generation before.
CLAUDE_CODE_NAMES = {**{f: (f"claude-{f}-5-5", f"claude-{f}-4-5") for f in FAMILIES},
                     **{f: (f"claude-{f}-5-2", f"claude-{f}-5") for f in LATER_FAMILIES}}
# Claude Code's own aliases beyond the plain family names.
_ALIASES = {"opusplan": "opus"}
# A family word as one segment of a Claude model id, in every naming Anthropic and the
# clouds used: claude-opus-4-1, claude-3-5-haiku-latest, claude-sonnet-4@20250514,
# anthropic.claude-3-5-sonnet-20240620-v1:0, claude-sonnet-4-5[1m].
_FAMILY_RE = re.compile(r"(?:^|[-_.@/:])(opus|sonnet|haiku|fable|mythos)(?=$|[-_.@/:\[])")
_GLOB_CHARS = frozenset("*?[")
# When only some family flags are given, a missing family borrows the nearest one,
# so Claude Code's hard-coded names never fail.
_NEAREST = {"opus": ("sonnet", "haiku"), "sonnet": ("opus", "haiku"), "haiku": ("sonnet", "opus"),
            **{f: ("opus", "sonnet", "haiku") for f in LATER_FAMILIES}}  # the most capable first
_TARGET_CACHE_LIMIT = 512  # distinct (provider, model) pairs, and client names, remembered per router
_NOT_YET: Any = object()  # a client name the router has not resolved yet


def claude_family(name: str) -> Optional[str]:
    """``opus``, ``sonnet``, ``haiku`` (or a later family) for a Claude model name or alias; None for anything else."""
    low = name.strip().lower()
    base = low.split("[", 1)[0]
    if base in ALL_FAMILIES:
        return base
    if base in _ALIASES:
        return _ALIASES[base]
    if "claude" not in low:
        return None
    match = _FAMILY_RE.search(low)
    return match.group(1) if match else None


def pattern_kind(pattern: str) -> str:
    """all, family, glob or exact."""
    if pattern == "*":
        return "all"
    if pattern.lower() in ALL_FAMILIES:  # "Opus", as the product is spelt: no model is named so
        return "family"
    return "glob" if _GLOB_CHARS & set(pattern) else "exact"


def route_matches(pattern: str, name: str) -> bool:
    kind = pattern_kind(pattern)
    if kind == "all":
        return True
    if kind == "family":
        return claude_family(name) == pattern.lower()
    if kind == "glob":
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern


def canonical(pattern: str) -> str:
    """The pattern as the router reads it: a family in lower case, anything else as written."""
    return pattern.lower() if pattern_kind(pattern) == "family" else pattern


# Words that come before a family word in the clouds' names for Claude (and "latest").
_CLOUD_WORDS = frozenset({"anthropic", "bedrock", "vertex", "us", "eu", "apac", "global", "latest"})
# One segment of a model name, as _FAMILY_RE separates them (glob characters too).
_SEGMENT_RE = re.compile(r"[^-_.@/:*?\[\]]+")


def unmatched_route(pattern: str) -> Optional[str]:
    """Why ``pattern``, meant for Claude Code's names, can match none of them; None when it can,
    or when it is not about Claude models at all.

    Claude Code sends lower-case ids with a family segment (claude-sonnet-4-5, claude-3-5-haiku-latest).
    A pattern is taken as meant for them when it names ``claude`` or a family, or comes close to
    one of those words (``claude-sonet*``). It is fine when it matches a name of ``SAMPLE_MODELS``,
    or is written in lower case, without a misspelling, and names a Claude model once its wildcards
    are left out (``claude-3-7-sonnet*``, a dated ``claude-sonnet-4-20250514``). Anything else
    (``gpt-4o``, ``deepseek-*``) is left alone: another client of the proxy may send it.
    """
    if pattern_kind(pattern) in ("all", "family") or _reaches_a_sample(pattern) or "/" in pattern:
        return None  # reachable, or a host's path-like name (Helsinki-NLP/opus-mt-en-de), not Claude Code's
    mended = _mended(pattern.lower())
    if not _about_claude(mended):
        return None  # not about Claude models
    literal = re.sub(r"\[[^\]]*\]|[*?]", "", pattern)
    if mended == pattern and "claude" in literal and claude_family(literal) is not None:
        return None  # a name of a generation the samples do not have (claude-3-7-sonnet*, a dated id)
    family = _FAMILY_RE.search(mended.replace("*", "-").replace("?", "-"))
    if _reaches_a_sample(mended) and mended != pattern:
        hint = f"did you mean {mended!r}?"
    elif family:  # "sonnet*", "Opus*": Claude Code's names begin with "claude-"
        hint = f"did you mean {family.group(1)!r}? (a family name matches every generation of it)"
    else:
        hint = f"a family name ({', '.join(ALL_FAMILIES)}) matches every generation of it"
    return (f"pattern {pattern!r} matches none of the model names Claude Code sends (lower case, like "
            f"{SAMPLE_MODELS[1]}): {hint}")


def _about_claude(mended: str) -> bool:
    """Does a pattern (its misspellings mended) name Claude models: ``claude`` in it, or a family
    word after nothing but versions and the clouds' words (``sonnet-4.5``, ``*Sonnet*``,
    ``3-5-sonnet*``, ``bedrock:sonnet*``)? After another word it names something else
    (``my-haiku-poet``, ``gpt-sonnet-*``)."""
    if "claude" in mended:
        return True
    for segment in _SEGMENT_RE.findall(mended):
        if segment in ALL_FAMILIES:
            return True
        if not (segment.isdigit() or segment in _CLOUD_WORDS):
            return False
    return False


def _reaches_a_sample(pattern: str) -> bool:
    return any(route_matches(pattern, name) for name in SAMPLE_MODELS)


def _mended(pattern: str) -> str:
    """``pattern`` with each segment that comes close to a family word or ``claude`` spelt as that word."""
    import difflib  # here: only a start-up warning reads it, and every server would hold it

    def mend(segment: "re.Match[str]") -> str:
        word = segment.group(0)
        close = difflib.get_close_matches(word, (*ALL_FAMILIES, "claude"), n=1, cutoff=0.75)
        return close[0] if close else word

    return _SEGMENT_RE.sub(mend, pattern)


def _literal_prefix(pattern: str) -> str:
    cut = min((pattern.index(c) for c in _GLOB_CHARS if c in pattern), default=len(pattern))
    return pattern[:cut]


def covers(earlier: str, later: str) -> bool:
    """Every name ``later`` matches is already taken by ``earlier`` (so ``later`` can never match)."""
    if canonical(earlier) == canonical(later) or pattern_kind(earlier) == "all":
        return True
    kind = pattern_kind(later)
    if kind == "exact":
        return route_matches(earlier, later)
    if kind == "glob" and pattern_kind(earlier) == "glob":
        # "claude-*" takes everything "claude-opus-*" could match.
        head = earlier[:-1]
        return earlier.endswith("*") and not (_GLOB_CHARS & set(head)) and _literal_prefix(later).startswith(head)
    if kind == "glob" and pattern_kind(earlier) == "family":
        # "sonnet" takes everything "claude-sonnet-4-5*" could match: its fixed start names the family.
        return _family_of_every_name_starting(_literal_prefix(later)) == canonical(earlier)
    return False


def _family_of_every_name_starting(prefix: str) -> Optional[str]:
    """The family ``claude_family`` gives every name that starts with ``prefix``, or None if that
    depends on the rest: the first family word must be whole within the prefix, its end too
    ("claude-sonnet-" yes; "claude-sonnet" no: "claude-sonnetx" is no Sonnet)."""
    low = prefix.lower()
    match = _FAMILY_RE.search(low) if "claude" in low else None
    return match.group(1) if match is not None and match.end() < len(low) else None


@dataclasses.dataclass(frozen=True)
class Target:
    """One place a request can go: provider, API, upstream model and what that model can do."""

    provider: Provider
    model: str
    facts: ModelFacts
    # The max_tokens cap: the model's output cap and the configured caps, the smallest.
    output_cap: Optional[int]
    # The provider's quirks for this model (None for the Messages API, which forwards).
    dialect: Optional[Dialect]
    # The upstream API this call speaks: the provider's, except for Responses-only models.
    api: str = "chat"

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


@dataclasses.dataclass(frozen=True)
class Routed:
    """What ``Router.resolve`` found for one client model."""

    client_model: str
    route: Route
    targets: Tuple[Target, ...]  # the route's target first, then its fallbacks

    @property
    def target(self) -> Target:
        return self.targets[0]


# --------------------------------------------------------------------------
# Checks (one line naming the setting, raised as ValueError).


def check_provider(p: Provider, where: str, shorthand: bool = False) -> None:
    """ValueError naming what is wrong with ``p``; ``shorthand``: the flags' provider, ``where``
    the setting its URL came from (``--upstream``, ``OPENAI_BASE_URL``), which names the rest too."""
    _check_name_and_url(p, where, shorthand)
    _check_choices(p, where)
    _check_betas(p, where)
    _check_model_bounds(p, where)
    _check_headers(p, where, shorthand)
    _check_api_version(p, where, shorthand)
    check_token(p.token, f"{where} key ({p.key_source})" if p.key_source else f"{where} key")


def _check_name_and_url(p: Provider, where: str, shorthand: bool) -> None:
    if not p.name or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", p.name):
        raise ValueError(f"{where}: a provider name is 1-64 letters, digits, '.', '_' or '-', got {p.name!r}")
    check_url(p.url, where if shorthand else f"{where}.url")
    if p.api != "messages":  # (a messages URL's /v1 and /v1/messages are its own: upstream.py reads them)
        _check_api_path(p.url, where if shorthand else f"{where}.url")


def _check_choices(p: Provider, where: str) -> None:
    """The settings that name one of a few: the API, dialect, auth style and beta policy."""
    if p.api not in UPSTREAM_APIS:
        raise ValueError(f"{where}.api: unknown upstream API {p.api!r} (expected one of {', '.join(UPSTREAM_APIS)})")
    if p.dialect is not None and p.dialect not in DIALECTS:
        raise ValueError(f"{where}.dialect: unknown dialect {p.dialect!r} (expected one of {', '.join(sorted(DIALECTS))})")
    if p.auth is not None and p.auth not in AUTH_STYLES:
        raise ValueError(f"{where}.auth: unknown auth style {p.auth!r} (expected one of {', '.join(AUTH_STYLES)})")
    if p.anthropic_beta not in BETA_POLICIES:
        raise ValueError(f"{where}.anthropic_beta: expected one of {', '.join(BETA_POLICIES)}, got {p.anthropic_beta!r}")


def _check_betas(p: Provider, where: str) -> None:
    for key, said in (("anthropic_beta", p.anthropic_beta != "auto"), ("allowed_betas", bool(p.allowed_betas))):
        if said and p.api != "messages":  # taken without a word, and nothing sends a beta there
            raise ValueError(f"{where}.{key}: is for a provider whose api is messages (the client's anthropic-beta "
                             f"goes to no other API), and this one's is {p.api}")


def _check_model_bounds(p: Provider, where: str) -> None:
    if p.max_output_tokens is not None and not 1 <= p.max_output_tokens <= MAX_TOKENS:
        raise ValueError(f"{where}.max_output_tokens: must be from 1 to {MAX_TOKENS}, got {p.max_output_tokens}")
    for pattern, facts in p.models:  # a library caller's ModelFacts: the bounds a config file's have
        facts_from_dict(facts.to_dict(), f"{where}.models.{pattern}")


def _check_headers(p: Provider, where: str, shorthand: bool) -> None:
    seen: Dict[str, str] = {}
    for name, value in p.headers:
        setting = "--header" if shorthand else f"{where}.headers"
        check_header(name, value, setting)
        if name.strip().lower() in seen:  # one value went, the other was dropped without a word
            raise ValueError(f"{setting}: {name.strip()} is given twice (as {seen[name.strip().lower()]} too): give it once")
        seen[name.strip().lower()] = name.strip()


def _check_api_version(p: Provider, where: str, shorthand: bool) -> None:
    """An Azure api-version said twice, differently: in the URL's query and as the setting (not its
    default). The URL's went and the setting was dropped without a word (o-series deployments
    refuse the older versions). Or said for an upstream that is not Azure's, where nothing sends it:
    Azure behind a domain of its own got OpenAI's paths and auth, and only 404s and 401s said so."""
    setting = "--azure-api-version" if shorthand else f"{where}.azure_api_version"
    if p.azure_api_version != DEFAULT_AZURE_API_VERSION and provider_dialect(p) != "azure":
        raise ValueError(f"{setting}: an api-version is for Azure OpenAI, and this upstream is not taken for it "
                         f"(its dialect is {provider_dialect(p)}): say so with "
                         + ("--provider azure" if shorthand else f"{where}.dialect \"azure\""))
    if p.azure_api_version != DEFAULT_AZURE_API_VERSION and urlsplit(p.url).path.rstrip("/").endswith("/openai/v1"):
        raise ValueError(f"{setting}: Azure's /openai/v1 URL takes no api-version (it is versionless); "
                         "leave the setting out, or give the resource's URL")
    in_url = parse_qs(urlsplit(p.url).query).get("api-version")
    if in_url and p.azure_api_version not in (DEFAULT_AZURE_API_VERSION, in_url[0]):
        raise ValueError(f"{setting}: {p.azure_api_version!r} contradicts the api-version={in_url[0]} of the URL; "
                         "give one of them")


def _check_api_path(url: str, setting: str) -> None:
    """A URL that could only ever get 404s: a doubled /v1, or a known host without its API's path.
    Found now, the start stops; else every request failed, with the hint in the 404 at best."""
    path = urlsplit(url).path.rstrip("/")
    if re.search(r"/v1/v1(/|$)", path):
        raise ValueError(f"{setting}: the URL has /v1 twice ({redact_url(url)}); the proxy adds /chat/completions "
                         "(or /responses) to it as it is")
    missing = missing_api_path(url)
    if missing is not None:
        raise ValueError(f"{setting}: the URL names the host alone, where the API is under {missing}: "
                         f"give {redact_url(url).rstrip('/')}{missing}")


def _is_this_proxy(url: str, host: str, port: int) -> bool:
    """Does ``url`` point at the proxy's own listening address? Every request would come back to it:
    a passthrough request went round until the 256 slots were full, a Chat one was a 404."""
    if not port:
        return False  # a port the system picks: no URL can name it before
    parts = urlsplit(url)
    try:
        upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    upstream_host, own = (parts.hostname or "").lower(), host.strip("[]").lower()
    if own in ("0.0.0.0", "::", "") or is_loopback_host(own):  # reached at any loopback name too
        return upstream_port == port and upstream_host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::", own)
    return upstream_port == port and upstream_host == own


def header_the_key_replaces(p: Provider) -> Optional[str]:
    """The header of ``p.headers``, as written, that ``p``'s key replaces upstream (the key goes in
    the same header, and wins): one of the two settings was meant, and the other was dropped."""
    wanted = KEY_HEADERS[auth_style(p.api, p.url, p.dialect, p.auth)]
    return next((name for name, _ in p.headers if name.lower() == wanted), None)


def carries_a_credential(provider: Provider) -> bool:
    """A header of the provider's own that may hold the credential (a --header): the key's header, or
    any of the three an upstream takes one in (Azure with an Entra ID token sends Authorization, not
    its api-key)."""
    return header_the_key_replaces(provider) is not None or \
        any(name.lower() in KEY_HEADERS.values() for name, _ in provider.headers)


def _check_routes(routes: Sequence[Route], providers: Dict[str, Provider], where: str) -> None:
    # An exact name is taken only by the same name or a pattern, and takes no pattern's names: so
    # each route is compared with the patterns before it and looked up among the names, not
    # compared with every route before it (8,000 routes of exact names did not start in 2 minutes).
    exact_at: Dict[str, int] = {}
    patterns_at: List[int] = []
    for i, route in enumerate(routes):
        label = route.origin or f"{where}[{i}]"
        if not route.match or route.match != route.match.strip():
            raise ValueError(f"{label}: a route needs a non-empty match pattern without surrounding blanks")
        _check_targets(route, providers, label)
        exact = pattern_kind(route.match) == "exact"
        taken = _first_taker(routes, route.match, patterns_at, exact_at.get(route.match) if exact else None)
        if taken is not None:
            earlier = routes[taken]
            first = named_once(earlier.origin or f"{where}[{taken}]", label)
            raise ValueError(f"{label}: pattern {route.match!r} can never match: {first} "
                             f"({earlier.match!r}) takes every name it would")
        if exact:
            exact_at[route.match] = i
        else:
            patterns_at.append(i)


def _check_targets(route: Route, providers: Dict[str, Provider], label: str) -> None:
    for target in (route.target, *route.fallbacks):
        if target.provider not in providers:
            known = ", ".join(sorted(providers)) or "none"
            raise ValueError(f"{label}: unknown provider {target.provider!r} (configured: {known})")
        if target.model is not None and not target.model.strip():
            raise ValueError(f"{label}: the upstream model name is empty")
        if target.model is not None and target.model != target.model.strip():
            # Sent as given, a blank in the name is a model no upstream has (a 404 every call).
            raise ValueError(f"{label}: the upstream model name {target.model!r} has blanks around it")


def _first_taker(routes: Sequence[Route], match: str, patterns_at: List[int],
                 same_name_at: Optional[int]) -> Optional[int]:
    """The index of the first earlier route that takes every name ``match`` would: a pattern before it
    that covers it, or (``same_name_at``) the same exact name; None if there is none."""
    taken = [j for j in (next((j for j in patterns_at if covers(routes[j].match, match)), None), same_name_at)
             if j is not None]
    return min(taken) if taken else None


_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)")


def _check_deployment_urls(routes: Sequence[Route], providers: Dict[str, Provider]) -> None:
    """A route whose target is an Azure provider whose URL names a deployment, with another model:
    that deployment answers every call sent there, whatever the body's model, and the call was
    recorded and priced as the route's model (and shaped for it: an o3's api-version and fields)."""
    for i, route in enumerate(routes):
        for target in (route.target, *route.fallbacks):
            provider = providers[target.provider]
            named = _DEPLOYMENT.search(urlsplit(provider.url).path) if provider_dialect(provider) == "azure" else None
            # Without a model, a route for one exact name sends that name; Azure's names take no case.
            sent = target.model or (route.match if pattern_kind(route.match) == "exact" else None)
            if named is None or (sent or "").casefold() == unquote(named.group(1)).casefold():
                continue
            dep = unquote(named.group(1))
            model = repr(sent) if sent else "the client's model name"
            raise ValueError(f"{route.origin or f'routes[{i}]'}: the URL of provider {provider.name} names the Azure "
                             f"deployment {dep!r}, which answers every call sent there, so {model} would be "
                             f"recorded for what {dep!r} answered: give the resource's URL and each deployment as "
                             f"a model, or {dep!r} as the model")


# --------------------------------------------------------------------------
# The single-upstream shorthand.


def _shorthand_provider(config: Config) -> Optional[Provider]:
    if config.upstream is None and config.providers:
        return None
    api = config.shorthand_api
    default_url = DEFAULT_MESSAGES_UPSTREAM if api == "messages" else DEFAULT_UPSTREAM
    provider = Provider(
        name=SHORTHAND_PROVIDER, url=config.upstream or default_url, api=api, dialect=config.provider,
        token=config.token, key_source=config.key_source, headers=config.headers, auth=config.upstream_auth,
        azure_api_version=config.azure_api_version,
    )
    if config.key_source.startswith("$") and header_the_key_replaces(provider):
        # The key was only found in the provider's variable ($OPENAI_API_KEY), and the user's own
        # --header carries the credential in the header that key would go in: the header the user
        # wrote is sent, not replaced by a key nobody gave for this. (A key flag with such a
        # header stops the start: one of the two was meant.)
        provider = dataclasses.replace(provider, token=static_token(""), key_source="")
    return provider


def _no_header_the_token_replaces(config: Config, shorthand: Provider) -> None:
    """A program's start(headers=..., token=...) whose key would replace a header it gives (checked
    once the provider's settings are: the header depends on its auth style). The command line
    refuses the pair with the flags' names (cli._no_header_the_key_replaces), which give a key_source."""
    header = header_the_key_replaces(shorthand)
    if header and not config.key_source and not gives_no_key(config.token):
        raise ValueError(f"{config.setting_name('header')} '{header}: ...' and token=: the key is sent in {header} "
                         "and would replace that header: give one of them")


def _default_provider(config: Config) -> str:
    """The provider the model flags target when only a config file names providers and it has no
    route that served the flag's names (that route's provider is kept: ``_shorthand_routes``)."""
    for route in config.routes:
        if route.match == "*":
            return route.target.provider
    return config.providers[0].name


def _own_name_on_anthropic(borrowed: Route, by_name: Mapping[str, Provider]) -> Route:
    """A family's borrowed route, or, where it goes to Anthropic's own API, which knows every Claude
    name, the same provider with the client's own name: --haiku-model alone had sent Claude Code's
    main loop to the small model there (probe AN 2)."""
    provider = by_name.get(borrowed.target.provider)
    if provider is None or provider.api != "messages" or not is_anthropic_host(provider.url):
        return borrowed
    return dataclasses.replace(borrowed, target=RouteTarget(borrowed.target.provider, None), fallbacks=(),
                               origin=f"{borrowed.origin.split(' (no ')[0]} (Anthropic serves the client's name)")


def _shorthand_routes(config: Config, provider: str) -> Tuple[List[Route], List[Route]]:
    """The routes the model flags mean, and those of the families no flag names, which borrow
    another's model (and where it goes) only when nothing else is the default (``--model``)."""
    name = config.setting_name  # the flag, or the config file's key that stood for it
    # Without --upstream, a flag names the model of the file's route of the same match: that route
    # keeps its provider and fallbacks (--opus-model took the file's opus route to the provider of
    # its '*' route, another API and key, without a word).
    replaced = _first_route_of_each_match(config.routes) if config.upstream is None else {}

    def flagged(match: str, model: str, origin: str) -> Route:
        return _flagged_route(match, model, origin, provider, replaced, config.routes)

    routes = [flagged(p, m, f"{name('model_map')} {p}={m}") for p, m in config.model_map]
    given = {f: getattr(config, f"{f}_model") for f in FAMILIES}
    by_family = {}
    for family in FAMILIES:
        if given[family]:
            by_family[family] = flagged(family, given[family], name(f"{family}_model"))
            routes.append(by_family[family])
    borrowed: List[Route] = []
    if config.model:
        routes.append(flagged("*", config.model, name("model")))
    elif any(given.values()):
        borrowed = _borrowed_routes(routes + list(config.routes), given, by_family)
    return routes, borrowed


def _flagged_route(match: str, model: str, origin: str, provider: str, replaced: Mapping[str, Route],
                   file_routes: Sequence[Route]) -> Route:
    """A model flag's route: to ``provider``, or where the file's route it replaces went."""
    # Without a file route of its match, where the file sent these names until the flag was
    # given, with its fallbacks: a family's, its first route whose pattern names the family
    # (--opus-model and the file's 'claude-opus-*', ``_serving``); any other's, the '*' route.
    route = replaced.get(canonical(match))
    if route is None and replaced:  # (with --upstream every flag goes there: nothing is replaced)
        route = _serving(file_routes, match) or replaced.get("*")
    if route is None:
        return Route(match, RouteTarget(provider, model), origin=origin)
    return Route(match, RouteTarget(route.target.provider, model), route.fallbacks, origin=origin)


def _borrowed_routes(mapped: List[Route], given: Mapping[str, Optional[str]],
                     by_family: Mapping[str, Route]) -> List[Route]:
    """A route for each family no flag names, borrowed from the nearest family one does."""
    borrowed: List[Route] = []
    # Not one that --model-map or the file routes whole: its own route would shadow the borrowed one.
    for family in (f for f in FAMILIES if not given[f] and not _routes_whole(mapped, f)):
        lender = by_family[next(o for o in _NEAREST[family] if given[o])]
        borrowed.append(dataclasses.replace(lender, match=family, origin=(
            f"{lender.origin} (no {flag_name(family + '_model')})")))
    return borrowed


def _serving(routes: Sequence[Route], match: str) -> Optional[Route]:
    """The first of ``routes`` meant for the family ``match`` (its pattern names the family, as
    ``claude-opus-*`` does) that takes a name Claude Code sends for it; None for a pattern that is no
    family. A broad pattern (``claude-*``) is no route for Opus: its provider may be another API that
    has no such model (an Anthropic passthrough given --opus-model openai/gpt-5)."""
    family = match.lower() if pattern_kind(match) == "family" else None
    if family is None:
        return None
    names = CLAUDE_CODE_NAMES[family]
    return next((r for r in routes if _names_family(r.match, family) and any(route_matches(r.match, n) for n in names)),
                None)


def _names_family(pattern: str, family: str) -> bool:
    """Does a route pattern name ``family`` as one segment (``claude-opus-*``, ``*opus*``, ``opus``)?"""
    return re.search(rf"(?:^|[-_.@/:*?])({family})(?=$|[-_.@/:\[*?])", pattern.lower()) is not None


def _first_route_of_each_match(routes: Sequence[Route]) -> Dict[str, Route]:
    """The first route of each match, as the router reads it (``canonical``): the one a flag's route
    of that match replaces."""
    return {canonical(r.match): r for r in reversed(routes)}


def _no_file_route_its_own_flag_replaces(flags: Sequence[Route], file_routes: Sequence[Route]) -> None:
    """A file whose model key (``"model"``, ``"opus_model"``, ``model_map``) and one of its own routes
    name the same match: the key's route replaces the route, as a flag on the command line does on
    purpose; within one file one of the two was meant, and the route was dropped without a word."""
    routes = _first_route_of_each_match(file_routes)
    for flag in flags:
        route = routes.get(canonical(flag.match))
        # Both named as config_file.file_setting names a place in the file (routing cannot import it).
        if route is not None and flag.origin.startswith("--config ") and route.origin.startswith("--config "):
            raise ValueError(f"{flag.origin} and {named_once(route.origin, flag.origin)} both route "
                             f"{flag.match!r}: give one of them")


def _with_later_families(routes: List[Route], providers: Mapping[str, Provider]) -> List[Route]:
    """``routes`` with a route for each of ``LATER_FAMILIES`` that nothing routes to a model: the
    route Opus's names take (else Sonnet's, else Haiku's), with its fallbacks, before the catch-all
    that passes the client's name on (which would send a Claude name to an OpenAI-compatible
    server: a 404). So a setup written for the three families -- flags, --model-map or a config
    file -- serves what Claude Code's /model offers beyond them. A catch-all with a model (--model)
    serves them already, and one passing the name to a server of Anthropic's API (which knows it)."""
    out = list(routes)
    for family in LATER_FAMILIES:
        sample = CLAUDE_CODE_NAMES[family][0]
        first = next((i for i, r in enumerate(out) if route_matches(r.match, sample)), len(out))
        if first < len(out) and not (out[first].match == "*" and out[first].target.model is None
                                     and providers[out[first].target.provider].api != "messages"):
            continue  # routed: by a route of its own, a default model, or under its name to Anthropic's API
        donor = next((r for near in _NEAREST[family] for r in out[:first]
                      if r.match != "*" and route_matches(r.match, CLAUDE_CODE_NAMES[near][0])), None)
        if donor is not None:
            origin = f"{donor.origin or donor.match} (for {family}, which nothing routes)"
            out.insert(first, Route(family, donor.target, donor.fallbacks, origin=origin))
    return out


def _routes_whole(routes: Sequence[Route], family: str) -> bool:
    """Does a config file route ``family`` itself, whole: by its name, ``*``, or patterns that take
    each of Claude Code's names for it? Then no flag's model is borrowed for it; a route for one
    name (``claude-opus-5-5``) leaves the others to the borrowed one, which comes after it."""
    return any(covers(r.match, family) for r in routes) or \
        all(any(route_matches(r.match, name) for r in routes) for name in CLAUDE_CODE_NAMES[family])


def _merged(flags: List[Route], file_routes: Sequence[Route], borrowed: Sequence[Route]) -> List[Route]:
    """The command line's routes and a config file's, in the order they are tried.

    A flag wins where it names the same match (its route replaces the file's); a catch-all flag
    (``--model``, ``--model-map '*=NAME'``) is the default for "every request not routed
    otherwise", so it goes after the file's own routes instead of hiding them all. So do the
    families that borrow another flag's model: a file's route for one of their names
    (``claude-opus-5-5``) is the user's own choice for it.
    """
    named = {canonical(r.match) for r in flags}
    first = [r for r in flags if r.match != "*"]
    last = [r for r in flags if r.match == "*"]
    return first + [r for r in file_routes if canonical(r.match) not in named] + list(borrowed) + last


def effective_providers_and_routes(config: Config) -> Tuple[Tuple[Provider, ...], Tuple[Route, ...]]:
    """The providers and routes a config means, shorthand included, checked."""
    shorthand = _shorthand_provider(config)
    providers = list(config.providers) + ([shorthand] if shorthand else [])
    by_name: Dict[str, Provider] = {}
    for i, p in enumerate(providers):
        where = f"providers.{p.name}" if p.name else f"providers[{i}]"
        where = config.setting_name("upstream") if p is shorthand else where
        check_provider(p, where, p is shorthand)
        if _is_this_proxy(p.url, config.host, config.port):
            setting = where if p is shorthand else f"{where}.url"
            raise ValueError(f"{setting}: {redact_url(p.url)} is this proxy itself (it listens on port {config.port}): "
                             "every request would come back to it")
        if p.name in by_name:
            raise ValueError(f"{where}: two providers are named {p.name!r}")
        by_name[p.name] = p
    if shorthand is not None:
        _no_header_the_token_replaces(config, shorthand)
    target = shorthand.name if shorthand else _default_provider(config)
    flags, borrowed = _shorthand_routes(config, target)
    borrowed = [_own_name_on_anthropic(route, by_name) for route in borrowed]
    _no_file_route_its_own_flag_replaces(flags, config.routes)
    _check_routes(flags + borrowed, by_name, "flags")
    _check_routes(config.routes, by_name, "routes")
    routes = _merged(flags, config.routes, borrowed)
    if shorthand is not None and not any(r.match == "*" for r in routes):
        routes.append(Route("*", RouteTarget(shorthand.name, None), origin="--upstream (the client's model name)"))
    routes = _with_later_families(routes, by_name)
    _check_deployment_urls(routes, by_name)
    if not routes:
        where = dict(config.setting_names).get("routes", "routes")  # the config file's, when there is one
        raise ValueError(f"{where}: there are none, so every request would be refused: add routes to the config "
                         "file (a '*' route serves every model), or give --model")
    return tuple(providers), tuple(routes)


# --------------------------------------------------------------------------
# The router.


def _output_cap(*caps: Optional[int]) -> Optional[int]:
    known = [c for c in caps if c]
    return min(known) if known else None


class Router:
    """Resolves client model names to targets; built once per server by ``build_router``."""

    def __init__(self, providers: Sequence[Provider], routes: Sequence[Route], max_output_tokens: Optional[int] = None):
        self.providers = {p.name: p for p in providers}
        self.routes = tuple(routes)
        self.max_output_tokens = max_output_tokens
        # Targets depend only on (provider, model); client names are unbounded, so the memo is capped.
        self._targets: Dict[Tuple[str, str], Target] = {}
        # The route each client name takes, capped alike: a client asks for a few names, and a
        # config file may hold thousands of routes, each a pattern match a request.
        self._route_of: Dict[str, Optional[Route]] = {}

    def resolve(self, client_model: str) -> Optional[Routed]:
        """The first route matching ``client_model``, or None (the pipeline answers 404)."""
        route = self._route_of.get(client_model, _NOT_YET)
        if route is _NOT_YET:
            route = next((r for r in self.routes if route_matches(r.match, client_model)), None)
            if len(self._route_of) >= _TARGET_CACHE_LIMIT:
                self._route_of.clear()
            self._route_of[client_model] = route
        if route is None:
            return None
        targets = tuple(self.target(t, client_model) for t in (route.target, *route.fallbacks))
        return Routed(client_model, route, targets)

    def target(self, where: RouteTarget, client_model: str) -> Target:
        model = where.model or client_model
        key = (where.provider, model)
        found = self._targets.get(key)
        if found is None:
            found = self._make_target(self.providers[where.provider], model)
            if len(self._targets) >= _TARGET_CACHE_LIMIT:
                self._targets.clear()
            self._targets[key] = found
        return found

    def _make_target(self, provider: Provider, model: str) -> Target:
        facts = builtin_facts(model)
        if is_claude_name(model) and not is_anthropic_host(provider.url):
            # Anthropic's list prices are for Anthropic's API. The other hosts that speak its
            # Messages API (DeepSeek, Moonshot, Z.ai, MiniMax) take Claude Code's names for models
            # of their own, at their own rates: priced as Claude, their calls looked 10-50x dearer.
            facts = without_prices(facts)
        said_responses = False  # the provider's own models table says so: on any host, as told
        for pattern, override in provider.models:
            if fnmatch.fnmatchcase(model, pattern):
                facts = facts.merged(override)
                said_responses = override.responses_only
                break
        dialect, api = None, provider.api
        if api != "messages":
            name = provider.dialect or detect_provider(provider.url)
            dialect = dialect_for(name, model, facts.reasoning)
            if facts.text_only:  # FIELD-NOTES 14: a text-only model 400s on an image part
                dialect = dataclasses.replace(dialect, string_content_only=True)
            responses_only = facts.responses_only or tools_only_on_responses(model)
            if api == "chat" and responses_only and (dialect.serves_responses or said_responses):
                # OpenAI serves this model (or its tools with reasoning) only on /v1/responses
                # (RESPONSES.md 5); the built-in facts say so of OpenAI's names, which a gateway may
                # serve on Chat only.
                api = "responses"
        cap = _output_cap(facts.max_output, provider.max_output_tokens, self.max_output_tokens)
        return Target(provider, model, facts, cap, dialect, api)

    def named_targets(self) -> List[Tuple[str, str]]:
        """(provider, model) of every route target and fallback that names its model."""
        return [(t.provider, t.model) for r in self.routes for t in (r.target, *r.fallbacks) if t.model]

    def passes_names_through(self) -> List[Provider]:
        """Providers some route sends the client's own model name to (their model list is ours)."""
        return list({r.target.provider: self.providers[r.target.provider] for r in self.routes
                     if r.target.model is None}.values())

    def served(self) -> List[Tuple[str, Target]]:
        """(client-facing id, target) for every name a route serves by name, in route order.

        Exact routes serve their name and family routes their alias; a route's
        upstream model is listed too when asking for it by name reaches that model.
        """
        out: Dict[str, Target] = {}
        for route in self.routes:
            name = canonical(route.match)  # "opus" for a route written "Opus"
            if pattern_kind(name) in ("exact", "family") and name not in out:
                routed = self.resolve(name)
                if routed is not None and routed.route is route:
                    out[name] = routed.target
            model = route.target.model
            if model and model not in out:
                routed = self.resolve(model)
                if routed is not None and (routed.target.provider.name, routed.target.model) == (route.target.provider, model):
                    out[model] = routed.target
        return list(out.items())


def build_router(config: Config) -> Router:
    """The router for ``config``; raises ``ValueError`` naming the first bad setting."""
    check_config(config)
    providers, routes = effective_providers_and_routes(config)
    return Router(providers, routes, config.max_output_tokens)


def provider_dialect(provider: Provider) -> str:
    """The provider's dialect name, as configured or detected from its URL."""
    return provider.dialect or detect_provider(provider.url)
