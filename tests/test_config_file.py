"""``--config FILE`` and ``--print-config`` (issue 6, item 3).

A file holds providers, routes, model tables and every flag; keys come from
named environment variables or a command, never from the file; flags win over
the file; a bad file exits 2 with one line naming the file, the JSON path and
what is wrong; ``--print-config`` shows the effective configuration with keys
masked and routes resolved, and exits 0.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import pytest

import claudeproxy
from claudeproxy import cli

OPENAI_KEY = "sk-CONFIG-SENTINEL-0123456789"
ENV = {"OPENAI_API_KEY": OPENAI_KEY, "HOME": "/nonexistent"}

# The README's complete example: OpenAI for opus and sonnet, a local Ollama for haiku.
EXAMPLE = {
    "providers": {
        "openai": {"url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
        "ollama": {"url": "http://localhost:11434/v1",
                   "models": {"qwen3:8b": {"context_window": 40960, "max_output_tokens": 8192}}},
    },
    "routes": [
        {"match": "opus", "provider": "openai", "model": "o3"},
        {"match": "sonnet", "provider": "openai", "model": "gpt-4.1"},
        {"match": "haiku", "provider": "ollama", "model": "qwen3:8b",
         "fallbacks": [{"provider": "openai", "model": "gpt-4.1-mini"}]},
        {"match": "*", "provider": "openai", "model": "gpt-4.1"},
    ],
    "port": 9099,
    "idle_timeout": 120,
    "log_level": "warning",
}


def run_main(argv: List[str], environ: Optional[Dict[str, str]] = None) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, environ=ENV if environ is None else environ, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def served(monkeypatch: Any) -> List[Any]:
    configs: List[Any] = []
    monkeypatch.setattr(cli, "serve", lambda config, stdout, metrics_path=None: configs.append(config) or 0)
    return configs


def write(tmp_path: Any, obj: Any, name: str = "claudeproxy.json") -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def assert_one_line_error(code: int, out: str, err: str, *parts: str) -> str:
    assert code == 2, (code, out, err)
    assert out == "" and len(err.splitlines()) == 1, err
    for part in parts:
        assert part in err, err
    assert OPENAI_KEY not in err
    return err


# ---------------------------------------------------------------------------
# A good file.


def test_the_example_file_configures_providers_routes_and_flags(tmp_path: Any, served: List[Any]) -> None:
    code, out, err = run_main(["--config", write(tmp_path, EXAMPLE)])
    assert (code, err) == (0, "")
    config = served[0]
    assert [p.name for p in config.providers] == ["openai", "ollama"]
    assert config.providers[0].token() == OPENAI_KEY and config.providers[1].token() == ""
    assert [r.match for r in config.routes] == ["opus", "sonnet", "haiku", "*"]
    assert config.routes[2].fallbacks[0].model == "gpt-4.1-mini"
    assert (config.port, config.idle_timeout) == (9099, 120.0)
    assert config.upstream is None  # no single-upstream shorthand: the file names the providers


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_files_passthrough_beside_another_upstream_api_stops_the_start(tmp_path: Any, served: List[Any],
                                                                        api: str) -> None:
    """The command line refuses the pair; from a file, "chat" (the default's value) started as passthrough
    without a word (probe Z, D3)."""
    path = write(tmp_path, {"passthrough": True, "upstream_api": api})
    code, out, err = run_main(["--config", path, "--upstream", "http://127.0.0.1:9/v1"])
    assert (code, out, served) == (2, "", []), err
    assert err == (f"claudeproxy: error: --config {path}: passthrough is short for upstream_api messages: it cannot "
                   f"go with upstream_api {api}\n"), err
    assert run_main(["--config", write(tmp_path, {"passthrough": True, "upstream_api": "messages"}),
                     "--upstream", "http://127.0.0.1:9/v1"])[0] == 0


@pytest.mark.parametrize("key, value", [("anthropic_beta", "forward"), ("allowed_betas", ["context-1m-2025-08-07"])])
def test_a_beta_setting_of_a_provider_that_sends_none_stops_the_start(tmp_path: Any, served: List[Any], key: str,
                                                                     value: Any) -> None:
    """A Chat provider's anthropic_beta was taken without a word, and nothing sent a beta (probe Z, D4)."""
    path = write(tmp_path, {"providers": {"o": {"url": "http://127.0.0.1:9/v1", key: value}},
                            "routes": [{"match": "*", "provider": "o", "model": "m"}]})
    code, out, err = run_main(["--config", path])
    assert (code, out, served) == (2, "", []), err
    assert f"providers.o.{key}: is for a provider whose api is messages" in err and "this one's is chat" in err, err


def test_flags_win_over_the_file(tmp_path: Any, served: List[Any]) -> None:
    code, _, err = run_main(["--config", write(tmp_path, EXAMPLE), "--port", "0", "--idle-timeout", "5"])
    assert code == 0, err
    assert (served[0].port, served[0].idle_timeout) == (0, 5.0)


@pytest.mark.parametrize("key, value, match", [("model", "top-model", "*"), ("opus_model", "o4-mini", "opus"),
                                              ("model_map", {"claude-haiku*": "h"}, "claude-haiku*")])
def test_a_files_model_key_and_its_own_route_for_the_same_match_stop_the_start(tmp_path: Any, served: List[Any],
                                                                                 key: str, value: Any,
                                                                                 match: str) -> None:
    """Within one file, "model" replaced the file's own '*' route without a word (probe T): one of the
    two was meant. The command line's --model replacing it is the documented override."""
    obj = {"providers": {"p": {"url": "http://127.0.0.1:9/v1"}}, key: value,
           "routes": [{"match": match, "provider": "p", "model": "m"}, {"match": "*", "provider": "p", "model": "d"}]}
    if match == "*":
        obj["routes"] = obj["routes"][:1]
    file = write(tmp_path, obj)
    said = f"{key} claude-haiku*=h" if key == "model_map" else key
    assert_one_line_error(*run_main(["--config", file]), file, f": {said} and routes[0] both route {match!r}")
    flag = {"model": "--model", "opus_model": "--opus-model", "model_map": "--model-map"}[key]
    argv = [flag, value if isinstance(value, str) else "claude-haiku*=h"]
    obj.pop(key)
    code, _, err = run_main(["--config", write(tmp_path, obj, "other.json")] + argv)
    assert code == 0, err


@pytest.mark.parametrize("in_file, flags, key", [
    ({"retries": 99}, ["--retries", "1"], "retries"),
    ({"idle_timeout": -1}, ["--idle-timeout", "5"], "idle_timeout"),
    ({"port": -1}, ["--port", "0"], "port"),
    ({"proxy": "https://proxy.example:1"}, ["--proxy", ""], "proxy"),
])
def test_a_bad_value_a_flag_overrides_still_stops_the_start(tmp_path: Any, served: List[Any], in_file: Dict[str, Any],
                                                            flags: List[str], key: str) -> None:
    """Unchecked while a flag overrode it, the file's bad value stopped the start only once the flag
    was left off (probe M): it is named now, as without the flag."""
    file = write(tmp_path, {"upstream": "http://127.0.0.1:9/v1", **in_file})
    assert_one_line_error(*run_main(["--config", file, *flags]), f"--config {file}: {key}")
    assert served == []
    good = write(tmp_path, {"upstream": "http://127.0.0.1:9/v1", "retries": 3, "port": 9099}, "good.json")
    assert run_main(["--config", good, "--retries", "1", "--port", "0"])[0] == 0
    assert (served[0].retries, served[0].port) == (1, 0)


@pytest.mark.parametrize("in_file, flags, env", [
    ({"upstream": "https://api.openai.com/v1", "api_key_env": "TEAM_KEY"}, ["--api-key-env", "MY_KEY"],
     {"MY_KEY": "sk-mine-0123456789"}),
    ({"upstream": "http://127.0.0.1:9/v1", "host": "0.0.0.0"}, ["--host", "127.0.0.1"], {}),
], ids=["key-variable", "lan-host"])
def test_a_files_machine_bound_setting_a_flag_overrides_is_not_checked_here(tmp_path: Any, served: List[Any],
                                                                           in_file: Dict[str, Any], flags: List[str],
                                                                           env: Dict[str, str]) -> None:
    """A shared file's key variable, a LAN server's host: checked with the key and environment of
    the machine they are for, not where a flag overrides them (review I)."""
    assert run_main(["--config", write(tmp_path, in_file), *flags], env)[0] == 0


def test_every_flag_has_a_key_with_dashes_or_underscores(tmp_path: Any, served: List[Any]) -> None:
    settings = {"max-concurrency": 7, "allowed_host": ["box.lan"], "header": ["X-Title: claudeproxy"],
                "model_map": ["claude-haiku*=gpt-4o-mini"], "upstream": "http://127.0.0.1:9/v1", "log_bodies": True}
    code, _, err = run_main(["--config", write(tmp_path, settings)])
    assert code == 0, err
    config = served[0]
    assert config.max_concurrency == 7 and config.allowed_hosts == ("box.lan",)
    assert config.headers == (("X-Title", "claudeproxy"),) and config.model_map == (("claude-haiku*", "gpt-4o-mini"),)
    assert config.upstream == "http://127.0.0.1:9/v1" and config.log_bodies is True


def test_a_model_map_may_be_an_object_as_json_writes_a_map(tmp_path: Any, served: List[Any]) -> None:
    settings = {"upstream": "http://127.0.0.1:9/v1", "model_map": {"claude-haiku*": "small", "claude-opus*": "big"}}
    code, _, err = run_main(["--config", write(tmp_path, settings)])
    assert code == 0, err
    assert served[0].model_map == (("claude-haiku*", "small"), ("claude-opus*", "big"))
    # Another setting that takes several values says what it takes.
    code, out, err = run_main(["--config", write(tmp_path, {"header": {"X-Title": "a"}})])
    assert_one_line_error(code, out, err, "header: expected a string or an array of strings, got an object")


def test_every_flag_is_a_known_file_key() -> None:
    specs = cli.flag_specs(cli.build_parser())
    flags = {a.dest for a in cli.build_parser()._actions if a.option_strings}
    assert flags - specs.keys() == {"help", "version", "config", "print_config", "api_key", "auth_key"}


def test_key_command_in_the_file(tmp_path: Any, served: List[Any]) -> None:
    conf = {"providers": {"vault": {"url": "https://api.openai.com/v1",
                                     "api_key_command": ["printf", "%s", "sk-from-command-0001"]}},
            "routes": [{"match": "*", "provider": "vault"}]}
    code, _, err = run_main(["--config", write(tmp_path, conf)])
    assert code == 0, err
    assert served[0].providers[0].token() == "sk-from-command-0001"


# ---------------------------------------------------------------------------
# Bad files: exit 2, one line naming the file, the path and what is wrong.

BAD_FILES = [
    ({"providers": {"openai": {"url": "https://x.test", "api_key": "sk-literal-000000"}}},
     "providers.openai.api_key", "never stored"),
    ({"api_key": "sk-literal-000000"}, "api_key", "never stored"),
    ({"auth_key": "hunter2"}, "auth_key", "never stored"),
    ({"providers": {"openai": {}}}, "providers.openai.url", "required"),
    ({"providers": {"openai": {"url": "ftp://x"}}}, "providers.openai.url", "http"),
    ({"providers": {"openai": {"url": "https://x.test", "api": "grpc"}}}, "providers.openai.api", "grpc"),
    ({"providers": {"openai": {"url": "https://x.test", "dialect": "nope"}}}, "providers.openai.dialect", "nope"),
    ({"providers": {"openai": {"url": "https://x.test", "colour": "red"}}}, "providers.openai.colour", "unknown key"),
    ({"providers": {"openai": {"url": "https://x.test", "models": {"o3": {"context": 5}}}}},
     "providers.openai.models.o3.context", ""),
    ({"providers": {"openai": {"url": "https://x.test", "models": {"o3": {"context_window": "big"}}}}},
     "providers.openai.models.o3.context_window", ""),
    ({"providers": {"openai": {"url": "https://x.test", "api_key_env": "NOT_SET_ANYWHERE"}}},
     "providers.openai.api_key_env", "NOT_SET_ANYWHERE"),
    ({"providers": {"openai": {"url": "https://x.test", "headers": {"Host": "evil"}}}},
     "providers.openai.headers.Host", "cannot be overridden"),
    ({"providers": [1]}, "providers", "an object"),
    ({"routes": {"match": "*"}}, "routes", "an array"),
    ({"providers": {"a": {"url": "https://x.test"}}, "routes": [{"provider": "a"}]}, "routes[0].match", "required"),
    ({"providers": {"a": {"url": "https://x.test"}}, "routes": [{"match": "*", "provider": "b"}]},
     "routes[0]", "unknown provider 'b'"),
    ({"providers": {"a": {"url": "https://x.test"}}, "routes": [{"match": "*", "provider": "a", "model": 5}]},
     "routes[0].model", "a string"),
    ({"providers": {"a": {"url": "https://x.test"}},
      "routes": [{"match": "*", "provider": "a"}, {"match": "opus", "provider": "a"}]}, "routes[1]", "never match"),
    ({"providers": {"a": {"url": "https://x.test"}}, "routes": [{"match": "*", "provider": "a", "via": "b"}]},
     "routes[0].via", "unknown key"),
    ({"port": "eighty"}, "port", "an integer"),
    ({"idle_timeout": True}, "idle_timeout", "a number"),
    ({"log_level": "loud"}, "log_level", "loud"),
    ({"no_such_flag": 1}, "no_such_flag", "unknown key"),
    # A misspelt key says which was meant; "provider" (the --provider flag) given an object was
    # meant as "providers" (probe T).
    ({"retires": 2}, "retires", "unknown key (did you mean retries?)"),
    ({"route": []}, "route", "unknown key (did you mean routes?)"),
    ({"providers": {"a": {"url": "https://x.test", "modles": {}}}}, "providers.a.modles",
     "unknown key (did you mean models?)"),
    ({"provider": {"url": "https://x.test"}}, "provider", 'providers go under "providers"'),
    ([1, 2], "(top level)", "an object"),
    # One setting spelled both ways: one of them would silently win.
    ({"log-level": "debug", "log_level": "error"}, "log_level", "the same setting as log-level"),
    # Empty values are mistakes, as on the command line.
    ({"model": ""}, "model", "must not be empty"),
    ({"upstream": " "}, "upstream", "must not be empty"),
    ({"api_key_command": ""}, "api_key_command", "must not be empty"),
    ({"api_key_env": []}, "api_key_env", "at least one"),
    # A key command is split and found at start.
    ({"providers": {"a": {"url": "https://x.test", "api_key_command": '"unterminated'}}},
     "providers.a.api_key_command", "No closing quotation"),
    ({"providers": {"a": {"url": "https://x.test", "api_key_command": ["no-such-key-tool-xyz"]}}},
     "providers.a.api_key_command", "command not found"),
    # Prices and token counts a real model never has: a price of 1e308 made the usage page a 500.
    ({"providers": {"a": {"url": "https://x.test", "models": {"m": {"input_price": 1e308}}}}},
     "providers.a.models.m.input_price", "at most 1000000 USD per million tokens"),
    ({"providers": {"a": {"url": "https://x.test", "models": {"m": {"cache_write_price": 1000001}}}}},
     "providers.a.models.m.cache_write_price", "at most 1000000"),
    ({"providers": {"a": {"url": "https://x.test", "models": {"m*": {"context_window": 10 ** 30}}}}},
     "providers.a.models.m*.context_window", "at most 1000000000 tokens"),
    ({"providers": {"a": {"url": "https://x.test", "models": {"m": {"max_output_tokens": 10 ** 10}}}}},
     "providers.a.models.m.max_output_tokens", "at most 1000000000 tokens"),
    ({"providers": {"a": {"url": "https://x.test", "max_output_tokens": 10 ** 10}}},
     "providers.a.max_output_tokens", "from 1 to 1000000000"),
    # A key lifetime without a key command, or one never renewed.
    ({"providers": {"a": {"url": "https://x.test", "api_key_env": "OPENAI_API_KEY", "api_key_ttl": 60}}},
     "providers.a.api_key_ttl", "no api_key_command"),
    ({"providers": {"a": {"url": "https://x.test", "api_key_ttl": 60}}}, "providers.a.api_key_ttl",
     "no api_key_command"),
    ({"providers": {"a": {"url": "https://x.test", "api_key_command": "true", "api_key_ttl": 1e300}}},
     "providers.a.api_key_ttl", "finite number of seconds"),
    # A header the key replaces upstream.
    ({"providers": {"a": {"url": "https://x.test", "api_key_env": "OPENAI_API_KEY",
                          "headers": {"Authorization": "Bearer hdr-token"}}}},
     "providers.a.headers.Authorization and providers.a.api_key_env", "would replace that header"),
    ({"providers": {"a": {"url": "https://x.test", "api": "messages", "auth": "x-api-key", "api_key_command": "true",
                          "headers": {"X-Api-Key": "hdr-token"}}}},
     "providers.a.headers.X-Api-Key and providers.a.api_key_command", "would replace that header"),
]


@pytest.mark.parametrize("obj, path, what", BAD_FILES, ids=[b[1] + "-" + b[2] for b in BAD_FILES])
def test_bad_file_exits_2_naming_file_path_and_problem(tmp_path: Any, served: List[Any], obj: Any, path: str,
                                                       what: str) -> None:
    file = write(tmp_path, obj)
    err = assert_one_line_error(*run_main(["--config", file]), file, path, what)
    assert "sk-literal-000000" not in err and "hunter2" not in err
    assert served == []


# Settings a flag could also give are checked as the flag is, after the file is merged with the
# flags, and named as the file's key: the user never typed the flag.
BAD_SETTINGS = [
    ({"retries": 50}, "retries", "from 0 to 10, got 50"),
    ({"idle_timeout": -1}, "idle_timeout", "greater than 0"),
    ({"port": -1}, "port", "from 0 to 65535, got -1"),
    ({"upstream": "ftp://x"}, "upstream", "http://"),
    ({"model_map": ["nope"]}, "model_map", "PATTERN=NAME"),
    ({"model_map": {"claude-haiku*": ""}}, "model_map.claude-haiku*", "must not be empty"),
    ({"host": "0.0.0.0"}, "host", "refusing to listen on 0.0.0.0"),
    ({"host": "127.0.0.1 "}, "host", "expected an IP address or a host name"),
    # The flag is --allowed-host (the message named a --allowed-hosts that does not exist).
    ({"allowed_host": ["a b"]}, "allowed_host", "expected a host name or host:port"),
    ({"allowed-host": ["box.lan:99999"]}, "allowed-host", "from 1 to 65535"),
    ({"usage_log": "/nonexistent-claudeproxy/u.jsonl"}, "usage_log", "does not exist"),
    ({"metrics_file": "/nonexistent-claudeproxy/u.jsonl"}, "metrics_file", "does not exist"),
    ({"ca_bundle": "/nonexistent-claudeproxy/ca.pem"}, "ca_bundle", "no such file"),
    ({"allowed_origin": ["*"]}, "allowed_origin", "scheme://host"),
    ({"auth_key_env": "NOT_SET_ANYWHERE"}, "auth_key_env", "NOT_SET_ANYWHERE is not set"),
    ({"max_idle_per_host": -1}, "max_idle_per_host", "at least 0"),
    ({"max_concurrency": 0}, "max_concurrency", "at least 1"),
    ({"max_output_tokens": 10 ** 10}, "max_output_tokens", "at most 1000000000"),
    ({"max_body_bytes": 10 ** 20}, "max_body_bytes", "at most 1073741824"),
    ({"upstream": "http://127.0.0.1:0/v1"}, "upstream", "port 0"),
    ({"connect_timeout": 1e300}, "connect_timeout", "finite number of seconds"),
    ({"header": ["X-A: \u0001"]}, "header", "control characters"),
    ({"proxy": "https://proxy.test:3128"}, "proxy", "only http://"),
    ({"api_key_env": ["NOT_SET_ANYWHERE"]}, "api_key_env", "NOT_SET_ANYWHERE is not set"),
    ({"api_key_command": '"unterminated'}, "api_key_command", "No closing quotation"),
    ({"api_key_ttl": 5}, "api_key_ttl", "how long a key from --api-key-command is used"),
    ({"api_key_env": ["OPENAI_API_KEY"], "api_key_ttl": 600}, "api_key_ttl", "how long a key"),
    ({"api_key_command": "true", "api_key_ttl": 1e300}, "api_key_ttl", "finite number of seconds"),
    ({"api_key_env": "OPENAI_API_KEY", "header": ["Authorization: Bearer hdr-token"]}, "header",
     "'Authorization: ...' and api_key_env: the key is sent in Authorization"),
    ({"log-level": "debug", "api-key-command": "no-such-key-tool-xyz"}, "api-key-command", "command not found"),
    # Only the file's providers: the single upstream's flags would go nowhere.
    ({"providers": {"a": {"url": "https://x.test"}}, "routes": [{"match": "*", "provider": "a"}],
      "header": ["X-Title: app"]}, "header", "single upstream"),
    ({"providers": {"a": {"url": "https://x.test"}}, "routes": [{"match": "*", "provider": "a"}],
      "upstream_api": "responses"}, "upstream_api", "single upstream"),
]


@pytest.mark.parametrize("obj, key, what", BAD_SETTINGS, ids=[b[1] + "-" + b[2] for b in BAD_SETTINGS])
def test_bad_setting_in_a_file_exits_2_naming_the_file_and_key(tmp_path: Any, served: List[Any], obj: Any,
                                                               key: str, what: str) -> None:
    file = write(tmp_path, obj)
    err = assert_one_line_error(*run_main(["--config", file]), f"--config {file}: {key}", what)
    assert "--" + key.replace("_", "-") not in err  # the flag the user never typed
    assert "Traceback" not in err
    assert served == []


@pytest.mark.parametrize("obj, first, second", [
    ({"usage_log": "/tmp/a.jsonl", "metrics_file": "/tmp/b.jsonl"}, "metrics_file", "usage_log"),
    ({"passthrough": True, "upstream_api": "responses"}, "passthrough", "upstream_api"),
    ({"api_key_env": "OPENAI_API_KEY", "api_key_command": "true"}, "api_key_env", "api_key_command"),
], ids=["usage_log", "passthrough", "api_key"])
def test_two_settings_of_one_file_name_the_file_once(tmp_path: Any, served: List[Any], obj: Any, first: str,
                                                      second: str) -> None:
    file = write(tmp_path, obj)
    err = assert_one_line_error(*run_main(["--config", file]), f"--config {file}: {first}", second)
    assert err.count(file) == 1
    for key in (first, second):
        assert "--" + key.replace("_", "-") not in err


def test_a_bad_client_key_from_auth_key_env_names_the_file_and_variable_not_the_key(
        tmp_path: Any, served: List[Any]) -> None:
    file = write(tmp_path, {"auth_key_env": "MY_CLIENT_KEY"})
    err = assert_one_line_error(*run_main(["--config", file], {**ENV, "MY_CLIENT_KEY": "cp-secret\nvalue"}),
                                f"--config {file}: auth_key_env", "$MY_CLIENT_KEY", "control character")
    assert "--auth-key" not in err and "cp-secret" not in err


def test_an_unreachable_route_names_its_file_once(tmp_path: Any, served: List[Any]) -> None:
    file = write(tmp_path, {"providers": {"a": {"url": "https://x.test"}},
                            "routes": [{"match": "*", "provider": "a"}, {"match": "opus", "provider": "a"}]})
    err = assert_one_line_error(*run_main(["--config", file]), f"{file}: routes[1]", "never match", "routes[0]")
    assert err.count(file) == 1


def test_a_route_from_a_files_model_map_names_the_file(tmp_path: Any, served: List[Any]) -> None:
    file = write(tmp_path, {"model_map": ["*=a", "opus=b"]})
    err = assert_one_line_error(*run_main(["--config", file]), f"--config {file}: model_map opus=b", "never match",
                                "model_map *=a")
    assert err.count(file) == 1 and "--model-map" not in err


def test_the_same_settings_on_the_command_line_keep_their_messages(served: List[Any]) -> None:
    """The command line names the flag the user typed, worded as start()'s checks of the same setting."""
    for argv, line in [(["--retries", "50"], "--retries: must be from 0 to 10, got 50"),
                       (["--port", "-1"], "--port: must be from 0 to 65535, got -1"),
                       (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without --auth-key"),
                       (["--usage-log", "a", "--metrics-file", "b"],
                        "--metrics-file is the former name of --usage-log: give one of them")]:
        assert_one_line_error(*run_main(argv), "claudeproxy: error: " + line)


@pytest.mark.parametrize("flags", [["--header", "X-Title: app"], ["--api-key-env", "K1"], ["--passthrough"],
                                   ["--provider", "azure"], ["--upstream-auth", "x-api-key"]])
def test_single_upstream_flags_without_a_single_upstream_exit_2(tmp_path: Any, served: List[Any],
                                                                flags: List[str]) -> None:
    file = write(tmp_path, {"providers": {"a": {"url": "https://x.test"}}, "routes": [{"match": "*", "provider": "a"}]})
    assert_one_line_error(*run_main(["--config", file, *flags], {"K1": "sk-k1-000000"}), flags[0], "single upstream")
    # With --upstream as well, the flags describe that one: fine.
    assert run_main(["--config", file, "--upstream", "http://127.0.0.1:9/v1", *flags], {"K1": "sk-k1-000000"})[0] == 0


def test_an_empty_proxy_or_usage_log_flag_turns_off_the_files(tmp_path: Any, served: List[Any],
                                                              monkeypatch: Any) -> None:
    paths: List[Any] = []
    monkeypatch.setattr(cli, "serve", lambda config, stdout, path=None: served.append(config) or paths.append(path) or 0)
    file = write(tmp_path, {"proxy": "http://127.0.0.1:3128", "usage_log": str(tmp_path / "u.jsonl")})
    assert run_main(["--config", file])[0] == 0
    assert (served[-1].proxy, paths[-1]) == ("http://127.0.0.1:3128", str(tmp_path / "u.jsonl"))
    assert run_main(["--config", file, "--proxy", "", "--usage-log", ""])[0] == 0
    assert (served[-1].proxy, paths[-1]) == (None, None)


def test_relative_paths_in_a_file_start_from_its_folder(tmp_path: Any, served: List[Any], monkeypatch: Any) -> None:
    """The file travels with what it names: its relative paths do not depend on where the proxy starts."""
    paths: List[Any] = []
    monkeypatch.setattr(cli, "serve",
                        lambda config, stdout, path=None: served.append(config) or paths.append(path) or 0)
    folder, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "logs").mkdir()  # the usage log is opened at start: the kernel walks logs/.. itself
    monkeypatch.chdir(str(elsewhere))
    file = write(folder, {"upstream": "http://127.0.0.1:9/v1", "usage_log": "logs/../u.jsonl"})
    assert run_main(["--config", file])[0] == 0
    assert paths[-1] == os.path.join(str(folder), "logs/../u.jsonl")
    # A missing CA bundle is looked for, and named, in the file's folder.
    file = write(folder, {"upstream": "http://127.0.0.1:9/v1", "ca_bundle": "ca.pem"}, "ca.json")
    assert_one_line_error(*run_main(["--config", file]),
                          f"ca_bundle {os.path.join(str(folder), 'ca.pem')}: no such file")
    # On the command line a relative path is the current folder's, as a shell would have it.
    file = write(folder, {"upstream": "http://127.0.0.1:9/v1"}, "plain.json")
    assert run_main(["--config", file, "--usage-log", "u.jsonl"])[0] == 0
    assert paths[-1] == "u.jsonl"


@pytest.mark.parametrize("in_file, flags", [
    ({"metrics_file": "old.jsonl"}, ["--usage-log", "new.jsonl"]),
    ({"upstream_api": "responses"}, ["--passthrough"]),
    ({"passthrough": True}, ["--upstream-api", "responses"]),
    # A key source on the command line sets aside the file's (and its key command's lifetime).
    ({"api_key_env": "OPENAI_API_KEY"}, ["--api-key", "sk-flag"]),
    ({"api_key_command": "true", "api_key_ttl": 60}, ["--api-key-env", "OPENAI_API_KEY"]),
    ({"api_key_env": "OPENAI_API_KEY", "header": ["Authorization: Bearer hdr-token"]}, ["--api-key", ""]),
])
def test_a_flag_sets_aside_the_files_twin(tmp_path: Any, served: List[Any], in_file: Dict[str, Any],
                                          flags: List[str]) -> None:
    """The command line wins over the file, also when the file spells the setting the other way."""
    file = write(tmp_path, {"upstream": "http://127.0.0.1:9/v1", **in_file})
    code, out, err = run_main(["--config", file, *flags])
    assert code == 0, err


def test_providers_without_any_route_stop_the_start(tmp_path: Any) -> None:
    # It used to start, log no route at all and refuse every request with a 404.
    file = write(tmp_path, {"providers": {"a": {"url": "http://127.0.0.1:9/v1"}}})
    # Named as every other config error is (the README's promise), not as a bare "routes".
    assert_one_line_error(*run_main(["--config", file]), f"error: --config {file}: routes: there are none")


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_passthrough_with_another_upstream_api_on_the_command_line_stops_the_start(api: str) -> None:
    # --upstream-api chat was taken for "not given" (chat is the default) and the start went on as messages.
    assert_one_line_error(*run_main(["--upstream", "http://127.0.0.1:9/v1", "--passthrough", "--upstream-api", api]),
                          f"cannot go with --upstream-api {api}")


def test_runs_own_options_in_a_file_are_left_to_run(tmp_path: Any, served: List[Any]) -> None:
    """One file for both: the server has no use for log_file and trust, and does not refuse them."""
    file = write(tmp_path, {"upstream": "http://127.0.0.1:9/v1", "log_file": "/tmp/x.log", "trust": True})
    assert run_main(["--config", file])[0] == 0
    assert_one_line_error(*run_main(["--config", write(tmp_path, {"trust": "yes"}, "bad.json")]), "trust")


def test_runs_own_options_are_the_ones_run_adds() -> None:
    from claudeproxy import launcher

    run_specs, server_specs = cli.flag_specs(launcher.run_parser()), cli.flag_specs(cli.build_parser())
    assert {k: v for k, v in run_specs.items() if k not in server_specs} == cli.RUN_ONLY


@pytest.mark.parametrize("text, what", [
    ('{"port": 1,}', "line 1"),
    ('{"providers": {"a": {"url": "https://x.test"}, "a": {"url": "https://y.test"}}}', ": the key 'a' appears twice"),
    # Where, not only which key: a file has many objects (a probe).
    ('{"providers": {"a": {"url": "https://x.test", "url": "https://y.test"}}}', ": providers.a: the key 'url' appears"),
    ('{"routes": [{"match": "*", "match": "claude-*"}]}', ": routes[0]: the key 'match' appears twice"),
    ("", "not valid JSON"),
    ("\xff\xfe", "not valid JSON"),
])
def test_unreadable_json_exits_2(tmp_path: Any, served: List[Any], text: str, what: str) -> None:
    file = write(tmp_path, text)
    assert_one_line_error(*run_main(["--config", file]), file, what)


def test_a_duplicate_before_a_nesting_too_deep_is_one_line(tmp_path: Any, served: List[Any]) -> None:
    """The file is read again to say where the duplicate is; a nesting deeper than the decoder goes
    made that second read a traceback (probe T). How deep the decoder goes differs between Python
    versions (3.13's goes deeper): either the duplicate or the nesting is named, in one line."""
    file = write(tmp_path, '{"b": {"c": 1, "c": 2}, "a": ' + "[" * 5000 + "]" * 5000 + "}")
    err = assert_one_line_error(*run_main(["--config", file]), file)
    assert "b: the key 'c' appears twice" in err or "not valid JSON: nested too deeply" in err, err


def test_a_file_that_starts_with_a_utf8_bom_is_read(tmp_path: Any, served: List[Any]) -> None:
    """Notepad and PowerShell write UTF-8 with a byte order mark; the file is no less JSON."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"upstream": "http://127.0.0.1:9/v1", "retries": 2}).encode())
    code, out, err = run_main(["--config", str(path)])
    assert (code, err) == (0, ""), err
    assert served[0].retries == 2


def test_missing_file_exits_2(tmp_path: Any, served: List[Any]) -> None:
    assert_one_line_error(*run_main(["--config", os.path.join(str(tmp_path), "nope.json")]), "nope.json",
                          "cannot read")


# ---------------------------------------------------------------------------
# --print-config.


def print_config(argv: List[str], environ: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    code, out, err = run_main(argv + ["--print-config"], environ)
    assert (code, err) == (0, ""), err
    assert OPENAI_KEY not in out and "sk-flag-key" not in out
    return json.loads(out)


def test_print_config_shows_the_file_resolved(tmp_path: Any) -> None:
    shown = print_config(["--config", write(tmp_path, EXAMPLE)])
    assert shown["providers"]["openai"] == {
        "url": "https://api.openai.com/v1", "api": "chat", "dialect": "openai (detected from the URL)",
        "auth": "bearer (default)", "key": "*** (from $OPENAI_API_KEY)"}
    assert shown["providers"]["ollama"]["dialect"] == "ollama (detected from the URL)"
    assert shown["providers"]["ollama"]["key"] == "none"
    routes = shown["routes"]
    assert [r["match"] for r in routes] == ["opus", "sonnet", "haiku", "*"]
    assert routes[0]["target"]["model"] == "o3" and routes[0]["target"]["dialect"] == "openai"
    assert routes[2]["target"]["facts"] == {"context_window": 40960, "max_output_tokens": 8192}
    assert routes[2]["fallbacks"][0]["model"] == "gpt-4.1-mini"
    assert shown["examples"]["claude-3-5-haiku-latest"] == "ollama/qwen3:8b"
    assert shown["examples"]["claude-opus-4-1"] == "openai/o3"
    assert shown["settings"]["port"] == 9099



def test_print_config_shows_a_fallback_without_a_model_as_the_clients_name(tmp_path: Any) -> None:
    """A fallback with no model passes the client's name on, as such a route does; --print-config
    showed the route's pattern there ("model": "claude-*"), a model name nobody had set."""
    shown = print_config(["--config", write(tmp_path, {
        "providers": {"p": {"url": "http://127.0.0.1:9/v1"}, "b": {"url": "http://127.0.0.1:10/v1"}},
        "routes": [{"match": "claude-*", "provider": "p", "model": "m", "fallbacks": [{"provider": "b"}]},
                   {"match": "*", "provider": "p", "fallbacks": [{"provider": "b", "model": "n"}]}]})])
    first, catch_all = shown["routes"]
    assert first["target"]["model"] == "m"
    assert first["fallbacks"] == [{"provider": "b", "api": "chat", "model": "(the client's model name)"}]
    assert catch_all["target"]["model"] == "(the client's model name)"
    assert [f["model"] for f in catch_all["fallbacks"]] == ["n"]


def test_print_config_uses_the_names_a_config_file_takes(tmp_path: Any, served: List[Any]) -> None:
    """What --print-config shows can be written back into a file: its settings and model facts
    go by the file's keys, and what no file can set is shown apart, as fixed."""
    shown = print_config(["--config", write(tmp_path, EXAMPLE), "--allowed-origin", "https://app.example",
                          "--auth-key", "sk-flag-key-0001"])
    assert shown["providers"]["ollama"]["models"] == EXAMPLE["providers"]["ollama"]["models"]
    assert shown["routes"][2]["target"]["facts"] == {"context_window": 40960, "max_output_tokens": 8192}
    specs = cli.flag_specs(cli.build_parser())
    assert set(shown["settings"]) <= set(specs)
    assert shown["client_key"] == "*** (from --auth-key)"  # a key never goes in a file: apart
    assert {"finish_grace", "max_line_bytes"} <= set(shown["fixed"]) and not set(shown["fixed"]) & set(specs)
    # Written back as they are, the settings are a file the proxy accepts, with the same values.
    again = shown["settings"]
    assert None not in again.values()  # a null is refused in a file
    code, _, err = run_main(["--config", write(tmp_path, {**again, "upstream": "http://127.0.0.1:9/v1"}, "again.json"),
                             "--auth-key", "sk-flag-key-0001"])
    assert code == 0, err
    assert (served[0].allowed_origins, served[0].port, served[0].idle_timeout) == (("https://app.example",), 9099, 120)


def test_the_readme_lists_every_file_only_key() -> None:
    text = _readme()
    section = text[text.index("### A config file"):text.index("### OpenAI's Responses API")]
    missing = sorted(k for k in cli._FILE_ONLY if f"`{k}`" not in section)  # noqa: SLF001
    assert missing == [], missing


def test_print_config_shows_the_retry_settings() -> None:
    shown = print_config(["--retries", "3", "--retry-max-wait", "45"])
    assert (shown["settings"]["retries"], shown["settings"]["retry_max_wait"]) == (3, 45.0)


DIALECT_URLS = [
    ("https://api.openai.com/v1", "openai"), ("https://myres.openai.azure.com", "azure"),
    ("https://openrouter.ai/api/v1", "openrouter"), ("https://api.deepseek.com/v1", "deepseek"),
    ("https://api.groq.com/openai/v1", "groq"), ("https://api.mistral.ai/v1", "mistral"),
    ("https://generativelanguage.googleapis.com/v1beta/openai", "gemini"),
    ("http://localhost:11434/v1", "ollama"), ("http://localhost:1234/v1", "lmstudio"),
    ("http://127.0.0.1:8000/v1", "vllm"), ("http://127.0.0.1:8001/v1", "generic"),
]


@pytest.mark.parametrize("url, dialect", DIALECT_URLS)
def test_print_config_for_each_dialect_masks_the_key(url: str, dialect: str) -> None:
    shown = print_config(["--upstream", url, "--api-key", "sk-flag-key-0123456789", "--model", "m1"])
    provider = shown["providers"]["upstream"]
    assert provider["dialect"] == f"{dialect} (detected from the URL)"
    assert provider["key"] == "*** (from --api-key)"
    assert provider["auth"] == ("api-key (default)" if dialect == "azure" else "bearer (default)")
    assert shown["routes"] == [{"match": "*", "from": "--model", "target": {
        "provider": "upstream", "api": "chat", "model": "m1", "dialect": dialect}}]


def test_print_config_of_an_empty_api_key_says_none_is_sent() -> None:
    """--api-key '' sends no key, whatever the environment holds: not "*** (from --api-key)"."""
    shown = print_config(["--upstream", "http://127.0.0.1:8000/v1", "--api-key", ""], {"OPENAI_API_KEY": OPENAI_KEY})
    assert shown["providers"]["upstream"]["key"] == "none (--api-key is empty)"


@pytest.mark.parametrize("dialect", ["vllm", "llamacpp", "mistral"])
def test_print_config_with_an_explicit_dialect(dialect: str) -> None:
    shown = print_config(["--upstream", "http://127.0.0.1:8000/v1", "--provider", dialect])
    assert shown["providers"]["upstream"]["dialect"] == dialect


def test_print_config_for_a_messages_provider() -> None:
    shown = print_config(["--passthrough", "--upstream", "https://api.anthropic.com", "--api-key",
                          "sk-flag-key-0123456789", "--haiku-model", "claude-haiku-4-5"])
    provider = shown["providers"]["upstream"]
    assert provider["api"] == "messages" and "dialect" not in provider
    assert provider["auth"] == "x-api-key (default)" and provider["anthropic_beta"] == "forwarded"
    assert shown["examples"]["claude-haiku-5-5"] == "upstream/claude-haiku-4-5"


def test_print_config_of_family_flags_shows_the_borrowed_families() -> None:
    shown = print_config(["--upstream", "https://api.openai.com/v1", "--opus-model", "o3"])
    assert [(r["match"], r["target"]["model"], r["from"]) for r in shown["routes"][:5]] == [
        ("opus", "o3", "--opus-model"), ("sonnet", "o3", "--opus-model (no --sonnet-model)"),
        ("haiku", "o3", "--opus-model (no --haiku-model)"),
        # Claude Code 2.1.331's /model offers Fable, a family with no flag of its own.
        ("fable", "o3", "--opus-model (for fable, which nothing routes)"),
        ("mythos", "o3", "--opus-model (for mythos, which nothing routes)")]
    assert shown["routes"][5]["target"]["model"] == "(the client's model name)"
    assert shown["examples"] == {name: "upstream/o3" for name in shown["examples"]}


CREDENTIAL_HEADERS = ("X-Auth", "cf-aig-authorization", "X-Password", "Cookie", "X-Goog-Api-Key",
                      "Ocp-Apim-Subscription-Key", "X-Session-Token")
HARMLESS_HEADERS = {"HTTP-Referer": "https://example.com/app", "X-Title": "My App", "OpenAI-Beta": "assistants=v2",
                    "Accept": "application/json", "User-Agent": "my-agent/1.0"}


def test_print_config_masks_credential_headers_and_shows_the_others(tmp_path: Any) -> None:
    argv = ["--upstream", "http://127.0.0.1:8000/v1?key=URLQSECRET77abc&alt=sse"]
    for name in CREDENTIAL_HEADERS:
        argv += ["--header", f"{name}: HdrSECRET12345"]
    for name, value in HARMLESS_HEADERS.items():
        argv += ["--header", f"{name}: {value}"]
    code, out, err = run_main(argv + ["--print-config"])
    assert code == 0 and "HdrSECRET" not in out and "URLQSECRET" not in out
    provider = json.loads(out)["providers"]["upstream"]
    assert provider["headers"] == {**{name: "***" for name in CREDENTIAL_HEADERS}, **HARMLESS_HEADERS}
    assert provider["url"] == "http://127.0.0.1:8000/v1?key=***&alt=sse"
    # A config file's provider headers alike.
    file = write(tmp_path, {"providers": {"gw": {"url": "https://gw.test/v1", "headers": {
        "X-Auth": "HdrSECRET12345", "X-Title": "My App"}}}, "routes": [{"match": "*", "provider": "gw"}]})
    shown = print_config(["--config", file])
    assert shown["providers"]["gw"]["headers"] == {"X-Auth": "***", "X-Title": "My App"}


def test_the_log_filter_knows_the_configurations_credentials(tmp_path: Any, served: List[Any]) -> None:
    """What the process-wide log filter masks: the URL's query key and the credential headers' values,
    of the shorthand provider and of a file's providers, beside the keys."""
    file = write(tmp_path, {"providers": {"gw": {"url": "https://gw.test/v1?code=FileQSECRET99", "headers": {
        "X-Auth": "FileHdrSECRET1", "X-Title": "My App"}}}, "routes": [{"match": "*", "provider": "gw"}]})
    code, _, err = run_main(["--config", file, "--upstream", "http://127.0.0.1:8000/v1?key=URLQSECRET77abc",
                             "--header", "X-Password: HdrSECRET12345", "--proxy", "http://me:ProxyPASS123@127.0.0.1:3128"])
    assert code == 0, err
    config = served[0]
    secrets = cli.secrets_source(config)()
    assert {"FileQSECRET99", "FileHdrSECRET1", "URLQSECRET77abc", "HdrSECRET12345", "ProxyPASS123"} <= set(secrets)
    assert "My App" not in secrets and set(secrets) == set(cli.config_secrets(config))
    # The server's own list (error messages, stream events) holds the same written credentials.
    running = claudeproxy.start(config=config, port=0)
    try:
        assert {"FileQSECRET99", "FileHdrSECRET1", "ProxyPASS123"} <= set(running.server.proxy.secrets())
    finally:
        running.shutdown(grace=0.1)


def test_print_config_does_not_run_a_key_command(tmp_path: Any) -> None:
    marker = os.path.join(str(tmp_path), "ran")
    shown = print_config(["--api-key-command", f"touch {marker}"])
    assert shown["providers"]["upstream"]["key"] == "*** (from command touch)"
    assert not os.path.exists(marker)


def test_print_config_with_a_bad_setting_still_exits_2(tmp_path: Any) -> None:
    assert_one_line_error(*run_main(["--print-config", "--upstream", "nope"]), "--upstream")


# ---------------------------------------------------------------------------
# The README stays true.


def _readme() -> str:
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
              encoding="utf-8") as fh:
        return fh.read()


def test_the_readme_config_example_is_a_working_config(tmp_path: Any) -> None:
    text = _readme()
    section = text[text.index("### A config file"):]
    example = json.loads(section[section.index("```json") + 7:section.index("```", section.index("```json") + 7)])
    shown = print_config(["--config", write(tmp_path, example)])
    assert shown["examples"]["claude-opus-4-1"] == "openai/o3"
    assert shown["examples"]["claude-3-5-haiku-latest"] == "ollama/qwen3:8b"
    assert shown["providers"]["ollama"]["api"] == "messages"


def test_every_flag_is_in_the_readme_table() -> None:
    text = _readme()
    table = text[text.index("## Flags"):text.index("## Endpoints")]
    flags = {s for a in cli.build_parser()._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    missing = sorted(f for f in flags if f"`{f}" not in table and f"{f}`" not in table)
    assert missing == [], missing



@pytest.mark.parametrize("mode", [[], ["run"]], ids=["server", "run"])
def test_config_given_twice_stops_the_start(tmp_path: Any, mode: List[str]) -> None:
    # Read as layered files it is not: the first would be dropped without a word.
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text('{"retries": 3}')
    second.write_text('{"upstream": "http://127.0.0.1:9/v1", "retries": 1}')
    code, out, err = run_main([*mode, "--config", str(first), "--config", str(second), "--print-config",
                               *(["--", "true"] if mode else [])])
    assert code == 2 and not out
    assert err.strip().splitlines() == [
        "claudeproxy: error: --config given twice: one file is read, and its flags are overridden by the command line's"]


@pytest.mark.parametrize("where", ["flag", "file"])
def test_log_level_and_format_are_taken_in_upper_case_too(tmp_path: Any, served: List[Any], monkeypatch: Any,
                                                          where: str) -> None:
    # Python's logging spells the levels DEBUG, WARNING: a file written that way must not stop the start.
    seen: List[Tuple[str, str]] = []
    real = cli.setup_logging
    monkeypatch.setattr(cli, "setup_logging", lambda level, secrets, stream, fmt="text", bodies=False:
                        seen.append((level, fmt)) or real(level, secrets, stream, fmt, bodies))
    settings = {"upstream": "http://127.0.0.1:9/v1", "log-level": "WARNING", "log-format": "JSON"}
    argv = (["--upstream", "http://127.0.0.1:9/v1", "--log-level", "WARNING", "--log-format", "JSON"]
            if where == "flag" else ["--config", write(tmp_path, settings)])
    code, _, err = run_main(argv)
    assert (code, err) == (0, "")
    assert seen == [("warning", "json")]


def test_a_log_level_that_is_none_in_any_case_still_stops_the_start(tmp_path: Any, served: List[Any]) -> None:
    assert_one_line_error(*run_main(["--config", write(tmp_path, {"upstream": "http://127.0.0.1:9/v1",
                                                                  "log-level": "VERBOSE"})]),
                          "log-level", "'VERBOSE'")
