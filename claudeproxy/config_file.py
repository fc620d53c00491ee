"""The ``--config FILE`` format: providers, routes, model tables and every flag, in JSON. Pure.

``parse_config(obj, environ, settings)`` checks a decoded file and returns its
providers, routes and flag settings; anything wrong raises ``ConfigError``
naming the JSON path (``providers.openai.url``) and what is wrong. Keys are
never stored in the file: a provider names an environment variable
(``api_key_env``) or a command (``api_key_command``) instead. ``settings``
describes the flags (``cli.py`` derives it from its parser), so every flag has
a key of the same name, with ``-`` or ``_``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os.path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import Provider, Route, RouteTarget, check_header, check_seconds, static_token, unset_variable
from .credentials import DEFAULT_TTL, command_argv, command_token, key_source
from .model_facts import ModelFacts, facts_from_dict
from .routing import check_provider, header_the_key_replaces


class ConfigError(ValueError):
    """A bad config file; the message names the JSON path."""


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """What a flag accepts, for checking its key in the file."""

    kind: str  # str, int, float, bool, list or path (a str; relative ones are from the file's folder)
    choices: Tuple[str, ...] = ()
    any_case: bool = False  # a choice matches in upper case too (the flag's type is str.lower)


@dataclasses.dataclass(frozen=True)
class FileConfig:
    providers: Tuple[Provider, ...]
    routes: Tuple[Route, ...]
    settings: Dict[str, Any]  # flag dest -> value
    # flag dest -> how a message names it: the file and the key as written ("--config f.json: log-level"),
    # so that a check made after the merge with the flags names what the user wrote, not a flag.
    names: Dict[str, str] = dataclasses.field(default_factory=dict)


def file_setting(source: str, path: str) -> str:
    """A place in the config file ``source``, the way every message about the file names it."""
    return f"--config {source}: {path}"


_SECRET_KEYS = {"api_key": "api_key_env or api_key_command", "auth_key": "auth_key_env"}
_PROVIDER_KEYS = {"url", "api", "dialect", "api_key_env", "api_key_command", "api_key_ttl", "auth", "headers",
                  "anthropic_beta", "allowed_betas", "azure_api_version", "max_output_tokens", "models"}
_ROUTE_KEYS = {"match", "provider", "model", "fallbacks"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)


def _want(value: Any, kind: Any, path: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind in (int, float, (int, float)) and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {what}, got {_type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number")
    return value


def _text(value: Any, path: str) -> str:
    text: str = _want(value, str, path, "a string")
    if not text.strip():
        raise ConfigError(f"{path}: must not be empty")
    return text.strip()


def _strings(value: Any, path: str) -> List[str]:
    items = _want(value, list, path, "an array of strings")
    return [_text(item, f"{path}[{i}]") for i, item in enumerate(items)]


def _unknown(obj: Mapping[str, Any], known: Any, path: str) -> None:
    for key in obj:
        if key in _SECRET_KEYS:
            raise ConfigError(f"{_join(path, key)}: keys are never stored in the file; use {_SECRET_KEYS[key]}")
        if key not in known:
            raise ConfigError(f"{_join(path, key)}: unknown key{_near(key, known)} (expected one of "
                              f"{', '.join(sorted(known))})")


def _near(key: str, known: Any) -> str:
    """" (did you mean X?)" for the known key nearest a misspelt one ("retires"), else ""."""
    near = difflib.get_close_matches(key.replace("-", "_"), [str(k) for k in known], n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------
# Providers.


def _token(obj: Mapping[str, Any], environ: Mapping[str, str], path: str, name: str) -> Tuple[Any, str]:
    if "api_key_env" in obj and "api_key_command" in obj:
        raise ConfigError(f"{path}: give api_key_env or api_key_command, not both")
    if "api_key_ttl" in obj and "api_key_command" not in obj:
        raise ConfigError(f"{path}.api_key_ttl: says how long a key from api_key_command is used, and this "
                          "provider has no api_key_command")
    if "api_key_env" in obj:
        return _token_from_env(obj["api_key_env"], environ, path)
    if "api_key_command" in obj:
        return _token_from_command(obj, path, name)
    return static_token(""), ""  # known to give none: the start-up checks ask for a key where one is needed


def _token_from_env(raw: Any, environ: Mapping[str, str], path: str) -> Tuple[Any, str]:
    names = _strings(raw, f"{path}.api_key_env") if isinstance(raw, list) else [_text(raw, f"{path}.api_key_env")]
    if not names:
        raise ConfigError(f"{path}.api_key_env: must name at least one variable")
    keys = [_env_value(environ, var, f"{path}.api_key_env") for var in names]
    labels = [f"${var}" for var in names]
    return key_source(keys, labels), ", ".join(labels)


def _token_from_command(obj: Mapping[str, Any], path: str, name: str) -> Tuple[Any, str]:
    raw = obj["api_key_command"]
    where = f"{path}.api_key_command"
    try:
        argv = command_argv(raw if isinstance(raw, str) else _strings(raw, where), where)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ttl = _want(obj.get("api_key_ttl", DEFAULT_TTL), (int, float), f"{path}.api_key_ttl", "a number")
    try:  # bounded like every duration: a key kept for 1e300 s is never renewed
        check_seconds(ttl, f"{path}.api_key_ttl")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return command_token(argv, float(ttl), f"provider {name}"), f"command {argv[0]}"


def _env_value(environ: Mapping[str, str], var: str, setting: str) -> str:
    value = environ.get(var, "").strip()
    if not value:
        raise ConfigError(f"{setting}: {unset_variable(environ, var)}")
    return value


def _headers(value: Any, path: str) -> Tuple[Tuple[str, str], ...]:
    items = _want(value, dict, path, "an object of header names to values")
    out = []
    for name, val in items.items():
        try:
            out.append(check_header(name, _want(val, str, f"{path}.{name}", "a string"), f"{path}.{name}"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return tuple(out)


def _models(value: Any, path: str) -> Tuple[Tuple[str, ModelFacts], ...]:
    items = _want(value, dict, path, "an object of model names (or globs) to model facts")
    out = []
    for model, facts in items.items():
        where = f"{path}.{model}"
        try:
            out.append((model, facts_from_dict(_want(facts, dict, where, "an object"), where)))
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return tuple(out)


def _provider(name: str, obj: Any, environ: Mapping[str, str]) -> Provider:
    path = f"providers.{name}"
    obj = _want(obj, dict, path, "an object")
    _unknown(obj, _PROVIDER_KEYS, path)
    if "url" not in obj:
        raise ConfigError(f"{path}.url: required")
    token, source = _token(obj, environ, path, name)
    fields: Dict[str, Any] = {"name": name, "url": _text(obj["url"], f"{path}.url"), "token": token,
                              "key_source": source}
    for key in ("api", "dialect", "auth", "anthropic_beta", "azure_api_version"):
        if key in obj:
            fields[key] = _text(obj[key], f"{path}.{key}")
    if "max_output_tokens" in obj:
        fields["max_output_tokens"] = _want(obj["max_output_tokens"], int, f"{path}.max_output_tokens", "an integer")
    if "allowed_betas" in obj:
        fields["allowed_betas"] = tuple(_strings(obj["allowed_betas"], f"{path}.allowed_betas"))
    if "headers" in obj:
        fields["headers"] = _headers(obj["headers"], f"{path}.headers")
    if "models" in obj:
        fields["models"] = _models(obj["models"], f"{path}.models")
    provider = Provider(**fields)
    try:
        check_provider(provider, path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    replaced = header_the_key_replaces(provider) if source else None
    if replaced:
        key = "api_key_env" if "api_key_env" in obj else "api_key_command"
        raise ConfigError(f"{path}.headers.{replaced} and {path}.{key}: the key is sent in {replaced} and would "
                          "replace that header: give one of them")
    return provider


# --------------------------------------------------------------------------
# Routes.


def _target(obj: Any, path: str) -> RouteTarget:
    obj = _want(obj, dict, path, "an object with provider and model")
    _unknown(obj, {"provider", "model"}, path)
    if "provider" not in obj:
        raise ConfigError(f"{path}.provider: required")
    model = obj.get("model")
    return RouteTarget(_text(obj["provider"], f"{path}.provider"),
                       None if model is None else _text(model, f"{path}.model"))


def _route(i: int, obj: Any, source: str) -> Route:
    path = f"routes[{i}]"
    obj = _want(obj, dict, path, "an object")
    _unknown(obj, _ROUTE_KEYS, path)
    if "match" not in obj:
        raise ConfigError(f"{path}.match: required (a model name, a glob, opus/sonnet/haiku, or *)")
    match = _text(obj["match"], f"{path}.match")
    target = _target({k: obj[k] for k in ("provider", "model") if k in obj}, path)
    fallbacks = _want(obj.get("fallbacks", []), list, f"{path}.fallbacks", "an array")
    return Route(match, target, tuple(_target(f, f"{path}.fallbacks[{j}]") for j, f in enumerate(fallbacks)),
                 origin=file_setting(source, path))


# --------------------------------------------------------------------------
# Flags.


def _setting(key: str, value: Any, spec: FlagSpec, folder: Optional[str] = None) -> Any:
    if spec.kind == "path":
        path = _setting(key, value, FlagSpec("str"))
        return os.path.join(folder, path) if folder and not os.path.isabs(path) else path
    if spec.kind == "bool":
        return _want(value, bool, key, "true or false")
    if spec.kind == "int":
        return _want(value, int, key, "an integer")
    if spec.kind == "float":
        return float(_want(value, (int, float), key, "a number"))
    if spec.kind == "list":
        return _list_setting(key, value)
    return _text_setting(key, value, spec)


def _list_setting(key: str, value: Any) -> List[str]:
    if isinstance(value, dict) and key.replace("-", "_") == "model_map":  # {"PATTERN": "NAME", ...}
        return [f"{_text(pattern, key)}={_text(name, f'{key}.{pattern}')}" for pattern, name in value.items()]
    if not isinstance(value, (list, str)):
        raise ConfigError(f"{key}: expected a string or an array of strings, got {_type_name(value)}")
    items = _strings(value, key) if isinstance(value, list) else [_text(value, key)]
    if not items and key.replace("-", "_") == "api_key_env":
        raise ConfigError(f"{key}: must name at least one variable")
    return items


def _text_setting(key: str, value: Any, spec: FlagSpec) -> str:
    text = _want(value, str, key, "a string")
    if not text.strip():
        raise ConfigError(f"{key}: must not be empty")
    chosen = text.lower() if spec.any_case else text
    if spec.choices and chosen not in spec.choices:
        raise ConfigError(f"{key}: expected one of {', '.join(spec.choices)}, got {text!r}")
    return chosen


def _settings(obj: Mapping[str, Any], specs: Mapping[str, FlagSpec], folder: Optional[str]
              ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The flag settings by dest, and the key that gave each (``log-level`` or ``log_level``)."""
    out: Dict[str, Any] = {}
    spelled: Dict[str, str] = {}  # dest -> the key that set it
    for key, value in obj.items():
        if key in ("providers", "routes"):
            continue
        dest = key.replace("-", "_")
        if dest in _SECRET_KEYS:
            raise ConfigError(f"{key}: keys are never stored in the file; use {_SECRET_KEYS[dest]}")
        if dest not in specs:
            raise ConfigError(f"{key}: unknown key{_near(dest, list(specs) + ['providers', 'routes'])} "
                              "(not a flag, nor providers or routes)")
        if dest == "provider" and isinstance(value, dict):
            # "provider" is --provider, a dialect's name: an object there was meant as one of "providers".
            raise ConfigError(f"{key}: the --provider flag takes a dialect's name; providers go under \"providers\"")
        if dest in spelled:  # log-level and log_level: one would silently win
            raise ConfigError(f"{key}: the same setting as {spelled[dest]}, given twice")
        spelled[dest] = key
        out[dest] = _setting(key, value, specs[dest], folder)
    return out, spelled


def parse_config(obj: Any, environ: Mapping[str, str], specs: Mapping[str, FlagSpec], source: str = "config",
                 folder: Optional[str] = None) -> FileConfig:
    """The providers, routes and settings of a decoded config file; ``source`` is its name, for messages,
    and ``folder`` the one it is in, where its relative paths start (none: they stay as written)."""
    obj = _want(obj, dict, "(top level)", "an object")
    providers = _want(obj.get("providers", {}), dict, "providers", "an object of provider names to providers")
    if "providers" in obj and not providers:
        # Not the single-upstream default (api.openai.com) in their place: a file that names none
        # was cut short or emptied by mistake.
        raise ConfigError("providers: names no provider; give at least one, or leave providers out")
    routes = _want(obj.get("routes", []), list, "routes", "an array of routes")
    parsed = (tuple(_provider(name, p, environ) for name, p in providers.items()),
              tuple(_route(i, r, source) for i, r in enumerate(routes)))
    settings, spelled = _settings(obj, specs, folder)
    return FileConfig(*parsed, settings=settings,
                      names={dest: file_setting(source, key) for dest, key in spelled.items()})
