"""Upstreams that would get no key, found before anything listens (the command line, ``run`` and
``start()`` alike). No I/O but running a provider's key command once (``check_keys``)."""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, Iterable, List, Tuple
from urllib.parse import urlsplit

from .config import SHORTHAND_PROVIDER, Config, Provider, gives_no_key
from .credentials import CommandToken
from .dialects import DIALECTS, default_key_variables, detect_provider, is_anthropic_host
from .errors import UpstreamUnavailable
from .routing import build_router, carries_a_credential, provider_dialect


def check_keys(config: Config, forwarded: bool = True) -> None:
    """Before anything listens: each key command run once (its key is then cached for the first
    calls), one that fails or prints no key a ValueError that names it; and a provider known to
    need a key (OpenAI, Groq...) that would get none a ValueError too, not a server whose every
    answer is a 401. Not in check_settings: --print-config runs no command, and shows such a setting.
    ``forwarded``: a Messages API upstream without a key may get the client's own (not under ``run``,
    whose client key is the session's, nor with an --auth-key)."""
    for token in [p.token for p in config.providers] + [config.token]:
        if isinstance(token, CommandToken):
            try:
                token()
            except UpstreamUnavailable as exc:
                raise ValueError(exc.message) from None
    refuse_keyless(build_router(config).providers.values(), forwarded=forwarded and not config.auth_key)


def refuse_keyless(providers: Iterable[Provider], library: bool = False, forwarded: bool = True) -> None:
    """A ValueError for the first provider known to need a key that gets none. ``library``: for
    ``start()``, whose settings are arguments, and which reads no key from the environment (its key
    command runs when a request first needs it, as it always did); ``forwarded`` as check_keys'."""
    for needed, line in keyless(providers, library, forwarded):
        if needed:
            raise ValueError(line)


def keyless(providers: Iterable[Provider], library: bool = False, forwarded: bool = True) -> List[Tuple[bool, str]]:
    """(known to need a key, what to say) for each provider on the internet that gets no key.
    Local servers (Ollama, vLLM) need none, and a Messages API upstream gets the client's own key
    where one is ``forwarded``."""
    said = []
    for provider in providers:
        host = urlsplit(provider.url).hostname or ""
        if _gets_no_key(provider, host, forwarded):
            if provider.api == "messages":
                said.append(_no_forwarded_key(provider, host, library))
            else:
                said.append(_no_api_key(provider, host, library))
    return said


def _gets_no_key(provider: Provider, host: str, forwarded: bool) -> bool:
    return ((provider.api != "messages" or not forwarded) and gives_no_key(provider.token) and on_the_internet(host)
            and not carries_a_credential(provider))


def _no_api_key(provider: Provider, host: str, library: bool) -> Tuple[bool, str]:
    """An upstream of another API than Messages that gets no key: needed where its host is known."""
    who, how = _who_and_how(provider, library)
    # Known by its host (--provider openai may name a gateway that admits by address).
    known = detect_provider(provider.url)
    needed = known in DIALECTS and bool(DIALECTS[known].key_env)
    return (needed, f"{who} ({host}) gets no API key"
                    + (f", which it needs ({how})" if needed else f": expect 401s ({how})"))


def _who_and_how(provider: Provider, library: bool) -> Tuple[str, str]:
    """Who gets no key (a provider of the file's, or the single upstream), and how to give it one."""
    dialect = provider_dialect(provider)
    own = " or ".join(default_key_variables(dialect, False))
    if provider.name != SHORTHAND_PROVIDER:
        return f"provider {provider.name}", ("give its Provider a token" if library
                                             else "give it api_key_env or api_key_command in the config file")
    if library:
        return "the upstream", "give start() token=claudeproxy.static_token(key)"
    if provider.key_source == "--api-key":  # --api-key '': no key on purpose, whatever is exported
        return "the upstream", f"--api-key is empty: give a key, or leave it out to use {own}"
    return "the upstream", f"set {own}, or give --api-key-env"


def _no_forwarded_key(provider: Provider, host: str, library: bool) -> Tuple[bool, str]:
    """A Messages API upstream that gets no key of its own where the client's is not forwarded: under
    ``run`` (its client key is the session's) or with an --auth-key (the client's key is the proxy's).
    Anthropic and the providers known by their host need one; every call was a 401 ("Failed to
    authenticate"), and nothing said why."""
    known = detect_provider(provider.url)
    own = ("ANTHROPIC_API_KEY",) if is_anthropic_host(provider.url) else DIALECTS[known].key_env if known in DIALECTS else ()
    needed = bool(own)
    if provider.name != SHORTHAND_PROVIDER:
        who = f"provider {provider.name}"
        how = "give its Provider a token" if library else "give it api_key_env or api_key_command in the config file"
    else:
        who = "the upstream"
        how = "give start() token=claudeproxy.static_token(key)" if library else \
            f"give --api-key-env {own[0]}" if own else "give --api-key-env the variable that holds its key"
    why = "the client's key is not passed on where the proxy has a client key of its own: run's, --auth-key"
    return needed, f"{who} ({host}) gets no API key{', which it needs' if needed else ': expect 401s'} ({why}); {how}"


def shared_client_keys(router: Any, forwarded: bool = True) -> List[str]:
    """A line when routes send to Messages API providers on different hosts (or ports) that have no
    key of their own: each gets the client's (where one is ``forwarded``), so the key a client sends
    for one (an Anthropic login) goes to the others, by a fallback or by another model's route."""
    if not forwarded:
        return []
    hosts: Dict[str, str] = {}  # host[:port] -> the first provider there that gets the client's key
    for route in router.routes:
        for where in (route.target,) + tuple(route.fallbacks):
            provider = router.providers.get(where.provider)
            if provider is not None and provider.api == "messages" and gives_no_key(provider.token) \
                    and not carries_a_credential(provider):
                hosts.setdefault(urlsplit(provider.url).netloc.rpartition("@")[2], provider.name)
    if len(hosts) < 2:
        return []
    named = " and ".join(f"{name} ({host})" for host, name in hosts.items())
    return [f"providers {named} have no key of their own and each gets the client's: the key a client sends "
            "for one goes to the others too (give them keys of their own if that is not meant)"]


def on_the_internet(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:  # a name: a dotted one that is not a local network's
        return "." in host and not host.endswith((".local", ".internal", ".lan", ".localhost", ".home.arpa"))
