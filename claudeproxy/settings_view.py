"""``--print-config``: the effective configuration as JSON, keys masked, routes resolved. Pure.

Shows what the flags, the file and the environment added up to, including what
was worked out rather than given: each provider's dialect (from its URL) and
auth style, each route's target with its model facts, and where a sample of
Claude Code's model names would go.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from .config import Config, Provider, Route, RouteTarget, gives_no_key
from .dialects import auth_style, detect_provider, forwards_betas
from .model_facts import facts_as_config
from .redact import MASK, is_secret_header, redact_text, redact_url
from .routing import SAMPLE_MODELS, Router, Target, build_router

# Shown under the names a config file (and, with dashes, the command line) takes, so that what is
# printed can be written back into a file: key -> Config field.
_SETTINGS = {name: name for name in (
    "host", "port", "proxy", "use_env_proxy", "ca_bundle", "connect_timeout", "idle_timeout", "request_timeout",
    "ping_interval", "shutdown_grace", "max_body_bytes", "max_concurrency", "max_output_tokens", "body_timeout",
    "max_body_readers", "max_connections", "max_idle_per_host", "retries", "retry_max_wait", "log_bodies")}
_SETTINGS.update(allowed_host="allowed_hosts", allowed_origin="allowed_origins")
# Config fields that neither a flag nor a file sets (library callers can): shown apart, as fixed.
_FIXED = ("finish_grace", "max_line_bytes", "client_timeout", "client_request_deadline")


def _provider(p: Provider) -> Dict[str, Any]:
    out: Dict[str, Any] = {"url": redact_url(p.url), "api": p.api}
    if p.api != "messages":
        out["dialect"] = p.dialect or f"{detect_provider(p.url)} (detected from the URL)"
    out["auth"] = auth_style(p.api, p.url, p.dialect, p.auth) + ("" if p.auth else " (default)")
    if gives_no_key(p.token):  # --api-key '': no key sent, whatever the environment holds
        out["key"] = f"none ({p.key_source} is empty)" if p.key_source else "none"
    else:
        out["key"] = f"{MASK} (from {p.key_source})" if p.key_source else "none"
    if p.api == "messages":
        out["anthropic_beta"] = "forwarded" if forwards_betas(p.url, p.anthropic_beta) else "dropped"
        if p.allowed_betas:
            out["allowed_betas"] = list(p.allowed_betas)
    if p.headers:
        # By name, and a key-shaped value under a harmless name all the same.
        out["headers"] = {k: MASK if is_secret_header(k) else redact_text(v) for k, v in p.headers}
    if p.max_output_tokens:
        out["max_output_tokens"] = p.max_output_tokens
    if p.models:
        out["models"] = {name: facts_as_config(facts) for name, facts in p.models}
    return out


def _target(t: Target) -> Dict[str, Any]:
    out: Dict[str, Any] = {"provider": t.provider.name, "api": t.api, "model": t.model}
    if t.dialect is not None:
        out["dialect"] = t.dialect.name
    facts = facts_as_config(t.facts)
    if facts:
        out["facts"] = facts
    if t.output_cap:
        out["max_tokens_cap"] = t.output_cap
    return out


def _route(router: Router, route: Route) -> Dict[str, Any]:
    out: Dict[str, Any] = {"match": route.match, "from": route.origin or "config"}
    sample = route.match
    out["target"] = _route_target(router, route.target, sample)
    if route.fallbacks:
        out["fallbacks"] = [_route_target(router, f, sample) for f in route.fallbacks]
    return out


def _route_target(router: Router, target: RouteTarget, sample: str) -> Dict[str, Any]:
    """A route's target or fallback; one without a model passes the client's name on (the route's
    pattern stood there as if it were a model)."""
    resolved = router.target(target, sample)
    if target.model:
        return _target(resolved)
    return {"provider": resolved.provider.name, "api": resolved.api, "model": "(the client's model name)"}


def _where(router: Router, name: str) -> Optional[str]:
    routed = router.resolve(name)
    return routed.target.label if routed else None


def describe_config(config: Config, config_file: Optional[str] = None) -> Dict[str, Any]:
    router = build_router(config)
    settings = {key: getattr(config, field) for key, field in _SETTINGS.items()}
    settings["proxy"] = redact_url(config.proxy) if config.proxy else None
    # What is written back must be a file the proxy takes: no nulls (an unset setting is left out).
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items() if v is not None}
    return {
        "config_file": config_file,
        # Never in a file (auth_key_env names its variable there): where it came from, as a provider's key.
        "client_key": f"{MASK} (from {config.setting_name('auth_key')})" if config.auth_key else "none",
        "providers": {p.name: _provider(p) for p in router.providers.values()},
        "routes": [_route(router, r) for r in router.routes],
        "examples": {name: _where(router, name) or "404: no route" for name in SAMPLE_MODELS},
        "settings": settings,
        "fixed": {name: getattr(config, name) for name in _FIXED},
    }

