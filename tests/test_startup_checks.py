"""Every setting checked at start (issue item 6).

The same checks serve the command line, the config file and ``start()``: a
bad value is one line naming the setting and exit status 2 (the library
raises ``ValueError``), before anything listens. No request ever meets a
setting that was wrong from the start.
"""

from __future__ import annotations

import io
import json
import math
import os
import types
from typing import Any, Dict, List, Optional, Tuple

import pytest
from conftest import minimal_request, request

import claudeproxy
from claudeproxy import cli, credentials
from claudeproxy.config import Provider, Route, RouteTarget
from claudeproxy.model_facts import ModelFacts


@pytest.fixture
def served(monkeypatch: Any) -> List[Any]:
    """``serve`` replaced by a recorder: main() returns 0 with the settings it would serve."""
    configs: List[Any] = []

    def fake_serve(config: Any, stdout: Any, metrics_path: Optional[str] = None) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr(cli, "serve", fake_serve)
    return configs


def run_main(argv: List[str], environ: Optional[Dict[str, str]] = None) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, environ=environ or {}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def assert_one_line(code: int, out: str, err: str, setting: str) -> str:
    assert code == 2, (code, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("claudeproxy: error: "), err
    assert setting in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def files(tmp_path: Any) -> Dict[str, str]:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    return {"missing": str(tmp_path / "nope.pem"), "directory": str(tmp_path), "not_pem": str(not_pem),
            "empty": str(empty), "no_dir": str(tmp_path / "no" / "such" / "dir" / "calls.jsonl")}


# ---------------------------------------------------------------------------
# start(): ValueError naming the setting, nothing listens.

NAN, INF = math.nan, math.inf
START_CASES = [
    ({"upstream": "notaurl"}, "--upstream"),
    ({"upstream": "http://example.test/v1 /x"}, "--upstream"),
    ({"upstream": "http://example.test/v1\x00"}, "--upstream"),
    ({"upstream": "http://example.test/v1\r\nX-Evil: 1"}, "--upstream"),
    ({"upstream": "http://example.test/v1\t"}, None),  # surrounding blanks are trimmed: fine
    ({"upstream": "http://example.test/vé1"}, "--upstream"),
    ({"proxy": "http://proxy .test:3128"}, "--proxy"),
    ({"connect_timeout": NAN}, "--connect-timeout"),
    ({"idle_timeout": INF}, "--idle-timeout"),
    ({"request_timeout": -1.0}, "--request-timeout"),
    ({"request_timeout": 0}, "--request-timeout"),
    ({"ping_interval": NAN}, "--ping-interval"),
    ({"body_timeout": -INF}, "--body-timeout"),
    ({"client_timeout": 1e300}, "--client-timeout"),
    ({"shutdown_grace": -0.5}, "--shutdown-grace"),
    ({"finish_grace": NAN}, "--finish-grace"),
    ({"max_concurrency": 0}, "--max-concurrency"),
    ({"max_concurrency": 10 ** 23}, "--max-concurrency: must be at most 1000000"),
    ({"max_body_bytes": 1024 ** 3 + 1}, "--max-body-bytes: must be at most 1073741824"),
    ({"max_line_bytes": 10 ** 12}, "--max-line-bytes"),
    ({"max_body_readers": 10 ** 7}, "--max-body-readers: must be at most 1000000"),
    ({"max_idle_per_host": 10 ** 23}, "--max-idle-per-host: must be at most 1000000"),
    ({"upstream": "http://127.0.0.1:0/v1"}, "--upstream: port 0"),
    ({"upstream": "http://-bad-/v1"}, "--upstream"),
    ({"upstream": "http://compose_service:8080/v1"}, None),  # Docker's names have "_", and its DNS answers them
    ({"upstream": "http://[fe80::1%25eth0]:8080/v1"}, None),
    ({"max_body_bytes": INF}, "--max-body-bytes"),
    ({"max_body_bytes": -1}, "--max-body-bytes"),
    ({"max_body_readers": 0}, "--max-body-readers"),
    ({"max_connections": 0}, "--max-connections"),
    ({"max_connections": 10 ** 7}, "--max-connections: must be at most 1000000"),
    ({"max_idle_per_host": -1}, "--max-idle-per-host"),
    ({"max_output_tokens": 0}, "--max-output-tokens"),
    ({"max_output_tokens": 10 ** 10}, "--max-output-tokens: must be at most 1000000000"),
    # A library caller's model facts are bounded as a config file's are.
    ({"providers": (Provider("p", "http://example.test/v1", models=(("m", ModelFacts(input_price=1e308)),)),),
      "routes": (Route("*", RouteTarget("p")),)}, "providers.p.models.m.input_price: must be at most 1000000"),
    ({"providers": (Provider("p", "http://example.test/v1", models=(("m", ModelFacts(context_window=10 ** 30)),)),),
      "routes": (Route("*", RouteTarget("p")),)}, "providers.p.models.m.context_window: must be at most"),
    ({"providers": (Provider("p", "http://example.test/v1", max_output_tokens=10 ** 10),),
      "routes": (Route("*", RouteTarget("p")),)}, "providers.p.max_output_tokens: must be from 1 to 1000000000"),
    ({"port": 70000}, "--port"),
    # What the command line refused already, start() refuses too (README: "start() alike").
    ({"host": "0.0.0.0"}, "without --auth-key"),
    ({"host": "::"}, "without --auth-key"),
    ({"host": "0.0.0.0", "auth_key": "client-key-0123456789"}, None),
    ({"host": "127.0.0.1 "}, "--host: expected an IP address or a host name"),
    ({"host": "not a host", "auth_key": "client-key-0123456789"}, "--host: expected an IP address or a host name"),
    ({"host": 8082}, "--host"),
    ({"retries": "3"}, "--retries"),
    ({"retries": -1}, "--retries"),
    ({"retries": 1000}, "--retries"),
    ({"retry_max_wait": -5}, "--retry-max-wait"),
    ({"retry_max_wait": "x"}, "--retry-max-wait"),
    ({"allowed_hosts": ("bad host",)}, "--allowed-host: expected a host name"),
    ({"allowed_hosts": ("proxy.lan:99999",)}, "--allowed-host: the port must be from 1 to 65535"),
    ({"allowed_hosts": ("proxy.lan:8082", "[::1]:80")}, None),
    # One string where a list belongs was read a character at a time ("x" and "." allowed Hosts: probe A).
    ({"allowed_hosts": "x.example"}, "allowed_hosts=: expected a list, got the string 'x.example'"),
    ({"allowed_origins": "https://app.example"}, "allowed_origins=: expected a list"),
    ({"model_map": "claude-haiku*=x"}, "model_map=: expected a list"),
    ({"allowed_hosts": ["proxy.lan"]}, None),  # a list is one
    ({"max_concurrency": "4"}, "--max-concurrency"),
    ({"model_map": ("bad",)}, "--model-map"),
    ({"headers": (("X-Title", "a\r\nX-Evil: 1"),)}, "--header"),
    ({"headers": (("X-Title", "a\x00b"),)}, "--header"),
    ({"headers": (("X-Title", "caf\u00e9 \u2615"),)}, "--header"),
    ({"token": claudeproxy.static_token("sk-abc\ndef")}, "key"),
    ({"token": claudeproxy.static_token("sk-\u20ac")}, "key"),
    ({"token": claudeproxy.static_token("sk-\x00")}, "key"),
    ({"auth_key": "client\r\nkey"}, "--auth-key"),
    # A header loses its outer blanks, and clients send a non-ASCII key in bytes of their own: never matched.
    ({"auth_key": " client-key-0123456789"}, "--auth-key"),
    ({"auth_key": "client-key-0123456789\t"}, "--auth-key"),
    ({"auth_key": "client-k\u00e9y-0123456789"}, "--auth-key"),
    # Blank where the command line refuses blank: routed nothing by it, or let every client in.
    ({"model": ""}, "--model: the value is empty"),
    ({"sonnet_model": " "}, "--sonnet-model: the value is empty"),
    ({"auth_key": ""}, "--auth-key: the value is empty"),
    ({"upstream": ""}, "--upstream: the value is empty"),
    ({"allowed_origins": ("*",)}, "--allowed-origin"),
    ({"allowed_origins": ("https://App.example/",)}, "'https://app.example'"),  # never sent so: never matched
    ({"providers": (Provider("p", "http://example.test/v1", headers=(("X-A", "\u2603"),)),),
      "routes": (Route("*", RouteTarget("p")),)}, "providers.p.headers"),
    ({"providers": (Provider("p", "http://exa mple.test/v1"),), "routes": (Route("*", RouteTarget("p")),)},
     "providers.p.url"),
    ({"providers": (Provider("p", "http://-bad-:8080/v1"),), "routes": (Route("*", RouteTarget("p")),)},
     "providers.p.url: '-bad-' is not an IP address or a host name"),
    # A program's value of another type started a server that failed every request, or raised an
    # AttributeError naming nothing (probe R).
    ({"token": "sk-abc-0123456789"}, "token=: expected a function that returns the key, got str"),
    ({"token": None}, "token=: expected a function"),
    ({"providers": (Provider("p", "http://example.test/v1", token="sk-abc-0123"),),  # type: ignore[arg-type]
      "routes": (Route("*", RouteTarget("p")),)}, "providers.p.token: expected a function"),
    ({"log_bodies": "false"}, "--log-bodies: expected True or False, got str 'false'"),  # it logged every prompt
    ({"passthrough": "yes"}, "--passthrough: expected True or False"),
    ({"use_env_proxy": "1"}, "--use-env-proxy: expected True or False"),
    ({"upstream": 123}, "--upstream: expected text, got int"),
    ({"upstream": b"http://example.test/v1"}, "--upstream: expected text, got bytes"),
    ({"model": ["a"]}, "--model: expected text, got list"),
    ({"auth_key": 123}, "--auth-key: expected text, got int"),
    ({"allowed_origins": None}, "--allowed-origin: expected a list, got NoneType"),
    ({"headers": {"X-A": "1"}}, "--header: expected a list, got dict"),
    ({"headers": [("X-A",)]}, "--header: expected (name, value) pairs of strings"),
    ({"routes": [1]}, "routes[0]: expected a claudeproxy.config.Route, got int"),
    ({"headers": [("X-A", "1")]}, None),  # a list, as JSON gives it too: it was a 500 for every request
    ({"headers": [["X-A", "1"]]}, None),
    ({"headers": (["X-A", "1"],)}, None),  # and a tuple of lists (a review)
    ({"allowed_hosts": {"proxy.lan", "box.lan"}}, None),
    ({"log_bodies": 0, "use_env_proxy": 1}, None),  # 0 and 1 mean what they say
    ({"log_bodies": 2}, "--log-bodies: expected True or False, got int 2"),
    ({"providers": None}, "providers=: expected a list, got NoneType"),  # were TypeErrors naming nothing
    ({"routes": 5}, "routes=: expected a list, got int"),
    ({"providers": (Provider("p", "http://example.test/v1", max_output_tokens="9"),),  # type: ignore[arg-type]
      "routes": (Route("*", RouteTarget("p")),)}, "providers.p.max_output_tokens: expected a whole number, got str"),
    ({"provider": "nope"}, "--upstream.dialect: unknown dialect 'nope'"),  # a KeyError once (a review)
    ({"upstream_auth": "basic", "headers": (("Authorization", "Basic eA=="),)}, "--upstream.auth: unknown auth style"),
    ({"azure_api_version": ""}, "--azure-api-version: the value is empty"),
    # Pairs the command line refuses (probe R).
    ({"passthrough": True, "upstream_api": "responses"},
     "--passthrough is short for --upstream-api messages: it cannot go with --upstream-api responses"),
    ({"headers": (("Authorization", "Bearer other-0123456789"),), "token": claudeproxy.static_token("test-key-0002")},
     "--header 'Authorization: ...' and token=: the key is sent in Authorization and would replace that header"),
    # A keyword that is no setting (a flag's name: probe O) was a TypeError traceback.
    ({"allowed_host": ["box.lan"]}, "allowed_host=: no such setting (did you mean allowed_hosts=?)"),
    ({"usage_log": "/tmp/usage.jsonl"}, "usage_log=: no such setting"),
]


@pytest.mark.parametrize("settings,setting", START_CASES, ids=[repr(c[0])[:60] for c in START_CASES])
def test_start_refuses_bad_settings(settings: Dict[str, Any], setting: Optional[str]) -> None:
    if setting is None:  # accepted (with a key: OpenAI, the default upstream, gets one or start refuses)
        server = claudeproxy.start(**{"token": claudeproxy.static_token("test-key-0001"), **settings})
        server.shutdown(grace=0.1)
        return
    with pytest.raises(ValueError) as info:
        server = claudeproxy.start(**settings)
        server.shutdown(grace=0.1)  # only reached when the check is missing
    message = str(info.value)
    assert "\n" not in message and setting in message, message
    assert "sk-" not in message  # a key is never quoted back


def test_start_refuses_what_is_no_config_and_a_sink_that_is_no_function() -> None:
    with pytest.raises(ValueError, match=r"^config: expected a claudeproxy.Config .* got dict$"):
        claudeproxy.start({"upstream": "http://127.0.0.1:9/v1"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^metrics_sink=: expected a function .* got str$"):
        claudeproxy.start(token=claudeproxy.static_token("test-key-0001"), metrics_sink="usage.jsonl")  # type: ignore[arg-type]


def test_the_key_makers_refuse_what_is_no_text() -> None:
    with pytest.raises(ValueError, match=r"^static_token: expected the key as text, got NoneType$"):
        claudeproxy.static_token(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^command_token: expected the command as text or a list of words, got bytes$"):
        claudeproxy.command_token(b"echo key")  # type: ignore[arg-type]


def test_headers_given_as_lists_are_sent(fake_upstream: Any) -> None:
    """``headers=[("X-A", "1")]`` (and ``[["X-A", "1"]]``, as JSON has it; a provider's too) started a
    server that answered every request with a 500: the list was joined to a tuple (probe R)."""
    routes = [Route("*", RouteTarget("p"))]
    servers = [claudeproxy.start(upstream=fake_upstream.url, token=claudeproxy.static_token("test-key-0001"),
                                 headers=[["X-A", "1"]]),
               claudeproxy.start(providers=[Provider("p", fake_upstream.url, token=claudeproxy.static_token("k-0001"),
                                                     headers=[("X-A", "1")])], routes=routes)]  # type: ignore[arg-type]
    try:
        for server in servers:
            resp = request(server.url, "POST", "/v1/messages", minimal_request(), {"x-api-key": "k"})
            assert resp.status == 200, resp.body
            assert fake_upstream.last.headers.get("x-a") == "1"
    finally:
        for server in servers:
            server.shutdown(grace=0.1)


@pytest.mark.parametrize("kind", ["missing", "directory", "not_pem", "empty"])
def test_start_refuses_a_bad_ca_bundle(files: Dict[str, str], kind: str) -> None:
    with pytest.raises(ValueError, match="--ca-bundle"):
        claudeproxy.start(ca_bundle=files[kind]).shutdown(grace=0.1)


# ---------------------------------------------------------------------------
# The command line: one line, exit 2.

CLI_CASES = [
    (["--upstream", "http://example.test/my models"], "--upstream"),
    (["--upstream", "http://example.test/v1\x01"], "--upstream"),
    (["--proxy", "http://proxy.test:3128/\x7f"], "--proxy"),
    (["--connect-timeout", "nan"], "--connect-timeout: must be a finite number of seconds greater than 0 and at most 10000000, got nan"),
    (["--connect-timeout", "inf"], "--connect-timeout"),
    (["--idle-timeout", "-3"], "--idle-timeout"),
    (["--request-timeout", "infinity"], "--request-timeout"),
    (["--ping-interval", "0"], "--ping-interval"),
    (["--body-timeout", "nan"], "--body-timeout"),
    (["--shutdown-grace", "-inf"], "--shutdown-grace"),
    (["--shutdown-grace", "nan"], "--shutdown-grace: must be a finite number of seconds from 0 and at most 10000000, got nan"),
    (["--max-concurrency", "-1"], "--max-concurrency"),
    (["--max-body-bytes", "0"], "--max-body-bytes"),
    (["--max-body-readers", "0"], "--max-body-readers"),
    (["--max-connections", "-1"], "--max-connections"),
    (["--max-idle-per-host", "-2"], "--max-idle-per-host"),
    (["--max-idle-per-host", "99999999999999999999999"], "--max-idle-per-host: must be at most 1000000"),
    (["--max-concurrency", "99999999999999999999999"], "--max-concurrency: must be at most 1000000"),
    (["--max-body-bytes", "99999999999999999999999"], "--max-body-bytes: must be at most 1073741824"),
    (["--max-body-readers", "99999999999999999999999"], "--max-body-readers: must be at most 1000000"),
    (["--max-output-tokens", "99999999999999999999"], "--max-output-tokens: must be at most 1000000000"),
    (["--header", "X-Title: caf\u00e9 \u2615"], "--header"),
    (["--header", "X-Title: a\x00b"], "--header"),
    (["--api-key", "sk-one\ntwo"], "--api-key"),
    (["--api-key", "sk-\u20ac"], "--api-key"),
    (["--auth-key", "k\x00"], "--auth-key"),
    # An empty value is a mistake (``--upstream "$URL"`` with URL unset would send the key to OpenAI).
    (["--upstream", ""], "--upstream: the value is empty"),
    (["--upstream", "  "], "--upstream: the value is empty"),
    (["--model", ""], "--model: the value is empty"),
    (["--opus-model", ""], "--opus-model: the value is empty"),
    (["--auth-key", ""], "--auth-key: the value is empty"),
    (["--azure-api-version", ""], "--azure-api-version: the value is empty"),
    (["--api-key-env", ""], "--api-key-env: the value is empty"),
    (["--api-key-command", ""], "--api-key-command: the value is empty"),
    (["--config", ""], "--config: the value is empty"),
    (["--allowed-host", ""], "--allowed-host: the value is empty"),
    (["--allowed-host", "a b"], "--allowed-host: expected a host name or host:port, got 'a b'"),
    (["--allowed-host", "box.lan:99999"], "--allowed-host: the port must be from 1 to 65535"),
    (["--allowed-host", "box.lan:0"], "--allowed-host: the port must be from 1 to 65535"),
    # A key command is split and looked up at start, not at the first request.
    (["--api-key-command", '"unterminated'], "--api-key-command"),
    (["--api-key-command", "no-such-key-tool-xyz get"], "--api-key-command: no-such-key-tool-xyz: command not found"),
    # Origins as browsers send them, or nothing could ever match.
    (["--allowed-origin", "*"], "--allowed-origin"),
    (["--allowed-origin", "notanorigin"], "--allowed-origin"),
    (["--allowed-origin", "https://app.example/page"], "--allowed-origin"),
    (["--allowed-origin", "https://*.example.com"], "--allowed-origin"),
    (["--allowed-origin", "https://app.example:"], "--allowed-origin"),
    (["--allowed-origin", "https://app.example:70000"], "--allowed-origin"),
    # Flags that contradict each other.
    (["--passthrough", "--upstream-api", "responses"], "--passthrough"),
    # Two sources of the upstream key: one of them was silently ignored.
    (["--api-key", "flag-key", "--api-key-env", "MY_KEY"], "--api-key and --api-key-env both give the upstream key"),
    (["--api-key", "flag-key", "--api-key-command", "true"], "--api-key and --api-key-command both give"),
    (["--api-key", "", "--api-key-command", "true"], "--api-key and --api-key-command both give"),
    (["--api-key-env", "MY_KEY", "--api-key-command", "true"], "--api-key-env and --api-key-command both give"),
    # A key lifetime for a key that is not a command's.
    (["--api-key-ttl", "5"], "--api-key-ttl is how long a key from --api-key-command is used"),
    (["--api-key-ttl", "300", "--api-key", "flag-key"], "--api-key-ttl is how long a key from --api-key-command"),
    # ... and bounded like every other duration.
    (["--api-key-command", "true", "--api-key-ttl", "inf"], "--api-key-ttl: must be a finite number of seconds"),
    (["--api-key-command", "true", "--api-key-ttl", "1e300"], "--api-key-ttl: must be a finite number of seconds"),
    # A header the key replaces upstream (the auth style's): the user's header was dropped without a word.
    (["--api-key", "flag-key", "--header", "Authorization: Bearer hdr-token"],
     "--header 'Authorization: ...' and --api-key: the key is sent in Authorization"),
    (["--api-key-command", "true", "--header", "Authorization: Bearer hdr-token"], "and --api-key-command"),
    (["--passthrough", "--api-key", "flag-key", "--header", "x-api-key: hdr-token"],
     "--header 'x-api-key: ...' and --api-key"),
    (["--upstream-auth", "api-key", "--api-key", "flag-key", "--header", "Api-Key: hdr-token"],
     "--header 'Api-Key: ...'"),
    (["--upstream", "https://res.openai.azure.com/openai", "--api-key", "flag-key", "--header", "api-key: hdr-token"],
     "--header 'api-key: ...' and --api-key"),
    (["--usage-log", "a.jsonl", "--metrics-file", "b.jsonl"], "--metrics-file"),
]


@pytest.mark.parametrize("argv,setting", CLI_CASES, ids=[" ".join(c[0])[:60] for c in CLI_CASES])
def test_command_line_refuses_bad_settings(served: List[Any], argv: List[str], setting: str) -> None:
    line = assert_one_line(*run_main(argv), setting)
    assert "sk-" not in line
    assert served == []


# The same bad number said the same way from the command line and from start() (a user moving from
# one to the other, or reading the README's examples of either, finds one wording).
SAME_WORDS = [("--retries", "retries", 50), ("--retries", "retries", -1), ("--port", "port", 70000),
              ("--port", "port", -1), ("--retry-max-wait", "retry_max_wait", 700.0),
              ("--retry-max-wait", "retry_max_wait", math.inf),
              ("--idle-timeout", "idle_timeout", -3.0), ("--connect-timeout", "connect_timeout", math.nan),
              ("--shutdown-grace", "shutdown_grace", -1.0), ("--max-concurrency", "max_concurrency", 0),
              ("--max-body-bytes", "max_body_bytes", 0)]


@pytest.mark.parametrize("flag,keyword,value", SAME_WORDS, ids=[f"{c[0]} {c[2]}" for c in SAME_WORDS])
def test_a_number_out_of_range_is_worded_alike_on_the_command_line_and_by_start(
        served: List[Any], flag: str, keyword: str, value: Any) -> None:
    with pytest.raises(ValueError) as raised:
        claudeproxy.start(upstream="http://127.0.0.1:9/v1", **{keyword: value}).shutdown(grace=0.1)
    line = assert_one_line(*run_main(["--upstream", "http://127.0.0.1:9/v1", "--api-key", "k", flag, str(value)]),
                           flag)
    assert line == "claudeproxy: error: " + str(raised.value)
    assert str(raised.value).startswith(f"{flag}: must be ")


def test_a_key_command_that_cannot_be_split_is_not_quoted_back(served: List[Any]) -> None:
    line = assert_one_line(*run_main(["--api-key-command", '"print-key --token sk-inline-000000']),
                           "--api-key-command: cannot split the command into words")
    assert "sk-inline" not in line


@pytest.mark.parametrize("command", ["echo sk-inline-000000 | tr a b", "echo $OPENAI_API_KEY", "echo ${KEY}",
                                     "cat key > /dev/null", "echo sk-inline-000000; true", "echo `cat key`",
                                     "true && echo sk-inline-000000", "print-key 2>/dev/null"])
def test_a_key_command_written_for_a_shell_stops_the_start(served: List[Any], command: str) -> None:
    """Run without a shell, 'echo sk-abc | tr a b' printed its words and the key went upstream as
    "sk-abc | tr a b" ($VAR as "$VAR"): a server whose every request was a 401 (probe C)."""
    line = assert_one_line(*run_main(["--api-key-command", command]),
                           "--api-key-command: the command has shell syntax")
    assert "sk-inline" not in line and "sh -c" in line
    assert served == []


@pytest.mark.parametrize("command", ["echo --key=$KEY", "echo x>/tmp/claudeproxy-out"])
def test_shell_syntax_inside_a_word_stops_the_start_too(served: List[Any], command: str) -> None:
    assert_one_line(*run_main(["--api-key-command", command]), "--api-key-command: the command has shell syntax")


def test_a_shell_command_given_to_sh_is_a_command_like_any() -> None:
    assert credentials.command_argv("sh -c 'echo $KEY | tr a b; true'", "s") == ["sh", "-c", "echo $KEY | tr a b; true"]
    # Quoted text is an argument, as the message's own advice has it (review F).
    assert credentials.command_argv("sh -c '$HOME/bin/get-key'", "s") == ["sh", "-c", "$HOME/bin/get-key"]
    assert credentials.command_argv('sh -c "$HOME/bin/get-key"', "s") == ["sh", "-c", "$HOME/bin/get-key"]
    assert credentials.command_argv("python3 -c 'print(1);'", "s") == ["python3", "-c", "print(1);"]
    assert credentials.command_argv("echo '<key>' a\\|b", "s") == ["echo", "<key>", "a|b"]
    assert credentials.command_argv("echo price$5", "s") == ["echo", "price$5"]  # no variable a shell would read
    assert credentials.command_argv(["echo", "|", "$X"], "s") == ["echo", "|", "$X"]  # an argv list is run as it is


@pytest.mark.parametrize("argv, environ, said", [
    # Every request would come back to the proxy: a passthrough request went round until the 256
    # slots were full and ended in a retryable 529; a Chat one was a 404 (probe C).
    (["--passthrough", "--upstream", "http://127.0.0.1:8093", "--port", "8093"], {},
     "--upstream: http://127.0.0.1:8093 is this proxy itself (it listens on port 8093)"),
    (["--upstream", "http://localhost:8094/v1", "--port", "8094"], {}, "--upstream: http://localhost:8094/v1 is this proxy"),
    (["--upstream", "http://[::1]:8094/v1", "--host", "0.0.0.0", "--auth-key", "client-key-0123456789", "--port", "8094"],
     {}, "is this proxy itself"),
    (["--port", "8095"], {"OPENAI_BASE_URL": "http://127.0.0.1:8095/v1"}, "OPENAI_BASE_URL: http://127.0.0.1:8095/v1 is this proxy"),
    # URLs that could only get 404s, said at once instead of in every request's error.
    (["--upstream", "https://api.openai.com"], {}, "--upstream: the URL names the host alone, where the API is under /v1: "
                                                   "give https://api.openai.com/v1"),
    (["--upstream", "https://openrouter.ai/"], {}, "give https://openrouter.ai/api/v1"),
    ([], {"OPENAI_BASE_URL": "https://api.groq.com"}, "OPENAI_BASE_URL: the URL names the host alone, where the API is "
                                                      "under /openai/v1"),
    (["--upstream", "http://127.0.0.1:9/v1/v1"], {}, "--upstream: the URL has /v1 twice"),
    (["--upstream", "https://api.openai.com/v1/v1/", "--upstream-api", "responses"], {}, "the URL has /v1 twice"),
    # export OPENAI_BASE_URL=$GATEWAY with GATEWAY unset: the gateway's key went to api.openai.com.
    ([], {"OPENAI_BASE_URL": ""}, "OPENAI_BASE_URL: the variable is set but empty"),
])
def test_an_upstream_url_that_could_only_fail_stops_the_start(served: List[Any], argv: List[str],
                                                             environ: Dict[str, str], said: str) -> None:
    assert_one_line(*run_main(argv, {"OPENAI_API_KEY": "sk-test-0001", **environ}), said)
    assert served == []


@pytest.mark.parametrize("argv", [
    ["--upstream", "http://127.0.0.1:8095/v1", "--port", "8096"],  # another port on this machine
    ["--upstream", "https://api.deepseek.com", "--api-key", "sk-test-0001"],  # DeepSeek answers without /v1 too
    ["--upstream", "http://localhost:11434/v1"],  # Ollama
    ["--passthrough", "--upstream", "https://api.anthropic.com"],  # a messages URL's path is its own
    ["--upstream", "https://gateway.example/v1/openai/v1"],  # /v1 twice, but not in a row
])
def test_upstream_urls_that_can_work_start(served: List[Any], argv: List[str]) -> None:
    code, out, err = run_main(argv + ["--print-config"], {"OPENAI_API_KEY": "sk-test-0001", "ANTHROPIC_API_KEY": "sk-ant-0001"})
    assert code == 0, err


def test_a_key_variable_that_is_set_but_empty_is_said_so(served: List[Any]) -> None:
    """The message said "not set" and sent the user looking for a variable that is there, empty."""
    assert_one_line(*run_main(["--api-key-env", "MY_KEY"], {"MY_KEY": " "}),
                    "--api-key-env: the environment variable MY_KEY is empty")
    assert_one_line(*run_main(["--api-key-env", "MY_KEY"], {}), "--api-key-env: the environment variable MY_KEY is not set")


def test_a_config_file_naming_no_provider_stops_the_start(served: List[Any], tmp_path: Any) -> None:
    """Not the default upstream (api.openai.com) in place of the providers a cut-short file lost."""
    path = tmp_path / "c.json"
    path.write_text('{"providers": {}, "routes": []}')
    assert_one_line(*run_main(["--config", str(path)]), "providers: names no provider")


@pytest.mark.parametrize("command,said", [
    ("false", "the key command 'false' of --api-key-command failed with exit status 1"),
    ("true", "the key command 'true' of --api-key-command printed no usable key"),
])
def test_a_key_command_that_gives_no_key_stops_the_start(served: List[Any], command: str, said: str) -> None:
    """Run once before anything listens: a server whose every request would be a 502 never starts."""
    assert_one_line(*run_main(["--api-key-command", command]), said)
    assert served == []


def test_a_key_command_that_works_is_run_once_at_start_and_its_key_cached(served: List[Any], tmp_path: Any) -> None:
    counter = tmp_path / "runs"
    script = tmp_path / "key.sh"
    script.write_text(f"#!/bin/sh\necho run >> {counter}\necho sk-from-command-0001\n")
    script.chmod(0o755)
    code, _, err = run_main(["--api-key-command", str(script)])
    assert code == 0, err
    [config] = served
    assert config.token() == "sk-from-command-0001"
    assert counter.read_text().count("run") == 1  # the start's run serves the first calls


def test_on_windows_a_key_command_path_without_exe_is_found(monkeypatch: Any, tmp_path: Any) -> None:
    """subprocess adds .exe to C:\\tools\\vault there; shutil.which does so only from Python 3.12."""
    from claudeproxy import credentials

    (tmp_path / "vault.exe").write_text("")
    monkeypatch.setattr(credentials.shutil, "which", lambda name: None)
    monkeypatch.setattr(credentials, "os", types.SimpleNamespace(name="nt", path=os.path))
    assert credentials.command_argv([str(tmp_path / "vault"), "read"], "s") == [str(tmp_path / "vault"), "read"]
    with pytest.raises(ValueError, match="command not found"):
        credentials.command_argv([str(tmp_path / "other"), "read"], "s")
    with pytest.raises(ValueError, match="command not found"):
        credentials.command_argv(["vault"], "s")  # no folder: found on PATH or not at all


def test_a_bad_key_in_the_environment_is_refused(served: List[Any]) -> None:
    line = assert_one_line(*run_main([], {"OPENAI_API_KEY": "sk-abc\x1bdef"}), "OPENAI_API_KEY")
    assert "sk-abc" not in line


@pytest.mark.parametrize("kind", ["missing", "directory", "not_pem", "empty"])
def test_command_line_refuses_a_bad_ca_bundle(served: List[Any], files: Dict[str, str], kind: str) -> None:
    line = assert_one_line(*run_main(["--ca-bundle", files[kind]]), "--ca-bundle")
    assert "cannot listen" not in line
    assert served == []


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_a_ca_bundle_that_is_no_regular_file_is_not_called_missing(served: List[Any]) -> None:
    assert_one_line(*run_main(["--ca-bundle", "/dev/null"]), "--ca-bundle /dev/null: not a regular file")


@pytest.mark.parametrize("flag", ["--usage-log", "--metrics-file"])
@pytest.mark.parametrize("kind", ["directory", "no_dir"])
def test_command_line_refuses_a_usage_log_it_cannot_open(served: List[Any], files: Dict[str, str],
                                                         kind: str, flag: str) -> None:
    assert_one_line(*run_main([flag, files[kind]]), flag)
    assert served == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_command_line_refuses_an_unwritable_metrics_file(served: List[Any], tmp_path: Any) -> None:
    locked = tmp_path / "calls.jsonl"
    locked.write_text("")
    locked.chmod(0o444)
    assert_one_line(*run_main(["--metrics-file", str(locked)]), "--metrics-file")


@pytest.mark.skipif(not os.path.isfile("/proc/version"), reason="Linux's /proc")
@pytest.mark.parametrize("path,said", [("/proc/version", "cannot be opened for appending"),
                                       ("/proc/calls.jsonl", "cannot be opened for appending")])
@pytest.mark.parametrize("flag", ["--usage-log", "--metrics-file"])
def test_a_usage_log_that_cannot_be_appended_to_stops_the_start_even_for_root(
        served: List[Any], flag: str, path: str, said: str) -> None:
    """The file is opened for appending, not asked os.access: root may open /proc/version (every write
    then fails with EIO) and os.access says yes to root for a new file in /proc. Either way every
    call's record was lost with a warning, and the server ran on."""
    assert_one_line(*run_main([flag, path]), f"{flag} {path}: {said}")
    assert served == []


def test_the_usage_log_check_leaves_no_file_behind_and_a_file_as_it_was(served: List[Any], tmp_path: Any) -> None:
    new, old = tmp_path / "new.jsonl", tmp_path / "old.jsonl"
    old.write_text('{"earlier": 1}\n')
    assert run_main(["--usage-log", str(new), "--upstream", "http://127.0.0.1:9/v1"])[0] == 0
    assert run_main(["--usage-log", str(old), "--upstream", "http://127.0.0.1:9/v1"])[0] == 0
    assert len(served) == 2
    assert not new.exists()  # the first record creates it
    assert old.read_text() == '{"earlier": 1}\n'


def test_a_good_metrics_file_is_not_created_by_the_check(served: List[Any], tmp_path: Any) -> None:
    target = tmp_path / "calls.jsonl"
    assert run_main(["--metrics-file", str(target), "--print-config"])[0] == 0
    assert not target.exists()


def test_a_setting_only_the_server_checks_exits_2(monkeypatch: Any) -> None:
    """Whatever ValueError the server raises while starting is a one-line exit 2, not 'cannot listen'."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("--some-setting: bad")

    monkeypatch.setattr(cli, "ProxyServer", refuse)
    assert_one_line(*run_main(["--port", "0", "--upstream", "http://127.0.0.1:9/v1"]), "--some-setting")


# ---------------------------------------------------------------------------
# The config file: the same checks, the file named.

FILE_CASES = [
    ({"connect_timeout": -1}, "claudeproxy.json: connect_timeout"),
    ({"idle_timeout": 0}, "claudeproxy.json: idle_timeout"),
    ({"max_idle_per_host": -1}, "claudeproxy.json: max_idle_per_host"),
    ({"body_timeout": -2}, "claudeproxy.json: body_timeout"),
    ({"upstream": "http://example.test/a b"}, "claudeproxy.json: upstream"),
    ({"header": ["X-A: \u2603"]}, "claudeproxy.json: header"),
    ({"providers": {"p": {"url": "http://example.test/\x00"}}}, "providers.p.url"),
    ({"providers": {"p": {"url": "http://example.test/v1", "headers": {"X-A": "a\nb"}}}}, "providers.p.headers"),
    ({"providers": {"p": {"url": "http://example.test/v1", "api_key_env": "BAD_KEY"}}}, "providers.p"),
]


@pytest.mark.parametrize("content,setting", FILE_CASES, ids=[json.dumps(c[0])[:60] for c in FILE_CASES])
def test_config_file_refuses_bad_settings(served: List[Any], tmp_path: Any, content: Dict[str, Any],
                                          setting: str) -> None:
    path = tmp_path / "claudeproxy.json"
    path.write_text(json.dumps(content))
    line = assert_one_line(*run_main(["--config", str(path)], {"BAD_KEY": "sk-\u20ac"}), setting)
    assert "sk-" not in line
    assert served == []


@pytest.mark.parametrize("text", ['{"connect_timeout": NaN}', '{"request_timeout": Infinity}',
                                  '{"idle_timeout": 1e999}'])
def test_config_file_refuses_non_finite_numbers(served: List[Any], tmp_path: Any, text: str) -> None:
    path = tmp_path / "claudeproxy.json"
    path.write_text(text)
    assert_one_line(*run_main(["--config", str(path)]), "timeout")
    assert served == []


def test_the_haiku_model_lent_to_claude_codes_main_loop_is_said() -> None:
    """Probe AN 2: --haiku-model alone (no --model) serves opus and sonnet too, which only an INFO
    route line said: Claude Code's main loop ran on the small model."""
    from claudeproxy.cli import main_loop_on_the_small_model

    def said(**settings: Any) -> List[str]:
        server = claudeproxy.start(**{"upstream": "http://127.0.0.1:9/v1", "token": claudeproxy.static_token("k"),
                                      "port": 0, **settings})
        try:
            return main_loop_on_the_small_model(server.server)
        finally:
            server.shutdown(grace=0.5)

    assert said(haiku_model="qwen3") == [
        "--haiku-model qwen3 serves Claude Code's opus and sonnet models too (no --opus-model or --sonnet-model): its "
        "main loop runs on that model; give --model, or --opus-model or --sonnet-model, for them"]
    assert said(haiku_model="qwen3", model="big") == []  # --model serves the others
    assert said(opus_model="big") == []  # the big model lent to the small families: as meant
    assert said(haiku_model="qwen3", sonnet_model="big") == []  # sonnet lends to opus
